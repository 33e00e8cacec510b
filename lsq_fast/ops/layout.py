"""Which memory layouts the ops read in place: every backend's rule, and their fake kernels'
(an op's output has the layout of its dense input)."""

from __future__ import annotations

import torch


def is_dense(x: torch.Tensor) -> bool:
    """True when x covers a gap-free block of memory in some dimension order (contiguous,
    channels_last, any permutation): such a tensor is read in place, in memory order."""
    expected = 1
    for size, stride in sorted(((s, st) for s, st in zip(x.shape, x.stride()) if s != 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def dense(x: torch.Tensor) -> torch.Tensor:
    return x if is_dense(x) else x.contiguous()


def like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t with x's strides (copied only when they differ), so both are walked in one order."""
    if t.dtype == x.dtype and all(st == sx for n, st, sx in zip(x.shape, t.stride(), x.stride()) if n != 1):
        return t
    return torch.empty_like(x).copy_(t)
