"""The fused CPU op against the reference and the spec: forward to the bit, grad_x exactly,
grad_step within the issue's bound, on every grid, granularity, dtype and layout."""

import pytest
import torch

import lsq_fast
from lsq_fast import reference
from lsq_oracle import DTYPES, assert_step_grad_close, expected_grad_x, make_step, make_x

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
    ((4, 6, 5), -2),
    ((1, 1), 0),
    ((), None),
]


def run_both(x, step, bits, signed, axis, grad_scale=None, backend="auto"):
    """(y, grad_x, grad_step) from lsq_fast and from the reference, for one random grad_y."""
    grad_y = torch.randn(x.shape, dtype=torch.float32).to(x.dtype)
    results = []
    for fn in (lambda *a, **k: lsq_fast.lsq_quantize(*a, **k, backend=backend), reference.lsq_quantize):
        xi = x.detach().clone().requires_grad_()
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            xi = x.detach().clone(memory_format=torch.channels_last).requires_grad_()
        si = step.detach().clone().requires_grad_()
        y = fn(xi, si, bits, signed=signed, channel_axis=axis, grad_scale=grad_scale)
        gx, gs = torch.autograd.grad(y, (xi, si), grad_y)
        results.append((y, gx, gs))
    return grad_y, results[0], results[1]


def check_against_reference(x, step, bits, signed, axis, grad_scale=None):
    grad_y, (y, gx, gs), (y_ref, gx_ref, gs_ref) = run_both(x, step, bits, signed, axis, grad_scale)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(y, y_ref), f"forward differs at {(y != y_ref).nonzero()[:5].tolist()}"
    assert torch.equal(gx, expected_grad_x(x, step, grad_y, bits, signed, axis))
    torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=0)  # the reference's (gy*s)/s rounds
    assert gs.shape == step.shape and gs.dtype == step.dtype
    assert_step_grad_close(gs, x, step, grad_y, bits, signed, axis, grad_scale)
    return y, gx, gs


@pytest.mark.parametrize("bits,signed", BITS, ids=[f"{'s' if s else 'u'}{b}" for b, s in BITS])
@pytest.mark.parametrize("power_of_two", [True, False], ids=["exact-ties", "random-step"])
def test_every_grid_per_tensor(seed, bits, signed, power_of_two):
    step = make_step(1, power_of_two=power_of_two)
    x = make_x((33, 65), step, bits, signed, None)
    check_against_reference(x, step, bits, signed, None)


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (8, True), (1, False), (4, False), (8, False)])
def test_every_grid_per_channel(seed, bits, signed):
    step = make_step(24, power_of_two=True)
    x = make_x((24, 3, 5, 5), step, bits, signed, 0)
    check_against_reference(x, step, bits, signed, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=[f"{s}-ax{a}" for s, a in LAYOUTS])
def test_layouts_and_dtypes(seed, shape, axis, dtype):
    channels = 1 if axis is None else shape[axis]
    step = make_step(channels, power_of_two=dtype != torch.float32)
    x = make_x(shape, step, 4, True, axis, dtype)
    check_against_reference(x, step, 4, True, axis)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("axis", [None, 0, 1, 3])
def test_channels_last_keeps_layout(seed, dtype, axis):
    shape = (3, 20, 7, 9)
    step = make_step(1 if axis is None else shape[axis], power_of_two=True)
    x = make_x(shape, step, 4, False, axis, dtype).contiguous(memory_format=torch.channels_last)
    y, gx, _ = check_against_reference(x, step, 4, False, axis)
    assert y.stride() == x.stride() and gx.stride() == x.stride()


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_non_contiguous_input(seed, axis):
    base_step = make_step(16)
    base = make_x((16, 40), make_step(1), 3, True, None)
    x = base[:, ::3]  # neither contiguous nor dense
    step = base_step if axis == 0 else (make_step(x.shape[1]) if axis == 1 else make_step(1))
    y, _, _ = check_against_reference(x, step, 3, True, axis)
    assert torch.equal(y, reference.lsq_quantize(x.contiguous(), step, 3, channel_axis=axis))
    xt = make_x((12, 10), make_step(1), 3, True, None).t()  # dense, transposed
    check_against_reference(xt, make_step(1 if axis is None else xt.shape[axis]), 3, True, axis)


def test_expanded_grad_output():
    x = torch.randn(8, 9, requires_grad=True)
    step = torch.tensor([0.3], requires_grad=True)
    lsq_fast.lsq_quantize(x, step, 4).sum().backward()  # grad_y is an expanded scalar
    x2 = x.detach().clone().requires_grad_()
    s2 = step.detach().clone().requires_grad_()
    reference.lsq_quantize(x2, s2, 4).sum().backward()
    assert torch.equal(x.grad, expected_grad_x(x.detach(), step.detach(), torch.ones(8, 9), 4, True, None))
    torch.testing.assert_close(step.grad, s2.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape,axis", [((0,), None), ((0, 3), 1), ((0, 3), 0), ((2, 0, 4), 1), ((2, 0, 4), 2)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty(shape, axis, dtype):
    channels = 1 if axis is None else shape[axis]
    x = torch.empty(shape, dtype=dtype, requires_grad=True)
    step = torch.full((channels,), 0.5, requires_grad=True)
    y = lsq_fast.lsq_quantize(x, step, 4, channel_axis=axis)
    assert y.shape == x.shape and y.dtype == dtype
    gx, gs = torch.autograd.grad(y, (x, step), torch.empty_like(y))
    assert gx.shape == x.shape
    assert torch.equal(gs, torch.zeros_like(step))


def test_grad_scale_override(seed):
    step = make_step(1)
    x = make_x((50, 50), step, 4, True, None)
    for g in (1.0, 0.25, 3.0):
        check_against_reference(x, step, 4, True, None, grad_scale=g)


def test_ties_round_half_to_even_and_strict_clip_points():
    step = torch.tensor([0.5])
    x = torch.tensor([0.25, 0.75, 1.25,  # u = 0.5, 1.5, 2.5 round to 0, 2, 2
                       -0.25, -0.75, 3.5, -4.0, 3.4999998, -3.9999998, 100.0, -100.0], requires_grad=True)
    y = lsq_fast.lsq_quantize(x, step, 4, signed=True)
    want = torch.tensor([0.0, 1.0, 1.0, -0.0, -1.0, 3.5, -4.0, 3.5, -4.0, 3.5, -4.0])
    assert torch.equal(y, want) and torch.equal(torch.signbit(y), torch.signbit(want))
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert gx.tolist() == [1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0]


def test_float64_matches_reference(seed):
    step = make_step(6, dtype=torch.float64)
    x = make_x((6, 50), step, 3, True, 0, torch.float64)
    grad_y, (y, gx, gs), (y_ref, gx_ref, gs_ref) = run_both(x, step, 3, True, 0)
    assert torch.equal(y, y_ref)
    assert torch.equal(gx, expected_grad_x(x, step, grad_y, 3, True, 0))
    torch.testing.assert_close(gs, gs_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axis", [None, 1])
def test_deterministic_and_thread_count_independent(seed, axis):
    shape = (6, 64, 30, 30)
    step = make_step(1 if axis is None else 64)
    x = make_x(shape, step, 4, True, axis)
    grad_y = torch.randn(shape)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            outs.append(torch.ops.lsq_fast.lsq_backward(grad_y, x, step, -8, 7, axis, None))
    finally:
        torch.set_num_threads(threads)
    for gx, gs in outs[1:]:
        assert torch.equal(gx, outs[0][0]) and torch.equal(gs, outs[0][1])
