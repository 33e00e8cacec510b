"""How a dense tensor's memory looks to a per-channel kernel: a [rows, cols] matrix in which
one step size covers the whole tensor, each row, or each column."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# How the step is indexed inside a kernel (a tl.constexpr): STEP_ONE for per-tensor,
# STEP_PER_ROW when row r uses step[r % channels], STEP_PER_COL when column c uses step[c].
STEP_ONE, STEP_PER_ROW, STEP_PER_COL = 0, 1, 2


@dataclass(frozen=True)
class MatrixView:
    """x's memory as a row-major [rows, cols] matrix, and which step covers which element."""

    rows: int
    cols: int
    channels: int
    step_mode: int

    @property
    def outer(self) -> int:
        """Rows that share a channel (STEP_PER_ROW): the memory is [outer][channels][cols]."""
        return self.rows // self.channels if self.step_mode == STEP_PER_ROW else 1


def matrix_view(x: torch.Tensor, channel_axis: int | None) -> MatrixView:
    """The view of a dense x: per-tensor is one long row; a channel axis of stride `inner`
    splits memory into [outer][C][inner], which is rows of length inner (a step per row),
    or, when the channel axis is the fastest (channels_last activations, the last axis),
    rows of C columns (a step per column). Every axis is read in place, none copied."""
    numel = x.numel()
    if channel_axis is None or x.shape[channel_axis] == 1:
        return MatrixView(1, numel, 1, STEP_ONE)
    channels = x.shape[channel_axis]
    inner = x.stride(channel_axis)
    if inner == 1:
        return MatrixView(numel // channels, channels, channels, STEP_PER_COL)
    return MatrixView(numel // inner, inner, channels, STEP_PER_ROW)

