"""Where a benchmark ran: device, versions, commit and date, recorded with every result; and the
allocator setting every CPU benchmark runs with."""

from __future__ import annotations

import ctypes
import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

import torch

import lsq_fast

REPO_ROOT = Path(__file__).resolve().parent.parent


def keep_freed_memory() -> bool:
    """Stops glibc from handing freed tensor memory back to the kernel (Linux/glibc only).

    By default glibc serves allocations of a few MB with fresh mmap()s, or trims the heap once
    they are freed, so every call page-faults its outputs and temporaries in again; interleaving
    providers makes that churn worse and the timings bimodal. Serving every allocation from the
    heap and never trimming it keeps the pages, as jemalloc/tcmalloc would. On by default: without it, medians
    of the same build swing by up to 5x from run to run on a small VM. It lowers eager
    PyTorch's times most (it allocates most); --no-keep-freed-memory measures glibc as it comes.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    libc = ctypes.CDLL(None)
    # No mmap()ed allocations at all (the largest mmap threshold glibc accepts is 32 MiB, and a
    # Llama weight of 16M float32 elements is 64 MiB), and no trimming: every tensor comes from
    # the heap, and freed pages stay there for the next call.
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> Optional[str]:
    """The checked-out commit (with -dirty for uncommitted changes), or LSQ_FAST_COMMIT where the
    tree is a copy without .git (the GPU machine)."""
    if os.environ.get("LSQ_FAST_COMMIT"):
        return os.environ["LSQ_FAST_COMMIT"]

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return None
        # Measured results being rewritten (benchmarks/results/) do not make the code dirty.
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version_of(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": _version_of("triton"),
        "cuda": torch.version.cuda,
        "lsq_fast": lsq_fast.__version__,
        "cpu_isa": lsq_fast.cpu_isa(),
        # "auto" where it picks per tensor between the CUDA and Triton kernels (backend_table.json)
        "lsq_fast_backend": "auto" if {"cuda", "triton"} <= set(lsq_fast.available_backends(device))
        else lsq_fast.available_backends(device)[0],
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
