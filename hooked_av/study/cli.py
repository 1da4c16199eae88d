"""`hooked-av study`: registered on the main CLI by add_subcommands."""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
from pathlib import Path

from hooked_av.data.cli import add_dtype_option, positive
from hooked_av.study.run import ORGANISM_WINDOW, STEPS


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("study", help="the paper's whole study: captions, judge, Fig. 2, 4, 5, 6, 7, report",
                              description="Run (or resume) the whole study on a model and a manifest of factual "
                                          "and counterfactual samples: caption under the paper's prompts, judge, "
                                          "attention, logit lens, knockout sweep, token shift against --base-model; "
                                          "writes the result JSONL, one PNG per paper figure, summary.json and "
                                          "report.md into --out. Rerun the same command to resume.")
    p.add_argument("--model", help="the audio-visual model's checkpoint folder")
    p.add_argument("--data", type=Path, help="manifest JSONL of factual and counterfactual samples")
    p.add_argument("--out", type=Path, default=Path("study"), help="results folder (default: %(default)s)")
    p.add_argument("--base-model", help="the base VLM's checkpoint folder, for token shift (Fig. 7)")
    p.add_argument("--judge", type=shlex.split, default=["keywords"], metavar="'BACKEND [OPTIONS]'",
                   help="judge backend and `hooked-av judge` options, one quoted string, e.g. 'openai --model "
                        "Qwen/Qwen3-32B --base-url http://host:8000/v1' (default: keywords, the deterministic "
                        "keyword scorer)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="default: all")
    p.add_argument("--samples", type=positive(int), help="factual and counterfactual samples each (default: all)")
    p.add_argument("--step-samples", action="append", default=[], type=step_count, metavar="STEP=N",
                   help="fewer samples for one step, e.g. knockout-sweep=20 (repeatable)")
    p.add_argument("--max-new-tokens", type=positive(int), default=64,
                   help="captions, knockout sweep and token shift (default: %(default)s)")
    p.add_argument("--attention-max-new-tokens", type=positive(int), default=32)
    p.add_argument("--window", type=positive(int),
                   help="knockout window in layers (default: the paper's 9; 3 on the 6-layer organism)")
    p.add_argument("--last-layers", type=positive(int), default=5, help="logit-lens word layers (paper: 5)")
    p.add_argument("--fps", type=positive(float), default=2.0)
    p.add_argument("--device", default=None)
    add_dtype_option(p)
    p.set_defaults(func=study_cmd)


def step_count(text: str) -> tuple[str, int]:
    step, _, count = text.partition("=")
    if step not in STEPS:
        raise argparse.ArgumentTypeError(f"{step!r} is not a step ({', '.join(STEPS)})")
    return step, positive(int)(count)


def on_organism(args: argparse.Namespace) -> bool:
    return args.model is None and args.data is None


def study_inputs(args: argparse.Namespace):
    """--model/--data/--base-model, or the shipped model organism, its synthetic set and its twin when neither
    --model nor --data is given."""
    from hooked_av.model.errors import InputError
    from hooked_av.study.run import StudyInputs, organism_inputs

    if on_organism(args):
        inputs = organism_inputs()
        return inputs if args.base_model is None else StudyInputs(inputs.model, inputs.data, args.base_model)
    if args.model is None or args.data is None:
        raise InputError(f"study needs both --model and --data (got only {'--model' if args.model else '--data'})")
    return StudyInputs(args.model, args.data, args.base_model)


def study_cmd(args: argparse.Namespace) -> int:
    from hooked_av.study.run import StudyConfig, run_study

    config = StudyConfig(steps=tuple(args.steps), samples=args.samples, step_samples=dict(args.step_samples),
                         judge=tuple(args.judge or ["keywords"]), max_new_tokens=args.max_new_tokens,
                         attention_max_new_tokens=args.attention_max_new_tokens,
                         window=args.window or (ORGANISM_WINDOW if on_organism(args) else 9),
                         last_layers=args.last_layers, fps=args.fps, dtype=args.dtype, device=args.device)
    check_judge_options(config.judge)
    run_study(study_inputs(args), config, args.out)
    return 0


def check_judge_options(judge: tuple[str, ...]) -> None:
    """Parse the judge options as `hooked-av judge` will, before any model loads; InputError with argparse's
    message when one is wrong."""
    from hooked_av.cli import build_parser
    from hooked_av.model.errors import InputError

    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages):
            build_parser().parse_args(["judge", "--manifest", "m", "--captions", "c", "--out", "o", "--backend",
                                       *judge])
    except SystemExit:
        reason = messages.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
        raise InputError(f"--judge {shlex.join(judge)!r}: {reason} (the options of `hooked-av judge`)") from None
