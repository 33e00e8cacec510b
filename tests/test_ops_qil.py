"""QIL's fused kernels (docs/contract.md, section 3: a learned interval, weights and
activations) on every backend that has them, against the reference. Forward: float32 to the bit,
except weights with gamma != 1, whose z^gamma may differ from the reference's pow by a few ulp:
equal except where the reference's w_t * q is within a few ulp of a rounding tie. grad_x:
exactly grad_y * alpha where gamma == 1, else within 1e-5; the interval's gradients within 1e-5
of a float64 sum of the per-element terms, relative to the sum of their absolute values."""

import pytest
import torch

import lsq_fast
from lsq_fast import reference
from lsq_fast.ops.registry import quantizer_ops
from lsq_oracle import (
    ALL_DTYPES, RTOL, assert_grad_within, assert_same_bits, family, grads_of, leaf, math_dtype, qil_oracle,
)


# -- QIL ------------------------------------------------------------------------------------------


def make_interval(exact):
    """(center, distance): dyadic (alpha, beta and alpha * |w| + beta exact: the interval's ends
    and its middle, a tie when q = 1, land exactly), or random."""
    if exact:
        return torch.tensor([0.375]), torch.tensor([0.25])
    return torch.rand(1) * 0.4 + 0.2, torch.rand(1) * 0.3 + 0.05


def make_qil_x(shape, center, distance, weight, dtype=torch.float32):
    """Values over and past the interval, for weights of both signs, mixed with the interval's
    ends c - d (pruned: z = 0) and c + d (clipped: z = 1), its centre c (z = 1/2), +-0.0."""
    c, d = float(center), float(distance)
    lo, hi = (-(c + 2 * d), c + 2 * d) if weight else (c - 2 * d, c + 2 * d)
    x = torch.empty(shape, dtype=torch.float64).uniform_(lo, hi)
    kind = torch.randint(0, 10, shape)
    special = torch.tensor([c - d, c + d, c, 0.0, -0.0], dtype=torch.float64)[torch.randint(0, 5, shape)]
    if weight:
        special = special * torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).to(torch.float64)
    return torch.where(kind >= 7, special, x).to(dtype)


def near_ties(x, center, distance, gamma, levels, weight):
    """Where the reference's x_t * q is within a few ulp of a rounding tie: there the power's last
    bits (exp2/log2 here, pow in the reference) may round it either way."""
    m = math_dtype(x.dtype)
    if weight:
        v = reference.qil.qil_transform_weight(x, center, distance, gamma) * levels
    else:
        v = reference.qil.qil_transform_activation(x, center, distance) * levels
    rel = 1e-5 if m == torch.float32 else 1e-13
    return ((v - v.floor()) - 0.5).abs() <= rel * v.abs().clamp_min(1.0)


