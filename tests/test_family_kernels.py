"""The fused kernels of the LSQ family beyond LSQ itself, against the references and the spec
(shared/spec/quantizers.md, sections 2-4): LSQ+ (learned offset), QIL (learned interval, weights
and activations) and LG-LSQ's arctan soft-round gradient on the LSQ ops.

Forward: float32 to the bit (float16/bfloat16 too: float32 math, then one cast), except QIL
weights with gamma != 1, whose z^gamma may differ from the reference's pow by a few ulp: equal
except where the reference's w_t * q is within a few ulp of a rounding tie. grad_x: exactly the
formula where it is exact (LSQ+'s is grad_y or 0; QIL's grad_y * alpha when gamma == 1), else
within 1e-5. Parameter gradients: within 1e-5 of a float64 sum of the per-element terms,
relative to the sum of their absolute values. Inputs are made on the CPU, results come back
there. The sizes are small: under Triton's interpreter every launch is slow.
"""

import pytest
import torch

import lsq_fast
from lsq_fast import reference
from lsq_fast.backends import quantizer_ops
from lsq_oracle import (
    along, assert_grad_within, assert_same_bits, assert_step_grad_close, default_scale, lsq_plus_bounds,
    lsq_plus_terms, make_step, make_x, math_dtype, qil_oracle, soft_round_oracle, sum_bound, u_in_math,
)

ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# The tolerance of a value computed in float32 (float64) math and then cast to the dtype.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def family(impl):
    """LSQ+ and QIL have CPU and Triton kernels, no CUDA C++ ones."""
    if impl.backend == "cuda":
        pytest.skip("LSQ+ and QIL have no CUDA C++ kernels (backend='triton' runs them on CUDA tensors)")
    return impl


def grads_of(fn, inputs, grad_y, device):
    """(y, *grads) of fn on copies of `inputs` on `device` (strides kept), back on the CPU."""
    leaves = [t.detach().to(device).requires_grad_() if t is not None else None for t in inputs]
    y = fn(*leaves)
    wrt = [t for t in leaves if t is not None]
    got = torch.autograd.grad(y, wrt, grad_y.to(device))
    assert y.device.type == torch.device(device).type
    return [y.detach().cpu()] + [g.cpu() for g in got]


def leaf(t, device="cpu"):
    """A fresh leaf copy of t on device (impl.put alone may hand back t itself on the CPU)."""
    return t.detach().to(device).clone().requires_grad_()


# -- LSQ+ -----------------------------------------------------------------------------------------


def make_offset(step, power_of_two):
    """Multiples of the step (x - beta then stays exact: ties and clip points too), or random."""
    if power_of_two:
        return step * torch.randint(-4, 5, step.shape).to(step.dtype)
    return (torch.randn(step.shape) * 0.3).to(step.dtype)


def make_plus_inputs(shape, axis, dtype, bits=3, signed=False, power_of_two=True):
    channels = 1 if axis is None else shape[axis]
    step = make_step(channels, power_of_two=power_of_two)
    offset = make_offset(step, power_of_two)
    u_part = make_x(shape, step, bits, signed, axis, torch.float64)  # u * s: ties, clip points, -0.0
    x = (u_part + along(offset.to(torch.float64), u_part, axis)).to(dtype)
    return x, step, offset


