"""What every benchmark script shares: steady CPU allocation and device-synchronised timing."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable

import torch

# glibc serves large blocks with fresh mmap()s and gives them back on free(), so every big activation pays its
# page faults again; in small VMs that costs more than the matmuls and makes timings swing 4x from run to run.
# Keeping freed memory in the heap measures the model instead of the kernel (HF and ours alike).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


def reexec_with_steady_malloc(device: str, system_malloc: bool = False) -> None:
    """On a Linux CPU, restart this script with MALLOC_ENV set (no-op when it is set or on GPU)."""
    if (device == "cpu" and sys.platform.startswith("linux") and not system_malloc
            and any(k not in os.environ for k in MALLOC_ENV)):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def malloc_description() -> str:
    return " ".join(f"{k}={os.environ[k]}" for k in MALLOC_ENV if k in os.environ) or "glibc defaults"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> tuple[object, float]:
    """(result, seconds) of one call, synchronised with the device."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def describe_device(device: str) -> str:
    """The GPU's name, or the CPU and its thread count: every table says which machine produced it."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


# The aten ops F.scaled_dot_product_attention dispatches to, one per backend.
SDPA_OPS = {"_scaled_dot_product_flash_attention": "flash", "_scaled_dot_product_efficient_attention":
            "memory-efficient", "_scaled_dot_product_cudnn_attention": "cuDNN",
            "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)", "_scaled_dot_product_attention_math": "math"}


def sdpa_kernels(fn: Callable[[], object]) -> str:
    """Which SDPA backends one call of `fn` ran, from torch.profiler's aten ops (e.g. "flash x4"), so a GPU table
    can say whether the fused path got the flash / memory-efficient kernels or fell back to math."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        fn()
    counts = Counter(SDPA_OPS[e.key.removeprefix("aten::")] for e in prof.key_averages()
                     for _ in range(e.count) if e.key.removeprefix("aten::") in SDPA_OPS)
    return ", ".join(f"{name} x{n}" for name, n in counts.items()) or "none (no fused attention ran)"


def add_decoder_args(parser: argparse.ArgumentParser, layers: int, hidden: int) -> None:
    """The decoder's sizes. Qwen2.5-Omni-7B's text dims: --hidden 3584 --heads 28 --kv-heads 4 --intermediate 18944
    (d_head 128, mrope_section [16, 24, 24]); a few layers of that fit any GPU."""
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--hidden", type=int, default=hidden, help="d_model (head_dim = hidden / heads)")
    parser.add_argument("--intermediate", type=int, default=None, help="d_mlp (default: 3 x hidden)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def add_timing_args(parser: argparse.ArgumentParser) -> None:
    """Where and how the interleaved rounds run (the ratio scripts: forward_overhead, generate_overhead)."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (each runs every configuration once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (CPU); 1 is steadier when other jobs share the cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default mmap/trim thresholds (default on CPU: re-run with MALLOC_ENV set)")


def decoder_sizes(args: argparse.Namespace):
    from hooked_av.testing.tiny import TinySizes

    return TinySizes.scaled(args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate)
