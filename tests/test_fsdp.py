"""FSDP2 (fully_shard) with the gloo backend, two processes on this machine, with the recipe of
lsq_fast.nn.fsdp: fully_shard_quantizers(model), then fully_shard on every layer and on the root.

- Training: the small CNN and the MLP, every method, per-tensor and per-channel weights (and
  the MLP weight-only with per-group LSQ and LSQ+ weights), each
  rank half of every batch: the first step's initialisation lands in the sharded parameters,
  equal to one process's on the whole batch, and every step's gradients equal one process's
  from the same parameters (quantizer parameters within the contract's bound). The same for
  each family quantizer's initialisation on its own (LSQ+'s MSE search over two batches), and
  for a layer's quantizers initialised over two batches with no backward between them.
- MixedPrecisionPolicy(param_dtype=torch.bfloat16): the quantizers' parameters stay float32 in
  the forward, in their gradients and in the optimizer, and the run follows one process under
  torch.autocast(bfloat16), which casts the same tensors to the same dtype.
- The optimizer post-step clamp on sharded steps: local, no collective; repr on one rank.
- Checkpoints: sharded (torch.distributed.checkpoint) and whole state dicts, into fresh sharded
  models and into one process's model and back: the same outputs, the quantizers initialised.
- torch.compile of the sharded model trains as the eager one does.
- A quantizer sharded with its layer (plain fully_shard) raises at its first forward instead of
  training on placeholders; under the bfloat16 policy, the error says what to do.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import lsq_fast
from distributed_harness import (
    WORLD, assert_same_steps, batches, load_whole_state, make_model, needs_gloo, optimizer_for, shard,
    spawn, train, whole_state,
)
from family_init import assert_family_init, family_init
from lsq_fast.nn.quantizer import LearnedQuantizer
from tiny_models import METHODS

pytestmark = needs_gloo

# (model, method, per-channel weights): every method, per-tensor and per-channel where it has them
CONFIGS = [
    (model, method, per_channel)
    for model in ("cnn", "mlp")
    for method in METHODS
    for per_channel in (False, True)
    if not (per_channel and method == "qil")
] + [("mlp", "lsq", 32), ("mlp", "lsq+", 16),  # per-group weights (groups of 32 and 16 inputs), weight-only
      ("llama", "lsq", 32), ("llama", "lsq+", 32)]  # and the transformer, its embedding tied to its head


def quantizers(net: torch.nn.Module) -> dict[str, LearnedQuantizer]:
    return {name: m for name, m in net.named_modules() if isinstance(m, LearnedQuantizer)}


# -- training: every model, method and weight granularity ----------------------------------------


def _training_ranks(rank: int, seed: int, singles: dict) -> dict:
    out = {"init": family_init(seed, rank, WORLD, sharded=True)}
    for config in CONFIGS:
        model, method, per_channel = config
        # Each step after the first starts from one process's state, loaded into the shards by
        # lsq_fast.load_full_state_dict (the transformer's tied quantizer, one module under two
        # names, included: torch's own loader fails on the second name).
        out[config] = train(seed, rank, WORLD, method, singles[config], parallel="fsdp", model=model,
                            per_channel=per_channel)
    return out


def test_fsdp_training_matches_one_process(tmp_path, seed):
    singles = {config: train(seed, method=config[1], model=config[0], per_channel=config[2]) for config in CONFIGS}
    ranks = spawn(_training_ranks, tmp_path, seed, singles)
    assert_family_init([r["init"] for r in ranks], family_init(seed))
    for config, single in singles.items():
        granularity = {True: "per-channel", False: "per-tensor"}.get(config[2], f"group {config[2]}")
        what = f"{config[0]} {config[1]} {granularity}: "
        flags = [v for k, v in ranks[0][config]["steps"][0]["state"].items() if k.endswith("quantizer.initialized")]
        # (the transformer's tied quantizer counts under both of its names)
        quantizers = {"cnn": 8, "mlp": 6 if config[2] in (True, False) else 3, "llama": 2 * 7 + 2}[config[0]]
        assert len(flags) == quantizers and all(flags), what  # initialised at the first step
        assert_same_steps([r[config] for r in ranks], single, what)


# -- a layer's initialisation over several batches, before any backward ----------------------------


def _calibrated(seed: int, rank: int = 0, world: int = 1) -> dict:
    """The MLP with LSQ+'s MSE search (over 2 batches) on every layer's input, run on 2 batches
    without gradients (a calibration pass, no backward between them): the initialised state."""
    net = make_model(seed, "mlp", "lsq+")
    for layer in net:
        if isinstance(layer, lsq_fast.QuantLinear):
            q = layer.input_quantizer
            layer.input_quantizer = lsq_fast.LSQPlusQuantizer(q.bits, q.signed, init="mse", init_batches=2)
            layer.input_quantizer.MSE_SAMPLES = 10_000  # every element: the ranks together see one process's
    if world > 1:
        shard(net)
    with torch.no_grad():
        for inputs, _ in batches(seed, "mlp")[:2]:
            net(inputs.chunk(world)[rank])
    return whole_state(net)


def _calibrated_ranks(rank: int, seed: int) -> dict:
    return _calibrated(seed, rank, WORLD)


def test_fsdp_initialisation_over_batches_without_backward(tmp_path, seed):
    single = _calibrated(seed)
    assert all(v for k, v in single.items() if k.endswith("initialized"))
    for r in spawn(_calibrated_ranks, tmp_path, seed):
        assert r.keys() == single.keys()
        for k, v in single.items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(r[k], v, rtol=1e-5, atol=1e-7, msg=k)
            else:
                assert r[k] == v, k


# -- mixed precision: bfloat16 layers, float32 quantizers -----------------------------------------

BF16_RTOL = 1e-3  # measured on seeds 0-3: the losses of 3 steps within 2.5e-5 of one process's


def _mixed_run(seed: int, rank: int = 0, world: int = 1) -> dict:
    """3 SGD steps of the LSQ MLP in bfloat16 compute: FSDP2's bfloat16 policy on the ranks,
    torch.autocast in one process. Returns the losses, the initialised state and the dtypes the
    quantizers' parameters had in each forward (after FSDP2's gather)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    net = make_model(seed, "mlp")
    seen = set()
    for q in quantizers(net).values():
        q.register_forward_pre_hook(lambda m, args: seen.update(str(p.dtype) for p in m.parameters()))
    if world > 1:
        shard(net, MixedPrecisionPolicy(param_dtype=torch.bfloat16))
    optimizer = optimizer_for(net, "lsq")
    losses = []
    for t, (inputs, labels) in enumerate(batches(seed, "mlp")):
        inputs, labels = inputs.chunk(world)[rank], labels.chunk(world)[rank]
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=world == 1):
            logits = net(inputs)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        losses.append(loss.detach())
        if t == 0:
            state = whole_state(net)
        optimizer.step()
    learned = {name: p for name, p in net.named_parameters() if "quantizer." in name}
    params = {name: (str(p.dtype), str(p.grad.dtype)) for name, p in learned.items()}
    momenta = {str(optimizer.state[p]["momentum_buffer"].dtype) for p in learned.values()}
    if world > 1:  # the mean loss of the whole batch
        losses = torch.stack(losses)
        torch.distributed.all_reduce(losses)
        losses = losses / world
    return {"losses": torch.as_tensor(losses).tolist(), "state": state, "seen": seen, "params": params,
            "momenta": momenta, "logits_dtype": str(logits.dtype)}


