"""The LSQ family as modules: LSQQuantizer's LG-LSQ round gradient and LSQ+ weight
initialisation, LSQPlusQuantizer (learned offset; min/max and MSE initialisation) and
QILQuantizer (learned interval), in the layers and in quantize_model: initial values against
the papers' formulas written out here, checkpoints, positivity, dtypes, errors, and a short
training run of each method. DistributedDataParallel: test_ddp.py."""

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
    LSQPlusQuantizer,
    LSQQuantizer,
    QILQuantizer,
    QuantConv2d,
    QuantLinear,
    quantize_model,
    reference,
)
from lsq_oracle import QuantizerTaps, assert_grad_within, assert_step_grad_close
from tiny_models import INTERVAL_LR, METHODS, PASS_MARK, small_cnn, toy_task, train_small_cnn

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


@pytest.mark.parametrize(
    "make,error,match",
    [
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
    ],
)
def test_bad_configuration(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_method_leaves_model_float():
    model = small_cnn()
    with pytest.raises(ValueError):
        quantize_model(model, method="qil", per_channel_weights=True)
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())


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


@pytest.mark.parametrize("name", ["lsq-arctan", "lsq+", "qil"])
def test_compile_breaks_only_to_initialise(seed, name):
    """As test_compile.py for LSQ: the quantizers' forward, after the initialising step,
    holds no graph break, and gives eager's loss."""
    from torch._dynamo.utils import counters

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
