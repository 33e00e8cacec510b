"""What the quantizer modules need from torch.distributed: the data-parallel world, a sum, a
max, and writes into parameters that FSDP2 has sharded.

Data parallel training (DistributedDataParallel, or FSDP2's fully_shard) splits one global batch
across the ranks, so a quantizer's activation tensor on one rank is a slice of the tensor the
model "sees". These helpers let the modules count and average over the whole of it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

try:  # torch built without distributed support has no DTensor, and no sharded parameters
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover
    DTensor = distribute_tensor = None


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


def is_sharded(t: torch.Tensor) -> bool:
    """Whether t is a DTensor: a parameter that FSDP2 (fully_shard) has sharded, of which this
    rank holds a slice."""
    return DTensor is not None and isinstance(t, DTensor)


def assign_(param: torch.Tensor, value: torch.Tensor) -> None:
    """param.copy_(value) (value the same on every rank, param's full shape), also where param
    is sharded: each rank then writes its own slice of value, with no collective."""
    if is_sharded(param):
        value = distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(value)


def full_value(param: torch.Tensor) -> torch.Tensor:
    """The whole of param: gathered from every rank where it is sharded (a collective: every rank
    must call it), else param itself."""
    return param.full_tensor() if is_sharded(param) else param


def in_sharded_module(module: torch.nn.Module) -> bool:
    """Whether `module` lies inside a module that fully_shard (FSDP2) has sharded, without being
    an FSDP unit of its own: its parameters are then sharded with that module's, and in a forward
    it holds the gathered copy that FSDP2 frees afterwards. Best effort: torch keeps the modules
    it has sharded in a private map (torch.distributed._composable_state), read only here, once
    per quantizer, before its initialisation."""
    try:
        from torch.distributed._composable_state import _module_state_mapping
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover (no FSDP2 in this torch)
        return False
    if isinstance(module, FSDPModule):
        return False
    return any(
        isinstance(m, FSDPModule) and any(sub is module for sub in m.modules())
        for m in list(_module_state_mapping.keys())
    )
