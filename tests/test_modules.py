"""The modules: LSQQuantizer, LSQPlusQuantizer, QILQuantizer, the layers QuantConv2d/QuantLinear
and quantize_model. LSQ's layers against a hand-written composition of the reference quantizer
with F.conv2d/F.linear; every quantizer's initialisation against the papers' formulas written
out here (LSQ's 2 mean|x| / sqrt(qmax), LSQ+'s 3-sigma and min/max and MSE search, QIL's
interval); checkpoints, positivity, dtypes, autocast, errors, and a short training run of each
method. torch.compile: test_compile.py; DistributedDataParallel: test_ddp.py."""

import contextlib
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lsq_fast
from lsq_fast import (
    LSQPlusQuantizer, LSQQuantizer, QILQuantizer, QuantConv2d, QuantLinear, quantize_model, reference,
)
from lsq_oracle import QuantizerTaps, assert_quantizer_grads_within, assert_step_grad_close
from tiny_models import INTERVAL_LR, METHODS, PASS_MARK, small_cnn, toy_task, train_small_cnn


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
        (lambda: LSQQuantizer(4, round_grad="sigmoid"), ValueError, "round_grad must be one of ste, arctan"),
        (lambda: LSQQuantizer(4, round_grad="arctan", k=0.0), ValueError, "sharpness k must be a positive"),
        (lambda: LSQQuantizer(4, init="mse"), ValueError, "init must be one of lsq, lsq\\+"),
        (lambda: LSQQuantizer(4, "auto", init="lsq+"), ValueError, "it needs signed=True"),
        (lambda: LSQPlusQuantizer(9), ValueError, r"bits must be in 1\.\.8"),
        (lambda: LSQPlusQuantizer(1, True), ValueError, r"2\.\.8 for signed"),
        (lambda: LSQPlusQuantizer(4, "auto"), ValueError, "signed must be True or False"),
        (lambda: LSQPlusQuantizer(4, init="lsq"), ValueError, "init must be one of minmax, mse"),
        (lambda: LSQPlusQuantizer(4, init_batches=0), ValueError, "init_batches must be an int >= 1"),
        (lambda: LSQPlusQuantizer(4, channel_axis=1), ValueError, "needs num_channels"),
        (lambda: LSQPlusQuantizer(4, min_step=-1.0), ValueError, "min_step must be a positive"),
        (lambda: LSQPlusQuantizer(4, role="bias"), ValueError, "role must be one of"),
        (lambda: LSQPlusQuantizer(4, backend="tpu"), ValueError, "unknown backend"),
        (lambda: QILQuantizer(1, "weight"), ValueError, r"2\.\.8 for signed"),
        (lambda: QILQuantizer(4, "bias"), ValueError, "role must be one of"),
        (lambda: QILQuantizer(4, "weight", min_distance=0.0), ValueError, "min_distance must be a positive"),
        (lambda: QILQuantizer(4, "activation", backend="tpu"), ValueError, "unknown backend"),
        (lambda: QuantLinear(4, 2, method="apot"), ValueError, "method must be one of lsq, lsq\\+, qil"),
        (lambda: QuantLinear(4, 2, method="qil", per_channel_weights=True), ValueError, "one interval per layer"),
        (lambda: QuantLinear(4, 2, method="lsq+", act_signed="yes"), ValueError, "act_signed must be"),
        (lambda: quantize_model(small_cnn(), method="qil", per_channel_weights=True), ValueError, "per_channel_weights"),
        (lambda: quantize_model(small_cnn(), method="qil", act_signed=True), ValueError, "activation quantizer is unsigned"),
        (lambda: quantize_model(small_cnn(), method="lsq+", round_grad="arctan"), ValueError, "it needs method='lsq'"),
        (lambda: quantize_model(small_cnn(), method="qil", round_grad="arctan"), ValueError, "it needs method='lsq'"),
        (lambda: quantize_model(small_cnn(), round_grad="arctan", k=-1.0), ValueError, "sharpness k"),
        (lambda: quantize_model(small_cnn(), method="LSQ"), ValueError, "method must be one of"),
        (lambda: LSQQuantizer(4, True, role="weight", group_size=8), ValueError, "needs shape, the weight's shape"),
        (lambda: LSQQuantizer(4, True, group_size=8, shape=(4, 16)), ValueError, "per-group steps are for weights"),
        (lambda: LSQQuantizer(4, True, role="weight", group_size=8, shape=(4, 12)), ValueError, "does not divide"),
        (lambda: LSQQuantizer(4, True, role="weight", group_size=0, shape=(4, 12)), ValueError, "group_size must be"),
        (lambda: LSQQuantizer(4, True, shape=(4, 12)), ValueError, "set group_size too"),
        (lambda: LSQQuantizer(4, True, 0, 4, role="weight", group_size=4, shape=(4, 12)), ValueError, "not both"),
        (lambda: LSQPlusQuantizer(4, role="weight", group_size=4, shape=(4, 12), init="mse"), ValueError,
         "min/max per group"),
        (lambda: QuantLinear(12, 4, weight_group_size=5), ValueError, r"does not divide the rows of this QuantLinear's weight \(12"),
        (lambda: QuantLinear(12, 4, weight_group_size=4, per_channel_weights=True), ValueError, "exclude each other"),
        (lambda: QuantLinear(12, 4, weight_group_size=4, method="qil"), ValueError, "weight_group_size needs method"),
        (lambda: QuantConv2d(3, 4, 3, weight_group_size=3), ValueError, "weight_group_size is for QuantLinear and"),
        (lambda: quantize_model(small_cnn(), weight_group_size=8), ValueError, r"layer '0'; nothing was changed"),
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


