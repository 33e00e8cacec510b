"""The LSQ paper's quantizer in plain PyTorch: the oracle of the tests, the baseline of the benchmarks.

Written as the pseudocode of Esser et al. (ICLR 2020, appendix) writes it: `gradscale` on the
step, a `hardtanh` clip (strict at the clip points: no gradient at u == qmin or u == qmax),
`roundpass` (round half to even, straight-through gradient), and a multiply. It computes in
float32 whatever x's dtype (float64 for float64 x, for gradcheck) and returns x's dtype.

round_grad="arctan" swaps roundpass for LG-LSQ's soft-round gradient (soft_round.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.args import (
    STEP_FLOOR, check_args, check_grad_scale, check_group_size, check_step_values, default_grad_scale, group_rows,
    numel_per_step, soft_round_sharpness,
)
from .soft_round import arctan_roundpass


def gradscale(t: torch.Tensor, scale: float) -> torch.Tensor:
    """t in the forward pass, gradient multiplied by `scale` in the backward pass.

    The paper writes (t - t*scale).detach() + t*scale, whose value can differ from t in the
    last bit; adding a difference that is exactly zero keeps the forward value t to the bit.
    """
    scaled = t * scale
    return t.detach() + (scaled - scaled.detach())


def roundpass(u: torch.Tensor) -> torch.Tensor:
    """round(u) in the forward pass, identity gradient (straight-through estimator).

    The paper writes (u.round() - u).detach() + u, which is round(u) except for the sign of
    zero: for u in (-0.5, 0], round(u) is -0.0 but the sum is +0.0. Subtracting an exactly
    zero difference keeps round(u) to the bit (a - (+0.0) == a, -0.0 included).
    """
    return u.round() - (u.detach() - u)


def lsq_quantize(
    x: torch.Tensor,
    step: torch.Tensor,
    bits: int,
    *,
    signed: bool = True,
    channel_axis: int | None = None,
    grad_scale: float | None = None,
    round_grad: str = "ste",
    k: float = 5.0,
    group_size: int | None = None,
) -> torch.Tensor:
    """Reference LSQ fake quantization; same contract as :func:`lsq_fast.lsq_quantize`.

    round_grad: "ste" (the paper's straight-through round) or "arctan": LG-LSQ's arctangent soft
    round of sharpness k in the backward pass only (grad_x and grad_step), as this project reads
    the LG-LSQ abstract (see soft_round.py); the forward pass is the same.

    group_size: per-group steps, each group of G consecutive elements of the last axis the
    per-channel quantizer's channel (docs/contract.md, section 1, "Per-group").
    """
    if group_size is not None:
        check_group_size(x, step, group_size, channel_axis)
        rows, steps = group_rows(x, group_size, step)
        return lsq_quantize(rows, steps, bits, signed=signed, channel_axis=0, grad_scale=grad_scale,
                            round_grad=round_grad, k=k).reshape(x.shape)
    qmin, qmax, axis = check_args(x, step, bits, signed, channel_axis)
    g = check_grad_scale(grad_scale)
    if g is None:
        g = default_grad_scale(numel_per_step(x, axis), bits, signed)
    round_pass = round_pass_for(round_grad, k)
    check_step_values(step)

    math_dtype = math_type(x)
    s = along(gradscale(step.to(math_dtype).clamp_min(STEP_FLOOR), g), x, axis)
    u = F.hardtanh(x.to(math_dtype) / s, float(qmin), float(qmax))
    return (round_pass(u) * s).to(x.dtype)


def math_type(x: torch.Tensor) -> torch.dtype:
    """float32 for every input dtype, float64 for float64 input (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def along(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """A per-tensor (one element) or per-channel parameter shaped to broadcast against x."""
    return p.reshape(()) if axis is None else p.reshape([-1 if d == axis else 1 for d in range(x.dim())])


def round_pass_for(round_grad: str, k: float):
    """The round of the forward pass with the backward pass `round_grad` asks for."""
    sharpness = soft_round_sharpness(round_grad, k)
    if sharpness is None:
        return roundpass
    return lambda u: arctan_roundpass(u, sharpness)
