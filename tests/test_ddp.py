"""DistributedDataParallel with the gloo backend, two processes on this machine: every rank
initialises from its own slice of the first batch, yet all ranks hold the same steps, equal to
one process's on the whole batch, and at every SGD step the same gradients as one process from
the same parameters (quantizer parameters within the contract's bound). The same
for LSQ+ and QIL models, and for each family quantizer's initialisation on its own (LSQ+'s
min/max and MSE search, LSQ+'s 3-sigma weight init, QIL's interval)."""

import copy
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from lsq_fast import LSQPlusQuantizer, LSQQuantizer, QILQuantizer, quantize_model
from lsq_oracle import QuantizerTaps, assert_quantizer_grads_within
from tiny_models import small_cnn, toy_task

WORLD = 2
STEPS = 3


def batches(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return [toy_task(8, generator=generator) for _ in range(STEPS)]


def train(seed: int, rank: int = 0, world: int = 1, method: str = "lsq", follow: str | None = None) -> dict:
    """SGD on this rank's slice of every batch (the whole batch when world == 1). Returns, per
    step, the state the forward used (after the first step's initialisation) and every
    parameter's gradient; one process (world == 1) also gives the contract's bound of each
    quantizer parameter's gradient (lsq_oracle.QuantizerTaps). With `follow` (a file of one
    process's run), the steps after the first start from that run's state: every step then
    compares gradients from the same parameters, not trajectories that rounding can part
    (a last-bit change in a step can move a value across a rounding tie, and then a level)."""
    torch.manual_seed(seed)  # the same float weights on every rank
    model = small_cnn()
    quantize_model(model, method=method)
    net = DistributedDataParallel(model) if world > 1 else model
    # QIL's intervals get unscaled sums of gradients: a smaller rate (test_modules.py)
    interval = [p for name, p in model.named_parameters() if method == "qil" and "quantizer." in name]
    rest = [p for p in net.parameters() if not any(p is q for q in interval)]
    groups = [dict(params=rest)] + ([dict(params=interval, lr=0.001)] if interval else [])
    optimizer = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    leader = torch.load(follow, weights_only=False)["steps"] if follow else None
    taps = QuantizerTaps(model) if world == 1 else None
    steps = []
    for t, (images, labels) in enumerate(batches(seed)):
        if leader and t > 0:
            model.load_state_dict(leader[t]["state"])
        images, labels = images.chunk(world)[rank], labels.chunk(world)[rank]
        optimizer.zero_grad()
        with warnings.catch_warnings():  # QIL on the image: its negative values clip to 0, as it says
            warnings.simplefilter("ignore", UserWarning)
            F.cross_entropy(net(images), labels).backward()
        steps.append({
            "state": copy.deepcopy(model.state_dict()),  # tensors, and the quantizers' extra state
            "grads": {k: p.grad.detach().clone() for k, p in model.named_parameters()},
            "bounds": taps.bounds() if taps else None,
        })
        optimizer.step()
    return {"steps": steps}


def assert_same_steps(ranks: list[dict], single: dict, what: str = "") -> None:
    """The ranks agree to the bit; the first step's initialised state equals one process's; at
    every step the quantizer parameters' gradients are within the contract's bound of the exact
    sums (one process's terms), the float weights' within float32 rounding of one process's."""
    for t, step in enumerate(single["steps"]):
        for r in ranks:
            for kind in ("state", "grads"):
                for k, v in r["steps"][t][kind].items():
                    other = ranks[0]["steps"][t][kind][k]
                    same = torch.equal(v, other) if isinstance(v, torch.Tensor) else v == other
                    assert same, f"{what}{k} ({kind}, step {t}) differs between ranks"
        mine = ranks[0]["steps"][t]
        if t == 0:  # the initialisation: statistics summed over the ranks, in float64
            for k, v in step["state"].items():
                if isinstance(v, torch.Tensor):
                    torch.testing.assert_close(mine["state"][k], v, rtol=1e-5, atol=1e-7, msg=what + k)
                else:
                    assert mine["state"][k] == v, what + k
        bounds = step["bounds"]
        assert_quantizer_grads_within(mine["grads"], bounds, f"{what}step {t}: ")
        assert_quantizer_grads_within(step["grads"], bounds, f"{what}step {t}, one process: ")
        for k in step["grads"].keys() - bounds.keys():  # weights and biases: a sum over the batch, in halves
            want = step["grads"][k]
            torch.testing.assert_close(mine["grads"][k], want, rtol=1e-5, atol=1e-5 * float(want.abs().max()), msg=what + k)


def _rank_main(rank: int, seed: int, store: str, results: str, follow: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        torch.save(train(seed, rank, WORLD, follow=follow), f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_matches_one_process_on_the_whole_batch(tmp_path, seed):
    single = train(seed)
    torch.save(single, tmp_path / "single")
    results = tmp_path / "state"
    mp.spawn(_rank_main, args=(seed, str(tmp_path / "store"), str(results), str(tmp_path / "single")),
             nprocs=WORLD, join=True)
    ranks = [torch.load(f"{results}.{rank}", weights_only=False) for rank in range(WORLD)]
    assert len(single["steps"][0]["bounds"]) == 8  # 4 layers' weight and input steps
    assert_same_steps(ranks, single)


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


def _family_rank_main(rank: int, seed: int, store: str, results: str, follow: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        state = {"init": family_init(seed, rank, WORLD)}
        for method in ("lsq+", "qil"):
            state[method] = train(seed, rank, WORLD, method, follow=f"{follow}.{method}")
        torch.save(state, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_family_matches_one_process(tmp_path, seed):
    single = {"init": family_init(seed)}
    for method in ("lsq+", "qil"):
        single[method] = train(seed, method=method)
        torch.save(single[method], tmp_path / f"single.{method}")
    results = tmp_path / "state"
    mp.spawn(_family_rank_main, args=(seed, str(tmp_path / "store"), str(results), str(tmp_path / "single")),
             nprocs=WORLD, join=True)
    ranks = [torch.load(f"{results}.{rank}", weights_only=False) for rank in range(WORLD)]

    init = single["init"]
    assert ranks[0]["init"].keys() == init.keys()
    assert sum(k.startswith("mse") and ".after-first." in k for k in init) == 4
    for name, value in init.items():
        assert all(torch.equal(r["init"][name], ranks[0]["init"][name]) for r in ranks), f"{name} differs between ranks"
        # min/max and the MSE candidates are exact; 3-sigma's sums within float64 rounding
        torch.testing.assert_close(ranks[0]["init"][name], value, rtol=1e-5, atol=1e-7, msg=name)
    assert len(single["lsq+"]["steps"][0]["bounds"]) == 4 + 8  # weight steps; input steps and offsets
    assert len(single["qil"]["steps"][0]["bounds"]) == 4 * 3 + 4 * 2  # weights: c, d, gamma; inputs: c, d
    for method in ("lsq+", "qil"):
        assert_same_steps([r[method] for r in ranks], single[method], f"{method}: ")
