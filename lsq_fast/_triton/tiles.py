"""Block shapes and warps per size class: the launch configuration of the elementwise kernels.

The choice is a pure function of the shape (never of a timing), for two reasons: no host sync
(the ops can be captured in a CUDA graph), and a step gradient that rounds the same way on
every run, since the tile decides which elements each float32 partial sums. Tile sizes follow
the usual recipe for memory-bound kernels: 16 elements (four 16-byte loads of float32) per
thread at 8 warps for large tensors. A small tensor is a single program, and a weight's rows
(one per output channel) are never split, so that a layer's weight quantizer is one launch
forward and one backward.

Host code here runs twice: eagerly with ints, and under torch.compile with SymInts, where the
triton_op's body is traced with symbolic shapes. Block sizes and warps are compile-time
constants of a kernel, so they must come out as plain ints either way: `pow2_at_least` finds a
power of two by comparisons (each a guard on a size class, never on the exact shape), where
triton.next_power_of_2's bit tricks would hand a SymInt expression to a tl.constexpr. Grids
and sizes may stay symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass

from triton import cdiv

from .layout import STEP_ONE, STEP_PER_ROW, MatrixView

SINGLE_PROGRAM_MAX = 4096  # up to here the whole tensor is one program (one launch)
SMALL_PER_THREAD = 16  # elements per thread in such a program
LARGE_TILE, LARGE_WARPS = 4096, 8
MEDIUM_TILE, MEDIUM_WARPS = 2048, 4
MEDIUM_MAX = 1 << 20
WHOLE_ROW_MAX = 16384  # a weight's row (one output channel) up to this long is one program's


def pow2_at_least(n, cap: int | None = None) -> int:
    """The smallest power of two >= n, or `cap` (a power of two) if that is smaller: a plain
    int even when n is a SymInt (see the module docstring)."""
    p = 1
    while p < n and (cap is None or p < cap):
        p *= 2
    return p


@dataclass(frozen=True)
class Tile:
    block_rows: int
    block_cols: int
    num_warps: int
    grid_rows: int
    grid_cols: int

    @property
    def programs(self) -> int:
        return self.grid_rows * self.grid_cols


def size_class(numel: int) -> tuple[int, int]:
    """(elements per program, warps) for a tensor of `numel` elements."""
    if numel <= SINGLE_PROGRAM_MAX:
        # Warps so that a thread holds at most SMALL_PER_THREAD elements (more spill registers
        # in the longer backwards), a power of two as Triton requires.
        block = max(pow2_at_least(numel, cap=SINGLE_PROGRAM_MAX), 16)
        return block, max(1, min(MEDIUM_WARPS * 2, block // (32 * SMALL_PER_THREAD)))
    if numel <= MEDIUM_MAX:
        return MEDIUM_TILE, MEDIUM_WARPS
    return LARGE_TILE, LARGE_WARPS


def pick_tile(view: MatrixView, elements: int | None = None, warps: int | None = None) -> Tile:
    """The launch of a view: its size class's tile, or `elements`/`warps` where given (the
    tuner, benchmarks/tune_triton.py, tries candidates that way)."""
    numel = view.rows * view.cols
    default_elements, default_warps = size_class(numel)
    elements, warps = elements or default_elements, warps or default_warps
    block_cols = pow2_at_least(view.cols, cap=elements)
    if view.step_mode == STEP_PER_ROW and view.outer == 1 and block_cols < view.cols <= WHOLE_ROW_MAX:
        # Weights: a program takes whole rows, so each channel's step gradient is finished in
        # the backward kernel itself, with no second launch. More warps keep registers in hand.
        block_cols = pow2_at_least(view.cols, cap=WHOLE_ROW_MAX)
        warps = max(warps, min(16, block_cols // 512))
    block_rows = pow2_at_least(view.rows, cap=max(1, elements // block_cols))
    return Tile(block_rows, block_cols, warps, cdiv(view.rows, block_rows), cdiv(view.cols, block_cols))


def one_pass(partials: tuple[int, int, int]) -> bool:
    """Whether partials_shape's [outer, C, inner] is one partial per channel: the backward kernel
    finishes the parameter gradients itself (FINAL, no second launch). A plain bool, even for
    symbolic shapes: it is a kernel's compile-time constant."""
    outer, _, inner = partials
    return bool(outer * inner == 1)


def partials_shape(view: MatrixView, tile: Tile) -> tuple[int, int, int]:
    """The backward's step-gradient partials as [outer, channels, inner]: channel c sums
    [:, c, :]. outer * inner == 1 means each partial is a channel's whole sum (one launch)."""
    if view.step_mode == STEP_ONE:
        return 1, 1, tile.programs
    if view.step_mode == STEP_PER_ROW:
        return view.outer, view.channels, tile.grid_cols
    return tile.grid_rows, view.channels, 1


def sum_blocks(channels, per_channel) -> tuple[int, int]:
    """(BLOCK_CH, BLOCK_K) of a partial-sum launch (tile_math.sum_partials_kernel): up to 32
    channels per program, and a [BLOCK_CH, BLOCK_K] accumulator of at most 2048 values. The
    blocks depend on the shape alone, so the summation order does too."""
    block_ch = pow2_at_least(channels, cap=32)
    return block_ch, pow2_at_least(per_channel, cap=max(16, 2048 // block_ch))
