"""What the data-parallel tests share (test_ddp.py, test_fsdp.py): two gloo ranks on this
machine, a training run that one process and the ranks do alike, and the comparison of the two.

The ranks meet through a file store under the test's tmp_path (no port to clash with another
run) and are killed if they have not finished within a deadline, so a hang fails the test
rather than CI. A training run records, per step, the state the forward used and every
parameter's gradient as whole tensors (gathered where FSDP2 shards them), so that one process
and the ranks compare key by key.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import lsq_fast
from lsq_oracle import Bound, QuantizerTaps, assert_quantizer_grads_within
from tiny_models import METHODS, TinyLlama, small_cnn, small_mlp, token_task, toy_task

WORLD = 2
STEPS = 3
DEADLINE_S = 240  # a run of test_fsdp.py's takes about 40 s on CI's two cores

needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


def spawn(fn, tmp_path: Path, *args) -> list:
    """fn(rank, *args) on WORLD gloo ranks; returns what each rank's fn returned (torch.save'd
    to tmp_path). Raises if a rank fails or the deadline passes (then every rank is killed)."""
    context = mp.start_processes(
        _rank_main, args=(fn, str(tmp_path), args), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            raise TimeoutError(f"the {WORLD} ranks did not finish within {DEADLINE_S} s")
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _rank_main(rank: int, fn, tmp: str, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
    try:
        torch.save(fn(rank, *args), f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# -- the model, its batches, its wrapping ---------------------------------------------------------


def batches(seed: int, model: str = "cnn"):
    """STEPS batches: the CNN's of 8 images, the MLP's of 16 vectors, the transformer's of 8
    token sequences."""
    generator = torch.Generator().manual_seed(seed)
    if model == "cnn":
        return [toy_task(8, generator=generator) for _ in range(STEPS)]
    if model == "llama":
        return [token_task(8, generator=generator) for _ in range(STEPS)]
    return [(torch.randn(16, 64, generator=generator), torch.randint(0, 10, (16,), generator=generator))
            for _ in range(STEPS)]


def make_model(seed: int, model: str = "cnn", method: str = "lsq", per_channel: bool | int = False):
    """The float model (the same weights on every rank), quantized by quantize_model; an int
    per_channel is a weight_group_size (weight-only, as LLM QAT runs; the transformer's
    embedding too, tied to its head)."""
    torch.manual_seed(seed)
    net = {"cnn": small_cnn, "mlp": small_mlp, "llama": TinyLlama}[model]()
    options = dict(METHODS[method])
    if model == "llama":
        options.update(quantize_embeddings=True)
    if per_channel is True or per_channel is False:
        lsq_fast.quantize_model(net, per_channel_weights=per_channel, **options)
    else:
        options.update(first_last_bits=None, act_bits=None)
        lsq_fast.quantize_model(net, weight_group_size=per_channel, **options)
    return net


def shard(net: torch.nn.Module, mp_policy=None) -> torch.nn.Module:
    """The FSDP2 recipe: the quantizers their own units, then fully_shard on every layer (the
    transformer: on every block, its tied embedding and head left to the root) and on the root
    (with `mp_policy` where given)."""
    from torch.distributed.fsdp import fully_shard

    lsq_fast.fully_shard_quantizers(net)
    policy = dict(mp_policy=mp_policy) if mp_policy is not None else {}
    units = net.blocks if isinstance(net, TinyLlama) else [
        m for m in net.modules() if isinstance(m, (lsq_fast.QuantConv2d, lsq_fast.QuantLinear))]
    for layer in units:
        fully_shard(layer, **policy)
    fully_shard(net, **policy)
    return net


def optimizer_for(net: torch.nn.Module, method: str) -> torch.optim.Optimizer:
    """SGD, lr 0.05, momentum 0.9; QIL's intervals get unscaled sums of gradients: a smaller
    rate for them (test_modules.py)."""
    interval = [p for name, p in net.named_parameters() if method == "qil" and "quantizer." in name]
    rest = [p for p in net.parameters() if not any(p is q for q in interval)]
    groups = [dict(params=rest)] + ([dict(params=interval, lr=0.001)] if interval else [])
    return torch.optim.SGD(groups, lr=0.05, momentum=0.9)


def loss_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of classes (B, C) or of next tokens (B, T, V)."""
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten())


def whole_state(net: torch.nn.Module) -> dict:
    """The state dict with whole tensors: gathered from the shards under FSDP2 (every rank)."""
    if _is_fsdp(net):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True))
    return copy.deepcopy(net.state_dict())


def load_whole_state(net: torch.nn.Module, state: dict) -> None:
    """Loads a state dict of whole tensors (one process's), into the shards under FSDP2."""
    if _is_fsdp(net):
        lsq_fast.load_full_state_dict(net, state)
    else:
        net.load_state_dict(state)