def check_lsq_plus(impl, x, step, offset, bits, signed, axis, grad_scale=None, grad_y=None):
    """Kernel and reference on x (a CPU tensor, or already on the device in a layout under test)."""
    x = x if x.device.type == impl.device else impl.put(x)
    grad_y = torch.randn(x.shape).to(x.dtype) if grad_y is None else grad_y
    run = lambda backend: lambda xi, si, oi: lsq_fast.lsq_plus_quantize(  # noqa: E731
        xi, si, oi, bits, signed=signed, channel_axis=axis, grad_scale=grad_scale, backend=backend)
    y, gx, gs, go = grads_of(run(impl.backend), (x, step, offset), grad_y, impl.device)
    y_ref, gx_ref, gs_ref, go_ref = grads_of(run("reference"), (x.cpu(), step, offset), grad_y, "cpu")
    x = x.cpu()
    assert y.dtype == x.dtype and y.shape == x.shape and gx.dtype == x.dtype
    assert_same_bits(y, y_ref)

    u, clipped, step_terms, offset_terms = lsq_plus_terms(x, step, offset, grad_y, bits, signed, axis)
    assert torch.equal(gx, torch.where(clipped, torch.zeros_like(grad_y), grad_y))  # exact
    torch.testing.assert_close(gx, gx_ref, rtol=RTOL[x.dtype], atol=0)  # the reference's (gy*s)/s rounds

    g = default_scale(x, bits, signed, axis, grad_scale)
    # The reference differentiates round(u) * s + beta by autograd, through u = (x - beta) / s:
    # its rounding errors scale with |u| (step) and with every grad_y (offset), not with the terms.
    gy64 = grad_y.to(torch.float64)
    ref_scale = (step_terms.abs() + gy64.abs() * u.to(torch.float64).abs(), gy64.abs())
    for got, ref, terms, scale, what in ((gs, gs_ref, step_terms, ref_scale[0], "grad_step"),
                                         (go, go_ref, offset_terms, ref_scale[1], "grad_offset")):
        assert got.shape == step.shape and got.dtype == step.dtype
        assert_grad_within(got, sum_bound(terms, axis, g), what)
        assert_grad_within(ref, sum_bound(terms, axis, g, abs_terms=scale), what + " of the reference")
    return y, gx, gs, go


PLUS_LAYOUTS = [((3, 5, 7), None), ((3, 5, 7), 0), ((2, 6, 5, 3), 1), ((3, 5, 7), -1), ((4, 6, 5), -2)]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,axis", PLUS_LAYOUTS, ids=[f"{s}-ax{a}" for s, a in PLUS_LAYOUTS])
def test_lsq_plus_layouts_and_dtypes(impl, seed, shape, axis, dtype):
    family(impl)
    x, step, offset = make_plus_inputs(shape, axis, dtype, power_of_two=dtype != torch.float32)
    check_lsq_plus(impl, x, step, offset, 3, False, axis)


@pytest.mark.parametrize("bits,signed", [(1, False), (4, False), (8, False), (2, True), (4, True)])
@pytest.mark.parametrize("power_of_two", [True, False], ids=["exact-ties", "random-step"])
def test_lsq_plus_grids(impl, seed, bits, signed, power_of_two):
    family(impl)
    x, step, offset = make_plus_inputs((9, 13), None, torch.float32, bits, signed, power_of_two)
    check_lsq_plus(impl, x, step, offset, bits, signed, None)
    x, step, offset = make_plus_inputs((6, 2, 5), 0, torch.float32, bits, signed, power_of_two)
    check_lsq_plus(impl, x, step, offset, bits, signed, 0)


