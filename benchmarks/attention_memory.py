"""Benchmark: peak memory of attention-by-modality on a long prompt (~8k tokens).

`attention_by_modality` hooks every layer's pattern at decode steps only, so above the model and its KV cache
it holds one [batch, head, N] row per layer and step, never an N x N prompt pattern. Each measurement runs in
a fresh subprocess (peak RSS on CPU, torch.cuda.max_memory_allocated on GPU):
  plain      model.generate
  analysis   attention_by_modality (every layer's decode-step pattern hooked)
and prints the difference next to what caching the prompt's N x N patterns would take.

    python benchmarks/attention_memory.py [--seconds 48 --audio-seconds 30 --device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from hooked_av import HookedAVModel
from hooked_av.analysis.attention import attention_by_modality
from common import add_decoder_args, decoder_sizes
from hooked_av.testing.tiny import synthetic_audio, synthetic_video, tiny_omni_thinker


def measure(args: argparse.Namespace) -> dict:
    torch.set_grad_enabled(False)
    hf_model, processor = tiny_omni_thinker(decoder_sizes(args), dtype=getattr(torch, args.dtype))
    model = HookedAVModel.from_hf_model(hf_model.to(args.device), processor)
    batch = model.prepare_inputs("Describe what you see and hear.", video=synthetic_video(seconds=args.seconds),
                                 audio=synthetic_audio(seconds=args.audio_seconds))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if args.mode == "plain":
        model.generate(batch, max_new_tokens=args.new_tokens, stop_token_ids=[])
    else:
        attention_by_modality(model, batch, max_new_tokens=args.new_tokens, stop_token_ids=[])
    peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"peak_bytes": peak, "n_tokens": batch["input_ids"].shape[1], "n_layers": model.cfg.n_layers,
            "n_heads": model.cfg.n_heads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=48.0, help="video length (48 s at 2 fps: 6.9k tokens)")
    parser.add_argument("--audio-seconds", type=float, default=30.0)
    add_decoder_args(parser, layers=4, hidden=256)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=("plain", "analysis"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args)))
        return
    results = {}
    for mode in ("plain", "analysis"):
        cmd = [sys.executable, __file__, "--mode", mode] + [
            a for k, v in vars(args).items() if k != "mode" and v is not None
            for a in (f"--{k.replace('_', '-')}", str(v))]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    n, layers, heads = results["plain"]["n_tokens"], results["plain"]["n_layers"], results["plain"]["n_heads"]
    extra = results["analysis"]["peak_bytes"] - results["plain"]["peak_bytes"]
    mib = 2 ** 20
    print(f"device {args.device}, {args.dtype}; prompt {n} tokens; {layers} layers x {heads} heads; {args.new_tokens} new tokens")
    print(f"peak, plain generation        {results['plain']['peak_bytes'] / mib:9.1f} MiB")
    print(f"peak, attention_by_modality   {results['analysis']['peak_bytes'] / mib:9.1f} MiB   "
          f"(+{extra / mib:.1f} MiB)")
    print(f"one decode row per layer (heads x N fp32): {heads * n * 4 / mib:.2f} MiB; "
          f"one N x N prompt pattern per layer would be {heads * n * n * 4 / mib:.0f} MiB "
          f"({layers * heads * n * n * 4 / mib:.0f} MiB for all layers)")


if __name__ == "__main__":
    main()