def _mixed_ranks(rank: int, seed: int) -> dict:
    return _mixed_run(seed, rank, WORLD)


def test_fsdp_bfloat16_policy_keeps_quantizers_float32(tmp_path, seed):
    single = _mixed_run(seed)
    ranks = spawn(_mixed_ranks, tmp_path, seed)
    mine = ranks[0]
    assert mine["logits_dtype"] == "torch.bfloat16"  # the layers did run in bfloat16
    assert mine["seen"] == {"torch.float32"}, "a quantizer's parameter reached its forward cast"
    assert set(mine["params"].values()) == {("torch.float32", "torch.float32")}
    assert mine["momenta"] == {"torch.float32"}
    assert ranks[1]["losses"] == mine["losses"]
    for k, v in single["state"].items():  # the initialisation, from the same bfloat16 tensors
        if k.endswith("quantizer.step"):
            torch.testing.assert_close(mine["state"][k], v, rtol=1e-3, atol=0, msg=k)
    torch.testing.assert_close(torch.tensor(mine["losses"]), torch.tensor(single["losses"]), rtol=BF16_RTOL, atol=0)


# -- the post-step clamp on sharded steps ---------------------------------------------------------


def _clamp_ranks(rank: int, seed: int) -> dict:
    from torch.distributed.tensor.debug import CommDebugMode

    net = shard(make_model(seed, "mlp", per_channel=True))
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    inputs, labels = batches(seed, "mlp")[0]
    F.cross_entropy(net(inputs.chunk(WORLD)[rank]), labels.chunk(WORLD)[rank]).backward()
    for q in quantizers(net).values():
        q.step.grad.fill_(1e3)  # a step of lr * 1e3 takes every step far below zero
    with CommDebugMode() as comms:
        optimizer.step()
    values = {name: q.step.to_local().clone() for name, q in quantizers(net).items()}
    text = repr(net) if rank == 0 else ""  # one rank alone: no collective may hide in it
    return {"collectives": comms.get_total_counts(), "steps": values, "repr": text,
            "floors": {name: q.min_step for name, q in quantizers(net).items()}}