@pytest.mark.parametrize("shape,axis", [((5000,), None), ((2, 3, 2100), 1), ((300, 64), 1)])
def test_lsq_plus_partials_over_several_programs(impl, seed, shape, axis):
    """Tensors that take several programs: partials summed by the second launch, in order."""
    family(impl)
    x, step, offset = make_plus_inputs(shape, axis, torch.float32, power_of_two=False)
    _, _, gs, go = check_lsq_plus(impl, x, step, offset, 4, False, axis, grad_scale=0.5)
    _, backward = quantizer_ops("lsq_plus", impl.backend)
    xd, sd, od = impl.put(x), impl.put(step), impl.put(offset)
    grad_y = impl.put(torch.randn(shape))
    first = backward(grad_y, xd, sd, od, 0, 15, axis, None)
    again = backward(grad_y, xd, sd, od, 0, 15, axis, None)
    for a, b in zip(first, again):  # deterministic: the same bits on every run
        assert_same_bits(a.cpu(), b.cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("axis", [None, 1, 3])
def test_lsq_plus_channels_last_and_strided(impl, seed, dtype, axis):
    family(impl)
    x, step, offset = make_plus_inputs((2, 6, 5, 3), axis, dtype)
    xc = x.contiguous(memory_format=torch.channels_last)
    y, gx, _, _ = check_lsq_plus(impl, impl.put(xc), step, offset, 3, False, axis)
    assert y.stride() == xc.stride() and gx.stride() == xc.stride()
    base, bstep, boff = make_plus_inputs((6, 14), None, dtype)
    strided = impl.put(base)[:, ::2]  # neither contiguous nor dense
    ax = None if axis is None else 1
    if ax is None:
        check_lsq_plus(impl, strided, bstep, boff, 3, False, None)
    else:
        s2 = make_step(7, power_of_two=True)
        check_lsq_plus(impl, strided, s2, make_offset(s2, True), 3, False, ax)
    xt = impl.put(base).t()  # dense, transposed: read in place
    s3 = make_step(6, power_of_two=True)
    check_lsq_plus(impl, xt, s3, make_offset(s3, True), 3, False, 1)


def test_lsq_plus_grad_scale_expanded_grad_and_empty(impl, seed):
    family(impl)
    x, step, offset = make_plus_inputs((7, 9), 0, torch.float32, power_of_two=False)
    for g in (1.0, 0.25):
        check_lsq_plus(impl, x, step, offset, 4, True, 0, grad_scale=g)
    xs, ss, os_ = (leaf(t, impl.device) for t in (x, step, offset))
    lsq_fast.lsq_plus_quantize(xs, ss, os_, 4, signed=True, channel_axis=0, backend=impl.backend).sum().backward()
    ref = [leaf(t) for t in (x, step, offset)]
    reference.lsq_plus_quantize(*ref, 4, signed=True, channel_axis=0).sum().backward()  # grad_y: expanded
    u = (x - offset[:, None]) / step[:, None]
    assert torch.equal(xs.grad.cpu(), ((u > -8) & (u < 7)).float())
    bounds = lsq_plus_bounds(x, step, offset, torch.ones(x.shape), 4, True, 0)
    assert_grad_within(ss.grad, bounds["step"], "grad_step")
    assert_grad_within(os_.grad, bounds["offset"], "grad_offset")
    for shape, axis in (((0,), None), ((2, 0, 4), 1), ((0, 3), 1)):
        channels = 1 if axis is None else shape[axis]
        xe = impl.put(torch.empty(shape, dtype=torch.bfloat16)).requires_grad_()
        se, oe = (leaf(torch.full((channels,), v), impl.device) for v in (0.5, 0.1))
        y = lsq_fast.lsq_plus_quantize(xe, se, oe, 4, channel_axis=axis, backend=impl.backend)
        assert y.shape == xe.shape and y.dtype == xe.dtype
        gx, gs, go = torch.autograd.grad(y, (xe, se, oe), torch.empty_like(y))
        assert gx.shape == xe.shape and torch.equal(gs, torch.zeros_like(se)) and torch.equal(go, torch.zeros_like(oe))


def test_lsq_plus_nan_and_inf_follow_the_reference(impl):
    family(impl)
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -0.0, 0.3])
    step, offset = torch.tensor([0.5]), torch.tensor([0.25])
    y = lsq_fast.lsq_plus_quantize(impl.put(x), impl.put(step), impl.put(offset), 4, backend=impl.backend).cpu()
    want = reference.lsq_plus_quantize(x, step, offset, 4)
    assert_same_bits(y, want)


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