# -- LSQ's relatives: LG-LSQ's round gradient, LSQ+, QIL ----------------------------------------

QUANTIZER_PARAMS = ("step", "offset", "center", "distance", "gamma")


def per_channel_rows(v: torch.Tensor, axis) -> torch.Tensor:
    """v as (channels, elements) in float64; one row when axis is None."""
    v = v.detach().double()
    return v.reshape(1, -1) if axis is None else v.movedim(axis, 0).flatten(1)


def three_sigma_init(v: torch.Tensor, bits: int, axis=None) -> torch.Tensor:
    """LSQ+'s weight init: max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1), population sigma."""
    rows = per_channel_rows(v, axis)
    mu, sigma = rows.mean(1), rows.std(1, correction=0)
    return (torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs()) / 2 ** (bits - 1)).float()


def minmax_init(v: torch.Tensor, bits: int, signed: bool, axis=None) -> tuple[torch.Tensor, torch.Tensor]:
    """LSQ+'s min/max init: s0 = (max - min) / (qmax - qmin), beta0 = min - qmin * s0."""
    qmin, qmax = lsq_fast.qrange(bits, signed)
    rows = per_channel_rows(v, axis)
    low, high = rows.amin(1), rows.amax(1)
    step = (high - low) / (qmax - qmin)
    return step.float(), (low - qmin * step).float()


def quantizer_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if "quantizer." in name and name.rsplit(".", 1)[1] in QUANTIZER_PARAMS
    }


# -- LSQQuantizer: LG-LSQ's round gradient, LSQ+'s weight initialisation -------------------------------


@pytest.mark.parametrize("axis", [None, 0], ids=["per-tensor", "per-channel"])
def test_lsq_plus_weight_init_is_three_sigma(seed, axis):
    w = torch.randn(6, 5, 3, 3) * torch.rand(6, 1, 1, 1) + 0.3 * torch.randn(6, 1, 1, 1)
    channels = dict(channel_axis=0, num_channels=6) if axis == 0 else {}
    q = LSQQuantizer(3, True, **channels, role="weight", init="lsq+")
    q(w)
    torch.testing.assert_close(q.step, three_sigma_init(w, 3, axis))
    assert "init=lsq+" in repr(q)


