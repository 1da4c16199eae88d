"""Generation overhead of HookedAVModel.generate against HF `generate` (sdpa), per new token, on one model.

One run builds a random-weight Qwen2.5-Omni thinker with a larger decoder (the encoders stay tiny; they are not
called on text-only input), wraps it with `HookedAVModel.from_hf_model` (weights shared, not copied) and times
greedy generation of `--new-tokens` tokens (no stop token, so every run makes all of them) after a prompt of
`--prompt-len` random ordinary tokens:

    hf              hf_model.generate(input_ids=, attention_mask=, do_sample=False)   (sdpa, HF's own cache)
    no hooks        model.generate(batch)                                              (sdpa on every layer)
    decode patterns model.generate(batch, decode_fwd_hooks=<every layer's hook_pattern>): each decode step
                    reads a 1 x k_len row per head on every layer (eager), the prefill stays fused
    knockout        generate_with_knockout(model, batch, Knockout(sources="text", layers=<window of 9 centred
                    on the middle layer>)): the mask hooks of the paper's sweep on prefill and decode steps

Each configuration also runs with one new token (the prefill and the first token), so the table gives the time
per new token over the whole call (t_n / n) and per decode step ((t_n - t_1) / (n - 1)). Runs are interleaved
(one of each configuration per round); "ours/HF" is the median over rounds of the same-round ratio. Target:
no hooks <= 1.1x HF per new token. Before timing, the greedy tokens of "no hooks" must equal HF's.

On Linux CPUs the script re-runs itself with MALLOC_ENV set (--system-malloc keeps glibc's defaults). On CUDA it
also names the SDPA kernel the fused prefill ran (see `sdpa_kernels` in common.py).

    python benchmarks/generate_overhead.py --threads 1      # CPU shared with other jobs (the table in the docs)
    python benchmarks/generate_overhead.py --device cuda --dtype bfloat16 --layers 4 --hidden 3584 \\
        --intermediate 18944 --heads 28 --kv-heads 4 --prompt-len 4096 --new-tokens 64   # Qwen2.5-Omni-7B dims
"""

from __future__ import annotations

import argparse
import gc
import statistics
from collections.abc import Callable

import torch

from common import (add_decoder_args, add_timing_args, decoder_sizes, describe_device, malloc_description,
                    reexec_with_steady_malloc, sdpa_kernels, timed)
from hooked_av import HookedAVModel
from hooked_av.analysis.knockout import Knockout, generate_with_knockout, layer_windows
from hooked_av.testing.tiny import tiny_omni_thinker

CONFIGS = ("hf", "no hooks", "decode patterns", "knockout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per call")
    add_decoder_args(p, layers=4, hidden=512)
    add_timing_args(p)
    return p.parse_args(argv)


def make_runners(hf_model, model: HookedAVModel, batch: dict) -> dict[str, Callable[[int], torch.Tensor]]:
    """Per configuration, a function of the number of new tokens returning them [batch, new]."""
    n_layers = model.cfg.n_layers
    centre, window = layer_windows(n_layers, 9)[n_layers // 2]
    knockout = Knockout(sources=("text",), layers=window)
    rows: list[torch.Tensor] = []

    def read_pattern(pattern: torch.Tensor, hook) -> None:  # a cheap read of each step's row, as an analysis would
        rows.append(pattern[:, :, -1].sum(-1))

    pattern_hooks = [(f"blocks.{l}.attn.hook_pattern", read_pattern) for l in range(n_layers)]
    prompt_len = batch["input_ids"].shape[1]

    def hf(n: int) -> torch.Tensor:
        out = hf_model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=n, do_sample=False)
        return out[:, prompt_len:]

    def no_hooks(n: int) -> torch.Tensor:
        return model.generate(batch, max_new_tokens=n, stop_token_ids=[]).new_tokens

    def decode_patterns(n: int) -> torch.Tensor:
        rows.clear()
        return model.generate(batch, max_new_tokens=n, stop_token_ids=[], decode_fwd_hooks=pattern_hooks).new_tokens

    def knocked_out(n: int) -> torch.Tensor:
        return generate_with_knockout(model, batch, knockout, n, stop_token_ids=[]).new_tokens

    return dict(zip(CONFIGS, (hf, no_hooks, decode_patterns, knocked_out)))


def check_runs(hf_model, model: HookedAVModel, runners: dict[str, Callable[[int], torch.Tensor]],
               n: int) -> None:
    """Same greedy tokens as HF, and the eager layers each configuration is meant to measure."""
    ours, ref = runners["no hooks"](n), runners["hf"](n)
    if not torch.equal(ours, ref):
        raise RuntimeError(f"greedy tokens differ from HF: {ours.tolist()} vs {ref.tolist()}")
    runners["decode patterns"](2)
    if any(b.attn.last_path != "eager" for b in model.blocks):
        raise RuntimeError("decode-step pattern hooks did not make every layer eager")
    runners["knockout"](2)
    if any(b.attn.last_path != "sdpa" for b in model.blocks):
        raise RuntimeError("a knockout must keep every layer fused")


