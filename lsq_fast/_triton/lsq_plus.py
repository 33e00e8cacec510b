"""LSQ+ in Triton: LSQ with a learned offset beta (docs/contract.md, section 2).

    u = (x - beta) / s,   y = s * round(clip(u, qmin, qmax)) + beta

The ops are `torch.ops.lsq_fast.lsq_plus_forward_triton` / `lsq_plus_backward_triton`, with the
signatures of the CPU ops; autograd is registered on the forward. Everything but the offset is
LSQ's machinery (lsq.py, tile_math.py): the same layouts read in place, per-tensor or per-channel
on any axis, the same tiles, and a one-pass backward that reduces two sums per step instead of
one (the step's and the offset's, both scaled by the same g) into float32 partials, summed in a
fixed order by the backward itself (FINAL) or by LSQ's second kernel.

Numerics, as the reference (reference/lsq_plus.py) rounds them: subtract, IEEE divide, clip,
round half to even, multiply, add, each rounded on its own; the multiply is never contracted
with the add into an FMA (tile_math.mul_rn), so a float32 forward equals the reference bit for
bit on a GPU too. The step is clamped to STEP_FLOOR as in LSQ (no gradient where clamped); the
offset is not clamped.
"""

from typing import Callable

import torch
import triton
import triton.language as tl

from ..ops.args import check_grad_like, check_offset, check_op_args, check_step_values, grad_scale_for_qmax
from ..ops.layout import dense, like
from .layout import MatrixView, matrix_view
from .lsq import launch_args, partials_dtype, sum_partials
from .registration import define_quantizer_ops, launch
from .tile_math import (
    cast_for_store, clip_and_round, finish_scaled_grad, finish_step_grad, ieee_div, load_per_step, load_step,
    mul_rn, round_half_to_even, tile_indices, tile_partials, to_math,
)
from .tiles import Tile, one_pass, partials_shape, pick_tile


@triton.jit
def _load_u(x_ptr, step_ptr, offset_ptr, rows, cols, mask, offsets, n_rows, n_cols, channels,
            STEP_MODE: tl.constexpr):
    """(u, s, beta) of the tile, in the math dtype: u = (x - beta) / s, subtract then divide."""
    s = to_math(load_step(step_ptr, rows, cols, n_rows, n_cols, channels, STEP_MODE), x_ptr)
    beta = to_math(load_per_step(offset_ptr, rows, cols, n_rows, n_cols, channels, STEP_MODE), x_ptr)
    x = to_math(tl.load(x_ptr + offsets, mask=mask), x_ptr)
    return ieee_div(x - beta, s), s, beta


@triton.jit
def _lsq_plus_forward_kernel(
    x_ptr, y_ptr, step_ptr, offset_ptr, n_rows, n_cols, channels, qmin, qmax,
    STEP_MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ONE_ROW: tl.constexpr,
):
    rows, cols, _, _, mask, offsets = tile_indices(n_rows, n_cols, BLOCK_R, BLOCK_C, ONE_ROW)
    u, s, beta = _load_u(x_ptr, step_ptr, offset_ptr, rows, cols, mask, offsets, n_rows, n_cols, channels, STEP_MODE)
    y = mul_rn(clip_and_round(u, qmin, qmax), s) + beta  # two roundings, as the reference
    tl.store(y_ptr + offsets, cast_for_store(y, y_ptr), mask=mask)


