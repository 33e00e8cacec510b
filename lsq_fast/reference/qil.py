"""QIL (Jung et al., CVPR 2019) in plain PyTorch: a learned quantization interval, centre c and
half-width d, and for weights an exponent gamma (docs/contract.md, section 3).

    alpha = 0.5 / d,  beta = 0.5 - 0.5 * c / d
    weights:      z = clip(alpha * |w| + beta, 0, 1),  w_t = sign(w) * z^gamma,  w_q = round(w_t * q) / q,  q = 2^(b-1) - 1
    activations:  x_t = clip(alpha * x + beta, 0, 1),                          x_q = round(x_t * q) / q,  q = 2^b - 1

Values below c - d are pruned to 0, values above c + d clipped to +-1: outputs are in
normalised units. The round is straight-through; the clip is strict (no gradient at z = 0 or
z = 1, as LSQ's at its clip points). Guards, so that no gradient is inf or NaN:
  - d is clamped to 2^-126 (the step floor) before 0.5 / d; the clamp passes no gradient;
  - z^gamma and ln z are taken where z > 0 only, with z at least 2^-126 (z -> 0 with gamma < 1
    would make gamma z^(gamma-1) infinite, and ln 0 is -inf); at z = 0 the output is 0.
One parameter per layer (c, d, gamma: one-element float32 tensors). Computed in float32 (float64
for float64 input), in the order written above, each operation rounded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.args import STEP_FLOOR, check_qil_args, qrange
from .lsq import math_type, roundpass

Z_FLOOR = STEP_FLOOR


def qil_levels(bits: int, signed: bool) -> int:
    """q: the positive levels of the grid, 2^(b-1) - 1 for weights (b in 2..8), 2^b - 1 for
    activations (b in 1..8): LSQ's qmax, with the same rule for valid bits."""
    return qrange(bits, signed)[1]


def _interval(center: torch.Tensor, distance: torch.Tensor, math_dtype: torch.dtype):
    c = center.to(math_dtype).reshape(())
    d = distance.to(math_dtype).reshape(()).clamp_min(STEP_FLOOR)
    return 0.5 / d, 0.5 - 0.5 * c / d


def qil_transform_weight(w: torch.Tensor, center: torch.Tensor, distance: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """w_t = sign(w) * z^gamma, in the math dtype (the transformer, before the discretizer)."""
    math_dtype = math_type(w)
    alpha, beta = _interval(center, distance, math_dtype)
    wm = w.to(math_dtype)
    z = F.hardtanh(alpha * wm.abs() + beta, 0.0, 1.0)
    kept = z > 0
    z_safe = torch.where(kept, z.clamp_min(Z_FLOOR), torch.ones_like(z))
    return torch.sign(wm) * torch.where(kept, z_safe ** gamma.to(math_dtype).reshape(()), torch.zeros_like(z))


def qil_quantize_weight(
    w: torch.Tensor, center: torch.Tensor, distance: torch.Tensor, gamma: torch.Tensor, bits: int
) -> torch.Tensor:
    """Reference QIL weight quantizer: round(w_t * q) / q in w's dtype, q = 2^(bits-1) - 1."""
    q = qil_levels(bits, signed=True)
    check_qil_args(w, q, True, center=center, distance=distance, gamma=gamma)
    return (roundpass(qil_transform_weight(w, center, distance, gamma) * q) / q).to(w.dtype)


def qil_transform_activation(x: torch.Tensor, center: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """x_t = clip(alpha * x + beta, 0, 1), in the math dtype."""
    math_dtype = math_type(x)
    alpha, beta = _interval(center, distance, math_dtype)
    return F.hardtanh(alpha * x.to(math_dtype) + beta, 0.0, 1.0)


def qil_quantize_activation(x: torch.Tensor, center: torch.Tensor, distance: torch.Tensor, bits: int) -> torch.Tensor:
    """Reference QIL activation quantizer: round(x_t * q) / q in x's dtype, q = 2^bits - 1."""
    q = qil_levels(bits, signed=False)
    check_qil_args(x, q, False, center=center, distance=distance)
    return (roundpass(qil_transform_activation(x, center, distance) * q) / q).to(x.dtype)
