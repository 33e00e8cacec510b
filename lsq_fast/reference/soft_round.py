"""LG-LSQ's arctangent soft round (shared/spec/quantizers.md, section 4): our reading of the
paper's abstract, not a transcription of its equations, which this project does not have.

The soft round of sharpness k follows round() as a smooth staircase: on each unit interval
[n, n+1) it rises from n to n+1 along an arctangent centred on the half-integer, where round()
jumps:

    soft(u) = n + 1/2 + atan(k (f - 1/2)) / (2 atan(k/2)),    n = floor(u), f = u - n

It is continuous (soft(n) = n on both sides), tends to round() as k grows and to u (the
straight-through estimator) as k -> 0. Its slope, which the backward pass uses instead of the
straight-through 1, is

    soft'(u) = k / (2 atan(k/2) (1 + k^2 (f - 1/2)^2))

largest at the half-integers and never zero, so the gradient never vanishes. The forward pass
keeps the hard round.
"""

from __future__ import annotations

import math

import torch


def check_sharpness(k: float) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"lsq_fast: the soft round's sharpness k must be a positive finite float, got {k!r}")
    return float(k)


ROUND_GRADS = ("ste", "arctan")


def soft_round_sharpness(round_grad: str, k: float) -> float | None:
    """The round_grad/k arguments as the ops take them (soft_round_k): None for the
    straight-through round, else the checked sharpness k."""
    if round_grad == "ste":
        return None
    if round_grad == "arctan":
        return check_sharpness(k)
    raise ValueError(f"lsq_fast: round_grad must be one of {', '.join(ROUND_GRADS)}, got {round_grad!r}")


def soft_round(u: torch.Tensor, k: float) -> torch.Tensor:
    """The arctangent soft round of u (a differentiable function of u)."""
    n = torch.floor(u).detach()
    return n + 0.5 + torch.atan(k * (u - n - 0.5)) / (2 * math.atan(k / 2))


def soft_round_scale(k: float) -> float:
    """The slope's constant c = k / (2 atan(k/2)), the host-side value every fused kernel is
    handed (the Python twin of soft_round_scale in csrc/lsq_layout.h). Below k = 1e-8 it is 1 to
    float64 precision: taken as exactly 1, so that a subnormal k cannot give a wrong or infinite c."""
    return 1.0 if k < 1e-8 else k / (2.0 * math.atan(k / 2.0))


def soft_round_slope(u: torch.Tensor, k: float) -> torch.Tensor:
    """d soft(u) / du, written out: what a fused kernel computes in place of 1."""
    f = u - torch.floor(u)
    return soft_round_scale(k) / (1 + (k * (f - 0.5)) ** 2)


def arctan_roundpass(u: torch.Tensor, k: float) -> torch.Tensor:
    """round(u) in the forward pass, the soft round's slope in the backward pass. Subtracting an
    exactly zero difference keeps round(u) to the bit, the sign of zero included (as roundpass)."""
    soft = soft_round(u, k)
    return u.detach().round() - (soft.detach() - soft)
