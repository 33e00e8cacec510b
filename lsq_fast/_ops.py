"""The compiled ops (torch.ops.lsq_fast.*): loading, fake kernels, and autograd.

Schemas and the CPU kernels are C++ (csrc/); what torch.compile and autograd need to know
about them lives here, next to nothing else.
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
def _lsq_forward_fake(x, step, qmin, qmax, channel_axis, grad_scale=None):
    return torch.empty_like(x)


@torch.library.register_fake("lsq_fast::lsq_backward")
def _lsq_backward_fake(grad_y, x, step, qmin, qmax, channel_axis, grad_scale):
    return torch.empty_like(x), step.new_empty(step.shape)


def _setup_context(ctx, inputs, output):
    x, step, qmin, qmax, channel_axis, grad_scale = inputs
    ctx.save_for_backward(x, step)
    ctx.args = (qmin, qmax, channel_axis, grad_scale)


def _backward(ctx, grad_y):
    x, step = ctx.saved_tensors
    grad_x, grad_step = ops.lsq_backward(grad_y, x, step, *ctx.args)
    return grad_x, grad_step, None, None, None, None


torch.library.register_autograd("lsq_fast::lsq_forward", _backward, setup_context=_setup_context)


def cpu_isa() -> str:
    """The instruction set the CPU kernels run with on this machine: "avx512", "avx2" or "default"."""
    return ops.cpu_isa()
