"""LSQ+'s fused kernels (docs/contract.md, section 2: a learned offset) on every backend that has
them, against the reference: the forward to the bit (float16/bfloat16 too: float32 math, then
one cast), grad_x exactly (grad_y or 0), the step and offset gradients within 1e-5 of a float64
sum of the per-element terms, relative to the sum of their absolute values. Inputs are made on
the CPU, results come back there; sizes are small, as every launch is slow under Triton's
interpreter."""

import pytest
import torch

import lsq_fast
from lsq_fast import reference
from lsq_fast.ops.registry import quantizer_ops
from lsq_oracle import (
    ALL_DTYPES, RTOL, along, assert_grad_within, assert_same_bits, default_scale, family, grads_of, leaf,
    lsq_plus_bounds, lsq_plus_terms, make_step, make_x, sum_bound,
)


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


PLUS_GROUPS = [((6, 256), 64), ((3, 5, 128), 128), ((7, 96), 32), ((4, 80), 80), ((0, 64), 32)]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,group_size", PLUS_GROUPS, ids=[f"{s}-g{g}" for s, g in PLUS_GROUPS])
def test_lsq_plus_per_group(impl, seed, shape, group_size, dtype):
    """A step and an offset per group of the last axis (EfficientQAT's block-wise quantizer): the
    oracle on x's rows of one group, each group a channel (axis 0) of the per-channel oracle."""
    family(impl)
    rows = torch.Size(shape).numel() // group_size
    x_rows, step, offset = make_plus_inputs((rows, group_size), 0, dtype, bits=4, power_of_two=dtype != torch.float32)
    groups = [*shape[:-1], shape[-1] // group_size]
    x, steps, offsets = x_rows.reshape(shape), step.reshape(groups), offset.reshape(groups)
    grad_y = torch.randn(shape).to(dtype)
    run = lambda backend: lambda xi, si, oi: lsq_fast.lsq_plus_quantize(  # noqa: E731
        xi, si, oi, 4, group_size=group_size, backend=backend)
    y, gx, gs, go = grads_of(run(impl.backend), (x, steps, offsets), grad_y, impl.device)
    y_ref, _, _, _ = grads_of(run("reference"), (x, steps, offsets), grad_y, "cpu")
    assert y.shape == x.shape and gs.shape == go.shape == steps.shape
    assert_same_bits(y, y_ref)
    grad_rows = grad_y.reshape(-1, group_size)
    _, clipped, step_terms, offset_terms = lsq_plus_terms(x_rows, step, offset, grad_rows, 4, False, 0)
    assert torch.equal(gx.reshape(-1, group_size), torch.where(clipped, torch.zeros_like(grad_rows), grad_rows))
    g = lsq_fast.default_grad_scale(group_size, 4, False)
    assert_grad_within(gs.reshape(-1), sum_bound(step_terms, 0, g), "grad_step")
    assert_grad_within(go.reshape(-1), sum_bound(offset_terms, 0, g), "grad_offset")


def test_lsq_plus_per_group_bad_arguments(impl):
    family(impl)
    x, step = impl.put(torch.randn(4, 128)), impl.put(torch.full((4, 2), 0.1))
    with pytest.raises(ValueError, match="group_size 48 does not divide"):
        lsq_fast.lsq_plus_quantize(x, step, torch.zeros_like(step), 4, group_size=48, backend=impl.backend)
    with pytest.raises(ValueError, match="offset must match step"):
        lsq_fast.lsq_plus_quantize(x, step, torch.zeros_like(step).reshape(-1), 4, group_size=64, backend=impl.backend)


def test_lsq_plus_nan_and_inf_follow_the_reference(impl):
    family(impl)
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -0.0, 0.3])
    step, offset = torch.tensor([0.5]), torch.tensor([0.25])
    y = lsq_fast.lsq_plus_quantize(impl.put(x), impl.put(step), impl.put(offset), 4, backend=impl.backend).cpu()
    want = reference.lsq_plus_quantize(x, step, offset, 4)
    assert_same_bits(y, want)
