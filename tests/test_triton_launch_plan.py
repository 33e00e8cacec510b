"""How the Triton backend lays a tensor out for its kernels (pure Python: no kernel runs).

The plan decides which elements share a step and how many launches a call takes; tests of the
numbers themselves are in test_ops_lsq.py."""

import pytest
import torch

pytest.importorskip("triton")
from lsq_fast._triton.layout import STEP_ONE, STEP_PER_COL, STEP_PER_ROW, matrix_view  # noqa: E402
from lsq_fast.ops.layout import is_dense  # noqa: E402
from lsq_fast._triton.tiles import one_pass, partials_shape, pick_tile  # noqa: E402


@pytest.mark.parametrize(
    "make,axis,want",
    [
        (lambda: torch.empty(8, 64, 56, 56), None, (1, 8 * 64 * 56 * 56, 1, STEP_ONE)),
        (lambda: torch.empty(512, 256, 3, 3), 0, (512, 2304, 512, STEP_PER_ROW)),
        (lambda: torch.empty(8, 64, 7, 7), 1, (512, 49, 64, STEP_PER_ROW)),
        (lambda: torch.empty(8, 64, 7, 7).to(memory_format=torch.channels_last), 1, (392, 64, 64, STEP_PER_COL)),
        (lambda: torch.empty(40, 3000), 1, (40, 3000, 3000, STEP_PER_COL)),
        (lambda: torch.empty(12, 10).t(), 0, (12, 10, 10, STEP_PER_COL)),  # axis 0 of the transpose is the fast one
        (lambda: torch.empty(4, 1, 5), 1, (1, 20, 1, STEP_ONE)),  # one channel is per-tensor
    ],
)
def test_matrix_view(make, axis, want):
    x = make()
    view = matrix_view(x, axis)
    assert (view.rows, view.cols, view.channels, view.step_mode) == want


def test_dense_layouts_are_read_in_place():
    assert is_dense(torch.empty(3, 4, 5).permute(2, 0, 1))
    assert is_dense(torch.empty(2, 3, 4, 5).to(memory_format=torch.channels_last))
    assert is_dense(torch.empty(3, 1, 4)[:, :, :])
    assert not is_dense(torch.empty(4, 6)[:, ::2])
    assert not is_dense(torch.empty(4, 1).expand(4, 3))


@pytest.mark.parametrize(
    "shape,axis",
    [((64, 64, 3, 3), 0), ((512, 512, 3, 3), 0), ((64, 3, 7, 7), 0), ((1000, 512), 0), ((4096, 11008), 0), ((4096,), None)],
)
def test_layer_sized_quantizers_finish_the_step_gradient_in_one_launch(shape, axis):
    """Weights (a step per row of whole rows) and small per-tensor quantizers need no second,
    reducing launch: each channel's sum is complete in one program."""
    view = matrix_view(torch.empty(shape), axis)
    outer, _, inner = partials_shape(view, pick_tile(view))
    assert outer * inner == 1


@pytest.mark.parametrize("shape,group", [((4096, 4096), 128), ((14336, 4096), 128), ((4096, 14336), 128),
                                         ((4096, 4096), 32), ((4096, 4096), 64), ((1024, 4096), 256), ((4096, 4096), 4096)])
def test_per_group_steps_are_one_pass_with_whole_groups_in_registers(shape, group):
    """Per-group steps run on x's [numel / G, G] rows: every tile holds whole groups (one
    group per tile row), so each group's step gradient is a row sum of the tile, finished by
    the backward kernel itself: no second launch, no partials buffer."""
    rows = shape[0] * shape[1] // group
    view = matrix_view(torch.empty(shape, device="meta").view(rows, group), 0)
    tile = pick_tile(view)
    assert tile.block_cols >= group and tile.grid_cols == 1
    assert one_pass(partials_shape(view, tile))
    assert tile.block_rows * tile.block_cols <= 16384  # registers: at most 16K elements a program


@pytest.mark.parametrize("numel", [1, 17, 4096, 4097, 1 << 20, (1 << 20) + 1, 1 << 26])
def test_tiles_cover_the_tensor(numel):
    view = matrix_view(torch.empty(numel), None)
    tile = pick_tile(view)
    assert tile.block_rows == 1 and tile.block_cols & (tile.block_cols - 1) == 0
    assert tile.grid_cols * tile.block_cols >= numel and (tile.grid_cols - 1) * tile.block_cols < numel
