"""Timing helpers for the lsq_fast benchmarks: interleaved medians on the CPU or a CUDA device.

A sample on CUDA is triton.testing.do_bench's (events on the stream, L2 flushed before each
call); on the CPU it is perf_counter around calibrated back-to-back calls. What this module adds
to either, and why it is not do_bench or torch.utils.benchmark alone: the interleaved, shuffled
rounds below, and CpuContention, which says how much of the machine other processes took while
the rounds ran (a 2-core machine shared with a build is slowed several-fold, unevenly), so that
a report can say "inconclusive" instead of a verdict.

Why interleaved: timing provider A for 30 calls and then provider B for 30 calls lets slow drift
(turbo clocks, other processes, page-cache state) land on one provider only. Running one sample
of every provider per round, in a shuffled order, spreads that drift over all of them, and the
median over rounds drops the outliers (a GC pause, a scheduler hiccup).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

Thunk = Callable[[], object]


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of one thunk over all rounds."""

    median_s: float
    p25_s: float
    p75_s: float
    inner: int  # calls per sample: every sample timed `inner` back-to-back calls and divided
    rounds: int
    # Share of the machine's CPU time that other processes (or the hypervisor, as steal time)
    # took while the rounds ran; None where /proc is unavailable. Well above zero means the
    # medians are contended and not to be trusted.
    other_cpu: Optional[float] = None

    @property
    def iqr_pct(self) -> float:
        """Interquartile range as a percentage of the median: the noise of this measurement."""
        return 100.0 * (self.p75_s - self.p25_s) / self.median_s if self.median_s > 0 else math.nan


class CpuContention:
    """Measures, on Linux, how much CPU other processes took between start() and stop().

    /proc/stat counts busy jiffies of the whole machine (steal included: a VM's neighbours),
    /proc/self/stat those of this process (all its threads); the difference is everyone else.
    """

    # Jiffies are 10 ms: a window shorter than this many (summed over CPUs) cannot tell a
    # busy neighbour from rounding, and gets no verdict.
    MIN_JIFFIES = 40

    def __init__(self) -> None:
        self._start: Optional[tuple[int, int, int]] = None

    @staticmethod
    def _sample() -> Optional[tuple[int, int, int]]:
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            # The fields after the command name ")" start at field 3: utime and stime are 14, 15.
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        idle = cpu[3] + cpu[4]  # idle + iowait
        return sum(cpu) - idle, sum(cpu), int(own[11]) + int(own[12])

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> Optional[float]:
        end = self._sample()
        if self._start is None or end is None:
            return None
        busy, total, own = (e - s for e, s in zip(end, self._start))
        return max(0.0, (busy - own) / total) if total >= self.MIN_JIFFIES else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_sample(fn: Thunk, inner: int) -> float:
    """Seconds per call of `inner` back-to-back calls of fn on the CPU, measured once."""
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def cuda_sample(fn: Thunk, min_sample_s: float) -> float:
    """Median seconds per call of fn on a CUDA device, by triton.testing.do_bench: CUDA events
    bracket each call on the stream (the host clock would time the launch only), with the L2
    cache flushed before each, over calls worth min_sample_s (1 ms at least). Without Triton,
    torch.utils.benchmark's Timer (synchronising around the calls) over the same time."""
    rep_ms = max(1.0, 1e3 * min_sample_s)
    try:
        from triton.testing import do_bench
    except ImportError:
        from torch.utils.benchmark import Timer

        return Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=rep_ms / 1e3).median
    return do_bench(fn, warmup=0, rep=rep_ms, return_mode="median") / 1e3


def calibrate_inner(fn: Thunk, min_sample_s: float) -> int:
    """Calls per CPU sample so that one sample lasts at least min_sample_s (timer resolution and
    per-sample overhead then stay small against it). Assumes fn was warmed up."""
    per_call = cpu_sample(fn, 1)
    return max(1, math.ceil(min_sample_s / max(per_call, 1e-9)))


def interleaved_medians(
    thunks: Mapping[str, Thunk],
    device: torch.device,
    *,
    rounds: int,
    warmup: int = 3,
    min_sample_s: float = 1e-3,
) -> dict[str, Timing]:
    """Median seconds per call of every thunk, sampled in interleaved rounds.

    Every thunk is first called `warmup` times (allocator caches, lazy init, torch.compile), then
    gets a fixed number of calls per sample. Every round runs the thunks in a fresh random
    order (seeded, so runs repeat), so that no thunk always runs right after the same neighbour
    and inherits its cache footprint or its freed memory; a mere rotation would keep the cyclic
    neighbours.
    """
    names = list(thunks)
    for name in names:
        for _ in range(warmup):
            thunks[name]()
    _sync(device)
    cuda = device.type == "cuda"
    # On CUDA do_bench picks its own repetitions (inner is reported as 1).
    inner = {name: 1 if cuda else calibrate_inner(thunks[name], min_sample_s) for name in names}

    samples: dict[str, list[float]] = {name: [] for name in names}
    contention = CpuContention()
    contention.start()  # after the warm-up: torch.compile's compiler processes are not "others"
    rng, order = random.Random(0), list(names)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            fn = thunks[name]
            samples[name].append(cuda_sample(fn, min_sample_s) if cuda else cpu_sample(fn, inner[name]))
    other_cpu = contention.stop()

    result = {}
    for name, s in samples.items():
        q1, _, q3 = statistics.quantiles(s, n=4) if len(s) > 1 else (s[0], s[0], s[0])
        result[name] = Timing(statistics.median(s), q1, q3, inner[name], rounds, other_cpu)
    return result