# -- LG-LSQ's arctan soft round on LSQ -------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,axis", [((3, 5, 7), None), ((6, 2, 5), 0), ((2, 6, 5, 3), 1), ((300, 64), 1)])
@pytest.mark.parametrize("k", [0.5, 5.0, 20.0])
def test_soft_round_gradient(impl, seed, dtype, shape, axis, k):
    channels = 1 if axis is None else shape[axis]
    step = make_step(channels, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                     power_of_two=dtype != torch.float32)
    x = make_x(shape, step, 4, True, axis, dtype)
    grad_y = torch.randn(shape).to(dtype)
    run = lambda backend: lambda xi, si: lsq_fast.lsq_quantize(  # noqa: E731
        xi, si, 4, signed=True, channel_axis=axis, round_grad="arctan", k=k, backend=backend)
    y, gx, gs = grads_of(run(impl.backend), (x, step), grad_y, impl.device)
    y_ref, gx_ref, gs_ref = grads_of(run("reference"), (x, step), grad_y, "cpu")
    assert_same_bits(y, y_ref)  # the forward keeps the hard round
    assert_same_bits(y, reference.lsq_quantize(x, step, 4, channel_axis=axis))
    gx_exact, terms, scale = soft_round_oracle(x, step, grad_y, 4, True, axis, k)
    torch.testing.assert_close(gx.to(torch.float64), gx_exact.to(dtype).to(torch.float64), rtol=RTOL[dtype], atol=0)
    torch.testing.assert_close(gx, gx_ref, rtol=RTOL[dtype], atol=0)
    g = lsq_fast.default_grad_scale(x.numel() // channels, 4, True)
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    assert_grad_within(gs, sum_bound(terms, axis, g, abs_terms=scale, rel=rel), "grad_step")
    assert_grad_within(gs_ref, sum_bound(terms, axis, g, abs_terms=scale, rel=rel), "grad_step of the reference")


def test_soft_round_is_a_backward_switch(impl, seed):
    """STE and arctan: the same forward, different gradients inside the range, the same outside;
    deterministic step gradient; an expanded grad_y."""
    step = make_step(1)
    x = impl.put(make_x((40, 30), step, 3, True, None))
    _, backward = quantizer_ops("lsq", impl.backend)
    s = impl.put(step)
    grad_y = impl.put(torch.randn(40, 30))
    ste = backward(grad_y, x, s, -4, 3, None, None)
    soft = backward(grad_y, x, s, -4, 3, None, None, 5.0)
    assert not torch.equal(ste[0], soft[0])
    outside = (ste[0] == 0).cpu() & (soft[0] == 0).cpu()
    u = u_in_math(x.cpu(), step, None)
    assert torch.equal(outside, (u <= -4) | (u >= 3))
    again = backward(grad_y, x, s, -4, 3, None, None, 5.0)
    assert_same_bits(again[1].cpu(), soft[1].cpu())
    xs, ss = leaf(x, impl.device), leaf(s, impl.device)
    lsq_fast.lsq_quantize(xs, ss, 3, round_grad="arctan", k=2.0, backend=impl.backend).sum().backward()
    xr, sr = leaf(x), leaf(step)
    reference.lsq_quantize(xr, sr, 3, round_grad="arctan", k=2.0).sum().backward()
    torch.testing.assert_close(xs.grad.cpu(), xr.grad, rtol=1e-5, atol=0)
    assert_step_grad_close(ss.grad, x.cpu(), step, torch.ones(x.shape), 3, True, None, soft_round_k=2.0)


# -- the ops as PyTorch sees them ------------------------------------------------------------------


def test_opcheck(impl, seed):
    """Schemas, fake kernels and autograd registrations of each op (tiny inputs: the interpreter
    is slow)."""
    if impl.backend != "cuda":
        step = impl.put(torch.tensor([0.25, 0.5, 0.125]))
        offset = impl.put(torch.tensor([-0.25, 0.0, 0.5]))
        x = impl.put(torch.randn(2, 3, 4))
        forward, backward = quantizer_ops("lsq_plus", impl.backend)
        torch.library.opcheck(forward.default, (x.requires_grad_(), step.requires_grad_(), offset.requires_grad_(),
                                                0, 7, 1, None))
        torch.library.opcheck(backward.default, (torch.randn_like(x), x.detach(), step.detach(), offset.detach(),
                                                 0, 7, 1, 0.5))
        c, d, g = (impl.put(torch.tensor([v])) for v in (0.3, 0.2, 0.7))
        w = impl.put(torch.randn(3, 5) * 0.5)
        forward, backward = quantizer_ops("qil", impl.backend)
        torch.library.opcheck(forward.default, (w.requires_grad_(), c.requires_grad_(), d.requires_grad_(),
                                                g.requires_grad_(), 7, True))
        torch.library.opcheck(forward.default, (w, c, d, None, 15, False))
        torch.library.opcheck(backward.default, (torch.randn_like(w), w.detach(), c.detach(), d.detach(), g.detach(),
                                                 7, True))
        torch.library.opcheck(backward.default, (torch.randn_like(w), w.detach(), c.detach(), d.detach(), None,
                                                 15, False))
    forward, backward = quantizer_ops("lsq", impl.backend)
    x = impl.put(torch.randn(3, 4)).requires_grad_()
    step = impl.put(torch.tensor([0.3, 0.2, 0.4])).requires_grad_()
    torch.library.opcheck(forward.default, (x, step, -4, 3, 0, None, 5.0))
    torch.library.opcheck(backward.default, (torch.randn_like(x), x.detach(), step.detach(), -4, 3, 0, 0.5, 5.0))