def whole_grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: lsq_fast.nn.distributed.full_value(p.grad).detach().clone() for k, p in net.named_parameters()}


def _is_fsdp(net: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(net, FSDPModule)


# -- a training run, and the comparison of the ranks' with one process's --------------------------


def train(seed: int, rank: int = 0, world: int = 1, method: str = "lsq", follow: dict | None = None, *,
          parallel: str = "ddp", model: str = "cnn", per_channel: bool = False) -> dict:
    """SGD on this rank's slice of every batch (the whole batch when world == 1), the model
    wrapped by DistributedDataParallel (parallel="ddp") or sharded by FSDP2 ("fsdp"). Returns,
    per step, the state the forward used (after the first step's initialisation), every
    parameter's gradient, and the contract's bound of each quantizer parameter's gradient from
    this rank's own terms (lsq_oracle.QuantizerTaps: its slice of the batch, the upstream
    gradient it computed). With `follow` (one process's
    run), the steps after the first start from that run's state: every step then compares
    gradients from the same parameters, not trajectories that rounding can part (a last-bit
    change in a step can move a value across a rounding tie, and then a level)."""
    net = make_model(seed, model, method, per_channel)
    if world > 1:
        net = DistributedDataParallel(net) if parallel == "ddp" else shard(net)
    inner = net.module if isinstance(net, DistributedDataParallel) else net
    optimizer = optimizer_for(net, method)
    taps = QuantizerTaps(inner, accumulate=True)  # a tied weight's quantizer runs twice a forward
    steps = []
    for t, (inputs, labels) in enumerate(batches(seed, model)):
        if follow and t > 0:
            load_whole_state(inner, follow["steps"][t]["state"])
        inputs, labels = inputs.chunk(world)[rank], labels.chunk(world)[rank]
        optimizer.zero_grad()
        taps.clear()
        with warnings.catch_warnings():  # QIL on the image: its negative values clip to 0, as it says
            warnings.simplefilter("ignore", UserWarning)
            loss_of(net(inputs), labels).backward()
        steps.append({
            "state": whole_state(inner),  # tensors, and the quantizers' extra state
            "grads": whole_grads(inner),
            "bounds": taps.bounds(),
        })
        optimizer.step()
    return {"steps": steps}


def mean_bounds(bounds: list[dict[str, Bound]]) -> dict[str, Bound]:
    """The bound of a gradient the ranks average (DDP's all-reduce, FSDP2's reduce-scatter):
    the mean of each rank's exact sum, within the mean of their bounds (the reduction's own
    rounding, a few float32 ulps of the result, is far inside 1e-5 of the terms)."""
    return {name: Bound(sum(b[name].exact for b in bounds) / len(bounds), sum(b[name].bound for b in bounds) / len(bounds))
            for name in bounds[0]}


def assert_same_steps(ranks: list[dict], single: dict, what: str = "") -> None:
    """The ranks agree to the bit; the first step's initialised state equals one process's; at
    every step the quantizer parameters' gradients are within the contract's bound of the exact
    sums of the ranks' terms (a weight quantizer's upstream gradient is each rank's sum over its
    slice of the batch, which rounds otherwise than one process's sum over the whole), and one
    process's within the bound of its own; the float weights' within float32 rounding of one
    process's."""
    for t, step in enumerate(single["steps"]):
        for r in ranks:
            for kind in ("state", "grads"):
                assert r["steps"][t][kind].keys() == ranks[0]["steps"][t][kind].keys()
                for k, v in r["steps"][t][kind].items():
                    other = ranks[0]["steps"][t][kind][k]
                    same = torch.equal(v, other) if isinstance(v, torch.Tensor) else v == other
                    assert same, f"{what}{k} ({kind}, step {t}) differs between ranks"
        mine = ranks[0]["steps"][t]
        assert mine["state"].keys() == step["state"].keys(), what
        if t == 0:  # the initialisation: statistics summed over the ranks, in float64
            for k, v in step["state"].items():
                if isinstance(v, torch.Tensor):
                    torch.testing.assert_close(mine["state"][k], v, rtol=1e-5, atol=1e-7, msg=what + k)
                else:
                    assert mine["state"][k] == v, what + k
        bounds = step["bounds"]
        assert_quantizer_grads_within(mine["grads"], mean_bounds([r["steps"][t]["bounds"] for r in ranks]),
                                      f"{what}step {t}: ")
        assert_quantizer_grads_within(step["grads"], bounds, f"{what}step {t}, one process: ")
        for k in step["grads"].keys() - bounds.keys():  # weights and biases: a sum over the batch, in halves
            want = step["grads"][k]
            torch.testing.assert_close(mine["grads"][k], want, rtol=1e-5, atol=1e-5 * float(want.abs().max()), msg=what + k)
