"""LSQ's ops (docs/contract.md, sections 1 and 4) on every fused backend against the reference
and the contract: forward to the bit, grad_x exactly, grad_step within 1e-5 of sum|terms|, on
every grid, granularity, dtype and layout; and LG-LSQ's arctan soft-round backward.

Inputs are made on the CPU (the oracle's home) and moved to the backend's device; results come
back to the CPU to be compared."""

import pytest
import torch

import lsq_fast
from lsq_fast import reference
from lsq_fast.ops.registry import quantizer_ops
from lsq_oracle import (
    ALL_DTYPES, DTYPES, RTOL, assert_grad_within, assert_same_bits, assert_step_grad_close, expected_grad_x,
    grads_of, leaf, make_step, make_x, soft_round_oracle, sum_bound, u_in_math,
)

BITS = [(b, True) for b in range(2, 9)] + [(b, False) for b in range(1, 9)]

# (shape, channel_axis): per-tensor, weights on axis 0, NCHW activations on axis 1, odd
# shapes, short and long channel runs, several work items, and a last-axis case.
LAYOUTS = [
    ((7,), None),
    ((3, 5, 7, 9), None),
    ((3 * 16384 + 77,), None),
    ((64, 3, 3, 3), 0),
    ((2, 16, 9, 11), 1),
    ((5, 7, 100), 1),
    ((300, 64), 1),
    ((40, 3000), -1),
    ((2, 3, 5000), 1),  # rows longer than a tile: several partials per row
    ((3, 20000), 0),  # a weight row longer than one program takes
    ((4, 6, 5), -2),
    ((1, 1), 0),
    ((), None),
]


def run_both(impl, x, step, bits, signed, axis, grad_scale=None):
    """(y, grad_x, grad_step) from the backend under test, back on the CPU, and from the
    reference, for one random grad_y. x is on the backend's device, in the layout under test."""
    grad_y = torch.randn(x.shape, dtype=torch.float32).to(x.dtype)
    fused = lambda *a, **k: lsq_fast.lsq_quantize(*a, **k, backend=impl.backend)  # noqa: E731
    results = []
    for fn, device in ((fused, impl.device), (reference.lsq_quantize, "cpu")):
        xi = x.detach().to(device).requires_grad_()  # detach keeps x's strides, a strided view's too
        si = step.detach().to(device).requires_grad_()
        y = fn(xi, si, bits, signed=signed, channel_axis=axis, grad_scale=grad_scale)
        gx, gs = torch.autograd.grad(y, (xi, si), grad_y.to(device))
        assert y.device == xi.device and gx.device == xi.device
        results.append((y.cpu(), gx.cpu(), gs.cpu()))
    return grad_y, results[0], results[1]


def check_against_reference(impl, x, step, bits, signed, axis, grad_scale=None):
    """x: a CPU tensor, moved to the backend's device; or already there (a strided view)."""
    x = x if x.device.type == impl.device else impl.put(x)
    grad_y, (y, gx, gs), (y_ref, gx_ref, gs_ref) = run_both(impl, x, step, bits, signed, axis, grad_scale)
    x = x.cpu()
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_same_bits(y, y_ref)
    assert torch.equal(gx, expected_grad_x(x, step, grad_y, bits, signed, axis))
    torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=0)  # the reference's (gy*s)/s rounds
    assert gs.shape == step.shape and gs.dtype == step.dtype
    assert_step_grad_close(gs, x, step, grad_y, bits, signed, axis, grad_scale)
    return y, gx, gs


@pytest.mark.parametrize("bits,signed", BITS, ids=[f"{'s' if s else 'u'}{b}" for b, s in BITS])
@pytest.mark.parametrize("power_of_two", [True, False], ids=["exact-ties", "random-step"])
def test_every_grid_per_tensor(impl, seed, bits, signed, power_of_two):
    step = make_step(1, power_of_two=power_of_two)
    x = make_x((33, 65), step, bits, signed, None)
    check_against_reference(impl, x, step, bits, signed, None)


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (8, True), (1, False), (4, False), (8, False)])
def test_every_grid_per_channel(impl, seed, bits, signed):
    step = make_step(24, power_of_two=True)
    x = make_x((24, 3, 5, 5), step, bits, signed, 0)
    check_against_reference(impl, x, step, bits, signed, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=[f"{s}-ax{a}" for s, a in LAYOUTS])
