"""The compiled ops (torch.ops.lsq_fast.*): loading them and registering their fake kernels.

Schemas, kernels and autograd are C++ (csrc/); what torch.compile needs to know about the ops'
outputs is registry.fake_forward / fake_backward, the same for every method and backend.
Autograd is registered in C++ (csrc/lsq_autograd.cpp): the Python wrapper of
torch.library.register_autograd costs more than the kernels on a small tensor.
"""

from __future__ import annotations

import importlib.util

import torch

from .registry import register_fakes


def _load_library() -> None:
    spec = importlib.util.find_spec("lsq_fast._C")
    if spec is None or spec.origin is None:
        raise ImportError(
            "lsq_fast: the compiled ops (lsq_fast/_C*.so) are missing; "
            "install the package with `pip install --no-build-isolation .`"
        )
    torch.ops.load_library(spec.origin)


_load_library()
ops = torch.ops.lsq_fast
register_fakes()


def cpu_isa() -> str:
    """The instruction set the CPU kernels run with on this machine: "avx512", "avx2" or "default"."""
    return ops.cpu_isa()