def test_fsdp_clamp_keeps_sharded_steps_positive_locally(tmp_path, seed):
    ranks = spawn(_clamp_ranks, tmp_path, seed)
    assert "step=(sharded)" in ranks[0]["repr"]
    for r in ranks:
        assert r["collectives"] == 0
        for name, local in r["steps"].items():
            assert torch.all(local == r["floors"][name]), name


# -- checkpoints ----------------------------------------------------------------------------------


def _checkpoint_ranks(rank: int, seed: int, tmp: str) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    out = {}
    inputs = batches(seed, "mlp")[0][0]
    mine = inputs.chunk(WORLD)[rank]
    for method in ("lsq", "lsq+", "qil"):
        net = shard(make_model(seed, "mlp", method))
        trained = train_steps(net, seed, rank, method)
        # sharded: each rank writes and reads its shards
        dcp.save(get_model_state_dict(trained), checkpoint_id=f"{tmp}/{method}")
        fresh = shard(make_model(seed + 1, "mlp", method))  # other weights, quantizers uninitialised
        state = get_model_state_dict(fresh)
        dcp.load(state, checkpoint_id=f"{tmp}/{method}")
        set_model_state_dict(fresh, state)
        # whole: into one process's model (every rank makes its own) and back into a sharded one
        whole = whole_state(trained)
        plain = make_model(seed + 2, "mlp", method)
        plain.load_state_dict(whole)
        back = shard(make_model(seed + 3, "mlp", method))
        load_whole_state(back, plain.state_dict())
        with torch.no_grad():
            outputs = {name: m.eval()(mine) for name, m in
                       (("trained", trained), ("sharded", fresh), ("back", back), ("plain", plain))}
            outputs["plain-whole"] = plain(inputs)
        out[method] = {
            "outputs": outputs,
            "extra": {name: (q._initialized, q.get_extra_state()) for name, q in quantizers(fresh).items()},
            "extra-back": {name: (q._initialized, q.get_extra_state()) for name, q in quantizers(back).items()},
            "extra-trained": {name: (q._initialized, q.get_extra_state()) for name, q in quantizers(trained).items()},
        }
    return out


def train_steps(net, seed: int, rank: int, method: str):
    optimizer = optimizer_for(net, method)
    for inputs, labels in batches(seed, "mlp"):
        optimizer.zero_grad()
        F.cross_entropy(net(inputs.chunk(WORLD)[rank]), labels.chunk(WORLD)[rank]).backward()
        optimizer.step()
    return net


