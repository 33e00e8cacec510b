"""Peak memory of one call: the most bytes its tensors held at once, above what was live before.

CUDA: the caching allocator's own peak counter. CPU: PyTorch keeps no such counter, so the
profiler records every allocation and free of the call (profile_memory=True) and the running
sum gives the peak. Both count tensor memory only (no allocator caching, no Python objects)."""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while fn() runs, above the bytes allocated when it starts. What fn
    returns is dropped inside, so its outputs count at the peak and not after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _cpu_peak_bytes(fn)


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints its start and stop to the process's stderr (fd 2) on every profile."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
