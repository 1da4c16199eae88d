"""What every benchmark script shares: steady CPU allocation and device-synchronised timing."""

from __future__ import annotations

import os
import sys
import time
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