def bench(hf_model, model: HookedAVModel, args: argparse.Namespace) -> dict[tuple[str, int], list[float]]:
    gen = torch.Generator().manual_seed(args.seed)
    # Ordinary tokens only: the 256 byte tokens of the tiny tokenizer (no specials, no placeholders).
    input_ids = torch.randint(0, 256, (1, args.prompt_len), generator=gen).to(args.device)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    runners = make_runners(hf_model, model, batch)
    lengths = (1, args.new_tokens)
    times: dict[tuple[str, int], list[float]] = {(c, n): [] for c in CONFIGS for n in lengths}
    with torch.no_grad():
        check_runs(hf_model, model, runners, args.new_tokens)
        for round_ in range(args.warmup + args.repeats):
            for name in CONFIGS:
                for n in lengths:
                    out, t = timed(lambda: runners[name](n), args.device)
                    if out.shape[1] != n:
                        raise RuntimeError(f"{name}: {out.shape[1]} new tokens, expected {n}")
                    if round_ >= args.warmup:
                        times[name, n].append(t)
                    del out
                    gc.collect()
    return times


def per_token(times: dict[tuple[str, int], list[float]], name: str, n: int) -> list[float]:
    """Seconds per new token over the whole call, one value per round."""
    return [t / n for t in times[name, n]]


def per_step(times: dict[tuple[str, int], list[float]], name: str, n: int) -> list[float]:
    """Seconds per decode step, (t_n - t_1) / (n - 1), one value per round."""
    return [(tn - t1) / (n - 1) for tn, t1 in zip(times[name, n], times[name, 1])]


def paired(values: list[float], reference: list[float]) -> float:
    """Median over rounds of the same-round ratio: robust to the machine's speed drifting."""
    return statistics.median(v / r for v, r in zip(values, reference))


def print_table(times: dict[tuple[str, int], list[float]], n: int) -> None:
    targets = {"no hooks": "<= 1.10"}
    hf_token, hf_step = per_token(times, "hf", n), per_step(times, "hf", n)
    print("| config                | ms / new token | ours/HF | ms / decode step | ours/HF | prefill + 1st token ms "
          "| target  |")
    print("|-----------------------|---------------:|--------:|-----------------:|--------:|-----------------------:"
          "|---------|")
    for name in CONFIGS:
        token, step = per_token(times, name, n), per_step(times, name, n)
        label = "HF generate" if name == "hf" else f"ours, {name}"
        print(f"| {label:<21} | {1e3 * statistics.median(token):>14.2f} | {paired(token, hf_token):>7.3f} | "
              f"{1e3 * statistics.median(step):>16.2f} | {paired(step, hf_step):>7.3f} | "
              f"{1e3 * statistics.median(times[name, 1]):>22.1f} | {targets.get(name, ''):<7} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be at least 2 (the decode step is t_n - t_1)")
    if argv is None:
        reexec_with_steady_malloc(args.device, args.system_malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    sizes = decoder_sizes(args)
    hf_model, processor = tiny_omni_thinker(sizes=sizes, seed=args.seed, dtype=dtype, attn_implementation="sdpa")
    hf_model = hf_model.to(args.device)
    hf_model.generation_config.eos_token_id = None  # every run makes all its tokens, as ours with no stop tokens
    model = HookedAVModel.from_hf_model(hf_model, processor)
    assert model.W_E.data_ptr() == hf_model.get_input_embeddings().weight.data_ptr(), "weights must be shared"

    print(f"device: {describe_device(args.device)}; torch {torch.__version__}; dtype {args.dtype}; batch 1; "
          f"malloc: {malloc_description()}")
    print(f"decoder: {sizes.layers} layers, d_model {sizes.hidden}, d_mlp {sizes.intermediate}, {sizes.heads} heads "
          f"/ {sizes.kv_heads} kv heads, d_head {sizes.hidden // sizes.heads}, vocab {model.cfg.d_vocab}; "
          f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens (greedy, no stop token)")
    if args.device == "cuda":
        ids = torch.zeros(1, args.prompt_len, dtype=torch.long, device=args.device)
        print(f"SDPA kernel of the fused prefill: {sdpa_kernels(lambda: model(ids))}")
    print(f"timing: median of {args.repeats} interleaved rounds after {args.warmup} warm-up round(s)\n")
    times = bench(hf_model, model, args)
    print_table(times, args.new_tokens)
    print("\nours/HF: median over rounds of (ours / HF in the same round). ms / new token = t_n / n over the whole "
          "call; ms / decode step = (t_n - t_1) / (n - 1).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
