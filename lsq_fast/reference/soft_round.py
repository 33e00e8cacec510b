"""LG-LSQ's arctangent soft round (docs/contract.md, section 4): our reading of the
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

from ..ops.args import soft_round_scale


def soft_round(u: torch.Tensor, k: float) -> torch.Tensor:
    """The arctangent soft round of u (a differentiable function of u)."""
    n = torch.floor(u).detach()
    return n + 0.5 + torch.atan(k * (u - n - 0.5)) / (2 * math.atan(k / 2))


def soft_round_slope(u: torch.Tensor, k: float) -> torch.Tensor:
    """d soft(u) / du, written out: what a fused kernel computes in place of 1."""
    f = u - torch.floor(u)
    return soft_round_scale(k) / (1 + (k * (f - 0.5)) ** 2)


def arctan_roundpass(u: torch.Tensor, k: float) -> torch.Tensor:
    """round(u) in the forward pass, the soft round's slope in the backward pass. Subtracting an
    exactly zero difference keeps round(u) to the bit, the sign of zero included (as roundpass)."""
    soft = soft_round(u, k)
    return u.detach().round() - (soft.detach() - soft)
