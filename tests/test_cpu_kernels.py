"""What only the CPU kernels promise beyond the reference comparisons (tests/test_ops_*.py):
parameter gradients (LSQ's step, and those of LSQ's relatives) with the same bits for any thread count,
reduced in float32 lanes folded into float64 to within the contract's bound of an exact sum, and
bad parameter values caught where reading them is free."""

import pytest
import torch

import lsq_fast
from lsq_oracle import make_step, make_x

OPS = torch.ops.lsq_fast


def lsq_plus_backward(grad_y, x, axis, soft=None):
    channels = 1 if axis is None else x.shape[axis]
    step = torch.rand(channels) * 0.2 + 0.05
    offset = -torch.rand(channels) * 0.5
    return OPS.lsq_plus_backward(grad_y, x, step, offset, 0, 15, axis, None)


def qil_backward(grad_y, x, weight):
    c, d = torch.tensor([0.9]), torch.tensor([0.7])
    gamma = torch.tensor([0.8]) if weight else None
    return OPS.qil_backward(grad_y, x, c, d, gamma, 7 if weight else 15, weight)


def soft_lsq_backward(grad_y, x, axis):
    channels = 1 if axis is None else x.shape[axis]
    return OPS.lsq_backward(grad_y, x, torch.rand(channels) * 0.2 + 0.05, -8, 7, axis, None, 3.0)


CALLS = {
    "lsq+ per-tensor": lambda gy, x: lsq_plus_backward(gy, x, None),
    "lsq+ per-channel (channels_last)": lambda gy, x: lsq_plus_backward(gy, x, 1),
    "lsq arctan per-channel": lambda gy, x: soft_lsq_backward(gy, x, 1),
    "qil weight": lambda gy, x: qil_backward(gy, x, True),
    "qil activation": lambda gy, x: qil_backward(gy, x, False),
}


def assert_thread_count_independent(call):
    """call() gives the same bits with all threads, one, and all again."""
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            torch.manual_seed(1)  # the same parameters every time
            outs.append(call())
    finally:
        torch.set_num_threads(threads)
    for out in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out, outs[0]))


@pytest.mark.parametrize("name", list(CALLS))
def test_thread_count_independent(seed, name):
    x = torch.randn(6, 64, 30, 30).contiguous(memory_format=torch.channels_last)
    grad_y = torch.randn_like(x)
    assert_thread_count_independent(lambda: CALLS[name](grad_y, x))


def test_parameter_sums_are_accurate_on_a_large_tensor(seed):
    """2^22 terms: float32 lanes folded into float64 every 64 terms keep the error far below
    a plain float32 running sum's; compare with the float64 kernels on the same values."""
    x = torch.randn(1 << 22) * 2
    grad_y = torch.randn_like(x)
    step, offset = torch.tensor([0.3]), torch.tensor([-1.0])
    _, gs, gb = OPS.lsq_plus_backward(grad_y, x, step, offset, 0, 7, None, 1.0)
    _, gs64, gb64 = OPS.lsq_plus_backward(grad_y.double(), x.double(), step.double(), offset.double(), 0, 7, None, 1.0)
    scale = (grad_y.double().abs() * 7).sum()  # a bound on sum |terms|
    assert abs(gs.double() - gs64).item() <= 4e-6 * scale
    assert abs(gb.double() - gb64).item() <= 4e-6 * scale


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf")])
def test_lsq_plus_bad_step_is_an_error_on_cpu(bad):
    with pytest.raises(ValueError, match="step must be positive and finite"):
        lsq_fast.lsq_plus_quantize(torch.randn(8), torch.tensor([bad]), torch.tensor([0.0]), 4)


def test_qil_distance_at_the_floor_passes_no_gradient():
    """d <= 0 is clamped to 2^-126 inside (no host check needed: the kernels never divide by 0),
    and, as the reference's clamp_min, passes it no gradient."""
    w = torch.randn(100, requires_grad=True)
    c, d, gamma = (torch.tensor([v], requires_grad=True) for v in (0.5, -1.0, 0.9))
    y = lsq_fast.qil_quantize_weight(w, c, d, gamma, 4)
    y_ref = lsq_fast.reference.qil_quantize_weight(w, c, d, gamma, 4)
    assert torch.equal(y, y_ref)
    grads = torch.autograd.grad(y.sum(), (w, c, d, gamma))
    assert grads[2].item() == 0.0 and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("axis", [None, 1])
