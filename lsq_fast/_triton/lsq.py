"""LSQ in Triton: a one-pass forward, and a one-pass backward that writes grad_x and reduces
the step gradient into float32 partials, which a second tiny kernel sums in a fixed order.

The ops are `torch.ops.lsq_fast.lsq_forward_triton` / `lsq_backward_triton`, with the
signatures of the CPU ops; autograd is registered on the forward. Layouts: any dense tensor
(contiguous, channels_last, any permutation) is read in place, per-tensor or per-channel on
any axis (see layout.matrix_view); a non-dense tensor is copied once, to contiguous.
Numerics follow shared/spec/quantizers.md: IEEE division (div_rn, not Triton's default
approximate divide), round half to even, strict clip points, float32 math (float64 for
float64 x), and a float32 forward bit-identical to the reference.
"""

from typing import Callable

import torch
import triton
import triton.language as tl

from .._args import check_grad_like, check_op_args, check_step_values, grad_scale_for_qmax
from .layout import MatrixView, dense, like, matrix_view
from .registration import define_op, launch
from .tile_math import (
    STEP_FLOOR, STEP_ONE, STEP_PER_ROW, cast_for_store, clip_and_round, ieee_div, load_step, round_half_to_even,
    tile_indices,
)
from .tiles import Tile, partials_shape, pick_tile


@triton.jit
def _lsq_forward_kernel(
    x_ptr, y_ptr, step_ptr, n_rows, n_cols, channels, qmin, qmax,
    STEP_MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ONE_ROW: tl.constexpr,
):
    rows, cols, _, _, mask, offsets = tile_indices(n_rows, n_cols, BLOCK_R, BLOCK_C, ONE_ROW)
    s = load_step(step_ptr, rows, cols, n_rows, n_cols, channels, STEP_MODE)
    x = tl.load(x_ptr + offsets, mask=mask).to(s.dtype)  # math in the step's dtype: f32 (f64 for f64 x)
    y = clip_and_round(ieee_div(x, s), qmin, qmax) * s
    tl.store(y_ptr + offsets, cast_for_store(y, y_ptr), mask=mask)


