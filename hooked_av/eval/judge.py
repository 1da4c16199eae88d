"""The LLM judge: rubric prompts in, scores in [0, 1] with reasoning out, cached, re-asked, never a silent 0.

A request whose answer cannot be parsed is asked again with a reminder of the JSON format (up to
max_attempts answers in all). If it stays malformed the result is a failure record: status "failed", score
None, the parse error and the judge's last raw answer, so an average over scores can never absorb a judge
failure as a zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from hooked_av.eval.backends import JudgeBackend
from hooked_av.eval.cache import FREE, JudgeCache
from hooked_av.eval.errors import JudgeBackendError, MalformedJudgeOutput
from hooked_av.eval.parse import parse_judgement
from hooked_av.eval.rubric import LATENT_AUDIO, Rubric, with_format_reminder

OK, FAILED = "ok", "failed"


@dataclass(frozen=True)
class JudgeRequest:
    rubric: Rubric
    references: tuple[str, ...]
    candidate: str

    def prompt(self) -> str:
        return self.rubric.prompt(self.references, self.candidate)


@dataclass
class JudgeResult:
    status: str  # "ok" or "failed"
    score: float | None  # None exactly when failed
    reasoning: str | None
    judge_model: str
    attempts: int  # answers read for this request (1 = the first answer was usable)
    error: str | None = None  # why the last answer was unusable (failed only)
    raw: str | None = None  # the judge's last raw answer


@dataclass
class JudgeStats:
    prompts_sent: int = 0  # prompts the backend actually generated for
    cache_hits: int = 0


@dataclass
class Judge:
    backend: JudgeBackend
    cache: JudgeCache | str | Path | None = None  # a path is opened as a JudgeCache
    max_attempts: int = 3
    batch_size: int = 16  # prompts per backend.complete call (and per cache append)
    stats: JudgeStats = field(default_factory=JudgeStats)

    def __post_init__(self) -> None:
        if isinstance(self.cache, (str, Path)):
            self.cache = JudgeCache(self.cache)
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._checked = False

    @property
    def model_name(self) -> str:
        return self.backend.name

    @property
    def decoding(self) -> str:
        return getattr(self.backend, "decoding", FREE)

    def check(self) -> None:
        """Let the backend fail fast (a server's short check request) before a run; once per Judge."""
        check = getattr(self.backend, "check", None)
        if check is not None and not self._checked:
            check()
        self._checked = True

    def score(self, rubric: Rubric, references: Sequence[str], candidate: str) -> JudgeResult:
        return self.score_many([JudgeRequest(rubric, tuple(references), candidate)])[0]

    def latent_audio_understanding(self, words: Sequence[str], audio_captions: Sequence[str]) -> JudgeResult:
        """Paper Sec. 6: do the logit-lens words (LogitLensResult.words()) capture the reference sound events?"""
        return self.score(LATENT_AUDIO, audio_captions, ", ".join(words))

    def score_many(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """One result per request. Each round sends every still-unanswered prompt in batches."""
        base = [r.prompt() for r in requests]
        prompts = dict(enumerate(base))
        results: dict[int, JudgeResult] = {}
        for attempt in range(1, self.max_attempts + 1):
            pending = sorted(prompts)
            for i, raw in zip(pending, self.complete([prompts[i] for i in pending])):
                results[i] = self._read(raw, attempt)
                if results[i].status == OK:
                    del prompts[i]
                else:
                    prompts[i] = with_format_reminder(base[i], results[i].error)
            if not prompts:
                break
        return [results[i] for i in range(len(requests))]

    def complete(self, prompts: list[str]) -> list[str]:
        """Answers for prompts: from the cache when known, else from the backend (then cached)."""
        answers: dict[str, str] = {}
        misses: list[str] = []
        for prompt in dict.fromkeys(prompts):  # a prompt repeated in one call is generated once
            cached = self.cache.get(self.model_name, prompt, self.decoding) if self.cache is not None else None
            if cached is None:
                misses.append(prompt)
            else:
                answers[prompt] = cached
                self.stats.cache_hits += 1
        with tqdm(total=len(misses), desc=f"judge {self.model_name}", unit="prompt", leave=False,
                  disable=len(misses) <= self.batch_size) as bar:  # shown when a call spans several batches
            for start in range(0, len(misses), self.batch_size):
                batch = misses[start:start + self.batch_size]
                generated = self.backend.complete(batch)  # may change the decoding (a server refusing schemas)
                if len(generated) != len(batch):
                    raise JudgeBackendError(f"judge backend {self.model_name} returned {len(generated)} answers "
                                            f"for {len(batch)} prompts")
                self.stats.prompts_sent += len(batch)
                if self.cache is not None:
                    self.cache.put_many(self.model_name, zip(batch, generated), self.decoding)
                answers.update(zip(batch, generated))
                bar.update(len(batch))
        return [answers[p] for p in prompts]

    def _read(self, raw: str, attempt: int) -> JudgeResult:
        try:
            judgement = parse_judgement(raw)
        except MalformedJudgeOutput as e:
            return JudgeResult(status=FAILED, score=None, reasoning=None, judge_model=self.model_name,
                               attempts=attempt, error=str(e), raw=raw)
        return JudgeResult(status=OK, score=judgement.score, reasoning=judgement.reasoning,
                           judge_model=self.model_name, attempts=attempt, raw=raw)
