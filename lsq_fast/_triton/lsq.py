"""LSQ in Triton: a one-pass forward, and a one-pass backward that writes grad_x and reduces
the step gradient into float32 partials, which a second tiny kernel sums in a fixed order.
The backward's round surrogate is a switch: LSQ's straight-through 1, or LG-LSQ's arctan
soft-round slope (soft_round_k; docs/contract.md, section 4, as this project reads it).

The ops are `torch.ops.lsq_fast.lsq_forward_triton` / `lsq_backward_triton`, with the
signatures of the CPU ops; autograd is registered on the forward. Layouts: any dense tensor
(contiguous, channels_last, any permutation) is read in place, per-tensor or per-channel on
any axis (see layout.matrix_view); a non-dense tensor is copied once, to contiguous.
Numerics follow docs/contract.md: IEEE division (div_rn, not Triton's default
approximate divide), round half to even, strict clip points, float32 math (float64 for
float64 x), and a float32 forward bit-identical to the reference.
"""

from typing import Callable

import torch
import triton
import triton.language as tl

from ..ops.args import (
    check_grad_like, check_op_args, check_sharpness, check_step_values, grad_scale_for_qmax, soft_round_scale,
)
from ..ops.layout import dense, like
from .layout import MatrixView, matrix_view
from .registration import define_quantizer_ops, launch
from .tile_math import (
    cast_for_store, clip_and_round, finish_step_grad, host_scalar, ieee_div, load_step, mul_rn, round_half_to_even,
    sum_partials_kernel, tile_indices, tile_partials, to_math,
)
from .tiles import Tile, one_pass, partials_shape, pick_tile, sum_blocks


@triton.jit
def _lsq_forward_kernel(
    x_ptr, y_ptr, step_ptr, n_rows, n_cols, channels, qmin, qmax,
    STEP_MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ONE_ROW: tl.constexpr,
):
    rows, cols, _, _, mask, offsets = tile_indices(n_rows, n_cols, BLOCK_R, BLOCK_C, ONE_ROW)
    s = to_math(load_step(step_ptr, rows, cols, n_rows, n_cols, channels, STEP_MODE), x_ptr)
    x = to_math(tl.load(x_ptr + offsets, mask=mask), x_ptr)  # float32 math (float64 for float64 x)
    y = clip_and_round(ieee_div(x, s), qmin, qmax) * s
    tl.store(y_ptr + offsets, cast_for_store(y, y_ptr), mask=mask)


@triton.jit
def _soft_round_slope(u, soft_round_k: tl.float64, soft_round_c: tl.float64):
    """LG-LSQ's arctan soft round's slope at u, c / (1 + (k (frac(u) - 1/2))^2) with
    c = k / (2 atan(k/2)) from the host, in u's dtype and in the order every backend uses:
    f = u - floor(u), t = k * (f - 0.5), slope = c / (1.0 + t * t) (IEEE division; t * t is not
    contracted into an FMA, so that the slope is the same on every backend)."""
    k = host_scalar(soft_round_k, u)
    c = host_scalar(soft_round_c, u)
    t = k * ((u - tl.floor(u)) - 0.5)
    return ieee_div(c, 1.0 + mul_rn(t, t))


@triton.jit
def _lsq_backward_kernel(
    grad_y_ptr, x_ptr, step_ptr, grad_x_ptr, partial_ptr, grad_step_ptr, grad_scale: tl.float64,
    n_rows, n_cols, channels, qmin, qmax,
    STEP_MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ONE_ROW: tl.constexpr,
    FINAL: tl.constexpr, soft_round_k: tl.float64, soft_round_c: tl.float64, SOFT_ROUND: tl.constexpr,
):
    """grad_x, and this tile's step-gradient partials: one per tile (per-tensor), per row of the
    tile (a step per row) or per column (a step per column). With FINAL, each partial is a
    channel's whole sum, and it is scaled and written to grad_step here: no second launch.
    With SOFT_ROUND, round's derivative inside the clip range is the arctan soft round's slope
    instead of the straight-through 1: grad_x = grad_y * slope, dy/ds = round(u) - u * slope."""
    rows, cols, row_block, col_block, mask, offsets = tile_indices(n_rows, n_cols, BLOCK_R, BLOCK_C, ONE_ROW)
    s = to_math(load_step(step_ptr, rows, cols, n_rows, n_cols, channels, STEP_MODE), x_ptr)
    x = to_math(tl.load(x_ptr + offsets, mask=mask), x_ptr)
    grad_y = to_math(tl.load(grad_y_ptr + offsets, mask=mask, other=0.0), x_ptr)
    u = ieee_div(x, s)
    below = u <= qmin  # strict pass band: no gradient to x at the clip points; NaN counts as inside
    above = u >= qmax
    if SOFT_ROUND:
        slope = _soft_round_slope(u, soft_round_k, soft_round_c)
        inside_dx = grad_y * slope
        inside_ds = round_half_to_even(u) - mul_rn(u, slope)
    else:
        inside_dx = grad_y
        inside_ds = round_half_to_even(u) - u
    tl.store(grad_x_ptr + offsets, cast_for_store(tl.where(below | above, 0.0, inside_dx), grad_x_ptr), mask=mask)
    dy_ds = tl.where(below, qmin, tl.where(above, qmax, inside_ds))
    terms = tl.where(mask, grad_y * dy_ds, 0.0)
    partial, index, slot_mask = tile_partials(terms, rows, cols, row_block, col_block, n_rows, n_cols,
                                              BLOCK_C, STEP_MODE)
    if FINAL:
        finish_step_grad(grad_step_ptr, step_ptr, index, partial, grad_scale, slot_mask)
    else:
        tl.store(partial_ptr + index, partial, mask=slot_mask)


