"""The analysis subcommands of `hooked-av`: attention, logit-lens, knockout-sweep, token-shift (see
docs/analyses.md). Each reads a manifest (--data), loads --model, appends one JSONL row per finished unit of work
to --out and, rerun on the same file, skips what is there."""

from __future__ import annotations

import argparse
from pathlib import Path

from hooked_av.analysis.knockout import TASK_PROMPTS
from hooked_av.data.manifest import PAPER_PROMPTS
from hooked_av.data.cli import add_dtype_option, positive

PROMPT_BOTH, PROMPT_SEE, PROMPT_HEAR = PAPER_PROMPTS


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register the analysis subcommands on the main parser's subparsers; each sets `func(args) -> exit code`."""
    p = analysis_parser(subparsers, "attention", "Fig. 4: attention of generated tokens to each modality, per layer",
                        "one row per sample: the mean attention share of each modality over the generated tokens' "
                        "queries, per layer")
    p.add_argument("--prompt", default=PROMPT_BOTH, help="default: %(default)r")
    p.add_argument("--max-new-tokens", type=positive(int), default=32)
    p.set_defaults(func=attention_cmd)

    p = analysis_parser(subparsers, "logit-lens", "Fig. 5: logit lens at the audio positions (latent words)",
                        "one row per sample: the distinct top-k words decoded at the audio positions over the last "
                        "layers (what `hooked-av judge --modalities latent_audio` scores), and with --table the "
                        "top-1 token of every layer and audio position (what `hooked-av plot` draws)")
    p.add_argument("--prompt", default=PROMPT_BOTH, help="default: %(default)r")
    p.add_argument("--last-layers", type=positive(int), default=5, help="layers the words come from (paper: 5)")
    p.add_argument("--top-k", type=positive(int), default=1)
    p.add_argument("--table", action="store_true", help="also store the top-1 table of every layer (for the figure)")
    p.set_defaults(func=logit_lens_cmd)

    p = analysis_parser(subparsers, "knockout-sweep", "Fig. 6: attention knockout, every source x centred window",
                        "per sample and prompt, greedy captions with generated tokens blocked from attending to each "
                        "source in a window of layers centred on each layer, plus the unblocked baseline; score "
                        "them with `hooked-av judge --captions OUT`")
    p.add_argument("--source", action="append", dest="sources", choices=("audio", "video", "image", "text"),
                   help="repeatable; default: audio and video")
    p.add_argument("--prompt", action="append", dest="prompts",
                   help=f"repeatable; default: the task prompts {list(TASK_PROMPTS.values())}")
    p.add_argument("--window", type=positive(int), default=9, help="layers per knockout (paper: 9)")
    p.add_argument("--max-new-tokens", type=positive(int), default=64)
    p.add_argument("--first-token-unblocked", action="store_true",
                   help="leave the last prompt position (which predicts the first generated token) unblocked")
    p.set_defaults(func=knockout_sweep_cmd)

    p = analysis_parser(subparsers, "token-shift", "Fig. 7: token shift of the AV model against its base VLM",
                        "one row per sample: the AV model's greedy response teacher-forced through it (video + "
                        "audio) and through --base-model (video only): KL both ways and base rank per token")
    p.add_argument("--base-model", required=True, help="the base vision-language model's checkpoint folder")
    p.add_argument("--prompt", default=PROMPT_HEAR, help="the instruction (default: %(default)r)")
    p.add_argument("--max-new-tokens", type=positive(int), default=64)
    p.set_defaults(func=token_shift_cmd)


def analysis_parser(subparsers: argparse._SubParsersAction, name: str, summary: str,
                    rows: str) -> argparse.ArgumentParser:
    """A subcommand with the options every analysis shares: model, data, output, sample count, frame rate."""
    p = subparsers.add_parser(name, help=summary, description=f"{summary}: {rows}. Resumable: rerun the command to "
                                                              f"continue; rows already in --out are skipped.")
    p.add_argument("--model", required=True, help="local HF checkpoint folder ('tiny': the offline random-weight "
                                                  "model, for smoke tests)")
    p.add_argument("--data", required=True, type=Path, help="manifest JSONL (hooked-av check-manifest)")
    p.add_argument("--out", required=True, type=Path, help="result JSONL, appended to (rerun to resume)")
    p.add_argument("--samples", type=positive(int),
                   help="only the first N factual and the first N counterfactual rows (default: all)")
    p.add_argument("--fps", type=positive(float), default=2.0)
    p.add_argument("--device", default=None)
    add_dtype_option(p)
    return p


def manifest_rows(args: argparse.Namespace):
    """The rows to analyse; read, and --out checked, before the model loads, so a mistake fails at once."""
    from hooked_av.analysis.samples import select_rows
    from hooked_av.data.jsonl import output_file
    from hooked_av.data.manifest import read_manifest

    output_file(args.out)
    return select_rows(read_manifest(args.data), args.samples)


def print_written(out: Path, before: int) -> None:
    print(f"{out}: {count_rows(out) - before} rows written, {before} already there")


def count_rows(path: Path) -> int:
    from hooked_av.data.jsonl import iter_rows

    return sum(1 for _ in iter_rows(path))


def attention_cmd(args: argparse.Namespace) -> int:
    from hooked_av.analysis.attention import attention_run
    from hooked_av.data.cli import load_model

    rows, before = manifest_rows(args), count_rows(args.out)
    attention_run(load_model(args), rows, args.out, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                  fps=args.fps)
    print_written(args.out, before)
    return 0


def logit_lens_cmd(args: argparse.Namespace) -> int:
    from hooked_av.analysis.logit_lens import latent_words_run
    from hooked_av.data.cli import load_model

    rows, before = manifest_rows(args), count_rows(args.out)
    latent_words_run(load_model(args), rows, args.out, prompt=args.prompt, last_layers=args.last_layers,
                     top_k=args.top_k, fps=args.fps, table=args.table)
    print_written(args.out, before)
    return 0


def knockout_sweep_cmd(args: argparse.Namespace) -> int:
    from hooked_av.analysis.knockout import knockout_sweep
    from hooked_av.data.cli import load_model

    rows, before = manifest_rows(args), count_rows(args.out)
    knockout_sweep(load_model(args), rows, args.out, sources=tuple(args.sources or ("audio", "video")),
                   prompts=tuple(args.prompts or TASK_PROMPTS.values()), window=args.window,
                   max_new_tokens=args.max_new_tokens, include_last_prompt_position=not args.first_token_unblocked,
                   fps=args.fps)
    print_written(args.out, before)
    return 0


def token_shift_cmd(args: argparse.Namespace) -> int:
    from hooked_av.analysis.token_shift import token_shift_run
    from hooked_av.data.cli import load_model

    rows, before = manifest_rows(args), count_rows(args.out)
    model = load_model(args)
    base = load_model(argparse.Namespace(**{**vars(args), "model": args.base_model}))
    token_shift_run(model, base, rows, args.out, instruction=args.prompt, max_new_tokens=args.max_new_tokens,
                    fps=args.fps)
    print_written(args.out, before)
    return 0
