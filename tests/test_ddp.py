"""DistributedDataParallel with the gloo backend, two processes on this machine: every rank
initialises from its own slice of the first batch, yet all ranks hold the same steps and
weights after a few SGD steps, equal to one process training on the whole batches. The same
for LSQ+ and QIL models, and for each family quantizer's initialisation on its own (LSQ+'s
min/max and MSE search, LSQ+'s 3-sigma weight init, QIL's interval)."""

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from lsq_fast import LSQPlusQuantizer, LSQQuantizer, QILQuantizer, quantize_model
from tiny_models import small_cnn, toy_task

WORLD = 2
STEPS = 3


def batches(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return [toy_task(8, generator=generator) for _ in range(STEPS)]


def train(seed: int, rank: int = 0, world: int = 1, method: str = "lsq") -> dict[str, torch.Tensor]:
    """SGD on this rank's slice of every batch (the whole batch when world == 1)."""
    torch.manual_seed(seed)  # the same float weights on every rank
    model = small_cnn()
    quantize_model(model, method=method)
    net = DistributedDataParallel(model) if world > 1 else model
    # QIL's intervals get unscaled sums of gradients: a smaller rate (test_family_modules.py)
    interval = [p for name, p in model.named_parameters() if method == "qil" and "quantizer." in name]
    rest = [p for p in net.parameters() if not any(p is q for q in interval)]
    groups = [dict(params=rest)] + ([dict(params=interval, lr=0.001)] if interval else [])
    optimizer = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    for images, labels in batches(seed):
        images, labels = images.chunk(world)[rank], labels.chunk(world)[rank]
        optimizer.zero_grad()
        with warnings.catch_warnings():  # QIL on the image: its negative values clip to 0, as it says
            warnings.simplefilter("ignore", UserWarning)
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


# -- the family's initialisation, quantizer by quantizer; LSQ+ and QIL models -----------------------


def family_init(seed: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """Each family quantizer initialised from this rank's slice of the same batches (the whole
    batches when world == 1). The MSE search samples every element here (MSE_SAMPLES above the
    element count), so that the ranks together see what one process sees."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.2, 1.0, 5.0]).reshape(1, 3, 1, 1)
    first, second = (torch.randn(8, 3, 5, 5, generator=generator) * scale + 0.3 for _ in range(2))
    weight = torch.randn(6, 3, 3, 3, generator=generator)  # every rank holds all of it

    def mine(x: torch.Tensor) -> torch.Tensor:
        return x.chunk(world)[rank]

    made = {
        "minmax": LSQPlusQuantizer(4, channel_axis=1, num_channels=3),
        "mse": LSQPlusQuantizer(3, init="mse", init_batches=2),
        "mse-channels": LSQPlusQuantizer(2, True, channel_axis=1, num_channels=3, init="mse", init_batches=2),
        "3sigma": LSQQuantizer(4, True, channel_axis=1, num_channels=3, init="lsq+"),
        "qil-activation": QILQuantizer(4, "activation"),
        "qil-weight": QILQuantizer(3, "weight"),
    }
    out = {}
    for name, q in made.items():
        q.MSE_SAMPLES = 10_000
        if name == "qil-activation":
            q(mine(first).relu())
        elif name == "qil-weight":
            q(weight)
        else:
            q(mine(first))
        if not q.initialized:  # the MSE search's first batch: the running min/max estimate, synced
            out.update({f"{name}.after-first.{k}": v.detach().clone() for k, v in q.named_parameters()})
            q(mine(second))
        assert q.initialized
        out.update({f"{name}.{k}": v.detach().clone() for k, v in q.named_parameters()})
    return out


def _family_rank_main(rank: int, seed: int, store: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        state = {f"init.{k}": v for k, v in family_init(seed, rank, WORLD).items()}
        for method in ("lsq+", "qil"):
            state.update({f"{method}.{k}": v for k, v in train(seed, rank, WORLD, method).items()})
        torch.save(state, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_family_matches_one_process(tmp_path, seed):
    results = tmp_path / "state"
    mp.spawn(_family_rank_main, args=(seed, str(tmp_path / "store"), str(results)), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{results}.{rank}", weights_only=True) for rank in range(WORLD)]
    single = {f"init.{k}": v for k, v in family_init(seed).items()}
    for method in ("lsq+", "qil"):
        single.update({f"{method}.{k}": v for k, v in train(seed, method=method).items()})

    assert ranks[0].keys() == single.keys()
    assert sum(k.startswith("init.mse") and ".after-first." in k for k in single) == 4
    assert sum(k.endswith(("quantizer.offset", "quantizer.center")) for k in single) == 4 + 8
    for name, value in single.items():
        assert all(torch.equal(r[name], ranks[0][name]) for r in ranks), f"{name} differs between ranks"
        # min/max and the MSE candidates are exact; sums (3-sigma's, the gradients') within rounding
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6, msg=name)
