"""lsq_fast.convert: the inference layers give the quantized layers' eval outputs bit for bit
(every layer type and method, per-tensor, per-channel and per-group weights, every width, ties
and clip points), hold integer codes, share a tied weight, and round-trip through a state_dict."""

import io

import pytest
import torch
from torch import nn

import lsq_fast
from lsq_fast import IntConv2d, IntEmbedding, IntLinear, QuantConv2d, QuantEmbedding, QuantLinear
from lsq_fast.nn.layers import QuantizedLayer
from tiny_models import TinyLlama, small_cnn, toy_task, token_task

STEP = 2.0**-3  # a power of two: half-steps, clip points and offsets are exact in every dtype


def make_layer(kind: str, dtype=torch.float32, **options) -> QuantizedLayer:
    float_layer = {
        "conv": lambda: nn.Conv2d(6, 8, 3, padding=1),
        "linear": lambda: nn.Linear(64, 24),
        "embedding": lambda: nn.Embedding(30, 64),
    }[kind]().to(dtype)
    cls = {"conv": QuantConv2d, "linear": QuantLinear, "embedding": QuantEmbedding}[kind]
    return cls.from_float(float_layer, **options)


def example_input(kind: str, dtype=torch.float32, signed=True) -> torch.Tensor:
    if kind == "embedding":
        return torch.randint(0, 30, (4, 7))
    shape = (2, 6, 5, 5) if kind == "conv" else (4, 64)
    return on_grid(torch.randn(shape).to(dtype), 16, signed)


def on_grid(t: torch.Tensor, half_steps: int, signed: bool) -> torch.Tensor:
    """Half of t's elements replaced by whole and half steps of STEP, from beyond the grid's
    lower end to beyond its upper end: ties, clip points and clipped values, exactly."""
    low = -half_steps if signed else 0
    grid = torch.randint(low - 3, half_steps + 4, t.shape).to(t.dtype) * (STEP / 2)
    spread = t * STEP * half_steps / 4
    return torch.where(torch.rand(t.shape) < 0.5, grid, spread if signed else spread.abs())


def initialise(layer: QuantizedLayer, x: torch.Tensor, method: str) -> None:
    """The training forward that initialises the quantizers, then steps (and offsets) set to
    STEP (and whole or half steps), and the weight moved onto the grid's ties and clip points."""
    layer.train()
    layer(x)
    with torch.no_grad():
        for q in (layer.weight_quantizer, layer.input_quantizer):
            if q is None:
                continue
            if method == "qil":
                q.center.fill_(0.25)
                q.distance.fill_(0.25)
            else:
                q.step.fill_(STEP)
                if hasattr(q, "offset"):
                    q.offset.copy_(torch.randint(-4, 5, q.offset.shape) * (STEP / 2))
        qmax = 2 ** (layer.weight_quantizer.bits - 1)
        layer.weight.copy_(on_grid(layer.weight.float(), 2 * qmax, True).to(layer.weight.dtype))
    layer.eval()


LAYERS = [("conv", g) for g in ("tensor", "channel")] + [(k, g) for k in ("linear", "embedding")
                                                        for g in ("tensor", "channel", "group")]
CASES = [(k, g, m) for k, g in LAYERS for m in ("lsq", "lsq+", "qil") if m != "qil" or g == "tensor"]  # QIL: per layer


@pytest.mark.parametrize("kind,granularity,method", CASES)
@pytest.mark.filterwarnings("ignore:lsq_fast. a QILQuantizer.role='activation'. initialises on a batch with negative")
def test_eval_output_is_the_quantized_layers_bit_for_bit(seed, kind, granularity, method):
    per = dict(tensor={}, channel=dict(per_channel_weights=True), group=dict(weight_group_size=16))[granularity]
    for weight_bits in range(2, 9):
        for act_bits, act_signed in [(weight_bits, True), (weight_bits, False), (weight_bits - 1, False), (None, False)]:
            if method == "qil" and act_signed:
                act_signed = False
            layer = make_layer(kind, weight_bits=weight_bits, act_bits=act_bits, act_signed=act_signed,
                               method=method, **per)
            x = example_input(kind, signed=act_signed)
            initialise(layer, x, method)
            with torch.no_grad():
                expected, expected_weight = layer(x), layer.quantized_weight()
                converted = lsq_fast.convert(layer)
                assert isinstance(converted, (IntConv2d, IntLinear, IntEmbedding))
                where = f"{kind} {granularity} {method} w{weight_bits} a{act_bits} signed={act_signed}"
                assert torch.equal(converted.weight, expected_weight), where
                assert torch.equal(converted(x), expected), where


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes(seed, dtype):
    for kind, per in [("linear", dict(weight_group_size=32)), ("conv", dict(per_channel_weights=True))]:
        layer = make_layer(kind, dtype, weight_bits=4, act_bits=4, **per)
        x = example_input(kind, dtype)
        initialise(layer, x, "lsq")
        with torch.no_grad():
            expected = layer(x)
            out = lsq_fast.convert(layer)(x)
        assert out.dtype == dtype and torch.equal(out, expected), kind


