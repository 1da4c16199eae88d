"""Forward-pass overhead of HookedAVModel against the HF reference (sdpa), on the same random-weight model.

One run builds a random-weight Qwen2.5-Omni thinker with a larger decoder (the encoders stay tiny; they are not
called on text-only input), wraps it with `HookedAVModel.from_hf_model` (weights shared, not copied) and times,
for each sequence length, a text-only forward pass of:

    hf            hf_model(input_ids=..., attention_mask=...)             (sdpa on every layer)
    no hooks      model(input_ids=..., attention_mask=...)                (sdpa on every layer)
    cache resid   model.run_with_cache(batch, names_filter=<every hook_resid_post>)
    1 pattern     model.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_pattern", fn)])  (layer 1 eager)
    all eager     model(...) with every model.blocks[l].attn.force_eager = True

Runs are interleaved (one of each configuration per round) so that drift of the machine's speed hits all of them
alike; the table reports median and minimum times, and the median over rounds of the per-round ratio ours/HF.
Targets: no hooks <= 1.05x HF, cache resid <= 1.15x HF, and one pattern hook ~ "HF + one eager layer"
= HF + (all eager - no hooks) / n_layers.

On Linux CPUs the script re-runs itself with MALLOC_ENV set (see below; --system-malloc keeps glibc's defaults).

    python benchmarks/forward_overhead.py                       # defaults: 2k and 4k tokens, fp32, CPU (~2-4 min)
    python benchmarks/forward_overhead.py --threads 1           # a CPU shared with other jobs: steadier timings
    python benchmarks/forward_overhead.py --device cuda --dtype bfloat16 --layers 8 --seq-lens 2048 4096 8192
"""

from __future__ import annotations

import argparse
import gc
import statistics
from collections.abc import Callable

import torch

from common import (add_decoder_args, decoder_sizes, describe_device, malloc_description, reexec_with_steady_malloc,
                    sdpa_kernels, timed)
from hooked_av import HookedAVModel
from hooked_av.testing.tiny import tiny_omni_thinker

CONFIGS = ("hf", "no hooks", "cache resid", "1 pattern", "all eager")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 4096], help="prompt lengths in tokens")
    add_decoder_args(p, layers=4, hidden=512)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (each runs every configuration once)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (CPU); 1 is steadier when other jobs share the cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system-malloc", action="store_true",
                   help="keep glibc's default mmap/trim thresholds (default on CPU: re-run with MALLOC_ENV set)")
    return p.parse_args(argv)


def timed_seconds(fn: Callable[[], object], device: str) -> float:
    out, elapsed = timed(fn, device)
    del out
    return elapsed


def make_runners(hf_model, model: HookedAVModel, batch: dict) -> dict[str, Callable[[], object]]:
    names_filter = lambda name: name.endswith("hook_resid_post")  # noqa: E731
    seen: list[torch.Tensor] = []

    def keep_pattern(pattern: torch.Tensor, hook) -> None:  # a cheap read of the pattern, as an analysis would
        seen.clear()
        seen.append(pattern[:, :, -1])

    def hf() -> object:
        return hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def no_hooks() -> object:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def cache_resid() -> object:
        return model.run_with_cache(batch, names_filter=names_filter)

    def one_pattern() -> object:
        return model.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_pattern", keep_pattern)])

    def all_eager() -> object:
        for block in model.blocks:
            block.attn.force_eager = True
        try:
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            for block in model.blocks:
                block.attn.force_eager = False

    return dict(zip(CONFIGS, (hf, no_hooks, cache_resid, one_pattern, all_eager)))


def check_paths(model: HookedAVModel, runners: dict[str, Callable[[], object]]) -> None:
    """Make sure each configuration takes the attention path it is meant to measure."""
    expected = {"no hooks": set(), "cache resid": set(), "1 pattern": {1},
                "all eager": set(range(model.cfg.n_layers))}
    for name, eager_layers in expected.items():
        runners[name]()
        got = {i for i, b in enumerate(model.blocks) if b.attn.last_path == "eager"}
        if got != eager_layers:
            raise RuntimeError(f"{name}: eager layers {sorted(got)}, expected {sorted(eager_layers)}")


