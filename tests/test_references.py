"""The plain-PyTorch references of LSQ+, QIL and LG-LSQ's soft-round gradient against the
formulas of docs/contract.md (sections 2-4), written out here in float64: forward
values, the piecewise pass-through regions exactly, the smooth parts with gradcheck, the guards."""

import math

import pytest
import torch

from lsq_fast import reference
from lsq_fast.reference.qil import qil_levels
from lsq_fast.reference.soft_round import soft_round, soft_round_slope
from lsq_oracle import assert_grad_within, sum_bound

F64 = torch.float64
F64_REL = 1e-12  # a float64 sum against its exact value: the contract's form of bound, at float64's precision


def grads(y, inputs, grad_y):
    return torch.autograd.grad(y, inputs, grad_y)


# -- LSQ+ --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits,signed", [(4, False), (2, False), (8, False), (3, True)])
@pytest.mark.parametrize("axis", [None, 1])
def test_lsq_plus_against_the_spec_table(seed, bits, signed, axis):
    qmin = -(2 ** (bits - 1)) if signed else 0
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    channels = 1 if axis is None else 6
    step = (2.0 ** torch.randint(-4, -1, (channels,))).to(F64)  # powers of two: exact ties and clip points
    offset = (torch.randint(-8, 8, (channels,)) * step / 4).to(F64)
    view = (lambda t: t.reshape(())) if axis is None else (lambda t: t.reshape(1, -1, 1))
    u = torch.cat([torch.empty(5, channels, 40, dtype=F64).uniform_(qmin - 3, qmax + 3),
                   torch.randint(qmin, qmax, (5, channels, 8)).to(F64) + 0.5,  # ties
                   torch.tensor([qmin, qmax], dtype=F64).repeat(5, channels, 4)], dim=2)  # clip points
    x = (u * view(step) + view(offset)).requires_grad_()
    s, b = step.clone().requires_grad_(), offset.clone().requires_grad_()
    g = 0.3
    y = reference.lsq_plus_quantize(x, s, b, bits, signed=signed, channel_axis=axis, grad_scale=g)

    inside = (u > qmin) & (u < qmax)
    assert torch.equal(y, view(step) * u.clamp(qmin, qmax).round() + view(offset))
    grad_y = torch.randn_like(u)
    gx, gs, gb = grads(y, (x, s, b), grad_y)
    dyds = torch.where(inside, u.round() - u, u.clamp(qmin, qmax))
    dydb = torch.where(inside, 0.0, 1.0).to(F64)
    dims = [0, 2] if axis is not None else [0, 1, 2]
    torch.testing.assert_close(gx, grad_y * inside, rtol=1e-12, atol=0)
    assert dims == ([0, 2] if axis is not None else [0, 1, 2])
    assert_grad_within(gs, sum_bound(grad_y * dyds, axis, g, rel=F64_REL), "grad_step")
    assert_grad_within(gb, sum_bound(grad_y * dydb, axis, g, rel=F64_REL), "grad_offset")


def test_lsq_plus_float32_forward_order_and_errors():
    x, s, b = torch.randn(1000), torch.tensor([0.05]), torch.tensor([-0.3])
    y = reference.lsq_plus_quantize(x, s, b, 4)
    u = ((x - b) / s).clamp(0, 15)  # subtract, IEEE divide, clip, round, multiply, add: each rounded
    assert torch.equal(y, u.round() * s + b)
    with pytest.raises(ValueError, match="offset must match step"):
        reference.lsq_plus_quantize(x, s, torch.zeros(2), 4)


# -- QIL ----------------------------------------------------------------------------------------------


def qil_params(c=0.6, d=0.4, gamma=0.7):
    return [torch.tensor([v], dtype=F64, requires_grad=True) for v in (c, d, gamma)]


