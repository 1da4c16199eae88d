"""`hooked-av judge` and `hooked-av agreement`: subcommands that the main CLI registers via add_subcommands."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from hooked_av.data.cli import positive
from hooked_av.eval.scores import FIDELITY_RUBRICS
from hooked_av.model.errors import InputError
from hooked_av.eval.backends import JudgeBackend, OpenAICompatibleBackend, TransformersBackend, VLLMBackend
from hooked_av.eval.rubric import JUDGEMENT_SCHEMA

DEFAULT_MAX_TOKENS = {"transformers": 256, "openai": 2048, "vllm": 2048}  # reasoning judges need room to think
# "keywords": the deterministic keyword scorer (hooked_av.eval.keywords), for closed-vocabulary captions
BACKENDS = (*sorted(DEFAULT_MAX_TOKENS), "keywords")


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register `judge` and `agreement` on the main CLI's subparsers (each sets `func`, returning an exit code)."""
    p = subparsers.add_parser("judge", help="score generated captions with an LLM judge (audio/video fidelity)",
                              description="Score each caption of --captions against the references of --manifest "
                                          "and append one row per (sample, prompt, modality) to --out. Resumable.")
    p.add_argument("--manifest", required=True, help="manifest JSONL (sample_id, audio_captions, video_caption)")
    p.add_argument("--captions", required=True,
                   help="captions JSONL of `hooked-av caption` (sample_id, prompt, caption, model, model_hash)")
    p.add_argument("--out", required=True, help="score JSONL, appended to; rows already there are skipped")
    p.add_argument("--backend", choices=BACKENDS, default="transformers",
                   help="keywords: the deterministic keyword scorer, no LLM (closed-vocabulary captions)")
    p.add_argument("--model", help="judge model: local folder or HF id (transformers, vllm), served model name "
                                   "(openai); default for transformers: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--gguf-file", help="GGUF file inside --model (transformers)")
    p.add_argument("--base-url", default="http://localhost:8000/v1", help="OpenAI-compatible server (openai)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable with the API key (openai)")
    p.add_argument("--cache", help="judge answer cache JSONL (default: <out>.cache.jsonl)")
    p.add_argument("--modalities", nargs="+", choices=sorted(FIDELITY_RUBRICS), default=["audio", "video"],
                   help="latent_audio scores logit-lens word sets (rows with a words field)")
    p.add_argument("--max-attempts", type=positive(int), default=3,
                   help="answers read per request before a failure record")
    p.add_argument("--batch-size", type=positive(int), default=16, help="prompts per backend call")
    p.add_argument("--max-tokens", type=positive(int),
                   help="answer token limit (default: 256 transformers, 2048 servers)")
    p.add_argument("--timeout", type=positive(float), default=300.0,
                   help="seconds to wait for each answer before retrying it, 4 retries (openai; default: "
                        "%(default)g); a 1-token check request with min(30 s, timeout) goes first")
    p.add_argument("--no-json-schema", action="store_true",
                   help="decode freely instead of constraining answers to the judgement JSON schema (transformers, "
                        "openai); the robust parser reads them")
    p.add_argument("--no-think", action="store_true", help="chat template enable_thinking=False (Qwen3; openai, vllm)")
    p.add_argument("--retry-failed", action="store_true", help="score failure records of --out again")
    p.add_argument("--device", default="cpu", help="device of the transformers backend")
    p.set_defaults(func=run_judge)

    a = subparsers.add_parser("agreement", help="Spearman rho between judge scores and human ratings",
                              description="Join human ratings (CSV: sample_id, modality, human_score[, prompt, "
                                          "caption_model, caption_model_hash]) with a judge score file; rho "
                                          "and bootstrap CI per modality.")
    a.add_argument("--human", required=True, help="human ratings CSV")
    a.add_argument("--scores", required=True, help="score JSONL written by `hooked-av judge`")
    a.add_argument("--n-boot", type=positive(int), default=2000)
    a.add_argument("--confidence", type=float, default=0.95)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", help="also write the report as JSON here")
    a.set_defaults(func=run_agreement)


def make_backend(args: argparse.Namespace) -> JudgeBackend:
    max_tokens = args.max_tokens or DEFAULT_MAX_TOKENS[args.backend]
    template_kwargs = {"enable_thinking": False} if args.no_think else None
    if args.backend == "transformers":
        return TransformersBackend(args.model, gguf_file=args.gguf_file, device=args.device,
                                   max_new_tokens=max_tokens, batch_size=args.batch_size,
                                   json_schema=None if args.no_json_schema else JUDGEMENT_SCHEMA)
    if not args.model:
        raise InputError(f"--backend {args.backend} needs --model: the served model name (e.g. Qwen/Qwen3-32B)")
    if args.backend == "openai":
        return OpenAICompatibleBackend(args.base_url, args.model, api_key=os.environ.get(args.api_key_env),
                                       timeout=args.timeout, max_tokens=max_tokens,
                                       json_schema=not args.no_json_schema, chat_template_kwargs=template_kwargs)
    return VLLMBackend(args.model, max_tokens=max_tokens, chat_template_kwargs=template_kwargs)


def make_judge(args: argparse.Namespace, out: str | Path):
    """The judge of the `judge` options: a cached Judge on the backend, or the keyword scorer."""
    from hooked_av.eval.judge import Judge
    from hooked_av.eval.keywords import KeywordJudge

    if args.backend == "keywords":
        return KeywordJudge()
    return Judge(make_backend(args), cache=args.cache or f"{out}.cache.jsonl", max_attempts=args.max_attempts,
                 batch_size=args.batch_size)


def run_judge(args: argparse.Namespace) -> int:
    from hooked_av.eval.scores import score_captions

    judge = make_judge(args, args.out)
    summary = score_captions(args.manifest, args.captions, args.out, judge, modalities=args.modalities,
                             retry_failed=args.retry_failed)
    generated = ("" if args.backend == "keywords" else f"; {judge.stats.prompts_sent} prompts generated, "
                 f"{judge.stats.cache_hits} answers from {judge.cache.path}")
    print(f"judge {judge.model_name}: {summary.scored} scored, {summary.failed} failure records, "
          f"{summary.skipped_existing} already in {args.out}, {summary.missing_reference} without a reference"
          + generated)
    return 0


def run_agreement(args: argparse.Namespace) -> int:
    from hooked_av.eval.agreement import agreement

    report = agreement(args.human, args.scores, n_boot=args.n_boot, confidence=args.confidence, seed=args.seed)
    for a in report.modalities.values():
        print(f"{a.modality:>6}: Spearman rho = {a.rho:.3f} (p = {a.p_value:.2g}), "
              f"{a.confidence:.0%} CI [{a.ci_low:.3f}, {a.ci_high:.3f}], n = {a.n}")
    print(f"human ratings without a judge score: {report.unmatched_human}; with a judge failure record: "
          f"{report.failed_judge}")
    if args.out:
        Path(args.out).write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return 0
