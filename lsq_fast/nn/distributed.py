"""What the quantizer modules need from torch.distributed: the data-parallel world, a sum, a max.

Data parallel training (DistributedDataParallel) splits one global batch across the ranks, so
a quantizer's activation tensor on one rank is a slice of the tensor the model "sees". These
helpers let the modules count and average over the whole of it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


# A constant to torch.compile, which calls it while tracing rather than tracing into it: the
# world does not change during training.
@torch.compiler.assume_constant_result
def world_size() -> int:
    """Ranks in the default process group; 1 outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sums t over the ranks in place (no-op outside torch.distributed). The collective is queued
    on the device like any kernel; nothing waits on the host."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max_(t: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of t over the ranks, in place (no-op outside torch.distributed)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_min_max_(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(minimum of low, maximum of high) over the ranks, element-wise, in one collective: a MAX of
    (-low, high), negation being exact. Returns new tensors; low and high are left as they were."""
    both = all_reduce_max_(torch.cat([-low.reshape(-1), high.reshape(-1)]))
    return (-both[: low.numel()]).reshape(low.shape), both[low.numel() :].reshape(high.shape)