def test_lsq_thread_count_independent(seed, axis):
    shape = (6, 64, 30, 30)
    step = make_step(1 if axis is None else 64)
    x = make_x(shape, step, 4, True, axis)
    grad_y = torch.randn(shape)
    assert_thread_count_independent(lambda: OPS.lsq_backward(grad_y, x, step, -8, 7, axis, None))


@pytest.mark.parametrize("group_size", [16, 32, 128])
def test_per_group_thread_count_independent(seed, group_size):
    """Per-group rows ([numel / G, G], channels of G elements in one row of segments): items of
    many whole groups, the same bits for any thread count, LSQ and LSQ+."""
    rows = (1 << 18) // group_size
    step = make_step(rows)
    x = make_x((rows, group_size), step, 4, True, 0)
    grad_y = torch.randn(x.shape)
    assert_thread_count_independent(lambda: OPS.lsq_backward(grad_y, x, step, -8, 7, 0, None))
    assert_thread_count_independent(lambda: lsq_plus_backward(grad_y, x, 0))


# Outputs of 16 MB and more are written with non-temporal stores where a vector's address is
# aligned (csrc/cpu/lsq_kernels_impl.h, kStreamBytes); these cross that size with aligned rows,
# rows whose alignment changes from one to the next (mixing both stores), and a view whose every
# address is unaligned, and must give the reference's bits all the same.
STREAMED = {
    "per-group float32": (torch.float32, (1024, 4096), None, 128, 0),
    "per-group bfloat16": (torch.bfloat16, (2048, 4096), None, 64, 0),
    "per-channel odd rows float32": (torch.float32, (4099, 1029), 0, None, 0),
    "per-tensor unaligned float32": (torch.float32, (4 << 20,), None, None, 1),
    "lsq+ per-group bfloat16": (torch.bfloat16, (2048, 4096), None, 128, 0),
}


@pytest.mark.parametrize("name", list(STREAMED))
def test_large_outputs_streamed_match_the_reference(seed, name):
    dtype, shape, axis, group, offset = STREAMED[name]
    numel = 1
    for d in shape:
        numel *= d
    base = torch.randn(numel + offset).to(dtype)
    x = base[offset:].view(shape).requires_grad_()  # offset 1: every vector address off by one element
    assert x.numel() * x.element_size() >= 16 << 20
    channels = 1 if axis is None and group is None else shape[0] if group is None else (shape[0], shape[1] // group)
    step = (torch.rand(channels) * 0.1 + 0.02).requires_grad_()
    grad_y = torch.randn(shape).to(dtype)
    kw = dict(channel_axis=axis, group_size=group)
    # Each element's parameters, broadcast to x: per group along the last axis, per row, or one.
    spread = (lambda p: p.repeat_interleave(group, -1)) if group else (lambda p: p.reshape(-1, 1)) if axis == 0 \
        else (lambda p: p)
    u = x.detach().float()
    if name.startswith("lsq+"):
        beta = (-torch.rand(channels) * 0.1).requires_grad_()
        fused = lsq_fast.lsq_plus_quantize(x, step, beta, 4, backend="cpu", **kw)
        ref = lsq_fast.reference.lsq_plus_quantize(x, step, beta, 4, **kw)
        u = (u - spread(beta.detach())) / spread(step.detach())
        qmin, qmax = 0, 15
    else:
        fused = lsq_fast.lsq_quantize(x, step, 4, backend="cpu", **kw)
        ref = lsq_fast.reference.lsq_quantize(x, step, 4, **kw)
        u = u / spread(step.detach())
        qmin, qmax = -8, 7
    assert torch.equal(fused, ref)
    gx, = torch.autograd.grad(fused, x, grad_y)
    # exactly grad_y strictly inside the clip points, else 0 (the reference's autograd multiplies
    # by s and 1/s: not exact in float32)
    assert torch.equal(gx, torch.where((u > qmin) & (u < qmax), grad_y, torch.zeros_like(grad_y)))