def test_state_dict_holds_codes_not_float_weights():
    layer = make_layer("linear", weight_bits=4, act_bits=8, weight_group_size=16)
    initialise(layer, example_input("linear"), "lsq")
    state = lsq_fast.convert(layer).state_dict()
    assert "weight" not in state
    assert state["qweight.packed"].dtype == torch.uint8 and state["qweight.packed"].numel() == 24 * 64 // 2
    assert state["qweight.step"].shape == (24, 4) and state["qweight.step"].dtype == torch.float32
    assert state["qweight._extra_state"]["bits"] == 4


def quantized_llama(empty_copy: bool = False, method: str = "lsq"):
    model = TinyLlama()
    lsq_fast.quantize_model(model, weight_bits=4, act_bits=None, first_last_bits=None, weight_group_size=32,
                            quantize_embeddings=True, method=method)
    return model


def saved_size(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


@pytest.mark.parametrize("method", ["lsq", "lsq+"])
def test_tied_transformer_converts_once_and_round_trips(seed, method):
    model = quantized_llama(method=method)
    tokens, _ = token_task()
    model.train()
    model(tokens)
    model.eval()
    float_size = saved_size(TinyLlama())
    with torch.no_grad():
        expected = model(tokens)
        converted = lsq_fast.convert(model)
        assert torch.equal(converted(tokens), expected)
    assert converted.embed.qweight is converted.head.qweight  # one set of codes for the tied table

    buffer = io.BytesIO()
    torch.save(converted.state_dict(), buffer)
    size = buffer.tell()
    print(f"tiny Llama, 4-bit g32 {method}: {size} bytes converted, {float_size} float ({size / float_size:.1%})")
    assert size < 0.25 * float_size
    buffer.seek(0)
    fresh = lsq_fast.convert(quantized_llama(method=method), empty=True)
    with pytest.raises(RuntimeError, match="holds no values"):
        fresh(tokens)
    fresh.load_state_dict(torch.load(buffer))
    with torch.no_grad():
        assert torch.equal(fresh(tokens), expected)


def test_small_cnn_with_batch_norm_and_an_auto_grid(seed):
    model = small_cnn(batch_norm=True)
    lsq_fast.quantize_model(model, weight_bits=3, act_bits=3)  # the first layer's inputs are signed ("auto")
    images, _ = toy_task()
    model.train()
    model(images)
    model.eval()
    with torch.no_grad():
        expected = model(images)
        converted = lsq_fast.convert(model)
        assert torch.equal(converted(images), expected)
    fresh = small_cnn(batch_norm=True)
    lsq_fast.quantize_model(fresh, weight_bits=3, act_bits=3)
    lsq_fast.convert(fresh, empty=True).load_state_dict(converted.state_dict())  # the grid: signed, from the checkpoint
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images), expected)


def test_bad_models_are_clear_errors():
    with pytest.raises(ValueError, match="no quantized layer"):
        lsq_fast.convert(nn.Sequential(nn.Linear(4, 4)))
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    lsq_fast.quantize_model(model)
    with pytest.raises(ValueError, match="weight quantizer of layer '0' has not been initialised"):
        lsq_fast.convert(model)
    assert isinstance(model[0], QuantLinear)  # nothing changed
    model.train()
    model(torch.randn(3, 4))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight of layer '0' is not finite"):
        lsq_fast.convert(model)
    other = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    lsq_fast.quantize_model(other, weight_bits=2, first_last_bits=None)
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0
    with pytest.raises(ValueError, match=r"bits=8 \(this one 2\)"):
        lsq_fast.convert(other, empty=True).load_state_dict(lsq_fast.convert(model).state_dict())


def test_the_weight_is_read_only_and_computed():
    layer = make_layer("linear", weight_bits=8, act_bits=None)
    initialise(layer, example_input("linear"), "lsq")
    converted = lsq_fast.convert(layer)
    assert "weight" not in dict(converted.named_parameters())
    assert torch.equal(converted.weight, converted.qweight.dequantize())
    assert converted.qweight.codes().dtype == torch.int16
    assert "8-bit signed" in repr(converted)