@triton.jit
def _finish_step_grad(grad_step_ptr, step_ptr, index, total, grad_scale: tl.float64, mask):
    """grad_step = g * total, in float64 then cast, as the CPU kernels do; zero where the step
    is below STEP_FLOOR, since the clamp to the floor passes no gradient there."""
    raw = tl.load(step_ptr + index, mask=mask, other=1.0)
    grad = tl.where(raw >= STEP_FLOOR, total.to(tl.float64) * grad_scale, 0.0)
    tl.store(grad_step_ptr + index, grad.to(grad_step_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lsq_backward_kernel(
    grad_y_ptr, x_ptr, step_ptr, grad_x_ptr, partial_ptr, grad_step_ptr, grad_scale: tl.float64,
    n_rows, n_cols, channels, qmin, qmax,
    STEP_MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ONE_ROW: tl.constexpr,
    FINAL: tl.constexpr,
):
    """grad_x, and this tile's step-gradient partials: one per tile (per-tensor), per row of the
    tile (a step per row) or per column (a step per column). With FINAL, each partial is a
    channel's whole sum, and it is scaled and written to grad_step here: no second launch."""
    rows, cols, row_block, col_block, mask, offsets = tile_indices(n_rows, n_cols, BLOCK_R, BLOCK_C, ONE_ROW)
    s = load_step(step_ptr, rows, cols, n_rows, n_cols, channels, STEP_MODE)
    x = tl.load(x_ptr + offsets, mask=mask).to(s.dtype)
    grad_y = tl.load(grad_y_ptr + offsets, mask=mask, other=0.0).to(s.dtype)
    u = ieee_div(x, s)
    below = u <= qmin  # strict pass band: no gradient to x at the clip points; NaN counts as inside
    above = u >= qmax
    tl.store(grad_x_ptr + offsets, cast_for_store(tl.where(below | above, 0.0, grad_y), grad_x_ptr), mask=mask)
    dy_ds = tl.where(below, qmin, tl.where(above, qmax, round_half_to_even(u) - u))
    terms = tl.where(mask, grad_y * dy_ds, 0.0)
    if STEP_MODE == STEP_ONE:
        partial = tl.sum(terms)
        if FINAL:
            _finish_step_grad(grad_step_ptr, step_ptr, 0, partial, grad_scale, True)
        else:
            tl.store(partial_ptr + tl.program_id(0), partial)
    elif STEP_MODE == STEP_PER_ROW:
        partial = tl.sum(terms, axis=1)  # partials are [rows, grid_cols] = [outer, C, grid_cols]
        if FINAL:
            _finish_step_grad(grad_step_ptr, step_ptr, rows, partial, grad_scale, rows < n_rows)
        else:
            tl.store(partial_ptr + rows * tl.cdiv(n_cols, BLOCK_C) + col_block, partial, mask=rows < n_rows)
    else:
        partial = tl.sum(terms, axis=0)  # partials are [grid_rows, C]
        if FINAL:
            _finish_step_grad(grad_step_ptr, step_ptr, cols, partial, grad_scale, cols < n_cols)
        else:
            tl.store(partial_ptr + row_block * n_cols + cols, partial, mask=cols < n_cols)


@triton.jit
def _sum_partials_kernel(
    partial_ptr, step_ptr, grad_step_ptr, grad_scale: tl.float64, n_per_channel, channels, n_inner,
    BLOCK_CH: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_step[c] = g * sum of partial[o, c, i] over o and i: the same order on every run."""
    ch = tl.program_id(0) * BLOCK_CH + tl.arange(0, BLOCK_CH)
    ch_mask = ch < channels
    acc = tl.zeros([BLOCK_CH, BLOCK_K], dtype=partial_ptr.dtype.element_ty)
    for start in range(0, n_per_channel, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        outer = k // n_inner
        offsets = (outer * channels * n_inner + (k - outer * n_inner))[None, :] + (ch * n_inner)[:, None]
        acc += tl.load(partial_ptr + offsets, mask=ch_mask[:, None] & (k < n_per_channel)[None, :], other=0.0)
    _finish_step_grad(grad_step_ptr, step_ptr, ch, tl.sum(acc, axis=1), grad_scale, ch_mask)


def _launch_args(view: MatrixView, tile: Tile) -> dict:
    return dict(
        n_rows=view.rows, n_cols=view.cols, channels=view.channels,
        STEP_MODE=view.step_mode, BLOCK_R=tile.block_rows, BLOCK_C=tile.block_cols,
        ONE_ROW=view.rows == 1, num_warps=tile.num_warps,
    )


def _lsq_forward(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
                 channel_axis: int | None, grad_scale: float | None = None) -> torch.Tensor:
    return forward(x, step, qmin, qmax, channel_axis)


def _lsq_backward(grad_y: torch.Tensor, x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
                  channel_axis: int | None, grad_scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    return backward(grad_y, x, step, qmin, qmax, channel_axis, grad_scale)


def forward(x, step, qmin, qmax, channel_axis, tile_for: Callable[[MatrixView], Tile] = pick_tile):
    """The forward op's body; `tile_for` lets benchmarks/tune_triton.py try other tiles."""
    channel_axis = check_op_args(x, step, qmin, qmax, channel_axis)
    check_step_values(step)  # CPU tensors (the interpreter) only: free there, a sync elsewhere
    x = dense(x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    view = matrix_view(x, channel_axis)
    tile = tile_for(view)
    launch(_lsq_forward_kernel, tile.programs)(
        x, y, step.contiguous(), qmin=qmin, qmax=qmax, **_launch_args(view, tile))
    return y


def backward(grad_y, x, step, qmin, qmax, channel_axis, grad_scale,
             tile_for: Callable[[MatrixView], Tile] = pick_tile):
    """The backward op's body: (grad_x, grad_step)."""
    channel_axis = check_op_args(x, step, qmin, qmax, channel_axis)
    check_grad_like(grad_y, x)
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
    final = outer * inner == 1
    partials = grad_step if final else torch.empty(outer * channels * inner, device=x.device, dtype=step.dtype)
    launch(_lsq_backward_kernel, tile.programs)(
        grad_y, x, step, grad_x, partials, grad_step, grad_scale,
        qmin=qmin, qmax=qmax, FINAL=final, **_launch_args(view, tile))
    if not final:
        block_ch = min(triton.next_power_of_2(channels), 32)
        block_k = min(triton.next_power_of_2(outer * inner), max(16, 2048 // block_ch))
        launch(_sum_partials_kernel, triton.cdiv(channels, block_ch))(
            partials, step, grad_step, grad_scale, outer * inner, channels, inner,
            BLOCK_CH=block_ch, BLOCK_K=block_k, num_warps=4)
    return grad_x, grad_step


def _lsq_forward_fake(x, step, qmin, qmax, channel_axis, grad_scale=None):
    return torch.empty_like(dense(x))


def _lsq_backward_fake(grad_y, x, step, qmin, qmax, channel_axis, grad_scale):
    return torch.empty_like(dense(x)), torch.empty_like(step)


lsq_backward_triton = define_op("lsq_fast::lsq_backward_triton", _lsq_backward, _lsq_backward_fake)
lsq_forward_triton = define_op("lsq_fast::lsq_forward_triton", _lsq_forward, _lsq_forward_fake)


def _setup_context(ctx, inputs, output):
    x, step, qmin, qmax, channel_axis, grad_scale = inputs
    ctx.save_for_backward(x, step)
    ctx.args = (qmin, qmax, channel_axis, grad_scale)


def _backward(ctx, grad_y):
    x, step = ctx.saved_tensors
    grad_x, grad_step = lsq_backward_triton(grad_y, x, step, *ctx.args)
    return grad_x, grad_step, None, None, None, None


lsq_forward_triton.register_autograd(_backward, setup_context=_setup_context)
