"""LSQ+ fake quantization (Bhalgat et al., 2020): LSQ with a learned offset, behind one function
and several backends."""

from __future__ import annotations

import torch

from .. import reference
from .args import check_args, check_grad_scale, check_group_size, check_offset, group_rows
from .backends import resolve_backend
from .registry import quantizer_ops


def lsq_plus_quantize(
    x: torch.Tensor,
    step: torch.Tensor,
    offset: torch.Tensor,
    bits: int,
    *,
    signed: bool = False,
    channel_axis: int | None = None,
    grad_scale: float | None = None,
    group_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Fake-quantize x with a learned step and offset:
    ``step * round(clip((x - offset) / step, qmin, qmax)) + offset``.

    For activations that can be negative (GELU or Swish outputs, a network's input): the offset
    moves the (usually unsigned) grid onto the values' range.

    Args:
        x, step, channel_axis, grad_scale: as in :func:`lsq_fast.lsq_quantize` (float32 math,
            float32 step with one element or one per channel).
        offset: float32 tensor shaped like step: the learned offset beta.
        group_size: per-group steps and offsets, as in :func:`lsq_fast.lsq_quantize`
            (EfficientQAT's asymmetric block-wise quantizer).
        bits, signed: the integer grid; unsigned by default, as LSQ+ uses it.
        backend: "auto", "cpu", "triton" or "reference" (no CUDA C++ kernels: "auto" picks
            Triton on CUDA tensors).

    Returns:
        A tensor of x's dtype, shape and layout (dense x). Gradients (docs/contract.md,
        section 2): x straight through inside the clip range, zero at and beyond the clip
        points; step gets LSQ's dy/ds; offset gets 1 where the value clipped, 0 inside; both
        parameter gradients are scaled by the same g and reduced in float32 or better in a
        fixed order in one backward pass.
    """
    if group_size is not None:
        check_group_size(x, step, group_size, channel_axis)
        check_offset(offset, step)
        rows, steps, offsets = group_rows(x, group_size, step, offset)
        return lsq_plus_quantize(rows, steps, offsets, bits, signed=signed, channel_axis=0, grad_scale=grad_scale,
                                 backend=backend).reshape(x.shape)
    qmin, qmax, axis = check_args(x, step, bits, signed, channel_axis)
    check_offset(offset, step)
    g = check_grad_scale(grad_scale)
    backend = resolve_backend(backend, x, axis, method="lsq_plus")
    if backend == "reference":
        return reference.lsq_plus_quantize(x, step, offset, bits, signed=signed, channel_axis=axis, grad_scale=g)
    forward, _ = quantizer_ops("lsq_plus", backend)
    return forward(x, step, offset, qmin, qmax, axis, g)