def bench_length(hf_model, model: HookedAVModel, seq_len: int, args: argparse.Namespace) -> dict[str, list[float]]:
    gen = torch.Generator().manual_seed(args.seed + seq_len)
    # Ordinary tokens only: the 256 byte tokens of the tiny tokenizer (no specials, no placeholders).
    input_ids = torch.randint(0, 256, (args.batch, seq_len), generator=gen).to(args.device)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    runners = make_runners(hf_model, model, batch)
    with torch.no_grad():
        check_paths(model, runners)
        times: dict[str, list[float]] = {name: [] for name in CONFIGS}
        for round_ in range(args.warmup + args.repeats):
            for name in CONFIGS:
                t = timed_seconds(runners[name], args.device)
                if round_ >= args.warmup:
                    times[name].append(t)
                gc.collect()
    return times


def summary(times: dict[str, list[float]], stat: Callable[[list[float]], float]) -> dict[str, float]:
    return {name: stat(ts) for name, ts in times.items()}


def paired_ratio(times: dict[str, list[float]], key: str) -> float:
    """Median over rounds of (config / HF) in the same round: robust to the machine's speed drifting."""
    return statistics.median(t / hf for t, hf in zip(times[key], times["hf"]))


def print_table(results: dict[int, dict[str, list[float]]], n_layers: int) -> None:
    print("| tokens | config                 | median s | min s | ours/HF | ours/HF (min) | "
          "target                       |")
    print("|-------:|------------------------|---------:|------:|--------:|--------------:|"
          "------------------------------|")
    for seq_len, times in results.items():
        med, low = summary(times, statistics.median), summary(times, min)
        eager_layer = statistics.median((e - n) / n_layers / hf for e, n, hf in
                                        zip(times["all eager"], times["no hooks"], times["hf"]))
        rows = [
            ("HF sdpa (reference)", "hf", ""),
            ("ours, no hooks", "no hooks", "<= 1.05"),
            ("ours, cache resid_post", "cache resid", "<= 1.15"),
            ("ours, 1 hook_pattern", "1 pattern", f"~ {1 + eager_layer:.3f} (HF + 1 eager layer)"),
            ("ours, all layers eager", "all eager", f"1 eager layer = {eager_layer:+.3f} HF"),
        ]
        for label, key, target in rows:
            print(f"| {seq_len:>6} | {label:<22} | {med[key]:>8.3f} | {low[key]:>5.3f} | "
                  f"{paired_ratio(times, key):>7.3f} | {low[key] / low['hf']:>13.3f} | {target:<28} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if argv is None:
        reexec_with_steady_malloc(args.device, args.system_malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    head_dim = args.hidden // args.heads
    sizes = decoder_sizes(args)
    hf_model, processor = tiny_omni_thinker(sizes=sizes, seed=args.seed, dtype=dtype, attn_implementation="sdpa")
    hf_model = hf_model.to(args.device)
    model = HookedAVModel.from_hf_model(hf_model, processor)
    assert model.W_E.data_ptr() == hf_model.get_input_embeddings().weight.data_ptr(), "weights must be shared"

    malloc = malloc_description()
    print(f"device: {describe_device(args.device)}; torch {torch.__version__}; dtype {args.dtype}; batch {args.batch}; malloc: {malloc}")
    print(f"decoder: {sizes.layers} layers, d_model {sizes.hidden}, d_mlp {sizes.intermediate}, {sizes.heads} heads "
          f"/ {sizes.kv_heads} kv heads, d_head {head_dim}, mrope_section {list(sizes.mrope_section)}, "
          f"vocab {model.cfg.d_vocab}")
    if args.device == "cuda":
        ids = torch.zeros(args.batch, args.seq_lens[0], dtype=torch.long, device=args.device)
        print(f"SDPA kernels, ours / HF ({args.seq_lens[0]} tokens): {sdpa_kernels(lambda: model(ids))} / "
              f"{sdpa_kernels(lambda: hf_model(input_ids=ids))}")
    print(f"timing: median of {args.repeats} interleaved rounds after {args.warmup} warm-up round(s), "
          "torch.no_grad\n")

    results: dict[int, dict[str, list[float]]] = {}
    for seq_len in args.seq_lens:
        results[seq_len] = bench_length(hf_model, model, seq_len, args)
        medians = summary(results[seq_len], statistics.median)
        print(f"  {seq_len} tokens done (medians): " + ", ".join(f"{k} {v:.3f}s" for k, v in medians.items()),
              flush=True)
    print()
    print_table(results, sizes.layers)
    print("\nours/HF: median over rounds of (ours / HF in the same round); ours/HF (min): ratio of the minima.\n"
          "'HF + 1 eager layer' = HF + (all eager - no hooks) / n_layers: what one layer's eager attention adds.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