def test_fsdp_checkpoints_round_trip(tmp_path, seed):
    ranks = spawn(_checkpoint_ranks, tmp_path, seed, str(tmp_path))
    for method in ("lsq", "lsq+", "qil"):
        halves = []
        for rank, r in enumerate(ranks):
            run = r[method]
            assert run["extra"] == run["extra-trained"] == run["extra-back"], method
            assert all(initialized for initialized, _ in run["extra"].values()), method
            out = run["outputs"]
            for name in ("sharded", "back"):
                assert torch.equal(out[name], out["trained"]), f"{method}: {name} rank {rank}"
            torch.testing.assert_close(out["plain"], out["trained"], rtol=1e-5, atol=1e-6, msg=method)
            halves.append(out["trained"])
        torch.testing.assert_close(torch.cat(halves), ranks[0][method]["outputs"]["plain-whole"], rtol=1e-5,
                                   atol=1e-6, msg=method)


# -- torch.compile ---------------------------------------------------------------------------------


def _compile_ranks(rank: int, seed: int) -> dict:
    runs = {}
    for compiled in (False, True):
        net = shard(make_model(seed, "mlp"))
        model = torch.compile(net) if compiled else net
        optimizer = optimizer_for(net, "lsq")
        losses = []
        for inputs, labels in batches(seed, "mlp"):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs.chunk(WORLD)[rank]), labels.chunk(WORLD)[rank])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        runs[compiled] = {"losses": losses, "state": whole_state(net)}
    return runs


def test_fsdp_compiled_model_trains_as_eager(tmp_path, seed):
    for r in spawn(_compile_ranks, tmp_path, seed):
        eager, compiled = r[False], r[True]
        torch.testing.assert_close(compiled["losses"], eager["losses"], rtol=1e-4, atol=1e-6)
        for k, v in eager["state"].items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(compiled["state"][k], v, rtol=1e-4, atol=1e-6, msg=k)


# -- what goes wrong without the recipe, said clearly ---------------------------------------------


def _without_recipe_ranks(rank: int, seed: int) -> dict:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    errors = {}
    for name, policy in (("plain", {}), ("bfloat16", dict(mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16)))):
        net = make_model(seed, "mlp")
        if name == "bfloat16":  # initialised before sharding: now the dtype is what goes wrong
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                net(batches(seed, "mlp")[0][0].chunk(WORLD)[rank])
        for layer in net:
            if isinstance(layer, lsq_fast.QuantLinear):
                fully_shard(layer, **policy)
        fully_shard(net, **policy)
        try:
            net(batches(seed, "mlp")[0][0].chunk(WORLD)[rank])
        except (RuntimeError, TypeError) as e:
            errors[name] = (type(e).__name__, str(e))
    twice = make_model(seed, "mlp")
    lsq_fast.fully_shard_quantizers(twice)
    try:
        lsq_fast.fully_shard_quantizers(twice)
    except ValueError as e:
        errors["twice"] = ("ValueError", str(e))
    late = make_model(seed, "mlp")
    fully_shard(late)
    try:
        lsq_fast.fully_shard_quantizers(late)
    except ValueError as e:
        errors["late"] = ("ValueError", str(e))
    return errors


def test_fsdp_without_the_recipe_raises_clearly(tmp_path, seed):
    for errors in spawn(_without_recipe_ranks, tmp_path, seed):
        assert errors.keys() == {"plain", "bfloat16", "twice", "late"}
        kind, message = errors["plain"]
        assert kind == "RuntimeError" and "would initialise inside the forward of a module sharded by FSDP2" in message
        assert "fully_shard_quantizers" in message
        kind, message = errors["bfloat16"]
        assert kind == "TypeError" and "is torch.bfloat16 in this forward" in message
        assert "fully_shard_quantizers" in message
        assert "call fully_shard_quantizers once" in errors["twice"][1]
        assert "before fully_shard" in errors["late"][1]


def test_load_full_state_dict_names_keys_that_do_not_fit():
    """A state dict with a key the model lacks, or without one of its tensors (under its first
    name), is a KeyError naming them, before anything is loaded; a tied model's second names
    may be absent."""
    net = make_model(0, "llama", "lsq", 32)
    state = net.state_dict()
    with pytest.raises(KeyError, match="unexpected keys \\['bogus'\\]"):
        lsq_fast.load_full_state_dict(net, {**state, "bogus": torch.zeros(1)})
    first = next(iter(state))
    with pytest.raises(KeyError, match=f"missing keys \\['{first}'\\]"):
        lsq_fast.load_full_state_dict(net, {k: v for k, v in state.items() if k != first})
