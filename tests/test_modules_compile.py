"""torch.compile of quantized models: no graph break in the quantizers, forward or backward,
and the same numbers as eager."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from lsq_fast import quantize_model
from lsq_oracle import QuantizerTaps, assert_quantizer_grads_within
from tiny_models import small_cnn, toy_task


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