def check_qil(impl, x, center, distance, gamma, bits, weight, grad_y=None, exact_gamma=None):
    x = x if x.device.type == impl.device else impl.put(x)
    grad_y = torch.randn(x.shape).to(x.dtype) if grad_y is None else grad_y
    levels = lsq_fast.qrange(bits, weight)[1]
    if weight:
        run = lambda backend: lambda xi, ci, di, gi: lsq_fast.qil_quantize_weight(  # noqa: E731
            xi, ci, di, gi, bits, backend=backend)
        inputs = (x, center, distance, gamma)
    else:
        run = lambda backend: lambda xi, ci, di: lsq_fast.qil_quantize_activation(  # noqa: E731
            xi, ci, di, bits, backend=backend)
        inputs = (x, center, distance)
    got = grads_of(run(impl.backend), inputs, grad_y, impl.device)
    want = grads_of(run("reference"), (x.cpu(),) + inputs[1:], grad_y, "cpu")
    x = x.cpu()
    y, gx = got[0], got[1]
    assert y.dtype == x.dtype and y.shape == x.shape and gx.dtype == x.dtype
    gamma_is_one = not weight or float(gamma) == 1.0
    if gamma_is_one:
        assert_same_bits(y, want[0])
    else:  # equal but near ties, and there one level apart at most
        differ = (y.to(torch.float64) != want[0].to(torch.float64)) & ~(y.isnan() & want[0].isnan())
        assert not (differ & ~near_ties(x, center, distance, gamma, levels, weight)).any()
        assert torch.all((y - want[0])[differ].abs().to(torch.float64) <= 1.0 / levels * 1.01)
        same = ~differ
        assert_same_bits(y[same], want[0][same])

    gx_exact, bounds, inside, pre, alpha = qil_oracle(x, center, distance, gamma, grad_y, weight)
    if gamma_is_one:  # grad_y * alpha, one rounding in the math dtype, then the cast: exact
        m = math_dtype(x.dtype)
        want_gx = torch.where(gx_exact != 0, grad_y.to(m) * alpha, torch.zeros((), dtype=m)).to(x.dtype)
        assert torch.equal(gx, want_gx)
    else:
        torch.testing.assert_close(gx.to(torch.float64), gx_exact.to(x.dtype).to(torch.float64),
                                   rtol=RTOL[x.dtype], atol=0)
    torch.testing.assert_close(gx, want[1], rtol=RTOL[x.dtype], atol=0)
    params = got[2:] if weight else got[2:] + [torch.zeros(1)]
    for p, name in zip(params, ("center", "distance", "gamma")):
        assert p.shape == center.shape and p.dtype == center.dtype
        assert_grad_within(p, bounds[name], "grad_" + name)
    refs = want[2:] if weight else want[2:] + [torch.zeros(1)]
    for r, name in zip(refs, ("center", "distance", "gamma")):
        assert_grad_within(r, bounds[name], f"grad_{name} of the reference")  # the oracle's own check
    return got


GAMMAS = [1.0, 0.6, 1.7]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("exact", [True, False], ids=["dyadic", "random"])
def test_qil_weights(impl, seed, dtype, gamma, exact):
    family(impl)
    center, distance = make_interval(exact)
    x = make_qil_x((3, 5, 7), center, distance, True, dtype)
    check_qil(impl, x, center, distance, torch.tensor([gamma]), 3, True)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("exact", [True, False], ids=["dyadic", "random"])
def test_qil_activations(impl, seed, dtype, exact):
    family(impl)
    center, distance = make_interval(exact)
    x = make_qil_x((2, 6, 5, 3), center, distance, False, dtype)
    check_qil(impl, x, center, distance, None, 4, False)


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_qil_grids_and_exact_ties(impl, seed, bits):
    """q = 1 (1-bit activations, 2-bit weights) puts the interval's centre on a tie, exactly:
    round half to even sends it to 0."""
    family(impl)
    center, distance = make_interval(True)
    x = make_qil_x((11, 9), center, distance, False)
    got = check_qil(impl, x, center, distance, None, bits, False)
    if bits == 1:
        assert torch.all(got[0][x == float(center)] == 0)
    wbits = max(bits, 2)
    w = make_qil_x((11, 9), center, distance, True)
    got = check_qil(impl, w, center, distance, torch.tensor([1.0]), wbits, True)
    if wbits == 2:
        assert torch.all(got[0][w.abs() == float(center)] == 0)
    check_qil(impl, w, center, distance, torch.tensor([0.8]), wbits, True)


@pytest.mark.parametrize("weight", [True, False], ids=["weights", "activations"])
def test_qil_layouts_several_programs_and_determinism(impl, seed, weight):
    family(impl)
    center, distance = make_interval(False)
    gamma = torch.tensor([0.7]) if weight else None
    x = make_qil_x((2, 6, 5, 3), center, distance, weight).contiguous(memory_format=torch.channels_last)
    got = check_qil(impl, impl.put(x), center, distance, gamma, 4, weight)
    assert got[0].stride() == x.stride() and got[1].stride() == x.stride()
    base = impl.put(make_qil_x((6, 14), center, distance, weight))
    check_qil(impl, base[:, ::2], center, distance, gamma, 4, weight)  # copied once
    check_qil(impl, base.t(), center, distance, gamma, 4, weight)  # read in place
    big = make_qil_x((9000,), center, distance, weight)  # several programs: partials, then a sum
    check_qil(impl, big, center, distance, gamma, 4, weight)
    _, backward = quantizer_ops("qil", impl.backend)
    args = [impl.put(t) if t is not None else None for t in (big, center, distance, gamma)]
    grad_y = impl.put(torch.randn(big.shape))
    levels = lsq_fast.qrange(4, weight)[1]
    first = backward(grad_y, *args, levels, weight)
    again = backward(grad_y, *args, levels, weight)
    for a, b in zip(first, again):
        assert_same_bits(a.cpu(), b.cpu())


