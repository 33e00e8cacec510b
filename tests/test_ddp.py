"""DistributedDataParallel with the gloo backend, two processes on this machine: every rank
initialises from its own slice of the first batch, yet all ranks hold the same steps and
weights after a few SGD steps, equal to one process training on the whole batches."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from lsq_fast import quantize_model
from tiny_models import small_cnn, toy_task

WORLD = 2
STEPS = 3


def batches(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return [toy_task(8, generator=generator) for _ in range(STEPS)]


def train(seed: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """SGD on this rank's slice of every batch (the whole batch when world == 1)."""
    torch.manual_seed(seed)  # the same float weights on every rank
    model = small_cnn()
    quantize_model(model)
    net = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for images, labels in batches(seed):
        images, labels = images.chunk(world)[rank], labels.chunk(world)[rank]
        optimizer.zero_grad()
        F.cross_entropy(net(images), labels).backward()
        optimizer.step()
    return {name: t.detach().clone() for name, t in model.state_dict().items() if isinstance(t, torch.Tensor)}


def _rank_main(rank: int, seed: int, store: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        torch.save(train(seed, rank, WORLD), f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_matches_one_process_on_the_whole_batch(tmp_path, seed):
    results = tmp_path / "state"
    mp.spawn(_rank_main, args=(seed, str(tmp_path / "store"), str(results)), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{results}.{rank}", weights_only=True) for rank in range(WORLD)]
    single = train(seed)

    steps = [name for name in single if name.endswith("quantizer.step")]
    assert len(steps) == 8
    for name, value in single.items():
        assert all(torch.equal(r[name], ranks[0][name]) for r in ranks), f"{name} differs between ranks"
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6, msg=name)