def test_layouts_and_dtypes(impl, seed, shape, axis, dtype):
    channels = 1 if axis is None else shape[axis]
    step = make_step(channels, power_of_two=dtype != torch.float32)
    x = make_x(shape, step, 4, True, axis, dtype)
    check_against_reference(impl, x, step, 4, True, axis)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("axis", [None, 0, 1, 3])
def test_channels_last_keeps_layout(impl, seed, dtype, axis):
    shape = (3, 20, 7, 9)
    step = make_step(1 if axis is None else shape[axis], power_of_two=True)
    x = make_x(shape, step, 4, False, axis, dtype).contiguous(memory_format=torch.channels_last)
    y, gx, _ = check_against_reference(impl, x, step, 4, False, axis)
    assert y.stride() == x.stride() and gx.stride() == x.stride()


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_non_contiguous_input(impl, seed, axis):
    base_step = make_step(16)
    base = impl.put(make_x((16, 40), make_step(1), 3, True, None))
    x = base[:, ::3]  # neither contiguous nor dense
    step = base_step if axis == 0 else (make_step(x.shape[1]) if axis == 1 else make_step(1))
    y, _, _ = check_against_reference(impl, x, step, 3, True, axis)
    assert torch.equal(y, reference.lsq_quantize(x.cpu().contiguous(), step, 3, channel_axis=axis))
    xt = impl.put(make_x((12, 10), make_step(1), 3, True, None)).t()  # dense, transposed
    check_against_reference(impl, xt, make_step(1 if axis is None else xt.shape[axis]), 3, True, axis)


def test_expanded_grad_output(impl):
    x = impl.put(torch.randn(8, 9)).requires_grad_()
    step = impl.put(torch.tensor([0.3])).requires_grad_()
    lsq_fast.lsq_quantize(x, step, 4, backend=impl.backend).sum().backward()  # grad_y: an expanded scalar
    x2 = x.detach().cpu().requires_grad_()
    s2 = step.detach().cpu().requires_grad_()
    reference.lsq_quantize(x2, s2, 4).sum().backward()
    assert torch.equal(x.grad.cpu(), expected_grad_x(x2.detach(), s2.detach(), torch.ones(8, 9), 4, True, None))
    assert_step_grad_close(step.grad, x2.detach(), s2.detach(), torch.ones(8, 9), 4, True, None)


@pytest.mark.parametrize("shape,axis", [((0,), None), ((0, 3), 1), ((0, 3), 0), ((2, 0, 4), 1), ((2, 0, 4), 2)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty(impl, shape, axis, dtype):
    channels = 1 if axis is None else shape[axis]
    x = impl.put(torch.empty(shape, dtype=dtype)).requires_grad_()
    step = impl.put(torch.full((channels,), 0.5)).requires_grad_()
    y = lsq_fast.lsq_quantize(x, step, 4, channel_axis=axis, backend=impl.backend)
    assert y.shape == x.shape and y.dtype == dtype
    gx, gs = torch.autograd.grad(y, (x, step), torch.empty_like(y))
    assert gx.shape == x.shape
    assert torch.equal(gs, torch.zeros_like(step))


def test_grad_scale_override(impl, seed):
    step = make_step(1)
    x = make_x((50, 50), step, 4, True, None)
    for g in (1.0, 0.25, 3.0):
        check_against_reference(impl, x, step, 4, True, None, grad_scale=g)


def test_ties_round_half_to_even_and_strict_clip_points(impl):
    step = impl.put(torch.tensor([0.5]))
    x = impl.put(torch.tensor([0.25, 0.75, 1.25,  # u = 0.5, 1.5, 2.5 round to 0, 2, 2
                               -0.25, -0.75, 3.5, -4.0, 3.4999998, -3.9999998, 100.0, -100.0])).requires_grad_()
    y = lsq_fast.lsq_quantize(x, step, 4, signed=True, backend=impl.backend)
    want = torch.tensor([0.0, 1.0, 1.0, -0.0, -1.0, 3.5, -4.0, 3.5, -4.0, 3.5, -4.0])
    assert torch.equal(y.cpu(), want) and torch.equal(torch.signbit(y.cpu()), torch.signbit(want))
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert gx.tolist() == [1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0]


def test_unsigned_clip_point_at_zero_keeps_the_references_sign(impl):
    """u == -0.0 at qmin == 0 is not below the clip point: the reference keeps it, sign and all,
    and so must the kernels' clip (a max(qmin, u) that returns u unless qmin is strictly larger)."""
    step = torch.tensor([0.5])
    x = torch.tensor([-0.0, 0.0, -1e-30, -0.2, -0.3, 1e-30, float("nan")])
    y = lsq_fast.lsq_quantize(impl.put(x), impl.put(step), 3, signed=False, backend=impl.backend).cpu()
    want = reference.lsq_quantize(x, step, 3, signed=False)
    assert torch.equal(y.isnan(), want.isnan()) and torch.equal(y.nan_to_num(), want.nan_to_num())
    assert torch.equal(torch.signbit(y), torch.signbit(want))


def test_nan_and_inf_follow_the_reference(impl):
    step = torch.tensor([0.5])
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -0.0])
    y = lsq_fast.lsq_quantize(impl.put(x), impl.put(step), 4, backend=impl.backend).cpu()
    want = reference.lsq_quantize(x, step, 4)
    assert torch.equal(y.isnan(), want.isnan()) and torch.equal(y.nan_to_num(), want.nan_to_num())
    assert torch.equal(torch.signbit(y[1:]), torch.signbit(want[1:]))


