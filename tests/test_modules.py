"""The drop-in layers: LSQQuantizer, QuantConv2d/QuantLinear and quantize_model, against a
hand-written composition of the reference quantizer with F.conv2d/F.linear; initialisation,
checkpoints, positivity, autocast and errors. torch.compile: test_compile.py;
DistributedDataParallel: test_ddp.py."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lsq_fast
from lsq_fast import LSQQuantizer, QuantConv2d, QuantLinear, quantize_model, reference
from lsq_oracle import QuantizerTaps, assert_quantizer_grads_within
from tiny_models import PASS_MARK, small_cnn, toy_task, train_small_cnn


def paper_init(v: torch.Tensor, bits: int, signed: bool, channel_axis=None) -> torch.Tensor:
    """2 * mean|v| / sqrt(qmax), per channel when channel_axis is set, in float64."""
    qmax = lsq_fast.qrange(bits, signed)[1]
    a = v.detach().double().abs()
    mean = a.mean().reshape(1) if channel_axis is None else a.transpose(0, channel_axis).flatten(1).mean(1)
    return (2 * mean / math.sqrt(qmax)).float()


def steps_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith("quantizer.step")}


# -- QuantConv2d / QuantLinear against the reference quantizer and the float ops -----------------

LAYERS = {
    "conv": (lambda bias: nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=bias), (3, 6, 9, 11)),
    "conv-grouped": (lambda bias: nn.Conv2d(6, 12, (3, 1), groups=3, dilation=2, bias=bias), (2, 6, 13, 5)),
    "linear": (lambda bias: nn.Linear(33, 7, bias=bias), (5, 4, 33)),
}


def float_forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, weight, layer.bias)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_layer_equals_reference_composition(impl, seed, kind, per_channel, bias):
    make, shape = LAYERS[kind]
    layer = make(bias).to(impl.device)
    qlayer = type(layer) is nn.Conv2d and QuantConv2d or QuantLinear
    q = qlayer.from_float(layer, weight_bits=4, act_bits=3, per_channel_weights=per_channel, backend=impl.backend)
    x = torch.randn(shape, device=impl.device)

    q(x)  # the first training forward initialises both steps from the data
    w_axis = 0 if per_channel else None
    torch.testing.assert_close(q.weight_quantizer.step, paper_init(layer.weight, 4, True, w_axis).to(impl.device))
    torch.testing.assert_close(q.input_quantizer.step, paper_init(x, 3, True).to(impl.device))
    assert q.input_quantizer.signed is True  # randn has negatives

    w_step = q.weight_quantizer.step.detach().clone().requires_grad_()
    x_step = q.input_quantizer.step.detach().clone().requires_grad_()
    x_ref, x_mine = x.clone().requires_grad_(), x.clone().requires_grad_()
    weight_ref = layer.weight.detach().clone().requires_grad_()
    y_ref = float_forward(
        layer,
        reference.lsq_quantize(x_ref, x_step, 3, signed=True),
        reference.lsq_quantize(weight_ref, w_step, 4, signed=True, channel_axis=w_axis),
    )
    with QuantizerTaps(q) as taps:
        y = q(x_mine)
        assert torch.equal(y, y_ref)  # the quantizers agree to the bit, then the same float op

        grad_y = torch.randn_like(y)
        y.backward(grad_y)
    y_ref.backward(grad_y)
    # the reference's straight-through gradient is (g * s) / s, within an ulp of ours, g
    torch.testing.assert_close(x_mine.grad, x_ref.grad, rtol=1e-6, atol=0)
    torch.testing.assert_close(q.weight.grad, weight_ref.grad, rtol=1e-6, atol=0)
    # the steps' gradients: sums that cancel, held to the contract's bound of the exact sums
    assert_quantizer_grads_within({k: p.grad for k, p in q.named_parameters()}, taps.bounds())
    assert set(taps.bounds()) == {"weight_quantizer.step", "input_quantizer.step"}


def test_layouts_pass_through(seed):
    """channels_last weights and activations stay channels_last; a strided input is fine."""
    conv = nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    q = QuantConv2d.from_float(conv, per_channel_weights=True)
    x = torch.randn(2, 4, 9, 9).to(memory_format=torch.channels_last)
    q(x)
    y = q(x)
    w_q = reference.lsq_quantize(conv.weight, q.weight_quantizer.step, 4, channel_axis=0)
    x_q = reference.lsq_quantize(x, q.input_quantizer.step, 4)
    assert w_q.is_contiguous(memory_format=torch.channels_last)
    assert q.quantized_weight().is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, F.conv2d(x_q, w_q, conv.bias))

    linear = QuantLinear.from_float(nn.Linear(6, 3))
    x = torch.randn(6, 5).t()  # not contiguous
    linear(x)
    expected = F.linear(
        reference.lsq_quantize(x, linear.input_quantizer.step, 4),
        reference.lsq_quantize(linear.weight, linear.weight_quantizer.step, 4),
        linear.bias,
    )
    assert torch.equal(linear(x), expected)


def test_from_float_keeps_weights_bias_and_mode():
    conv = nn.Conv2d(3, 4, 3, padding=2, padding_mode="reflect").eval()
    q = QuantConv2d.from_float(conv, weight_bits=2, act_bits=None)
    assert q.weight is conv.weight and q.bias is conv.bias  # the same Parameters
    assert (q.padding, q.padding_mode, q.training) == (conv.padding, "reflect", False)
    assert q.input_quantizer is None and q.weight_quantizer.bits == 2


def test_activation_quantizer_off():
    linear = nn.Linear(8, 3)
    q = QuantLinear.from_float(linear, act_bits=None)
    x = torch.randn(4, 8)
    w_q = reference.lsq_quantize(linear.weight, paper_init(linear.weight, 4, True), 4)
    assert torch.equal(q(x), F.linear(x, w_q, linear.bias))


# -- LSQQuantizer: initialisation -----------------------------------------------------------------


def test_init_once_then_learned():
    q = LSQQuantizer(4, signed=False)
    first = torch.rand(64, 10)
    q(first)
    assert q.initialized and q.signed is False
    torch.testing.assert_close(q.step, paper_init(first, 4, False))
    before = q.step.detach().clone()
    q(first * 100)  # a later batch does not initialise again
    assert torch.equal(q.step, before)


@pytest.mark.parametrize("values,signed", [(torch.randn(50), True), (torch.rand(50), False), (torch.zeros(3), False)])
def test_auto_sign_from_first_batch(values, signed):
    q = LSQQuantizer(3, signed="auto")
    assert q.signed is None
    q(values)
    assert q.signed is signed
    assert "signed=auto (" + str(signed) in repr(q)


def test_zero_batch_never_gives_zero_step():
    q = LSQQuantizer(4, signed=False)
    q(torch.zeros(8, 8))
    assert torch.equal(q.step, torch.ones(1))  # all-zero tensor: 1.0

    per_channel = LSQQuantizer(4, signed=True, channel_axis=1, num_channels=3)
    x = torch.randn(5, 3, 7)
    x[:, 1] = 0  # a dead channel takes the tensor's step
    per_channel(x)
    expected = paper_init(x, 4, True, 1)
    expected[1] = paper_init(x, 4, True)
    torch.testing.assert_close(per_channel.step, expected)

    empty = LSQQuantizer(4, signed=False)
    empty(torch.empty(0, 4))
    assert torch.equal(empty.step, torch.ones(1))


def test_eval_before_init_is_an_error_and_initialize_is_explicit():
    q = LSQQuantizer(4, signed=True).eval()
    with pytest.raises(RuntimeError, match="not been initialised"):
        q(torch.randn(3))
    w = torch.randn(16, 4)
    q.initialize_(w)
    torch.testing.assert_close(q.step, paper_init(w, 4, True))
    assert torch.equal(q(w), reference.lsq_quantize(w, q.step, 4))


def test_reset_parameters_initialises_again():
    q = LSQQuantizer(4, signed="auto")
    q(torch.rand(10))
    q.reset_parameters()
    assert not q.initialized and q.signed is None and torch.equal(q.step, torch.ones(1))
    q(-torch.rand(10))
    assert q.signed is True


# -- LSQQuantizer: the step stays positive and float32 ---------------------------------------------


def test_optimizer_step_keeps_step_positive():
    model = nn.Sequential(LSQQuantizer(4, signed=True, min_step=1e-6))
    model(torch.randn(20))
    other = copy.deepcopy(model)  # a copy is kept positive too
    for m in (model, other):
        optimizer = torch.optim.SGD(m.parameters(), lr=1.0)
        m[0].step.grad = torch.full((1,), 1e3)  # a step far past zero
        optimizer.step()
        assert torch.equal(m[0].step.detach(), torch.full((1,), 1e-6))
    # a quantizer outside the optimizer is left alone
    free = LSQQuantizer(4)
    with torch.no_grad():
        free.step.fill_(-1.0)
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0).step()
    assert free.step.item() == -1.0


def test_low_precision_model_keeps_float32_step():
    q = LSQQuantizer(8, signed=True)
    q(torch.randn(100))
    step = q.step.detach().clone()
    for convert in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.double()):
        convert(q)
        assert q.step.dtype == torch.float32 and torch.equal(q.step, step)
    x = torch.randn(100).half()
    assert q(x).dtype == torch.float16


# -- checkpoints --------------------------------------------------------------------------------------


def trained_cnn(seed: int, steps: int = 3) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = small_cnn()
    quantize_model(model, per_channel_weights=True)
    images, labels = toy_task()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model, images


def test_state_dict_round_trip(seed):
    model, images = trained_cnn(seed)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert any(key.endswith("input_quantizer.initialized") for key in state)

    fresh = small_cnn()
    quantize_model(fresh, per_channel_weights=True)
    fresh.load_state_dict(state)
    model.eval(), fresh.eval()
    assert torch.equal(fresh(images), model(images))
    # training mode: the next forward uses the loaded steps, it does not initialise
    fresh.train()
    before = steps_of(fresh)
    fresh(images * 7)
    assert all(torch.equal(before[k], v) for k, v in steps_of(fresh).items())
    assert [q.signed for q in fresh.modules() if isinstance(q, LSQQuantizer)] == [
        q.signed for q in model.modules() if isinstance(q, LSQQuantizer)
    ]


def test_state_dict_mismatches_are_errors(seed):
    model, _ = trained_cnn(seed, steps=1)
    state = model.state_dict()
    other_bits = small_cnn()
    quantize_model(other_bits, weight_bits=2, per_channel_weights=True)
    with pytest.raises(ValueError, match="bits=4, this one bits=2"):
        other_bits.load_state_dict(state)
    unsigned = small_cnn()
    quantize_model(unsigned, act_signed=True, per_channel_weights=True)
    with pytest.raises(ValueError, match="signed=False, this one signed=True"):
        unsigned.load_state_dict(state)
    state["2.weight_quantizer.step"][0] = -1.0
    fresh = small_cnn()
    quantize_model(fresh, per_channel_weights=True)
    with pytest.raises(RuntimeError, match="step must be positive"):
        fresh.load_state_dict(state)


# -- quantize_model ----------------------------------------------------------------------------------


def test_quantized_cnn_trains(seed):
    torch.manual_seed(seed)
    model = small_cnn(batch_norm=True)
    summary = quantize_model(model)
    images, labels = toy_task()
    first = {}
    losses = train_small_cnn(model, images, labels, after_first_backward=lambda m: first.update(steps_of(m)))
    initial_steps = first
    assert losses[-1] < PASS_MARK["lsq"] * losses[0], losses  # calibrated: tests/calibrate_training.py
    moved = [name for name, step in steps_of(model).items() if not torch.equal(step, initial_steps[name])]
    assert len(moved) == len(initial_steps) == 8  # 4 layers, weight and input each

    rows = {row.name: row for row in summary}
    assert (rows["0"].weight_bits, rows["0"].act_bits, rows["0"].note) == (8, 8, "first")
    assert (rows["11"].weight_bits, rows["11"].act_bits, rows["11"].note) == (8, 8, "last")
    assert (rows["3"].weight_bits, rows["3"].act_bits, rows["3"].kind) == (4, 4, "Conv2d")
    assert model[0].weight_quantizer.bits == 8 and model[11].input_quantizer.bits == 8
    assert model[0].input_quantizer.signed is True and model[3].input_quantizer.signed is False
    text = str(summary)
    assert text.splitlines()[0].split() == ["layer", "kind", "weight", "activation", "note"]
    assert "11     Linear  8-bit" in text


def test_quantize_model_options():
    model = small_cnn()
    summary = quantize_model(model, weight_bits=3, act_bits=None, first_last_bits=None, per_channel_weights=True, skip=["4"])
    rows = {row.name: row for row in summary}
    assert rows["4"].note == "skipped" and type(model[4]) is nn.Conv2d
    assert (rows["0"].weight_bits, rows["0"].act_bits) == (3, None)
    assert model[0].input_quantizer is None and model[0].weight_quantizer.step.shape == (8,)
    assert "float" in str(summary) and "3-bit per-channel" in str(summary)


def test_shared_layer_is_replaced_everywhere():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    model.add_module("head", nn.Linear(4, 2))
    quantize_model(model)
    assert model[0] is model[2] and isinstance(model[0], QuantLinear)


def test_subclasses_of_the_float_layers_are_left_alone():
    attention = nn.MultiheadAttention(8, 2)  # reads out_proj.weight itself: swapping it would lose the quantizer
    model = nn.Sequential(nn.Linear(8, 8), attention.out_proj, nn.Linear(8, 2))
    quantize_model(model)
    assert type(model[1]) is nn.modules.linear.NonDynamicallyQuantizableLinear


def test_quantizing_twice_is_an_error():
    model = small_cnn()
    quantize_model(model)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model)


# -- mixed precision ----------------------------------------------------------------------------------


def test_autocast_bfloat16_on_cpu(seed):
    conv = nn.Conv2d(4, 6, 3, padding=1)
    q = QuantConv2d.from_float(conv, weight_bits=4, act_bits=4, per_channel_weights=True)
    x = torch.randn(2, 4, 8, 8)
    taps = QuantizerTaps(q)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q(x)  # initialises from the bfloat16 input and weight
        x_mine, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = q(x_mine)
        w_step = q.weight_quantizer.step.detach().clone().requires_grad_()
        a_step = q.input_quantizer.step.detach().clone().requires_grad_()
        y_ref = F.conv2d(
            reference.lsq_quantize(x_ref.bfloat16(), a_step, 4, signed=True),
            reference.lsq_quantize(conv.weight.bfloat16(), w_step, 4, signed=True, channel_axis=0),
            conv.bias,
            padding=1,
        )
    torch.testing.assert_close(q.weight_quantizer.step, paper_init(conv.weight.bfloat16(), 4, True, 0))
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    y.float().sum().backward()
    y_ref.float().sum().backward()
    assert x_mine.grad.dtype == torch.float32
    torch.testing.assert_close(x_mine.grad, x_ref.grad, rtol=1e-6, atol=0)
    for quantizer in (q.weight_quantizer, q.input_quantizer):
        assert quantizer.step.dtype == quantizer.step.grad.dtype == torch.float32
    assert_quantizer_grads_within({k: p.grad for k, p in q.named_parameters()}, taps.bounds())
    taps.close()


# -- bad configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: LSQQuantizer(9), ValueError, r"bits must be in 1\.\.8"),
        (lambda: LSQQuantizer(1, signed=True), ValueError, r"bits must be in 2\.\.8 for signed"),
        (lambda: LSQQuantizer(4.0), TypeError, "bits must be an int"),
        (lambda: LSQQuantizer(4, signed="yes"), ValueError, "signed must be True, False or 'auto'"),
        (lambda: LSQQuantizer(4, channel_axis=0), ValueError, "needs num_channels"),
        (lambda: LSQQuantizer(4, num_channels=3), ValueError, "set channel_axis too"),
        (lambda: LSQQuantizer(4, role="bias"), ValueError, "role must be one of"),
        (lambda: LSQQuantizer(4, min_step=0.0), ValueError, "min_step must be a positive"),
        (lambda: LSQQuantizer(4, grad_scale=float("nan")), ValueError, "grad_scale must be finite"),
        (lambda: LSQQuantizer(4, backend="tpu"), ValueError, "unknown backend"),
        (lambda: QuantLinear(4, 2, weight_bits=1), ValueError, r"2\.\.8 for signed"),
        (lambda: QuantConv2d.from_float(nn.Linear(2, 2)), TypeError, "takes an nn.Conv2d"),
        (lambda: quantize_model(small_cnn(), first_last_bits=9), ValueError, r"bits must be in"),
        (lambda: quantize_model(nn.Sequential(nn.ReLU(), nn.Flatten())), ValueError, "no nn.Conv2d or nn.Linear"),
        (lambda: quantize_model(small_cnn(), skip=["0", "fc"]), ValueError, "does not have as Conv2d/Linear: fc"),
        (lambda: quantize_model(nn.Linear(3, 3)), ValueError, "use QuantLinear.from_float"),
    ],
)
def test_bad_configuration(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_argument_leaves_model_float():
    model = small_cnn()
    with pytest.raises(ValueError):
        quantize_model(model, weight_bits=4, act_bits=0)
    assert not any(isinstance(m, LSQQuantizer) for m in model.modules())


def test_bad_inputs_at_forward():
    q = LSQQuantizer(4, signed=True, channel_axis=1, num_channels=3)
    with pytest.raises(ValueError, match=r"x.shape\[1\] = 3 elements, got 3|per-channel step must have"):
        q(torch.randn(2, 5))
    with pytest.raises(TypeError, match="x must be float32"):
        q(torch.ones(2, 3, dtype=torch.int32))
    auto_one_bit = LSQQuantizer(1)
    with pytest.raises(ValueError, match="1-bit quantizer is unsigned"):
        auto_one_bit(torch.randn(10))


def test_extra_repr_shows_configuration():
    q = LSQQuantizer(4, signed=True, channel_axis=0, num_channels=3)
    assert repr(q) == "LSQQuantizer(bits=4, signed=True, per-channel (axis 0, 3), step=[1 .. 1], uninitialised)"
    q(torch.tensor([[0.5, -1.0], [2.0, 2.0], [0.0, 3.0]]))
    # steps 2 * (0.75, 2, 1.5) / sqrt(7)
    assert repr(q).startswith("LSQQuantizer(bits=4, signed=True, per-channel (axis 0, 3), step=[0.5669 .. 1.512])")
