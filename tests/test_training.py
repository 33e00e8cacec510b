"""What a user needs around the training loop: quantize_model's grad_scale, calibrate (the
quantizers initialised from data, nothing else touched), param_groups for the optimizer, and the
floor of the steps (steps_at_floor and the optimizer hook's warning)."""

import copy
import warnings

import pytest
import torch

import lsq_fast
from lsq_fast.nn import positive
from tiny_models import TinyLlama, small_cnn, toy_task


def quantizers(model):
    return [m for m in model.modules() if isinstance(m, lsq_fast.nn.quantizer.LearnedQuantizer)]


@pytest.mark.parametrize("method", ["lsq", "lsq+"])
def test_grad_scale_reaches_every_quantizer(seed, method):
    model = small_cnn()
    lsq_fast.quantize_model(model, method=method, grad_scale=1.0)
    assert quantizers(model) and all(q.grad_scale == 1.0 for q in quantizers(model))
    default = small_cnn()
    lsq_fast.quantize_model(default, method=method)
    assert all(q.grad_scale is None for q in quantizers(default))  # LSQ's 1/sqrt(N * qmax)


def test_grad_scale_turns_the_step_gradient_scale_off(seed):
    images, _ = toy_task(8)
    grads = []
    for grad_scale in (None, 1.0):
        torch.manual_seed(0)
        model = small_cnn()
        lsq_fast.quantize_model(model, grad_scale=grad_scale)
        model(images).square().sum().backward()
        grads.append(model[0].weight_quantizer.step.grad)
    n = model[0].weight.numel()
    qmax = 2 ** (8 - 1) - 1  # the first layer: 8 bits
    torch.testing.assert_close(grads[0], grads[1] / (n * qmax) ** 0.5, rtol=1e-5, atol=0)


def test_grad_scale_errors():
    with pytest.raises(ValueError, match="grad_scale needs method 'lsq' or 'lsq\\+'"):
        lsq_fast.quantize_model(small_cnn(), method="qil", grad_scale=1.0)
    with pytest.raises(TypeError, match="grad_scale must be a Python float"):
        lsq_fast.quantize_model(small_cnn(), grad_scale="1")
    with pytest.raises(ValueError, match="grad_scale must be finite"):
        lsq_fast.QuantConfig(grad_scale=float("inf"))


@pytest.mark.parametrize("method", ["lsq", "lsq+", "qil"])
def test_calibrate_initialises_the_quantizers_and_nothing_else(seed, method):
    model = small_cnn(batch_norm=True)
    lsq_fast.quantize_model(model, method=method)
    model.train()
    model[2].eval()  # a module the user left in eval: still in eval afterwards
    modes = {name: m.training for name, m in model.named_modules()}
    before = copy.deepcopy(model.state_dict())
    twin = copy.deepcopy(model)
    images, _ = toy_task(16)
    batches = [images[:8], images[8:]]
    assert lsq_fast.calibrate(model, batches) == len(quantizers(model))
    assert all(q._initialized for q in quantizers(model))
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = model.state_dict()
    quantizer_keys = {k for k in after if "quantizer." in k}
    for key, value in before.items():
        if key not in quantizer_keys:  # BatchNorm's running statistics and counters, weights, biases
            assert torch.equal(after[key], value), key
    assert all(p.grad is None for p in model.parameters())

    # the steps are those of an eval-mode forward: BatchNorm by its running statistics
    twin.eval()
    for q in quantizers(twin):
        q.train()
    with torch.no_grad():
        twin(images[:8])
    for (name, p), (_, expected) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(p, expected), name

    assert lsq_fast.calibrate(model, batches) == 0  # already initialised: left as they are