def test_float64_matches_reference(impl, seed):
    step = make_step(6, dtype=torch.float64)
    x = make_x((6, 50), step, 3, True, 0, torch.float64)
    grad_y, (y, gx, gs), (y_ref, gx_ref, gs_ref) = run_both(impl, impl.put(x), step, 3, True, 0)
    assert_same_bits(y, y_ref)
    assert torch.equal(gx, expected_grad_x(x, step, grad_y, 3, True, 0))
    assert_step_grad_close(gs, x, step, grad_y, 3, True, 0, rel=1e-12)


@pytest.mark.parametrize("axis", [None, 1, 3])
def test_step_gradient_is_deterministic(impl, seed, axis):
    """Partials are combined in an order fixed by the shape: the same bits on every run."""
    shape = (4, 32, 20, 20)
    step = impl.put(make_step(1 if axis is None else shape[axis]))
    x = impl.put(make_x(shape, step.cpu(), 4, True, axis))
    grad_y = torch.randn_like(x)
    _, backward = lsq_fast.ops.registry.lsq_ops(impl.backend)
    run = lambda: backward(grad_y, x, step, -8, 7, axis, None)  # noqa: E731
    first = run()
    for gx, gs in (run(), run()):
        assert torch.equal(gx, first[0]) and torch.equal(gs, first[1])



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


# -- per-group steps (docs/contract.md, section 1, "Per-group"): a step per G elements of the last axis


# (x's shape, G): G of 32 to 256 and of the whole row, odd row counts, batched leading axes, empty
GROUPS = [((8, 256), 32), ((5, 256), 64), ((3, 7, 256), 128), ((3, 512), 256), ((7, 96), 96), ((1, 128), 128),
          ((0, 64), 32), ((3, 0), 16)]