def test_qil_guards_gamma_none_expanded_grad_and_empty(impl, seed):
    family(impl)
    center, distance = make_interval(True)
    w = make_qil_x((5, 8), center, distance, True)
    # distance at or below the floor: clamped to 2^-126 (alpha = 2^125), no gradient to it (the
    # oracle's grad_distance is then exactly 0); a tiny grad_y keeps grad_center ~ 2^125 * B finite
    for d in (0.0, -1.0, 1e-39):
        tiny = torch.randn(w.shape) * 2.0**-100
        check_qil(impl, w, center, torch.tensor([d]), torch.tensor([0.5]), 4, True, grad_y=tiny)
        check_qil(impl, w * 1e-3, torch.tensor([0.0]), torch.tensor([d]), None, 4, False, grad_y=tiny)
    # gamma None (the op's weights without an exponent) is gamma = 1, with a zero gamma gradient
    forward, backward = quantizer_ops("qil", impl.backend)
    wd, cd, dd = impl.put(w), impl.put(center), impl.put(distance)
    grad_y = impl.put(torch.randn(w.shape))
    one_gamma = impl.put(torch.ones(1))
    assert_same_bits(forward(wd, cd, dd, None, 7, True).cpu(), forward(wd, cd, dd, one_gamma, 7, True).cpu())
    no_gamma = backward(grad_y, wd, cd, dd, None, 7, True)
    one = backward(grad_y, wd, cd, dd, one_gamma, 7, True)
    for a, b in zip(no_gamma[:3], one[:3]):
        assert_same_bits(a.cpu(), b.cpu())
    assert torch.equal(no_gamma[3].cpu(), torch.zeros(1))
    # an expanded grad_y (y.sum().backward())
    ws, cs, ds, gs = (leaf(t, impl.device) for t in (w, center, distance, torch.tensor([0.8])))
    lsq_fast.qil_quantize_weight(ws, cs, ds, gs, 4, backend=impl.backend).sum().backward()
    ref = [leaf(t) for t in (w, center, distance, torch.tensor([0.8]))]
    reference.qil_quantize_weight(*ref, 4).sum().backward()
    torch.testing.assert_close(ws.grad.cpu(), ref[0].grad, rtol=1e-5, atol=0)  # grad_x: a product, no sum
    _, bounds, *_ = qil_oracle(w, center, distance, torch.tensor([0.8]), torch.ones(w.shape), True)
    for a, name in zip((cs, ds, gs), ("center", "distance", "gamma")):
        assert_grad_within(a.grad, bounds[name], "grad_" + name)
    # empty tensors
    for dtype in (torch.float32, torch.bfloat16):
        xe = impl.put(torch.empty(0, 3, dtype=dtype)).requires_grad_()
        ce, de, ge = (leaf(t, impl.device) for t in (center, distance, torch.tensor([0.8])))
        y = lsq_fast.qil_quantize_weight(xe, ce, de, ge, 4, backend=impl.backend)
        assert y.shape == xe.shape and y.dtype == dtype
        grads = torch.autograd.grad(y, (xe, ce, de, ge), torch.empty_like(y))
        assert grads[0].shape == xe.shape and all(torch.equal(g.cpu(), torch.zeros(1)) for g in grads[1:])


def test_qil_nan_follows_the_reference(impl):
    family(impl)
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.4, -0.0])
    c, d, g = torch.tensor([0.3]), torch.tensor([0.2]), torch.tensor([0.7])
    y = lsq_fast.qil_quantize_weight(impl.put(x), impl.put(c), impl.put(d), impl.put(g), 4, backend=impl.backend)
    assert_same_bits(y.cpu(), reference.qil_quantize_weight(x, c, d, g, 4))
    y = lsq_fast.qil_quantize_activation(impl.put(x), impl.put(c), impl.put(d), 4, backend=impl.backend)
    assert_same_bits(y.cpu(), reference.qil_quantize_activation(x, c, d, 4))