def test_calibrate_tuple_batches_and_forward(seed):
    model = small_cnn()
    lsq_fast.quantize_model(model)
    images, labels = toy_task(8)
    seen = []
    lsq_fast.calibrate(model, [(images, labels)], forward=lambda m, batch: seen.append(m(batch[0])))
    assert len(seen) == 1 and all(q._initialized for q in quantizers(model))
    other = small_cnn()
    lsq_fast.quantize_model(other)
    lsq_fast.calibrate(other, [(images,)])  # a tuple: positional inputs
    assert all(q._initialized for q in quantizers(other))


def test_calibrate_errors():
    with pytest.raises(ValueError, match="has no quantizer"):
        lsq_fast.calibrate(small_cnn(), [torch.randn(2, 3, 12, 12)])
    model = small_cnn()
    lsq_fast.quantize_model(model)
    with pytest.raises(RuntimeError, match="no batch reached 0.weight_quantizer"):
        lsq_fast.calibrate(model, [])
    assert model.training


def test_param_groups_partition_the_parameters(seed):
    model = TinyLlama()
    lsq_fast.quantize_model(model, weight_bits=4, act_bits=None, first_last_bits=None, weight_group_size=32,
                            quantize_embeddings=True)
    groups = lsq_fast.param_groups(model, weight_decay=1e-4, quantizer_lr=1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))  # tied: once
    weights, steps = groups
    assert weights["weight_decay"] == 1e-4 and "lr" not in weights
    assert steps["weight_decay"] == 0.0 and steps["lr"] == 1e-3
    assert {id(p) for p in steps["params"]} == {id(p) for q in quantizers(model) for p in q.parameters()}
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # the optimizer takes them as they are


def test_param_groups_qil_rate(seed):
    model = small_cnn()
    lsq_fast.quantize_model(model, method="qil", act_bits=4)
    groups = lsq_fast.param_groups(model, weight_decay=1e-4, qil_lr=1e-4)
    assert [g.get("lr") for g in groups] == [None, 1e-4] and groups[1]["weight_decay"] == 0.0
    assert len(lsq_fast.param_groups(model)) == 2  # no LSQ quantizer: no empty group


@pytest.fixture
def watch(monkeypatch):
    """A fresh floor watch that looks at every optimizer step."""
    monkeypatch.setattr(positive, "_WATCH", positive._FloorWatch())
    monkeypatch.setattr(positive, "FLOOR_CHECK_EVERY", 1)


def drive_to_the_floor(q: torch.nn.Module, steps: int) -> None:
    optimizer = torch.optim.SGD(q.parameters(), lr=1.0)
    for _ in range(steps):
        q.step.grad = torch.full_like(q.step, 1e3)
        optimizer.step()


def test_a_step_at_its_floor_warns_once(seed, watch):
    q = lsq_fast.LSQQuantizer(2, True, role="weight")
    q.train()
    q(torch.randn(64))
    assert lsq_fast.steps_at_floor(q) == {}
    with pytest.warns(RuntimeWarning, match=r"LSQQuantizer\(.*\)\.step has reached its floor \(1e-08\)"):
        drive_to_the_floor(q, 2)  # the first step's check is read at the second
    assert torch.equal(q.step, torch.full_like(q.step, 1e-8))
    assert lsq_fast.steps_at_floor(q) == {"step": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drive_to_the_floor(q, 3)  # once per quantizer


def test_steps_at_floor_names_them_in_a_model(seed, watch):
    model = small_cnn()
    lsq_fast.quantize_model(model, per_channel_weights=True)
    lsq_fast.calibrate(model, [toy_task(4)[0]])
    q = model[0].weight_quantizer
    with torch.no_grad():
        q.step[:2] = q.min_step
    found = lsq_fast.steps_at_floor(model)
    assert found == {"0.weight_quantizer.step": 2 / q.step.numel()}


def test_no_warning_while_the_steps_are_fine(seed, watch):
    model = small_cnn()
    lsq_fast.quantize_model(model)
    images, labels = toy_task(8)
    optimizer = torch.optim.SGD(lsq_fast.param_groups(model, weight_decay=1e-4), lr=0.01, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
