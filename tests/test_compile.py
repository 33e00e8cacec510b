"""torch.compile, op by op and on whole models. The ops of LSQ's relatives (LSQ+, QIL weights
and activations, LSQ's arctan soft-round backward, per-group LSQ and LSQ+) on each fused backend: one graph (fullgraph),
forward and backward, with eager mode's numbers (the forward and grad_x to the bit, the parameter
gradients within the contract's bound of the exact sum). Quantized models: no graph break in the
quantizers, forward or backward, and the same numbers as eager. (LSQ's own ops:
test_op_registration.py.)

Under Triton's CPU interpreter the Triton ops are opaque custom ops (see
lsq_fast/_triton/registration.py); on a GPU they are triton_ops that torch.compile traces into."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import lsq_fast
from lsq_fast import quantize_model
from lsq_oracle import (
    QuantizerTaps, assert_grad_within, assert_quantizer_grads_within, assert_same_bits, lsq_plus_bounds,
    lsq_step_bound, make_step, make_x, qil_oracle,
)
from tiny_models import METHODS, small_cnn, toy_task

SHAPE = (4, 8, 6, 6)
FORWARD_OP = {"lsq_plus": "lsq_plus_forward", "lsq_plus_per_channel": "lsq_plus_forward", "qil_weight": "qil_forward",
              "qil_activation": "qil_forward", "lsq_arctan": "lsq_forward", "lsq_arctan_per_channel": "lsq_forward",
              "lsq_per_group": "lsq_forward", "lsq_plus_per_group": "lsq_plus_forward"}
GROUP = 3  # per-group steps: SHAPE's last axis in groups of 3
QUANTIZERS = list(FORWARD_OP)
K = 3.0  # the arctan soft round's sharpness


def family(impl, name):
    if impl.backend == "cuda" and name.startswith(("lsq_plus", "qil")):
        pytest.skip("LSQ+ and QIL have no CUDA C++ kernels (backend='triton' runs them on CUDA tensors)")
    return impl


def case(name, impl):
    """(fn, inputs, bounds): a function of leaf tensors that calls the quantizer on impl's
    backend, its float32 inputs on impl's device (x first), and bounds(grad_y): the contract's
    Bound of each parameter's gradient (the inputs after x), from the CPU inputs."""
    backend = impl.backend
    if name.endswith("per_group"):  # the oracle on x's rows of one group (each a channel, axis 0)
        rows = SHAPE[0] * SHAPE[1] * SHAPE[2] * SHAPE[3] // GROUP
        groups = (*SHAPE[:-1], SHAPE[-1] // GROUP)
        step = make_step(rows)
        plus = name.startswith("lsq_plus")
        offset = torch.randn(rows) * 0.1 if plus else torch.zeros(rows)
        x_rows = make_x((rows, GROUP), step, 4, not plus, 0) + offset[:, None]

        def fn(x, step, *offset):
            if plus:
                return lsq_fast.lsq_plus_quantize(x, step, *offset, 4, group_size=GROUP, backend=backend)
            return lsq_fast.lsq_quantize(x, step, 4, group_size=GROUP, backend=backend)

        inputs = (x_rows.reshape(SHAPE), step.reshape(groups)) + ((offset.reshape(groups),) if plus else ())

        def bounds(gy):
            gy = gy.reshape(-1, GROUP)
            if plus:
                return list(lsq_plus_bounds(x_rows, step, offset, gy, 4, False, 0).values())
            return [lsq_step_bound(x_rows, step, gy, 4, True, 0)]
    elif name.startswith("lsq_plus"):
        axis = 1 if name.endswith("per_channel") else None
        step = make_step(1 if axis is None else SHAPE[1])
        offset = torch.randn(step.shape) * 0.1
        x = make_x(SHAPE, step, 4, False, axis) + (offset if axis is None else offset[:, None, None])

        def fn(x, step, offset):
            return lsq_fast.lsq_plus_quantize(x, step, offset, 4, channel_axis=axis, backend=backend)

        inputs = (x, step, offset)
        bounds = lambda gy: list(lsq_plus_bounds(x, step, offset, gy, 4, False, axis).values())  # noqa: E731
    elif name == "qil_weight":
        def fn(w, center, distance, gamma):
            return lsq_fast.qil_quantize_weight(w, center, distance, gamma, 4, backend=backend)

        inputs = (torch.randn(SHAPE) * 0.5, torch.tensor([0.4]), torch.tensor([0.3]), torch.tensor([0.8]))
        bounds = lambda gy: list(qil_oracle(*inputs, gy, True)[1].values())  # noqa: E731
    elif name == "qil_activation":
        def fn(x, center, distance):
            return lsq_fast.qil_quantize_activation(x, center, distance, 3, backend=backend)

        inputs = (torch.randn(SHAPE), torch.tensor([0.6]), torch.tensor([0.5]))
        bounds = lambda gy: list(qil_oracle(*inputs, None, gy, False)[1].values())[:2]  # noqa: E731
    else:
        axis = 1 if name.endswith("per_channel") else None
        step = make_step(1 if axis is None else SHAPE[1])

        def fn(x, step):
            return lsq_fast.lsq_quantize(x, step, 4, channel_axis=axis, round_grad="arctan", k=K, backend=backend)

        inputs = (make_x(SHAPE, step, 4, True, axis), step)
        bounds = lambda gy: [lsq_step_bound(inputs[0], step, gy, 4, True, axis, soft_round_k=K)]  # noqa: E731
    return fn, tuple(impl.put(t) for t in inputs), bounds


def run(fn, inputs, grad_y):
    """(y, grads of every input) of fn on fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    return y.detach(), torch.autograd.grad(y, leaves, grad_y)


@pytest.mark.parametrize("name", QUANTIZERS)
def test_torch_compile_fullgraph_matches_eager(impl, seed, name):
    family(impl, name)
    torch._dynamo.reset()
    fn, inputs, bounds = case(name, impl)
    grad_y = impl.put(torch.randn(SHAPE))
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    y, grads = run(compiled, inputs, grad_y)
    y_eager, grads_eager = run(fn, inputs, grad_y)
    assert_same_bits(y.cpu(), y_eager.cpu())
    assert len(grads) == len(inputs)
    for i, (got, want) in enumerate(zip(grads, grads_eager)):
        assert got.shape == want.shape and got.dtype == want.dtype, i
    assert_same_bits(grads[0].cpu(), grads_eager[0].cpu())  # grad_x: elementwise, to the bit
    # Parameter gradients are sums: Inductor may recompile the kernels and reorder the float32
    # partials, so both are held to the contract's bound of the exact sum, not to each other's bits.
    for i, b in enumerate(bounds(grad_y.cpu()), start=1):
        assert_grad_within(grads[i], b, f"compiled gradient of input {i}")
        assert_grad_within(grads_eager[i], b, f"eager gradient of input {i}")
    assert all(g.abs().sum() > 0 for g in grads)  # not a vacuous check


@pytest.mark.parametrize("name", QUANTIZERS)
def test_no_graph_breaks(impl, seed, name):
    """Without fullgraph: one frame, one graph, no break, forward and backward."""
    family(impl, name)
    torch._dynamo.reset()
    counters.clear()
    fn, inputs, _ = case(name, impl)
    counter = CompileCounterWithBackend("aot_eager")
    y, _ = run(torch.compile(fn, backend=counter), inputs, torch.ones(SHAPE, device=impl.device))
    assert counter.frame_count == 1 and len(counter.graphs) == 1, counter.graphs
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert y.shape == SHAPE
    # the graph calls the backend's fused op (not the reference's PyTorch operations), with the soft round's k
    op = f"lsq_fast.{FORWARD_OP[name]}" + ("_triton" if impl.backend == "triton" else "")
    targets = [(n, str(n.target).removesuffix(".default")) for n in counter.graphs[0].graph.nodes]
    calls = [n for n, target in targets if n.op == "call_function" and target == op]
    assert len(calls) == 1, [target for _, target in targets]
    if name.startswith("lsq_arctan"):
        assert calls[0].args[-1] == K, calls[0].args


# -- quantized models ------------------------------------------------------------------------------


def train_step(model, images, labels):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    # names as the model gives them, not as the compiled wrapper does ("_orig_mod." + name)
    return loss.detach(), {name.removeprefix("_orig_mod."): p.grad.clone() for name, p in model.named_parameters()}


@pytest.fixture
def quantized_block(seed):
    model = small_cnn()
    quantize_model(model, per_channel_weights=True)
    return model, toy_task(8)


def test_compile_fullgraph_after_first_step(quantized_block):
    """The first (initialising) step eager, then forward and backward as one graph each."""
    model, (images, labels) = quantized_block
    train_step(model, images, labels)
    eager = copy.deepcopy(model)
    taps = QuantizerTaps(eager)  # eager's quantizers give the bounds of both models' step gradients
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):
        loss, grads = train_step(compiled, images, labels)
        loss_ref, grads_ref = train_step(eager, images, labels)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
        assert grads.keys() == grads_ref.keys()
        bounds = taps.bounds()
        assert len(bounds) == 8  # 4 layers' weight and input steps
        assert_quantizer_grads_within(grads, bounds, "compiled: ")
        assert_quantizer_grads_within(grads_ref, bounds, "eager: ")
        for name in grads.keys() - bounds.keys():  # the float weights and biases
            torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-5, msg=name)
        with torch.no_grad():  # move the steps, as training would
            for m in (model, eager):
                for name, p in m.named_parameters():
                    p -= 0.01 * grads_ref[name]


def test_compile_from_cold_breaks_only_to_initialise(quantized_block):
    model, (images, labels) = quantized_block
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    train_step(compiled, images, labels)  # initialisation: a graph break, once
    assert all(q.initialized for name, q in model.named_modules() if name.endswith("quantizer"))
    counters.clear()
    train_step(compiled, images, labels)
    train_step(compiled, images, labels)
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("name", ["lsq-arctan", "lsq+", "qil"])
def test_compile_breaks_only_to_initialise(seed, name):
    """As the tests above for LSQ: the quantizers' forward, after the initialising step,
    holds no graph break, and gives eager's loss."""
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))  # small: compiling is the cost
    quantize_model(model, **METHODS[name])
    images, labels = torch.randn(8, 12), torch.randint(0, 4, (8,))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    with pytest.warns(UserWarning, match="negative values") if name == "qil" else contextlib.nullcontext():
        F.cross_entropy(compiled(images), labels).backward()  # initialisation: a graph break, once
    eager = copy.deepcopy(model)
    taps = QuantizerTaps(eager)  # the eager twin's quantizers: the bounds of both models' gradients
    counters.clear()
    for _ in range(2):
        model.zero_grad(), eager.zero_grad()
        loss = F.cross_entropy(compiled(images), labels)
        loss.backward()
        loss_ref = F.cross_entropy(eager(images), labels)
        loss_ref.backward()
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
        bounds = taps.bounds()
        for (k, p), p_ref in zip(model.named_parameters(), eager.parameters()):
            if k in bounds:  # a quantizer parameter: both within the contract's bound of the exact sum
                assert_grad_within(p.grad, bounds[k], k)
                assert_grad_within(p_ref.grad, bounds[k], k + " (eager)")
            else:
                torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=k)
        assert len(bounds) == {"lsq-arctan": 4, "lsq+": 6, "qil": 10}[name]  # LSQ+ weights: a step, no offset
    taps.close()
    assert not counters["graph_break"], dict(counters["graph_break"])
