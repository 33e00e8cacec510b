"""Against PyTorch's own learnable fake-quant ops, where their pass band agrees with ours.

torch._fake_quantize_learnable_* pass the gradient wherever round(u) lies in [qmin, qmax],
i.e. for u in [qmin - 1/2, qmax + 1/2), where LSQ's strict mask stops it at the clip points.
They also multiply by 1/scale instead of dividing, so steps are powers of two here (exact
either way). Inputs avoid the bands where the two definitions differ; everywhere else
forward and grad_x must agree to the bit, and every parameter gradient with the exact sum
of its terms, within the contract's bound (torch's too: at these sizes its float32 sums
stay within 3% of the bound over 2400 seeded cases).
"""

import pytest
import torch

import lsq_fast
from lsq_oracle import Bound, assert_grad_within, lsq_plus_bounds, lsq_step_bound, make_step


def inputs_outside_disputed_bands(shape, step, qmin, qmax, channel_axis):
    u = torch.empty(shape, dtype=torch.float64).uniform_(qmin - 3, qmax + 3)
    ties = torch.randint(qmin, qmax, shape).to(torch.float64) + 0.5
    u = torch.where(torch.rand(shape) < 0.3, ties, u)
    disputed = ((u >= qmin - 0.5) & (u <= qmin)) | ((u >= qmax) & (u <= qmax + 0.5))
    u = torch.where(disputed, torch.full_like(u, (qmin + qmax) / 2 + 0.25), u)  # well inside
    s = step.to(torch.float64)
    s = s.reshape(()) if channel_axis is None else s.reshape([-1 if d == channel_axis else 1 for d in range(len(shape))])
    return (u * s).to(torch.float32)


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (8, True), (1, False), (4, False), (8, False)])
@pytest.mark.parametrize("channel_axis", [None, 0, 1])
def test_matches_torch_learnable_fake_quant(impl, seed, bits, signed, channel_axis):
    qmin, qmax = lsq_fast.qrange(bits, signed)
    shape = (6, 10, 7)
    channels = 1 if channel_axis is None else shape[channel_axis]
    step = make_step(channels, power_of_two=True)
    x = impl.put(inputs_outside_disputed_bands(shape, step, qmin, qmax, channel_axis))
    step = impl.put(step)
    grad_y = impl.put(torch.randn(shape))
    g = 0.37

    x1, s1 = x.clone().requires_grad_(), step.clone().requires_grad_()
    y1 = lsq_fast.lsq_quantize(x1, s1, bits, signed=signed, channel_axis=channel_axis, grad_scale=g, backend=impl.backend)
    gx1, gs1 = torch.autograd.grad(y1, (x1, s1), grad_y)

    x2, s2 = x.clone().requires_grad_(), step.clone().requires_grad_()
    zero_point = impl.put(torch.zeros(channels))
    if channel_axis is None:
        y2 = torch._fake_quantize_learnable_per_tensor_affine(x2, s2, zero_point, qmin, qmax, g)
    else:
        y2 = torch._fake_quantize_learnable_per_channel_affine(x2, s2, zero_point, channel_axis, qmin, qmax, g)
    gx2, gs2 = torch.autograd.grad(y2, (x2, s2), grad_y)

    assert torch.equal(y1, y2)
    assert torch.equal(gx1, gx2)
    exact = lsq_step_bound(x.cpu(), step.cpu(), grad_y.cpu(), bits, signed, channel_axis, grad_scale=g)
    assert_grad_within(gs1, exact, "grad_step")
    assert_grad_within(gs2, exact, "torch's grad_scale")


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("channel_axis", [None, 1])
def test_lsq_plus_matches_torch_learnable_zero_point(impl, seed, bits, channel_axis):
    """LSQ+ with offset = -zero_point * step is PyTorch's op with a learned zero point: the same
    forward, and the same gradients once the offset's dependence on the step is added (torch's
    offset moves with the scale): d/dscale = dy/ds - zp dy/doffset, d/dzp = -step dy/doffset.
    torch rounds x / scale before adding the zero point, we after subtracting the offset: at a
    tie the two agree only for an even zero point (half to even keeps its parity), so it is even."""
    if impl.backend == "cuda":
        pytest.skip("LSQ+ has no CUDA C++ kernels (Triton serves CUDA tensors)")
    qmin, qmax = lsq_fast.qrange(bits, False)
    shape = (5, 6, 9)
    channels = 1 if channel_axis is None else shape[channel_axis]
    step = make_step(channels, power_of_two=True)
    zero_point = 2 * torch.randint(0, (qmax + 1) // 2, (channels,)).float()  # even integers (see above)
    offset = -zero_point * step  # exact: a small integer times a power of two
    view = (lambda t: t.reshape(())) if channel_axis is None else (lambda t: t.reshape(1, -1, 1))
    x = inputs_outside_disputed_bands(shape, step, qmin, qmax, channel_axis) + view(offset)
    x, step, offset, zero_point = (impl.put(t) for t in (x, step, offset, zero_point))
    grad_y = impl.put(torch.randn(shape))
    g = 0.37

    x1, s1, b1 = x.clone().requires_grad_(), step.clone().requires_grad_(), offset.clone().requires_grad_()
    y1 = lsq_fast.lsq_plus_quantize(x1, s1, b1, bits, channel_axis=channel_axis, grad_scale=g, backend=impl.backend)
    gx1, gs1, gb1 = torch.autograd.grad(y1, (x1, s1, b1), grad_y)

    x2, s2, z2 = x.clone().requires_grad_(), step.clone().requires_grad_(), zero_point.clone().requires_grad_()
    if channel_axis is None:
        y2 = torch._fake_quantize_learnable_per_tensor_affine(x2, s2, z2, qmin, qmax, g)
    else:
        y2 = torch._fake_quantize_learnable_per_channel_affine(x2, s2, z2, channel_axis, qmin, qmax, g)
    gx2, gs2, gz2 = torch.autograd.grad(y2, (x2, s2, z2), grad_y)

    assert torch.equal(y1, y2)
    assert torch.equal(gx1, gx2)
    b = lsq_plus_bounds(x.cpu(), step.cpu(), offset.cpu(), grad_y.cpu(), bits, False, channel_axis, grad_scale=g)
    assert_grad_within(gs1, b["step"], "grad_step")
    assert_grad_within(gb1, b["offset"], "grad_offset")
    # torch's scale and zero point, through offset = -zero_point * step: d/dscale = dy/ds - zp dy/doffset,
    # d/dzp = -step dy/doffset; each within its terms' bound
    zp, s = zero_point.cpu().double(), step.cpu().double()
    scale_bound = Bound(b["step"].exact - zp * b["offset"].exact, b["step"].bound + zp.abs() * b["offset"].bound)
    assert_grad_within(gs2, scale_bound, "torch's grad_scale")
    assert_grad_within(gz2, Bound(-s * b["offset"].exact, s * b["offset"].bound), "torch's grad_zero_point")
