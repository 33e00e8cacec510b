"""The compiled ops (torch.ops.lsq_fast.*): loading them and their fake kernels.

Schemas, kernels and autograd are C++ (csrc/); what torch.compile needs to know about the
ops' outputs lives here.
"""

from __future__ import annotations

import importlib.util

import torch


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


@torch.library.register_fake("lsq_fast::lsq_forward")
def _lsq_forward_fake(x, step, qmin, qmax, channel_axis, grad_scale=None, soft_round_k=None):
    return torch.empty_like(x)


@torch.library.register_fake("lsq_fast::lsq_backward")
def _lsq_backward_fake(grad_y, x, step, qmin, qmax, channel_axis, grad_scale, soft_round_k=None):
    return torch.empty_like(x), step.new_empty(step.shape)


@torch.library.register_fake("lsq_fast::lsq_plus_forward")
def _lsq_plus_forward_fake(x, step, offset, qmin, qmax, channel_axis, grad_scale=None):
    return torch.empty_like(x)


@torch.library.register_fake("lsq_fast::lsq_plus_backward")
def _lsq_plus_backward_fake(grad_y, x, step, offset, qmin, qmax, channel_axis, grad_scale):
    return torch.empty_like(x), step.new_empty(step.shape), offset.new_empty(offset.shape)


@torch.library.register_fake("lsq_fast::qil_forward")
def _qil_forward_fake(x, center, distance, gamma, levels, weight):
    return torch.empty_like(x)


@torch.library.register_fake("lsq_fast::qil_backward")
def _qil_backward_fake(grad_y, x, center, distance, gamma, levels, weight):
    # grad_gamma is zeros shaped like center when there is no gamma (activations)
    return torch.empty_like(x), center.new_empty(center.shape), distance.new_empty(distance.shape), \
        center.new_empty(center.shape if gamma is None else gamma.shape)


# Autograd is registered in C++ (csrc/lsq_autograd.cpp): the Python wrapper of
# torch.library.register_autograd costs more than the kernels on a small tensor.


def cpu_isa() -> str:
    """The instruction set the CPU kernels run with on this machine: "avx512", "avx2" or "default"."""
    return ops.cpu_isa()