def test_qil_weight_forward_and_regions(seed):
    c, d, gamma = qil_params()
    w = torch.cat([torch.empty(500, dtype=F64).uniform_(-1.5, 1.5), torch.tensor([0.2, -0.2, 1.0, -1.0, 0.0], dtype=F64)])
    w.requires_grad_()
    bits = 4
    q = qil_levels(bits, signed=True)
    y = reference.qil_quantize_weight(w, c, d, gamma, bits)
    a = w.detach().abs()
    z = (0.5 / 0.4 * a + (0.5 - 0.5 * 0.6 / 0.4)).clamp(0, 1)
    w_t = torch.sign(w.detach()) * z**0.7
    assert torch.equal(y, (w_t * q).round() / q)
    assert y.abs().max() <= 1 and torch.all(y[a <= 0.2] == 0) and torch.all(y[a >= 1.0].abs() == 1)

    grad_y = torch.randn_like(y)
    gw, gc, gd, gg = grads(y, (w, c, d, gamma), grad_y)
    inside = (z > 0) & (z < 1)
    alpha, sgn, gm = 0.5 / 0.4, torch.sign(w.detach()), 0.7
    zs = torch.where(inside, z, 1.0)
    torch.testing.assert_close(gw, torch.where(inside, grad_y * gm * zs ** (gm - 1) * alpha, 0.0))
    assert_grad_within(gc, sum_bound(grad_y * torch.where(inside, -gm * zs ** (gm - 1) * alpha * sgn, 0.0), None,
                                     rel=F64_REL), "grad_center")
    dd = gm * zs ** (gm - 1) * (alpha / 0.4) * (0.6 - a) * sgn
    dd_size = gm * zs ** (gm - 1) * (alpha / 0.4) * (0.6 + a)  # (0.6 - a) is a difference: its error scales with this
    assert_grad_within(gd, sum_bound(grad_y * torch.where(inside, dd, 0.0), None, rel=F64_REL,
                                     abs_terms=(grad_y * torch.where(inside, dd_size, 0.0)).abs()), "grad_distance")
    assert_grad_within(gg, sum_bound(grad_y * torch.where(inside, zs**gm * torch.log(zs) * sgn, 0.0), None,
                                     rel=F64_REL), "grad_gamma")
    assert torch.all(gw[~inside] == 0)  # pruned, clipped, and exactly at the interval's ends


def test_qil_transforms_gradcheck(seed):
    """Inside the interval the transformers are smooth: gradcheck against finite differences."""
    c, d, gamma = qil_params(0.5, 0.3, 1.3)
    w = torch.empty(40, dtype=F64).uniform_(0.25, 0.75) * torch.where(torch.rand(40) < 0.5, -1.0, 1.0).to(F64)
    w.requires_grad_()
    assert torch.autograd.gradcheck(reference.qil_transform_weight, (w, c, d, gamma))
    x = torch.empty(40, dtype=F64).uniform_(0.25, 0.75).requires_grad_()
    assert torch.autograd.gradcheck(reference.qil_transform_activation, (x, c, d))


def test_qil_activation_forward_and_regions(seed):
    c, d, _ = qil_params(1.0, 0.8)
    x = torch.cat([torch.empty(300, dtype=F64).uniform_(-0.5, 2.5), torch.tensor([0.2, 1.8], dtype=F64)]).requires_grad_()
    y = reference.qil_quantize_activation(x, c, d, 3)
    xt = (0.5 / 0.8 * x.detach() + (0.5 - 0.5 * 1.0 / 0.8)).clamp(0, 1)
    assert torch.equal(y, (xt * 7).round() / 7)
    grad_y = torch.randn_like(y)
    gx, gc, gd = grads(y, (x, c, d), grad_y)
    inside = (xt > 0) & (xt < 1)
    alpha = 0.5 / 0.8
    torch.testing.assert_close(gx, torch.where(inside, grad_y * alpha, 0.0))
    assert_grad_within(gc, sum_bound(grad_y * torch.where(inside, -alpha, 0.0), None, rel=F64_REL), "grad_center")
    size = (grad_y * torch.where(inside, alpha / 0.8 * (1.0 + x.detach().abs()), 0.0)).abs()  # 1 - x: a difference
    assert_grad_within(gd, sum_bound(grad_y * torch.where(inside, alpha / 0.8 * (1.0 - x.detach()), 0.0), None,
                                     rel=F64_REL, abs_terms=size), "grad_distance")