def make_group_inputs(shape, group_size, bits, signed, dtype, power_of_two=False):
    """x with ties, clip points and -0.0 (lsq_oracle.make_x on its rows of one group), and a
    step of shape [..., K / G]."""
    rows = (torch.Size(shape).numel() // group_size) if group_size else 0
    step = make_step(rows, power_of_two=power_of_two)
    x = make_x((rows, group_size), step, bits, signed, 0, dtype).reshape(shape)
    return x, step.reshape(*shape[:-1], shape[-1] // group_size)


def check_per_group(impl, x, step, bits, signed, group_size, grad_scale=None, soft_round_k=None):
    """The backend and the reference on per-group steps; the oracle on x's rows of one group,
    where each group is a channel (axis 0) of the per-channel oracle."""
    grad_y = torch.randn(x.shape).to(x.dtype)
    options = dict(signed=signed, group_size=group_size, grad_scale=grad_scale)
    if soft_round_k is not None:
        options.update(round_grad="arctan", k=soft_round_k)
    run = lambda backend: lambda xi, si: lsq_fast.lsq_quantize(xi, si, bits, **options, backend=backend)  # noqa: E731
    y, gx, gs = grads_of(run(impl.backend), (x, step), grad_y, impl.device)
    y_ref, gx_ref, gs_ref = grads_of(run("reference"), (x.cpu(), step), grad_y, "cpu")
    assert y.shape == x.shape and y.dtype == x.dtype and gs.shape == step.shape and gs.dtype == step.dtype
    assert_same_bits(y, y_ref)
    rows, steps, grad_rows = x.cpu().reshape(-1, group_size), step.reshape(-1), grad_y.reshape(-1, group_size)
    if soft_round_k is None:
        assert torch.equal(gx.reshape(-1, group_size), expected_grad_x(rows, steps, grad_rows, bits, signed, 0))
    else:
        exact = soft_round_oracle(rows, steps, grad_rows, bits, signed, 0, soft_round_k)[0]
        torch.testing.assert_close(gx.reshape(-1, group_size).double(), exact.to(x.dtype).double(), rtol=RTOL[x.dtype],
                                   atol=0)
    torch.testing.assert_close(gx, gx_ref, rtol=RTOL[x.dtype], atol=0)
    assert_step_grad_close(gs.reshape(-1), rows, steps, grad_rows, bits, signed, 0, grad_scale,
                           soft_round_k=soft_round_k)
    return y, gx, gs


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,group_size", GROUPS, ids=[f"{s}-g{g}" for s, g in GROUPS])
def test_per_group(impl, seed, shape, group_size, dtype):
    x, step = make_group_inputs(shape, group_size, 4, True, dtype, power_of_two=dtype != torch.float32)
    check_per_group(impl, x, step, 4, True, group_size)


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (8, True), (1, False), (4, False), (8, False)])
@pytest.mark.parametrize("power_of_two", [True, False], ids=["exact-ties", "random-step"])
def test_per_group_every_grid(impl, seed, bits, signed, power_of_two):
    x, step = make_group_inputs((6, 128), 64, bits, signed, torch.float32, power_of_two)
    check_per_group(impl, x, step, bits, signed, 64)


def test_per_group_soft_round_and_grad_scale(impl, seed):
    x, step = make_group_inputs((5, 192), 64, 3, True, torch.float32)
    check_per_group(impl, x, step, 3, True, 64, soft_round_k=5.0)
    check_per_group(impl, x, step, 3, True, 64, grad_scale=0.5)


def test_per_group_of_a_whole_row_is_per_channel(impl, seed):
    """The spec's identity: G = K on a 2-D weight is per-channel on axis 0, to the bit in y and
    grad_x, and the step gradient within the same bound."""
    x, step = make_group_inputs((9, 80), 80, 4, True, torch.float32)
    grouped = check_per_group(impl, x, step, 4, True, 80)  # grad_x exact, as per-channel's below
    channel = check_against_reference(impl, x, step.reshape(-1), 4, True, 0)
    assert_same_bits(grouped[0], channel[0])


def test_per_group_reads_any_layout(impl, seed):
    """A last axis that is not contiguous (a transposed weight) is copied once into groups."""
    x, step = make_group_inputs((12, 64), 64, 4, True, torch.float32)
    xt = impl.put(x).t().contiguous().t()  # x's values, column-major
    assert not xt.is_contiguous()
    y, _, _ = check_per_group(impl, xt, step, 4, True, 64)
    assert_same_bits(y, reference.lsq_quantize(x, step, 4, group_size=64))


@pytest.mark.parametrize("bad,message", [
    (dict(group_size=48), "group_size 48 does not divide x's last dimension 128"),
    (dict(group_size=0), "group_size must be an int >= 1"),
    (dict(group_size=True), "group_size must be an int >= 1"),
    (dict(group_size=64, channel_axis=0), "pass group_size or channel_axis, not both"),
    (dict(group_size=32), r"a per-group step must have shape \[4, 4\]"),
])
def test_per_group_bad_arguments(impl, bad, message):
    x = impl.put(torch.randn(4, 128))
    step = impl.put(torch.full((4, 2), 0.1))
    for backend in (impl.backend, "reference"):
        with pytest.raises(ValueError, match=message):
            lsq_fast.lsq_quantize(x, step, 4, **bad, backend=backend)
    with pytest.raises(ValueError, match="at least one dimension"):
        lsq_fast.lsq_quantize(impl.put(torch.tensor(1.0)), step, 4, group_size=1, backend=impl.backend)
