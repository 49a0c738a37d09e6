"""The benchmarks' one wall-clock helper (imported by the scripts beside it; not a benchmark itself)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def timed(call: Callable[[], object], device: str) -> float:
    """Seconds of one ``call()``; on ``cuda`` the device is synchronised before and after, so queued kernels count."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start