def test_qil_guards_keep_gradients_finite():
    # d -> 0: clamped; z -> 0 with gamma < 1 and ln 0: taken where z > 0 only
    w = torch.tensor([0.0, 1e-30, 0.3, 0.5, 0.50000001, -2.0], requires_grad=True)
    for c, d, gamma in ((0.5, 0.0, 0.5), (0.5, 1e-40, 0.3), (0.3, 0.2, 0.05), (0.4, 0.1, 1.0)):
        params = [torch.tensor([v], requires_grad=True) for v in (c, d, gamma)]
        y = reference.qil_quantize_weight(w, *params, 4)
        assert torch.isfinite(y).all()
        for g in grads(y, (w, *params), torch.ones_like(y)):
            assert torch.isfinite(g).all(), (c, d, gamma)


@pytest.mark.parametrize("make,match", [
    (lambda: reference.qil_quantize_weight(torch.randn(3), *qil_params(), 1), r"2\.\.8 for signed"),
    (lambda: reference.qil_quantize_activation(torch.randn(3), *qil_params()[:2], 9), r"1\.\.8 for unsigned"),
    (lambda: reference.qil_quantize_activation(torch.randn(3), torch.ones(2), torch.ones(1), 4), "one element"),
])
def test_qil_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# -- LG-LSQ's arctangent soft round ------------------------------------------------------------------


def test_soft_round_shape():
    u = torch.linspace(-3, 3, 6001, dtype=F64)
    for k in (0.5, 5.0, 50.0):
        soft = soft_round(u, k)
        ints = u == u.round()
        assert torch.allclose(soft[ints], u[ints])  # through every integer: continuous
        assert torch.all(soft.diff() > 0)  # increasing: the gradient never vanishes
    assert (soft_round(u, 1e3) - u.round()).abs()[(u - u.round()).abs() < 0.45].max() < 1e-2  # sharp: round
    assert (soft_round(u, 1e-4) - u).abs().max() < 1e-6  # blunt: the identity, i.e. the STE


def test_soft_round_slope_is_its_derivative(seed):
    u = (torch.rand(200, dtype=F64) * 6 - 3).requires_grad_()
    for k in (0.3, 4.0, 20.0):
        (autograd_slope,) = torch.autograd.grad(soft_round(u, k).sum(), u)
        torch.testing.assert_close(soft_round_slope(u.detach(), k), autograd_slope)


@pytest.mark.parametrize("axis", [None, 0])
def test_lsq_arctan_round_grad(seed, axis):
    bits, k, g = 4, 4.0, 0.25
    step = (2.0 ** torch.randint(-4, -1, (1 if axis is None else 5,))).to(F64)
    u = torch.empty(5, 64, dtype=F64).uniform_(-11, 10)
    u[:, :4] = torch.tensor([-8.0, 7.0, 2.5, -0.5], dtype=F64)  # clip points and ties
    s_view = step.reshape(()) if axis is None else step.reshape(-1, 1)
    x = (u * s_view).requires_grad_()
    s = step.clone().requires_grad_()
    y = reference.lsq_quantize(x, s, bits, channel_axis=axis, grad_scale=g, round_grad="arctan", k=k)
    y_ste = reference.lsq_quantize(x, s, bits, channel_axis=axis, grad_scale=g)
    assert torch.equal(y, y_ste)  # the forward keeps the hard round

    grad_y = torch.randn_like(u)
    gx, gs = grads(y, (x, s), grad_y)
    inside = (u > -8) & (u < 7)
    slope = soft_round_slope(u, k)
    torch.testing.assert_close(gx, torch.where(inside, grad_y * slope, 0.0))
    dyds = torch.where(inside, u.round() - u * slope, u.clamp(-8, 7))
    size = grad_y.abs() * torch.where(inside, u.round().abs() + (u * slope).abs(), u.clamp(-8, 7).abs())
    assert_grad_within(gs, sum_bound(grad_y * dyds, None if axis is None else 0, g, abs_terms=size, rel=F64_REL),
                       "grad_step")
    assert not torch.equal(gx, grads(y_ste, (x,), grad_y)[0])


def test_round_grad_arguments():
    x, s = torch.randn(4), torch.tensor([0.1])
    with pytest.raises(ValueError, match="round_grad must be one of ste, arctan"):
        reference.lsq_quantize(x, s, 4, round_grad="tanh")
    with pytest.raises(ValueError, match="sharpness k must be a positive"):
        reference.lsq_quantize(x, s, 4, round_grad="arctan", k=0.0)
    assert math.isclose(float(soft_round_slope(torch.tensor(0.5, dtype=F64), 2.0)), 1 / math.atan(1.0))
