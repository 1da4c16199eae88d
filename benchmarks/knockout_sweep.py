"""Benchmark: the paper's knockout sweep with a shared prompt prefix vs. running each configuration from scratch.

For one sample (~2k prompt tokens of video + audio + text), 32 generated tokens and all 2 x L windows
(sources audio and video, window 9), it times one plain generation, the shared-prefix sweep
(`generate_knockouts`) and the from-scratch sweep (`generate_with_knockout` per configuration), checks that both
sweeps produce exactly the same tokens, and prints the times and ratios. Targets: shared <= 3x one plain
generation, and >= 10x faster than from scratch.

    python benchmarks/knockout_sweep.py [--layers 12 --hidden 256 --seconds 12 --device cpu]
"""

from __future__ import annotations

import argparse

import torch

from common import add_decoder_args, decoder_sizes, malloc_description, reexec_with_steady_malloc, timed
from hooked_av import HookedAVModel
from hooked_av.analysis.knockout import generate_knockouts, generate_with_knockout, sweep_configurations
from hooked_av.testing.tiny import synthetic_audio, synthetic_video, tiny_omni_thinker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_decoder_args(parser, layers=12, hidden=256)
    parser.add_argument("--seconds", type=float, default=12.0, help="clip length (12 s gives ~2k prompt tokens)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--system-malloc", action="store_true", help="keep glibc's default mmap/trim thresholds")
    args = parser.parse_args()
    reexec_with_steady_malloc(args.device, args.system_malloc)
    torch.set_grad_enabled(False)
    hf_model, processor = tiny_omni_thinker(decoder_sizes(args), dtype=getattr(torch, args.dtype))
    model = HookedAVModel.from_hf_model(hf_model.to(args.device), processor)
    batch = model.prepare_inputs("Describe what you see and hear.", video=synthetic_video(seconds=args.seconds),
                                 audio=synthetic_audio(seconds=args.seconds))
    configs = [c[2] for c in sweep_configurations(model.cfg.n_layers, ("audio", "video"), args.window, True, False)]
    n_new = args.new_tokens
    model.generate(batch, max_new_tokens=2)  # warm-up

    plain, t_plain = timed(lambda: model.generate(batch, max_new_tokens=n_new, stop_token_ids=[]), args.device)
    shared, t_shared = timed(lambda: generate_knockouts(model, batch, configs, n_new, stop_token_ids=[]),
                             args.device)
    scratch, t_scratch = timed(lambda: [generate_with_knockout(model, batch, ko, n_new, stop_token_ids=[]).new_tokens[0]
                                        for ko in configs], args.device)
    identical = all(a.tolist() == b.tolist() for a, b in zip(shared, scratch))

    print(f"device {args.device}, {args.dtype}, malloc: {malloc_description()}; decoder: {args.layers} layers, d_model {args.hidden}; "
          f"prompt {batch['input_ids'].shape[1]} tokens; {n_new} new tokens; {len(configs)} configurations "
          f"(2 sources x {args.layers} windows of {args.window})")
    print(f"{'one plain generation':32s} {t_plain:8.2f} s")
    print(f"{'shared-prefix sweep':32s} {t_shared:8.2f} s   {t_shared / t_plain:6.2f}x plain  (target <= 3x)")
    print(f"{'from-scratch sweep':32s} {t_scratch:8.2f} s   {t_scratch / t_shared:6.2f}x slower than shared "
          f"(target >= 10x)")
    print(f"tokens identical in both sweeps: {identical}")
    if not identical:
        raise SystemExit("the shared-prefix sweep differs from the from-scratch sweep")


if __name__ == "__main__":
    main()
