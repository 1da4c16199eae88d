"""Command line: `hooked-av demo` runs a hooked model on a clip ("describe what you see and hear")."""

from __future__ import annotations

import argparse
import sys

import torch


def _load(args: argparse.Namespace):
    from hooked_av import HookedAVModel

    if args.model:
        dtype = getattr(torch, args.dtype) if args.dtype else None
        return HookedAVModel.from_pretrained(args.model, device=args.device, dtype=dtype)
    from hooked_av.testing.tiny import tiny_omni_thinker

    hf_model, processor = tiny_omni_thinker()
    print("model: tiny random-weight Qwen2.5-Omni thinker built offline (pass --model FOLDER for a checkpoint)")
    return HookedAVModel.from_hf_model(hf_model.to(args.device or "cpu"), processor)


def demo(args: argparse.Namespace) -> int:
    from hooked_av.testing.tiny import synthetic_audio, synthetic_video

    model = _load(args)
    video = args.video if args.video else synthetic_video(seconds=4.0, fps=args.fps)
    audio = args.audio if args.audio else (None if args.video else synthetic_audio(seconds=4.0))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hooked-av", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="generate a caption with a hooked model and cache its residual stream")
    p.add_argument("--model", help="local HF checkpoint folder (default: a tiny model built offline)")
    p.add_argument("--video", help="video file (default: synthetic frames)")
    p.add_argument("--audio", help="audio file (default: the synthetic tone, or none with --video)")
    p.add_argument("--use-audio-in-video", action="store_true", help="interleave the video's own sound track")
    p.add_argument("--prompt", default="Describe what you see and hear.")
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="e.g. bfloat16")
    p.set_defaults(func=demo)
    from hooked_av.data.cli import add_subcommands as add_data_commands
    from hooked_av.eval.cli import add_subcommands as add_eval_commands

    add_data_commands(sub)
    add_eval_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
