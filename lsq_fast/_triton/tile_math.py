"""@triton.jit helpers shared by the quantizer kernels: tile indexing, step loading, rounding.

No `from __future__ import annotations` in kernel files: Triton reads parameter annotations
(tl.constexpr, tl.float64) as objects.
"""

import triton
import triton.language as tl

from .._args import STEP_FLOOR as _STEP_FLOOR
from .layout import STEP_ONE as _STEP_ONE
from .layout import STEP_PER_ROW as _STEP_PER_ROW

STEP_FLOOR = tl.constexpr(_STEP_FLOOR)
STEP_ONE = tl.constexpr(_STEP_ONE)
STEP_PER_ROW = tl.constexpr(_STEP_PER_ROW)


@triton.jit
def tile_indices(n_rows, n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ONE_ROW: tl.constexpr):
    """This program's tile of the [n_rows, n_cols] matrix: rows, columns, block coordinates,
    the in-bounds mask and the memory offsets, all int64 so tensors past 2^31 elements work.

    With ONE_ROW (per-tensor: memory is one long row) the offsets are the columns alone, so the
    compiler sees contiguous, aligned blocks and issues 16-byte loads whatever n_cols is.
    """
    pid = tl.program_id(0).to(tl.int64)
    grid_cols = tl.cdiv(n_cols, BLOCK_C)
    row_block = pid // grid_cols
    col_block = pid - row_block * grid_cols
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = col_block * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    if ONE_ROW:
        offsets = cols[None, :]  # BLOCK_R == 1
    else:
        offsets = rows[:, None] * n_cols + cols[None, :]
    return rows, cols, row_block, col_block, mask, offsets


@triton.jit
def load_step(step_ptr, rows, cols, n_rows, n_cols, channels, STEP_MODE: tl.constexpr):
    """The step of each element of the tile, broadcastable to [BLOCK_R, BLOCK_C], clamped to
    STEP_FLOOR (a where, not a max, so that a NaN step stays NaN as in the reference)."""
    if STEP_MODE == STEP_ONE:
        s = tl.load(step_ptr)
    elif STEP_MODE == STEP_PER_ROW:
        s = tl.load(step_ptr + rows % channels, mask=rows < n_rows, other=1.0)[:, None]
    else:
        s = tl.load(step_ptr + cols, mask=cols < n_cols, other=1.0)[None, :]
    return tl.where(s < STEP_FLOOR, STEP_FLOOR, s)


@triton.jit
def round_half_to_even(v):
    """rint(v) for |v| < 2^22 (2^51 in float64), the sign of zero included.

    Adding 1.5 * 2^23 moves v to where float32's spacing is 1, so the add itself rounds to an
    integer in the FPU's round-to-nearest-even mode; subtracting it back is exact. It is the
    same code under the CPU interpreter (which has no libdevice rint) and on a GPU, and
    without fast-math nothing may reassociate it away.
    """
    if v.dtype == tl.float64:
        r = (v + 6755399441055744.0) - 6755399441055744.0
    else:
        r = (v + 12582912.0) - 12582912.0
    return tl.where(r == 0.0, v * 0.0, r)  # rint(-0.3) is -0.0; v * 0.0 carries v's sign


@triton.jit
def clip_and_round(u, qmin, qmax):
    """round(clip(u, qmin, qmax)); the clip is a where so that NaN passes through as NaN."""
    v = tl.where(u < qmin, qmin, tl.where(u > qmax, qmax, u))
    return round_half_to_even(v)


@triton.jit
def ieee_div(x, s):
    """x / s correctly rounded. Triton's `/` on float32 is an approximate divide (2 ulp);
    div_rn is IEEE. float64 division is always IEEE (and div_rn takes float32 only)."""
    if x.dtype == tl.float64:
        return x / s
    return tl.math.div_rn(x, s)


@triton.jit
def cast_for_store(y, ptr):
    """y (float32 math) in the element type of `ptr`, rounded to nearest even.

    float32 -> bfloat16 is rounded here with integer arithmetic rather than by `.to()`: the
    CPU interpreter truncates in that conversion, and one code path everywhere means CI tests
    what the GPU runs. NaN stays a quiet NaN.
    """
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(y != y, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return y.to(ptr.dtype.element_ty)
