"""@triton.jit helpers shared by the quantizer kernels (LSQ, LSQ+, QIL): tile indexing, per-step
parameter loading, rounding, uncontracted products, and the step-gradient partials (per tile,
their fixed-order sum, the final scaling).

No `from __future__ import annotations` in kernel files: Triton reads parameter annotations
(tl.constexpr, tl.float64) as objects.
"""

import triton
import triton.language as tl

from ..ops.args import STEP_FLOOR as _STEP_FLOOR
from .layout import STEP_ONE as _STEP_ONE
from .layout import STEP_PER_ROW as _STEP_PER_ROW

STEP_FLOOR = tl.constexpr(_STEP_FLOOR)
STEP_ONE = tl.constexpr(_STEP_ONE)
STEP_PER_ROW = tl.constexpr(_STEP_PER_ROW)
# Decided when this module is imported, as @triton.jit decides between compiling and interpreting.
INTERPRETED = tl.constexpr(bool(triton.knobs.runtime.interpret))


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
def load_per_step(ptr, rows, cols, n_rows, n_cols, channels, STEP_MODE: tl.constexpr):
    """A parameter laid out like the step (one value, or one per channel: LSQ's step, LSQ+'s
    offset) for each element of the tile, broadcastable to [BLOCK_R, BLOCK_C], as stored."""
    if STEP_MODE == STEP_ONE:
        p = tl.load(ptr)
    elif STEP_MODE == STEP_PER_ROW:
        p = tl.load(ptr + rows % channels, mask=rows < n_rows, other=1.0)[:, None]
    else:
        p = tl.load(ptr + cols, mask=cols < n_cols, other=1.0)[None, :]
    return p


@triton.jit
def load_step(step_ptr, rows, cols, n_rows, n_cols, channels, STEP_MODE: tl.constexpr):
    """The step of each element of the tile, clamped to STEP_FLOOR (a where, not a max, so that
    a NaN step stays NaN as in the reference)."""
    s = load_per_step(step_ptr, rows, cols, n_rows, n_cols, channels, STEP_MODE)
    return tl.where(s < STEP_FLOOR, STEP_FLOOR, s)


@triton.jit
def to_math(v, x_ptr):
    """v in the math dtype of the tensor behind x_ptr: float32 for every input dtype, float64 for
    float64 input, as the reference (a float32 parameter with float64 x computes in float64)."""
    if x_ptr.dtype.element_ty == tl.float64:
        return v.to(tl.float64)
    else:  # an else, not a fall-through: the compiler checks every return it walks past for one type
        return v.to(tl.float32)


@triton.jit
def host_scalar(value, like):
    """A float argument of the host (a tl.float64 argument; a Python float under the interpreter)
    in like's dtype, rounded once from the double, as C's `(float)value`. Adding it to a zero of
    like's dtype is what works the same both ways: compiled, the float64 scalar promotes the
    sum to float64 and .to() rounds it; interpreted, the Python float takes like's dtype."""
    return (tl.zeros([], like.dtype) + value).to(like.dtype)


@triton.jit
def mul_rn(a, b):
    """a * b, rounded on its own: never contracted with a following add or subtract into an FMA.

    The reference (PyTorch, operation by operation) rounds every product; with FMA contraction,
    on by default in Triton's GPU backend, `a * b + c` would round once, and the float32 forward
    of LSQ+ and QIL would no longer equal the reference bit for bit. PTX's mul.rn (an explicit
    rounding mode) is never contracted, whatever the compile options, so this holds under
    torch.compile too, where a launch option (enable_fp_fusion=False) may not get through
    wrap_triton. Not libdevice's mul_rn: Triton links libdevice in flush-to-zero mode
    (mul.rn.ftz), which would flush subnormal operands as the reference does not. The
    interpreter (numpy) rounds every operation anyway and has no PTX.
    """
    tl.static_assert(a.dtype == b.dtype, "mul_rn: both operands in the math dtype")
    if INTERPRETED:
        return a * b
    elif a.dtype == tl.float64:
        return tl.inline_asm_elementwise("mul.rn.f64 $0, $1, $2;", "=d,d,d", [a, b], dtype=tl.float64,
                                         is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)


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
    else:  # not a fall-through: the compiler walks it, and div_rn rejects float64
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


