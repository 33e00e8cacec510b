"""LSQ+ (Bhalgat et al., 2020) in plain PyTorch: LSQ with a learned offset beta, for activations
that can be negative (docs/contract.md, section 2).

    y = s * round(clip((x - beta) / s, qmin, qmax)) + beta

Both s and beta get LSQ's gradient scale g. Computed in float32 (float64 for float64 x):
subtract, divide (IEEE), clip, round half to even, multiply, add; in that order, each rounded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.args import (
    STEP_FLOOR, check_args, check_grad_scale, check_group_size, check_offset, check_step_values, default_grad_scale,
    group_rows, numel_per_step,
)
from .lsq import along, gradscale, math_type, roundpass


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
) -> torch.Tensor:
    """Reference LSQ+ fake quantization. step and offset: float32, one element, one per channel
    of x.shape[channel_axis] or one per group of `group_size` along the last axis; grad_scale as
    in lsq_quantize (None: 1/sqrt(N * qmax))."""
    if group_size is not None:
        check_group_size(x, step, group_size, channel_axis)
        check_offset(offset, step)
        rows, steps, offsets = group_rows(x, group_size, step, offset)
        return lsq_plus_quantize(rows, steps, offsets, bits, signed=signed, channel_axis=0,
                                 grad_scale=grad_scale).reshape(x.shape)
    qmin, qmax, axis = check_args(x, step, bits, signed, channel_axis)
    check_offset(offset, step)
    g = check_grad_scale(grad_scale)
    if g is None:
        g = default_grad_scale(numel_per_step(x, axis), bits, signed)
    check_step_values(step)

    math_dtype = math_type(x)
    s = along(gradscale(step.to(math_dtype).clamp_min(STEP_FLOOR), g), x, axis)
    beta = along(gradscale(offset.to(math_dtype), g), x, axis)
    u = F.hardtanh((x.to(math_dtype) - beta) / s, float(qmin), float(qmax))
    return (roundpass(u) * s + beta).to(x.dtype)
