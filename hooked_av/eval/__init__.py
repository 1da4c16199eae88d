"""Caption evaluation (paper Sec. 4, 6, App. B): LLM judge, keyword scorer, agreement with human raters."""

from hooked_av.eval.agreement import Agreement, AgreementReport, agreement, spearman_ci
from hooked_av.eval.backends import JudgeBackend, OpenAICompatibleBackend, TransformersBackend, VLLMBackend
from hooked_av.eval.cache import JudgeCache
from hooked_av.eval.errors import EvalDataError, JudgeBackendError, MalformedJudgeOutput, MissingDependencyError
from hooked_av.eval.judge import Judge, JudgeRequest, JudgeResult
from hooked_av.eval.keywords import KeywordScore, keyword_score
from hooked_av.eval.parse import Judgement, parse_judgement
from hooked_av.eval.rubric import AUDIO_FIDELITY, LATENT_AUDIO, RUBRICS, VIDEO_FIDELITY, Rubric
from hooked_av.eval.scores import ScoreSummary, load_scores, score_captions

__all__ = ["AUDIO_FIDELITY", "Agreement", "AgreementReport", "EvalDataError", "Judge", "JudgeBackend",
           "JudgeBackendError", "JudgeCache", "JudgeRequest", "JudgeResult", "Judgement", "KeywordScore",
           "LATENT_AUDIO", "MalformedJudgeOutput", "MissingDependencyError", "OpenAICompatibleBackend", "RUBRICS",
           "Rubric", "ScoreSummary", "TransformersBackend", "VIDEO_FIDELITY", "VLLMBackend", "agreement",
           "keyword_score", "load_scores", "parse_judgement", "score_captions", "spearman_ci"]