@triton.jit
def tile_partials(terms, rows, cols, row_block, col_block, n_rows, n_cols,
                  BLOCK_C: tl.constexpr, STEP_MODE: tl.constexpr):
    """This tile's sums of `terms` (zero outside the mask) per step, and where they go: the sum
    of the whole tile (per-tensor), of each row (a step per row) or of each column (a step per
    column), its index in the partials [outer, C, inner] (see tiles.partials_shape), and the
    store mask. When each partial is a channel's whole sum (the backward's FINAL), that index
    is the channel's: a single program (per-tensor), grid_cols == 1 and outer == 1 (rows), or
    grid_rows == 1 (columns)."""
    if STEP_MODE == STEP_ONE:
        return tl.sum(terms), tl.program_id(0).to(tl.int64), True
    elif STEP_MODE == STEP_PER_ROW:
        return tl.sum(terms, axis=1), rows * tl.cdiv(n_cols, BLOCK_C) + col_block, rows < n_rows
    else:
        return tl.sum(terms, axis=0), row_block * n_cols + cols, cols < n_cols


@triton.jit
def finish_scaled_grad(grad_ptr, index, total, grad_scale: tl.float64, mask):
    """grad = g * total, in float64 then cast, as the CPU kernels do (LSQ+'s offset gradient)."""
    grad = total.to(tl.float64) * grad_scale
    tl.store(grad_ptr + index, grad.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def finish_step_grad(grad_step_ptr, step_ptr, index, total, grad_scale: tl.float64, mask):
    """grad_step = g * total, in float64 then cast, as the CPU kernels do; zero where the step
    is below STEP_FLOOR (or NaN), since the clamp to the floor passes no gradient there."""
    raw = tl.load(step_ptr + index, mask=mask, other=1.0)
    grad = tl.where(raw >= STEP_FLOOR, total.to(tl.float64) * grad_scale, 0.0)
    tl.store(grad_step_ptr + index, grad.to(grad_step_ptr.dtype.element_ty), mask=mask)


@triton.jit
def channel_sums(partial_ptr, ch, ch_mask, n_per_channel, channels, n_inner,
                 BLOCK_CH: tl.constexpr, BLOCK_K: tl.constexpr):
    """sum of partial[o, c, i] over o and i for the channels `ch`, in the partials' dtype, in an
    order fixed by the shape: the same bits on every run. Offsets are int64 (k and ch widened
    before any product), so partials past 2^31 are indexed right."""
    acc = tl.zeros([BLOCK_CH, BLOCK_K], dtype=partial_ptr.dtype.element_ty)
    ch_offsets = ch.to(tl.int64) * n_inner
    for start in range(0, n_per_channel, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K).to(tl.int64)
        outer = k // n_inner
        offsets = (outer * channels * n_inner + (k - outer * n_inner))[None, :] + ch_offsets[:, None]
        acc += tl.load(partial_ptr + offsets, mask=ch_mask[:, None] & (k < n_per_channel)[None, :], other=0.0)
    return tl.sum(acc, axis=1)


@triton.jit
def sum_partials_kernel(
    partial_ptr, step_ptr, grad_step_ptr, grad_offset_ptr, grad_scale: tl.float64,
    n_partials, n_per_channel, channels, n_inner, BLOCK_CH: tl.constexpr, BLOCK_K: tl.constexpr, OFFSET: tl.constexpr,
):
    """The second launch of LSQ's and LSQ+'s backward, when partials are not whole channels:
    grad_step[c] = g * sum of the step partials; with OFFSET (LSQ+), also grad_offset[c] = g *
    sum of the offset partials, stored right after the step's (n_partials = outer * C * inner
    further: the host's product, so no int32 product here can overflow)."""
    ch = tl.program_id(0).to(tl.int64) * BLOCK_CH + tl.arange(0, BLOCK_CH)
    ch_mask = ch < channels
    total = channel_sums(partial_ptr, ch, ch_mask, n_per_channel, channels, n_inner, BLOCK_CH, BLOCK_K)
    finish_step_grad(grad_step_ptr, step_ptr, ch, total, grad_scale, ch_mask)
    if OFFSET:
        total = channel_sums(partial_ptr + n_partials, ch, ch_mask, n_per_channel, channels, n_inner,
                             BLOCK_CH, BLOCK_K)
        finish_scaled_grad(grad_offset_ptr, ch, total, grad_scale, ch_mask)