def launch_args(view: MatrixView, tile: Tile) -> dict:
    return dict(
        n_rows=view.rows, n_cols=view.cols, channels=view.channels,
        STEP_MODE=view.step_mode, BLOCK_R=tile.block_rows, BLOCK_C=tile.block_cols,
        ONE_ROW=bool(view.rows == 1), num_warps=tile.num_warps,
    )


def forward(x, step, qmin, qmax, channel_axis, grad_scale=None, soft_round_k=None, *,
            tile_for: Callable[[MatrixView], Tile] = pick_tile):
    """The forward op's body (grad_scale and soft_round_k change the backward only); `tile_for`
    lets benchmarks/tune_triton.py try other tiles."""
    channel_axis = check_op_args(x, step, qmin, qmax, channel_axis)
    check_step_values(step)  # CPU tensors (the interpreter) only: free there, a sync elsewhere
    x = dense(x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    view = matrix_view(x, channel_axis)
    tile = tile_for(view)
    launch(_lsq_forward_kernel, tile.programs)(
        x, y, step.contiguous(), qmin=qmin, qmax=qmax, **launch_args(view, tile))
    return y


def soft_round_args(soft_round_k: float | None) -> dict:
    """The backward kernel's soft-round arguments: SOFT_ROUND off for the straight-through round,
    else k and c = soft_round_scale(k) in float64 (as every backend does)."""
    if soft_round_k is None:
        return dict(soft_round_k=0.0, soft_round_c=0.0, SOFT_ROUND=False)
    k = check_sharpness(soft_round_k)
    return dict(soft_round_k=k, soft_round_c=soft_round_scale(k), SOFT_ROUND=True)


def partials_dtype(x: torch.Tensor) -> torch.dtype:
    """Partials are accumulated in the math dtype: float32, float64 for float64 x."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def sum_partials(partials, step, grad_step, grad_offset, grad_scale, outer, channels, inner):
    """The backward's second launch (tile_math.sum_partials_kernel): grad_step (and LSQ+'s
    grad_offset, where given) from partials [terms][outer, C, inner], in a fixed order."""
    block_ch, block_k = sum_blocks(channels, outer * inner)
    launch(sum_partials_kernel, triton.cdiv(channels, block_ch))(
        partials, step, grad_step, grad_step if grad_offset is None else grad_offset, grad_scale,
        outer * channels * inner, outer * inner, channels, inner, BLOCK_CH=block_ch, BLOCK_K=block_k, OFFSET=grad_offset is not None,
        num_warps=4)


def backward(grad_y, x, step, qmin, qmax, channel_axis, grad_scale, soft_round_k=None, *,
             tile_for: Callable[[MatrixView], Tile] = pick_tile):
    """The backward op's body: (grad_x, grad_step)."""
    channel_axis = check_op_args(x, step, qmin, qmax, channel_axis)
    check_grad_like(grad_y, x)
    round_args = soft_round_args(soft_round_k)
    x = dense(x)
    grad_y = like(grad_y, x)
    grad_x = torch.empty_like(x)
    if x.numel() == 0:
        return grad_x, torch.zeros_like(step)
    step = step.contiguous()
    view = matrix_view(x, channel_axis)
    tile = tile_for(view)
    if grad_scale is None:
        grad_scale = grad_scale_for_qmax(x.numel() // step.numel(), qmax)
    grad_step = torch.empty_like(step)
    outer, channels, inner = partials_shape(view, tile)
    final = one_pass((outer, channels, inner))
    partials = grad_step if final else torch.empty(outer * channels * inner, device=x.device, dtype=partials_dtype(x))
    launch(_lsq_backward_kernel, tile.programs)(
        grad_y, x, step, grad_x, partials, grad_step, grad_scale,
        qmin=qmin, qmax=qmax, FINAL=final, **round_args, **launch_args(view, tile))
    if not final:
        sum_partials(partials, step, grad_step, None, grad_scale, outer, channels, inner)
    return grad_x, grad_step


lsq_forward_triton, lsq_backward_triton = define_quantizer_ops("lsq", forward, backward)