def test_lsq_plus_weight_init_guards_zero_channels():
    w = torch.randn(4, 10)
    w[2] = 0  # sigma = mu = 0: the tensor's step
    q = LSQQuantizer(4, True, 0, 4, role="weight", init="lsq+")
    q(w)
    expected = three_sigma_init(w, 4, 0)
    expected[2] = three_sigma_init(w, 4)
    torch.testing.assert_close(q.step, expected)
    zero = LSQQuantizer(4, True, init="lsq+")
    zero(torch.zeros(5))
    assert torch.equal(zero.step, torch.ones(1))


def test_arctan_round_gradient_changes_the_backward_only(seed):
    x = torch.randn(4, 3, 5)
    ste = LSQQuantizer(3, True, channel_axis=1, num_channels=3)
    soft = LSQQuantizer(3, True, channel_axis=1, num_channels=3, round_grad="arctan", k=3.0)
    ste(x), soft(x)
    assert torch.equal(ste.step, soft.step)  # the same initialisation
    x_ste, x_soft = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ste, y_soft = ste(x_ste), soft(x_soft)
    assert torch.equal(y_ste, y_soft)  # the forward keeps the hard round

    x_ref = x.clone().requires_grad_()
    step_ref = soft.step.detach().clone().requires_grad_()
    y_ref = reference.lsq_quantize(x_ref, step_ref, 3, channel_axis=1, round_grad="arctan", k=3.0)
    grad_y = torch.randn_like(x)
    for y in (y_ste, y_soft, y_ref):
        y.backward(grad_y)
    torch.testing.assert_close(x_soft.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    assert_step_grad_close(soft.step.grad, x, soft.step.detach(), grad_y, 3, True, 1, soft_round_k=3.0)
    assert not torch.allclose(x_soft.grad, x_ste.grad)
    assert "round_grad=arctan (k=3)" in repr(soft) and "round_grad" not in repr(ste)


# -- LSQPlusQuantizer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("axis", [None, 1], ids=["per-tensor", "per-channel"])
def test_lsq_plus_minmax_init(seed, signed, axis):
    x = torch.randn(8, 4, 5, 5) * 2 - 0.5
    channels = dict(channel_axis=1, num_channels=4) if axis == 1 else {}
    q = LSQPlusQuantizer(4, signed, **channels)
    y = q(x)
    step, offset = minmax_init(x, 4, signed, axis)
    torch.testing.assert_close(q.step, step)
    torch.testing.assert_close(q.offset, offset)
    assert q.initialized and q.step.dtype == q.offset.dtype == torch.float32
    assert torch.equal(y, reference.lsq_plus_quantize(x, q.step, q.offset, 4, signed=signed, channel_axis=axis))
    # the grid spans the batch: its ends are (within a rounding) on the grid, nothing clips far
    assert (y - x).abs().max() <= q.step.max() / 2 * 1.0001


def test_lsq_plus_minmax_guards_constant_channels():
    x = torch.randn(10, 3)
    x[:, 1] = 2.5  # a constant channel: the tensor's step, the constant on the grid
    q = LSQPlusQuantizer(3, channel_axis=1, num_channels=3)
    y = q(x)
    expected_step, _ = minmax_init(x, 3, False, 1)
    expected_step[1] = minmax_init(x, 3, False)[0]
    torch.testing.assert_close(q.step, expected_step)
    assert torch.equal(y[:, 1], x[:, 1])
    constant = LSQPlusQuantizer(2)
    assert torch.equal(constant(torch.full((4,), -3.0)), torch.full((4,), -3.0))
    assert torch.equal(constant.step, torch.ones(1))


def test_lsq_plus_mse_finds_the_exact_grid():
    """Data on the 2-bit grid {0, .25, .5, .75} plus one outlier at 1: the candidate that clips
    the top quarter (hi = max - 10/40 (max - min)) has the least error; min/max would put every
    grid value off the grid."""
    x = torch.cat([torch.tensor([0.0, 0.25, 0.5, 0.75]).repeat(50), torch.ones(1)])
    q = LSQPlusQuantizer(2, init="mse")
    q(x)
    assert torch.equal(q.step, torch.full((1,), 0.25)) and torch.equal(q.offset, torch.zeros(1))
    minmax = LSQPlusQuantizer(2)
    minmax(x)
    assert minmax.step.item() == pytest.approx(1 / 3)


def candidate_errors(x: torch.Tensor, bits: int, grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The documented search written out: every (lo, hi) cut from [min, max] by fractions
    f = i / (2 grid), its (s, beta), and its squared error over x (float64)."""
    qmin, qmax = lsq_fast.qrange(bits, False)
    low, high = x.min().double(), x.max().double()
    f = torch.arange(grid, dtype=torch.float64) / (2 * grid)
    lows, highs = low + f * (high - low), high - f * (high - low)
    steps = ((highs[None, :] - lows[:, None]) / (qmax - qmin)).flatten()
    offsets = (lows[:, None] - qmin * steps.reshape(grid, grid)).flatten()
    errors = torch.stack(
        [
            (reference.lsq_plus_quantize(x, s.float().reshape(1), b.float().reshape(1), bits).double() - x.double())
            .square()
            .sum()
            for s, b in zip(steps, offsets)
        ]
    )
    return steps.float(), offsets.float(), errors


def test_lsq_plus_mse_picks_the_best_candidate_over_init_batches(seed):
    batches = [torch.randn(300) * 0.5 + 0.2, F.silu(torch.randn(300) * 3), torch.randn(300).exp()]
    q = LSQPlusQuantizer(3, init="mse", init_batches=3)
    for i, x in enumerate(batches[:2]):
        q(x)  # quantizes with the running min/max estimate
        step, offset = minmax_init(torch.cat(batches[: i + 1]), 3, False)
        torch.testing.assert_close(q.step, step)
        torch.testing.assert_close(q.offset, offset)
        assert not q.initialized
    with pytest.raises(RuntimeError, match="seen 2 of its 3 initialisation batches"):
        q.eval()(batches[0])
    q.train()(batches[2])
    assert q.initialized

    steps, offsets, errors = candidate_errors(torch.cat(batches), 3, LSQPlusQuantizer.MSE_GRID)
    best = errors.argmin()
    torch.testing.assert_close(q.step, steps[best].reshape(1))
    torch.testing.assert_close(q.offset, offsets[best].reshape(1))
    assert errors[best] < errors[0]  # better than min/max (candidate 0) on this skewed data


def test_lsq_plus_mse_per_channel_with_sampling(seed):
    """More elements than the sample (500 drawn, the 256 smallest and largest exactly, of 2304
    per channel): each channel still gets a candidate within some percent of the best one on
    the whole channel, the same on every run (the sample positions are fixed)."""
    x = torch.randn(64, 3, 6, 6) * torch.tensor([0.1, 1.0, 10.0]).reshape(1, 3, 1, 1)
    x[:, 2] = x[:, 2].abs()  # a long right tail: the extremes decide where to clip
    runs = []
    for _ in range(2):
        q = LSQPlusQuantizer(4, channel_axis=1, num_channels=3, init="mse")
        q.MSE_SAMPLES = 500
        q(x)
        runs.append((q.step.detach().clone(), q.offset.detach().clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    step, offset = runs[0]
    assert step[0] < step[1] < step[2]
    for c in range(3):
        channel = x[:, c].flatten()
        y = reference.lsq_plus_quantize(channel, step[c : c + 1], offset[c : c + 1], 4)
        err = (y - channel).double().square().sum()
        errors = candidate_errors(channel, 4, LSQPlusQuantizer.MSE_GRID)[2]
        # 1.1 times the best at worst, in 150 seeds
        assert err <= 1.25 * errors.min() and err < errors[0], (c, err, errors.min(), errors[0])


def test_lsq_plus_gradients_reach_step_and_offset():
    """2-bit unsigned, s = 0.25, beta = -0.5: u = 4x + 2 on x = -1, -0.75, ..., 1 is -2, -1, 0
    (clip low, strictly at 0), 1, 2 (inside, on the grid), 3, 4, 5, 6 (clip high, strictly at 3)."""
    q = LSQPlusQuantizer(2, grad_scale=1.0)
    x = torch.linspace(-1, 1, 9)
    q(x)
    with torch.no_grad():
        q.step.fill_(0.25)
        q.offset.fill_(-0.5)
    x.requires_grad_()
    q(x).sum().backward()
    assert q.offset.grad.item() == 3 + 4  # dy/dbeta = 1 where clipped
    assert q.step.grad.item() == 4 * 3.0  # qmin = 0 low, qmax = 3 high, round(u) - u = 0 inside
    assert torch.equal(x.grad, torch.tensor([0.0, 0, 0, 1, 1, 0, 0, 0, 0]))


def test_lsq_plus_initialize_by_hand_and_reset():
    q = LSQPlusQuantizer(4, init_batches=2).eval()
    first, second = torch.randn(50), torch.randn(50) * 3
    q.initialize_(first)
    assert not q.initialized
    q.initialize_(second)
    step, offset = minmax_init(torch.cat([first, second]), 4, False)
    assert q.initialized and torch.allclose(q.step, step) and torch.allclose(q.offset, offset)
    assert torch.equal(q(first), reference.lsq_plus_quantize(first, q.step, q.offset, 4))
    q.initialize_(first)  # by hand again: a fresh initialisation, over init_batches batches
    assert not q.initialized and torch.allclose(q.step, minmax_init(first, 4, False)[0])
    q.reset_parameters()
    assert not q.initialized and torch.equal(q.step, torch.ones(1)) and torch.equal(q.offset, torch.zeros(1))
    assert "uninitialised" in repr(q) and "init=minmax (2 batches)" in repr(q)


# -- QILQuantizer ---------------------------------------------------------------------------------------


def test_qil_weight_init_prunes_and_clips_nothing(seed):
    w = torch.randn(8, 4, 3, 3) * 0.1
    q = QILQuantizer(3, "weight")
    y = q(w)
    m = w.abs().max()
    assert q.center.item() == q.distance.item() == pytest.approx(m.item() / 2)
    assert q.gamma.item() == 1.0
    assert y.abs().max() == 1.0  # the largest |w| maps to +-1
    levels = 2**2 - 1
    expected = torch.round(w / m * levels) / levels  # z = |w| / max|w|: w scaled into [-1, 1]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert torch.equal(y, reference.qil_quantize_weight(w, q.center, q.distance, q.gamma, 3))


def test_qil_activation_init_and_negative_inputs(seed):
    x = torch.rand(16, 5) * 4
    q = QILQuantizer(4, "activation")
    y = q(x)
    assert q.gamma is None and "gamma" not in dict(q.named_parameters())
    assert q.center.item() == q.distance.item() == pytest.approx(x.max().item() / 2)
    assert 0 <= y.min() and y.max() == 1.0  # normalised units
    assert torch.equal(y, reference.qil_quantize_activation(x, q.center, q.distance, 4))

    signed = QILQuantizer(4, "activation")
    with pytest.warns(UserWarning, match="negative values"):
        signed(torch.randn(20))
    with pytest.warns(UserWarning, match="negative values"):
        QILQuantizer(4, "activation")(-torch.rand(3))  # max <= 0: the interval [0, 1]
    empty = QILQuantizer(4, "activation")
    empty(torch.empty(0))
    assert (empty.center.item(), empty.distance.item()) == (0.5, 0.5)


def test_qil_reset_and_repr():
    q = QILQuantizer(2, "weight")
    assert repr(q) == "QILQuantizer(bits=2, role=weight, center=0.5, distance=0.5, gamma=1, uninitialised)"
    q(torch.tensor([0.5, -2.0]))
    assert repr(q) == "QILQuantizer(bits=2, role=weight, center=1, distance=1, gamma=1)"
    with torch.no_grad():
        q.gamma.fill_(0.5)
    q.reset_parameters()
    assert not q.initialized and (q.center.item(), q.distance.item(), q.gamma.item()) == (0.5, 0.5, 1.0)


# -- every quantizer: state, positivity, dtypes --------------------------------------------------------

MAKERS = {
    "lsq-arctan": lambda: LSQQuantizer(4, True, round_grad="arctan"),
    "lsq-3sigma": lambda: LSQQuantizer(3, True, channel_axis=0, num_channels=6, role="weight", init="lsq+"),
    "lsq+minmax": lambda: LSQPlusQuantizer(4, channel_axis=0, num_channels=6),
    "lsq+mse": lambda: LSQPlusQuantizer(3, init="mse", init_batches=2),
    "qil-weight": lambda: QILQuantizer(3, "weight"),
    "qil-activation": lambda: QILQuantizer(2, "activation"),
    "lsq-group": lambda: LSQQuantizer(4, True, role="weight", group_size=7, shape=(6, 7)),
    "lsq+group": lambda: LSQPlusQuantizer(4, role="weight", group_size=7, shape=(6, 7)),
}


def initialised(name: str) -> tuple[nn.Module, torch.Tensor]:
    q = MAKERS[name]()
    x = torch.randn(6, 7).abs() if name == "qil-activation" else torch.randn(6, 7)
    while not q.initialized:
        q(x)
    return q, x


@pytest.mark.parametrize("name", MAKERS)
def test_eval_before_init_is_an_error(name):
    q = MAKERS[name]().eval()
    with pytest.raises(RuntimeError, match=f"this {type(q).__name__} has not been initialised"):
        q(torch.rand(6, 7))


@pytest.mark.parametrize("name", MAKERS)
def test_checkpoint_round_trip(seed, name):
    q, x = initialised(name)
    with torch.no_grad():  # as if trained a little
        for p in q.parameters():
            p.mul_(1.1)
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    fresh = MAKERS[name]()
    fresh.load_state_dict(state)
    assert fresh.initialized and "uninitialised" not in repr(fresh)
    q.eval(), fresh.eval()
    assert torch.equal(fresh(x), q(x))
    fresh.train()
    before = {k: p.detach().clone() for k, p in fresh.named_parameters()}
    fresh(x * 3)  # no initialisation again
    assert all(torch.equal(before[k], p) for k, p in fresh.named_parameters())


def test_checkpoint_mismatches_are_errors():
    q, _ = initialised("lsq+minmax")
    state = q.state_dict()
    with pytest.raises(ValueError, match="bits=4, this one bits=3"):
        LSQPlusQuantizer(3, channel_axis=0, num_channels=6).load_state_dict(state)
    with pytest.raises(ValueError, match="signed=False, this one signed=True"):
        LSQPlusQuantizer(4, True, channel_axis=0, num_channels=6).load_state_dict(state)
    state["offset"][0] = float("nan")
    with pytest.raises(RuntimeError, match="offset must be finite"):
        LSQPlusQuantizer(4, channel_axis=0, num_channels=6).load_state_dict(state)

    qil, _ = initialised("qil-weight")
    state = qil.state_dict()
    with pytest.raises(ValueError, match="role=weight, this one role=activation"):
        QILQuantizer(3, "activation").load_state_dict(state)
    state["distance"].fill_(0.0)
    with pytest.raises(RuntimeError, match="distance must be positive and finite"):
        QILQuantizer(3, "weight").load_state_dict(state)


def test_optimizer_step_keeps_step_and_distance_positive():
    lsq_plus, _ = initialised("lsq+minmax")
    qil, _ = initialised("qil-activation")
    qil.min_distance = 1e-5
    for model in (nn.ModuleList([lsq_plus, qil]), copy.deepcopy(nn.ModuleList([lsq_plus, qil]))):
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e3)  # far past zero
        optimizer.step()
        lsq_plus_q, qil_q = model
        assert torch.equal(lsq_plus_q.step.detach(), torch.full((6,), 1e-8))
        assert torch.equal(qil_q.distance.detach(), torch.full((1,), 1e-5))
        # what may be negative is left alone
        assert (lsq_plus_q.offset < 0).all() and qil_q.center.item() < 0


@pytest.mark.parametrize("name", MAKERS)
def test_low_precision_model_keeps_float32_parameters(name):
    q, x = initialised(name)
    before = {k: p.detach().clone() for k, p in q.named_parameters()}
    for convert in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.double()):
        convert(q)
        for k, p in q.named_parameters():
            assert p.dtype == torch.float32 and torch.equal(p, before[k]), k
    assert q(x.half()).dtype == torch.float16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert q(x).dtype == torch.bfloat16


# -- layers and quantize_model ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,weight_type,input_type",
    [("lsq", LSQQuantizer, LSQQuantizer), ("lsq+", LSQQuantizer, LSQPlusQuantizer), ("qil", QILQuantizer, QILQuantizer)],
)
def test_quantize_model_methods(method, weight_type, input_type):
    model = small_cnn()
    summary = quantize_model(model, method=method, skip=["4"])
    quantized = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(quantized) == 3 and all(m.method == method for m in quantized)
    for layer in quantized:
        assert type(layer.weight_quantizer) is weight_type and type(layer.input_quantizer) is input_type
    if method == "lsq+":
        assert model[0].weight_quantizer.init == "lsq+" and model[0].input_quantizer.signed is False
    assert [row.method for row in summary] == [method, method, None, method]
    assert summary.methods == (method,)
    text = str(summary)
    assert text.splitlines()[-1].startswith(f"method: {method} (")
    assert text.splitlines()[0].split() == ["layer", "kind", "weight", "activation", "note"]


def test_quantize_model_round_grad_reaches_every_quantizer():
    model = small_cnn()
    summary = quantize_model(model, round_grad="arctan", k=2.5, per_channel_weights=True)
    quantizers = [m for m in model.modules() if isinstance(m, LSQQuantizer)]
    assert len(quantizers) == 8 and all(q.round_grad == "arctan" and q.k == 2.5 for q in quantizers)
    assert "round gradient: arctan soft round (k=2.5" in str(summary)
    layer = QuantLinear.from_float(nn.Linear(3, 2), method="lsq+", act_signed=True)
    assert type(layer.input_quantizer) is LSQPlusQuantizer and layer.input_quantizer.signed is True


def test_bad_method_leaves_model_float():
    model = small_cnn()
    with pytest.raises(ValueError):
        quantize_model(model, method="qil", per_channel_weights=True)
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())


# -- per-group weights (LLM QAT): a step, or a step and an offset, per group of a row ---------------------


def test_per_group_lsq_init_and_forward(seed):
    w = torch.randn(16, 256)
    w[3, 64:128] = 0.0  # a zero group takes the tensor's step
    q = LSQQuantizer(4, True, role="weight", group_size=64, shape=w.shape)
    y = q(w)
    groups = w.reshape(16, 4, 64).abs().double()
    want = 2 * groups.mean(2) / math.sqrt(7)
    want[3, 1] = 2 * w.abs().double().mean() / math.sqrt(7)
    torch.testing.assert_close(q.step.detach().double(), want, rtol=1e-6, atol=0)
    assert torch.equal(y, lsq_fast.reference.lsq_quantize(w, q.step.detach(), 4, group_size=64))
    assert "per-group (64 elements, steps [16, 4])" in repr(q)


def test_per_group_lsq_plus_minmax_init(seed):
    w = torch.randn(8, 96)
    q = LSQPlusQuantizer(3, role="weight", group_size=32, shape=w.shape)
    y = q(w)
    groups = w.reshape(8, 3, 32)
    low, high = groups.amin(2), groups.amax(2)
    torch.testing.assert_close(q.step.detach(), (high - low) / 7, rtol=1e-6, atol=0)
    torch.testing.assert_close(q.offset.detach(), low, rtol=0, atol=0)
    assert torch.equal(y, lsq_fast.reference.lsq_plus_quantize(w, q.step.detach(), q.offset.detach(), 3, group_size=32))


@pytest.mark.parametrize("method", ["lsq", "lsq+"])
def test_weight_only_per_group_model(seed, method):
    """quantize_model(act_bits=None, weight_group_size=G): the inputs stay float, every Linear's
    weight gets a step (and for lsq+ an offset) per group, whose gradients are within the
    contract's bound."""
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    summary = quantize_model(model, act_bits=None, first_last_bits=None, weight_group_size=32, method=method)
    assert "4-bit g32" in str(summary)
    layers = [m for m in model if isinstance(m, QuantLinear)]
    assert all(m.input_quantizer is None and m.weight_quantizer.step.shape == (m.out_features, m.in_features // 32)
               for m in layers)
    kind = LSQPlusQuantizer if method == "lsq+" else LSQQuantizer
    assert all(type(m.weight_quantizer) is kind for m in layers)
    x, labels = torch.randn(16, 64), torch.randint(0, 10, (16,))
    with QuantizerTaps(model) as taps:
        F.cross_entropy(model(x), labels).backward()
        bounds = taps.bounds()
    assert len(bounds) == 3 * (2 if method == "lsq+" else 1)
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert_quantizer_grads_within(grads, bounds)


# -- training: each method fits the toy task, and its quantizers learn ----------------------------------



@pytest.mark.parametrize("name", METHODS)
def test_small_cnn_trains_with_each_method(seed, name):
    torch.manual_seed(seed)
    model = small_cnn(batch_norm=True)
    quantize_model(model, **METHODS[name])
    images, labels = toy_task()
    first = {}

    def record(model):
        first["params"] = quantizer_params(model)
        first["grads"] = {k: p.grad.clone() for k, p in model.named_parameters() if k in first["params"]}

    # QIL's input quantizer on the first layer (the image) clips its negative values, and says so
    with pytest.warns(UserWarning, match="negative values") if name == "qil" else contextlib.nullcontext():
        losses = train_small_cnn(model, images, labels, interval_lr=INTERVAL_LR[name], after_first_backward=record)
    initial, first_grads = first["params"], first["grads"]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < PASS_MARK[name] * losses[0], losses  # calibrated: tests/calibrate_training.py

    # 4 layers' weight and input quantizers: steps; steps and offsets; centres, distances, gammas
    expected = {"lsq": 8, "lsq-arctan": 8, "lsq+": 12, "qil": 20}[name]
    assert len(initial) == expected
    no_gradient = [k for k, grad in first_grads.items() if not grad.abs().sum() > 0]
    assert not no_gradient, f"quantizer parameters without a gradient: {no_gradient}"
    # every quantizer learns. (Not every parameter need move visibly: the first layer's 8-bit
    # LSQ+ offset has a gradient only from the two extreme pixels, which min/max puts exactly
    # on the grid's ends; its updates can be below float32's resolution of its value.)
    final = quantizer_params(model)
    quantizers = {k.rsplit(".", 1)[0] for k in initial}
    still = [q for q in quantizers if all(torch.equal(initial[k], final[k]) for k in initial if k.startswith(q + "."))]
    assert not still, f"quantizers whose parameters did not move: {still}"
