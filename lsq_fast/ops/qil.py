"""QIL fake quantization (Jung et al., CVPR 2019): a learned quantization interval, behind one
function per role (weights, activations) and several backends."""

from __future__ import annotations

import torch

from .. import reference
from .args import check_qil_args, qrange
from .backends import resolve_backend
from .registry import quantizer_ops


def qil_quantize_weight(
    w: torch.Tensor,
    center: torch.Tensor,
    distance: torch.Tensor,
    gamma: torch.Tensor,
    bits: int,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """QIL's weight quantizer: ``round(sign(w) * z^gamma * q) / q`` with
    ``z = clip(|w| / (2 d) + 1/2 - c / (2 d), 0, 1)`` and ``q = 2^(bits-1) - 1``.

    Weights with ``|w| < c - d`` are pruned to 0, those with ``|w| > c + d`` clipped to +-1: the
    result is in normalised units, in [-1, 1] (docs/contract.md, section 3).

    Args:
        w: float32, float16 or bfloat16 tensor (float64 for gradcheck), any shape and layout.
        center, distance, gamma: one-element float32 tensors: the interval's centre c, its
            half-width d (clamped to 2^-126 inside, with no gradient where clamped) and the
            transformer's exponent gamma.
        bits: 2..8.
        backend: "auto", "cpu", "triton" or "reference" (no CUDA C++ kernels: "auto" picks
            Triton on CUDA tensors).

    Returns:
        w's dtype, shape and layout (dense w). The round is straight-through; the gradients
        of w, c, d and gamma are zero outside the interval (strict at its ends), and the
        three parameter gradients are reduced in float32 or better, in a fixed order, in the
        same backward pass that writes w's gradient. z^gamma and ln z are taken only where
        z > 0 (z at least 2^-126), so gamma < 1 and pruned weights give finite gradients.
    """
    q = qrange(bits, True)[1]
    check_qil_args(w, q, True, center=center, distance=distance, gamma=gamma)
    backend = resolve_backend(backend, w, method="qil")
    if backend == "reference":
        return reference.qil_quantize_weight(w, center, distance, gamma, bits)
    forward, _ = quantizer_ops("qil", backend)
    return forward(w, center, distance, gamma, q, True)


def qil_quantize_activation(
    x: torch.Tensor,
    center: torch.Tensor,
    distance: torch.Tensor,
    bits: int,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """QIL's activation quantizer: ``round(clip(x / (2 d) + 1/2 - c / (2 d), 0, 1) * q) / q``,
    ``q = 2^bits - 1``: the result is in [0, 1]. Arguments and gradients as in
    :func:`qil_quantize_weight`, with gamma = 1 and no sign; bits 1..8."""
    q = qrange(bits, False)[1]
    check_qil_args(x, q, False, center=center, distance=distance)
    backend = resolve_backend(backend, x, method="qil")
    if backend == "reference":
        return reference.qil_quantize_activation(x, center, distance, bits)
    forward, _ = quantizer_ops("qil", backend)
    return forward(x, center, distance, None, q, False)
