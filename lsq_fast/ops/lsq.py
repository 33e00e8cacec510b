"""LSQ fake quantization (Esser et al., ICLR 2020) behind one function and several backends."""

from __future__ import annotations

import torch

from .. import reference
from .args import check_args, check_grad_scale, check_group_size, group_rows, soft_round_sharpness
from .backends import resolve_backend
from .registry import quantizer_ops


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
    backend: str = "auto",
) -> torch.Tensor:
    """Fake-quantize x with a learned step: ``step * round(clip(x / step, qmin, qmax))``.

    Args:
        x: float32, float16 or bfloat16 tensor of any shape and layout (float64 too, for
            gradcheck). Dense layouts (contiguous, channels_last, any permutation) are read in
            place; other strided tensors are copied once.
        step: float32 tensor with one element (per-tensor) or ``x.shape[channel_axis]``
            elements (per-channel). On CPU a step that is not positive and finite is a
            ValueError; elsewhere it is clamped to a tiny positive floor inside the kernel.
        bits: 2..8 signed, 1..8 unsigned.
        signed: signed grid [-2^(b-1), 2^(b-1)-1] (weights) or unsigned [0, 2^b-1] (ReLU outputs).
        channel_axis: None for one step, else the axis (negative allowed) the steps run along.
        grad_scale: multiplier of the step gradient; None means LSQ's 1/sqrt(N * qmax) with N the
            elements per step; 1.0 turns scaling off.
        round_grad: the derivative the backward pass gives round(): "ste" (LSQ's straight-through
            1) or "arctan", the slope of an arctangent soft round of sharpness ``k``:
            ``k / (2 atan(k/2) (1 + k^2 (frac(u) - 1/2)^2))``, in grad_x and in the step
            gradient (``round(u) - u * slope`` inside the clip range). The forward pass keeps the
            hard round. This is the project's reading of LG-LSQ's abstract (arXiv 2202.09009:
            an arctangent soft round replacing the straight-through estimator in the backward
            pass), not a transcription of the paper's equations, which it does not have; see
            :mod:`lsq_fast.reference.soft_round`.
        k: the soft round's sharpness (> 0; used with round_grad="arctan"): large k approaches
            round()'s spikes, small k the straight-through estimator.
        group_size: per-group steps (LLM weights): G consecutive elements of x's last axis
            share a step, so x of shape [..., K] takes a step of shape [..., K / G] (a Linear
            weight [out, in] steps [out, in / G]); K % G == 0; not with channel_axis. The
            default grad_scale is then 1/sqrt(G * qmax). The kernels see x's rows of one group
            ([numel / G, G]: a view of x when its last axis is contiguous, one copy otherwise;
            the result is then contiguous), a step per row: one pass each way, each group's
            step gradient reduced in the backward's pass (CPU: a work item holds whole groups;
            Triton: a tile's rows are whole groups, summed in registers; CUDA: the groups
            kernel, a few lanes of a warp per group, summed by shuffles).
        backend: "auto" (the fastest for x's device: "cpu" on CPU tensors; on CUDA tensors
            "cuda" or "triton", whichever lsq_fast/ops/backend_table.json measured faster for this
            layout, dtype and size on this GPU architecture, "triton" where nothing was measured),
            "cpu", "cuda", "triton", "reference"; see :func:`lsq_fast.available_backends`.

    Returns:
        A tensor of x's dtype, shape, device (and layout, for dense x). Gradients flow to x
        (straight through inside the clip range, zero outside, strict at the clip points) and to
        step (LSQ's dy/ds, reduced in float32 or better in a fixed order).
    """
    if group_size is not None:
        check_group_size(x, step, group_size, channel_axis)
        rows, steps = group_rows(x, group_size, step)
        return lsq_quantize(rows, steps, bits, signed=signed, channel_axis=0, grad_scale=grad_scale,
                            round_grad=round_grad, k=k, backend=backend).reshape(x.shape)
    qmin, qmax, axis = check_args(x, step, bits, signed, channel_axis)
    g = check_grad_scale(grad_scale)
    soft_round_k = soft_round_sharpness(round_grad, k)
    backend = resolve_backend(backend, x, axis)
    if backend == "reference":
        return reference.lsq_quantize(
            x, step, bits, signed=signed, channel_axis=axis, grad_scale=g, round_grad=round_grad, k=k
        )
    forward, _ = quantizer_ops("lsq", backend)
    if soft_round_k is None:  # the op's STE schema default: no extra argument for the common case
        return forward(x, step, qmin, qmax, axis, g)
    return forward(x, step, qmin, qmax, axis, g, soft_round_k)

