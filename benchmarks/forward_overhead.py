"""Forward-pass overhead of HookedAVModel against the HF reference (sdpa), on the same random-weight model.

One run builds, per family (`--family`), a random-weight thinker with a larger decoder: Qwen2.5-Omni (dense
MLP) and Qwen3-Omni-MoE (q/k norm, sparse MoE MLP run by HF's own experts module, d_head set explicitly); the
encoders stay tiny (they are not called on text-only input). It wraps each with `HookedAVModel.from_hf_model`
(weights shared, not copied) and times, for each sequence length, a text-only forward pass of:

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
    python benchmarks/forward_overhead.py --family qwen3_omni_moe --experts 16 --top-k 4   # one family only
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import statistics
from collections.abc import Callable

import torch

from common import (add_decoder_args, add_timing_args, decoder_sizes, malloc_description, reexec_with_steady_malloc,
                    timed)
from hooked_av import HookedAVModel
from hooked_av.testing.tiny import tiny_omni_thinker
from hooked_av.testing.tiny_qwen3_omni import tiny_qwen3_omni_thinker

FAMILIES = ("qwen2_5_omni", "qwen3_omni_moe")
CONFIGS = ("hf", "no hooks", "cache resid", "1 pattern", "all eager")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 4096], help="prompt lengths in tokens")
    add_decoder_args(p, layers=4, hidden=512)
    p.add_argument("--family", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--experts", type=int, default=16, help="qwen3_omni_moe: routed experts per layer")
    p.add_argument("--top-k", type=int, default=4, help="qwen3_omni_moe: experts per token")
    p.add_argument("--moe-intermediate", type=int, default=None,
                   help="qwen3_omni_moe: d_mlp of one expert (default: d_mlp / top_k, so the active MLP width "
                        "equals the dense family's)")
    p.add_argument("--batch", type=int, default=1)
    add_timing_args(p)
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


def build(family: str, args: argparse.Namespace, dtype: torch.dtype):
    """(hf_model, hooked model sharing its weights, a one-line description of the decoder)."""
    sizes = decoder_sizes(args)
    if family == "qwen2_5_omni":
        hf_model, processor = tiny_omni_thinker(sizes=sizes, seed=args.seed, dtype=dtype, attn_implementation="sdpa")
        mlp = f"dense d_mlp {sizes.intermediate}"
    else:
        moe_intermediate = args.moe_intermediate or sizes.intermediate // args.top_k
        half = args.hidden // args.heads // 2
        spatial = half * 20 // 64  # Qwen3-Omni's [24, 20, 20] of 64, interleaved
        sizes = dataclasses.replace(sizes, mrope_section=(half - 2 * spatial, spatial, spatial))
        hf_model, processor = tiny_qwen3_omni_thinker(
            seed=args.seed, dtype=dtype, attn_implementation="sdpa", layers=args.layers, hidden=args.hidden,
            heads=args.heads, kv_heads=args.kv_heads, head_dim=args.hidden // args.heads, experts=args.experts,
            top_k=args.top_k, moe_intermediate=moe_intermediate, mrope_section=sizes.mrope_section)
        mlp = (f"{args.experts} experts top-{args.top_k} of d_mlp {moe_intermediate} "
               f"({hf_model.config.text_config._experts_implementation} experts), q/k norm")
    hf_model = hf_model.to(args.device)
    model = HookedAVModel.from_hf_model(hf_model, processor)
    assert model.W_E.data_ptr() == hf_model.get_input_embeddings().weight.data_ptr(), "weights must be shared"
    description = (f"{family}: {sizes.layers} layers, d_model {sizes.hidden}, {mlp}, {sizes.heads} heads / "
                   f"{sizes.kv_heads} kv heads, d_head {model.cfg.d_head}, rope axes "
                   f"{model.adapter.spec.rope.kind} {list(sizes.mrope_section)}, vocab {model.cfg.d_vocab}")
    return hf_model, model, description


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if argv is None:
        reexec_with_steady_malloc(args.device, args.system_malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    malloc = malloc_description()
    print(f"device: {where}; torch {torch.__version__}; dtype {args.dtype}; batch {args.batch}; malloc: {malloc}")
    print(f"timing: median of {args.repeats} interleaved rounds after {args.warmup} warm-up round(s), "
          "torch.no_grad")

    for family in args.family:
        hf_model, model, description = build(family, args, dtype)
        print(f"\ndecoder: {description}", flush=True)
        results: dict[int, dict[str, list[float]]] = {}
        for seq_len in args.seq_lens:
            results[seq_len] = bench_length(hf_model, model, seq_len, args)
            medians = summary(results[seq_len], statistics.median)
            print(f"  {seq_len} tokens done (medians): " + ", ".join(f"{k} {v:.3f}s" for k, v in medians.items()),
                  flush=True)
        print()
        print_table(results, args.layers)
        del hf_model, model
        gc.collect()
    print("\nours/HF: median over rounds of (ours / HF in the same round); ours/HF (min): ratio of the minima.\n"
          "'HF + 1 eager layer' = HF + (all eager - no hooks) / n_layers: what one layer's eager attention adds.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
