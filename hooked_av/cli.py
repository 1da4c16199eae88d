"""Command line `hooked-av`: `demo` runs a hooked model on synthetic media or a clip; the data, judge and analysis
commands are registered by their packages. A user mistake ends in one line on stderr and exit status 1;
`--debug` shows the traceback instead."""

from __future__ import annotations

import argparse
import logging
import sys

from tqdm.contrib.logging import logging_redirect_tqdm

from hooked_av.data.cli import ERROR_EXIT
from hooked_av.model.errors import HookedAVError

# What a user can act on: the library's typed errors (each names the problem and what to do) and the operating
# system's (a path that is missing, not writable, a directory, ...). Anything else is a bug and keeps its traceback.
USER_ERRORS = (HookedAVError, OSError)


def demo(args: argparse.Namespace) -> int:
    from hooked_av.data.cli import load_model
    from hooked_av.testing.tiny import synthetic_audio, synthetic_video

    model = load_model(args)
    if args.model == "tiny":
        print("model: tiny random-weight Qwen2.5-Omni thinker built offline (pass --model FOLDER for a checkpoint)")
    video = args.video if args.video else synthetic_video(seconds=4.0, fps=args.fps)
    audio = args.audio if args.audio else (None if args.video else synthetic_audio(seconds=4.0))
    print("input:", describe_inputs(args))
    batch = model.prepare_inputs(args.prompt, video=video, audio=audio, fps=args.fps,
                                 use_audio_in_video=args.use_audio_in_video)
    out = model.generate(batch, max_new_tokens=args.max_new_tokens)
    print(f"family: {model.cfg.family}; layers: {model.cfg.n_layers}; d_model: {model.cfg.d_model}")
    print("prompt + generated positions:", out.modality_map.counts())
    print("generated:", repr(out.text[0]))
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_resid_post"))
    modality_map = cache.modality_map
    print("mean residual norm per layer (video / audio / text):")
    for layer in range(model.cfg.n_layers):
        norms = cache["resid_post", layer][0].norm(dim=-1)
        row = [f"{name} {norms[modality_map.mask(name)[0]].mean():8.2f}" for name in ("video", "audio", "text")
               if modality_map.mask(name)[0].any()]
        print(f"  layer {layer:2d}: " + "   ".join(row))
    return 0


def describe_inputs(args: argparse.Namespace) -> str:
    if not args.video:
        return f"synthetic random frames (4 s) and {args.audio or 'a synthetic 440 Hz tone'}"
    return f"{args.video} with {args.audio or ('its own sound track' if args.use_audio_in_video else 'no sound')}"


def build_parser() -> argparse.ArgumentParser:
    from hooked_av.analysis.cli import add_subcommands as add_analysis_commands
    from hooked_av.data.cli import add_dtype_option, positive
    from hooked_av.data.cli import add_subcommands as add_data_commands
    from hooked_av.eval.cli import add_subcommands as add_eval_commands
    from hooked_av.plot.cli import add_subcommands as add_plot_commands
    from hooked_av.study.cli import add_subcommands as add_study_commands

    parser = argparse.ArgumentParser(prog="hooked-av", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="generate a caption with a hooked model and cache its residual stream",
                       description="Generate with a hooked model (default: the tiny random-weight Omni thinker "
                                   "built offline) on synthetic random frames and a tone, or on --video / --audio, "
                                   "then print the residual-stream norm per layer and modality.")
    p.add_argument("--model", default="tiny", help="local HF checkpoint folder (default: a tiny model built offline)")
    p.add_argument("--video", help="video file (default: synthetic random frames)")
    p.add_argument("--audio", help="audio file (default: the synthetic tone, or none with --video)")
    p.add_argument("--use-audio-in-video", action="store_true", help="interleave the video's own sound track")
    p.add_argument("--prompt", default="Describe what you see and hear.")
    p.add_argument("--fps", type=positive(float), default=2.0)
    p.add_argument("--max-new-tokens", type=positive(int), default=16)
    p.add_argument("--device", default=None)
    add_dtype_option(p)
    p.set_defaults(func=demo)
    add_data_commands(sub)
    add_eval_commands(sub)
    add_analysis_commands(sub)
    add_plot_commands(sub)
    add_study_commands(sub)
    # `hooked-av COMMAND ... --debug` works too, for every command (an alias shares its command's parser)
    for command in {id(p): p for p in sub.choices.values()}.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def one_line(err: BaseException) -> str:
    """The error's message on one line (a multi-line message, e.g. FFmpeg's stderr, is joined with ' | ')."""
    text = " | ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if isinstance(err, OSError) and not isinstance(err, HookedAVError) and err.filename is not None:
        text = f"{err.strerror or text}: {err.filename}"
    return text or type(err).__name__


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; a user error becomes one line on stderr and ERROR_EXIT unless args.debug."""
    if not logging.root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with logging_redirect_tqdm():  # log lines go through tqdm.write, never onto a progress bar
            return args.func(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"hooked-av: error: {one_line(err)}", file=sys.stderr)
        return ERROR_EXIT
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("hooked-av: interrupted; run the same command again: every command that writes rows resumes where it "
              "stopped", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