@triton.jit
def _lsq_plus_backward_kernel(
    grad_y_ptr, x_ptr, step_ptr, offset_ptr, grad_x_ptr, partial_ptr, grad_step_ptr, grad_offset_ptr,
    grad_scale: tl.float64, n_partials, n_rows, n_cols, channels, qmin, qmax,
    STEP_MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ONE_ROW: tl.constexpr,
    FINAL: tl.constexpr,
):
    """grad_x, and this tile's partials of two sums per step: grad_y * dy/ds (at partial_ptr)
    and grad_y * dy/dbeta (n_partials further), laid out as LSQ's. With FINAL each partial is a
    channel's whole sum, scaled and written to grad_step / grad_offset here."""
    rows, cols, row_block, col_block, mask, offsets = tile_indices(n_rows, n_cols, BLOCK_R, BLOCK_C, ONE_ROW)
    u, s, beta = _load_u(x_ptr, step_ptr, offset_ptr, rows, cols, mask, offsets, n_rows, n_cols, channels, STEP_MODE)
    grad_y = to_math(tl.load(grad_y_ptr + offsets, mask=mask, other=0.0), x_ptr)
    below = u <= qmin  # strict pass band, as LSQ's; NaN counts as inside
    above = u >= qmax
    clipped = below | above
    tl.store(grad_x_ptr + offsets, cast_for_store(tl.where(clipped, 0.0, grad_y), grad_x_ptr), mask=mask)
    dy_ds = tl.where(below, qmin, tl.where(above, qmax, round_half_to_even(u) - u))
    step_terms = tl.where(mask, grad_y * dy_ds, 0.0)
    offset_terms = tl.where(mask & clipped, grad_y, 0.0)  # dy/dbeta: 1 where clipped, 0 inside
    step_partial, index, slot_mask = tile_partials(step_terms, rows, cols, row_block, col_block, n_rows, n_cols,
                                                   BLOCK_C, STEP_MODE)
    offset_partial, _, _ = tile_partials(offset_terms, rows, cols, row_block, col_block, n_rows, n_cols,
                                         BLOCK_C, STEP_MODE)
    if FINAL:
        finish_step_grad(grad_step_ptr, step_ptr, index, step_partial, grad_scale, slot_mask)
        finish_scaled_grad(grad_offset_ptr, index, offset_partial, grad_scale, slot_mask)
    else:
        tl.store(partial_ptr + index, step_partial, mask=slot_mask)
        tl.store(partial_ptr + n_partials + index, offset_partial, mask=slot_mask)


def _check(x, step, offset, qmin, qmax, channel_axis):
    channel_axis = check_op_args(x, step, qmin, qmax, channel_axis)
    check_offset(offset, step)
    return channel_axis


def forward(x, step, offset, qmin, qmax, channel_axis, grad_scale=None, *,
            tile_for: Callable[[MatrixView], Tile] = pick_tile):
    """The forward op's body; `tile_for` as in lsq.forward."""
    channel_axis = _check(x, step, offset, qmin, qmax, channel_axis)
    check_step_values(step)  # CPU tensors (the interpreter) only: free there, a sync elsewhere
    x = dense(x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    view = matrix_view(x, channel_axis)
    tile = tile_for(view)
    launch(_lsq_plus_forward_kernel, tile.programs)(
        x, y, step.contiguous(), offset.contiguous(), qmin=qmin, qmax=qmax, **launch_args(view, tile))
    return y


def backward(grad_y, x, step, offset, qmin, qmax, channel_axis, grad_scale, *,
             tile_for: Callable[[MatrixView], Tile] = pick_tile):
    """The backward op's body: (grad_x, grad_step, grad_offset)."""
    channel_axis = _check(x, step, offset, qmin, qmax, channel_axis)
    check_grad_like(grad_y, x)
    x = dense(x)
    grad_y = like(grad_y, x)
    grad_x = torch.empty_like(x)
    if x.numel() == 0:
        return grad_x, torch.zeros_like(step), torch.zeros_like(offset)
    step, offset = step.contiguous(), offset.contiguous()
    view = matrix_view(x, channel_axis)
    tile = tile_for(view)
    if grad_scale is None:
        grad_scale = grad_scale_for_qmax(x.numel() // step.numel(), qmax)
    grad_step, grad_offset = torch.empty_like(step), torch.empty_like(offset)
    outer, channels, inner = partials_shape(view, tile)
    final = one_pass((outer, channels, inner))
    n_partials = outer * channels * inner
    # Step partials, then offset partials: one buffer, so one launch sums both.
    partials = grad_step if final else torch.empty(2 * n_partials, device=x.device, dtype=partials_dtype(x))
    launch(_lsq_plus_backward_kernel, tile.programs)(
        grad_y, x, step, offset, grad_x, partials, grad_step, grad_offset, grad_scale, n_partials,
        qmin=qmin, qmax=qmax, FINAL=final, **launch_args(view, tile))
    if not final:
        sum_partials(partials, step, grad_step, grad_offset, grad_scale, outer, channels, inner)
    return grad_x, grad_step, grad_offset


lsq_plus_forward_triton, lsq_plus_backward_triton = define_quantizer_ops("lsq_plus", forward, backward)
