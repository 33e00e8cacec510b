"""The ops as PyTorch sees them: schemas, fake kernels, autograd, torch.compile, gradcheck.

Under Triton's CPU interpreter the Triton ops are opaque custom ops (see
lsq_fast/_triton/registration.py); on a GPU they are triton_ops that torch.compile traces into."""

import pytest
import torch

import lsq_fast
from lsq_fast import reference
from lsq_fast.ops.registry import quantizer_ops
from lsq_oracle import assert_step_grad_close, expected_grad_x, make_step, make_x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("shape,axis", [((4, 6, 5, 5), None), ((4, 6, 5, 5), 1), ((8, 3), 0), ((0, 3), 1)])
def test_opcheck(impl, seed, dtype, shape, axis):
    forward, backward = lsq_fast.ops.registry.lsq_ops(impl.backend)
    step = make_step(1 if axis is None else shape[axis], dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    x = impl.put(make_x(shape, step, 4, True, axis, dtype)).requires_grad_()
    step = impl.put(step).requires_grad_()
    torch.library.opcheck(forward.default, (x, step, -8, 7, axis, None))
    grad_y = impl.put(torch.randn(shape).to(dtype))
    torch.library.opcheck(backward.default, (grad_y, x.detach(), step.detach(), -8, 7, axis, 0.5))


@pytest.mark.parametrize("axis", [None, 1])
def test_torch_compile_fullgraph_forward_and_backward(impl, seed, axis):
    shape = (4, 8, 6, 6)
    step0 = impl.put(make_step(1 if axis is None else 8))
    x0 = impl.put(make_x(shape, step0.cpu(), 4, False, axis))

    def step_fn(x, step):
        y = lsq_fast.lsq_quantize(x, step, 4, signed=False, channel_axis=axis, backend=impl.backend)
        return (y * y).sum()

    compiled = torch.compile(step_fn, fullgraph=True, backend="inductor")
    grads = []
    for fn in (compiled, step_fn):
        x = x0.clone().requires_grad_()
        step = step0.clone().requires_grad_()
        loss = fn(x, step)
        loss.backward()
        grads.append((loss.detach(), x.grad, step.grad))
    assert torch.equal(grads[0][1], grads[1][1])
    torch.testing.assert_close(grads[0][0], grads[1][0])  # a sum of squares: no cancellation
    grad_y = 2 * reference.lsq_quantize(x0.cpu(), step0.cpu(), 4, signed=False, channel_axis=axis)  # d(y*y)/dy
    for _, _, grad_step in grads:  # compiled, eager: each within the contract's bound
        assert_step_grad_close(grad_step, x0.cpu(), step0.cpu(), grad_y, 4, False, axis)


def test_no_graph_breaks(impl):
    def fn(x, step):
        return lsq_fast.lsq_quantize(x, step, 3, channel_axis=0, backend=impl.backend).sum()

    x, step = impl.put(torch.randn(5, 7)).requires_grad_(), impl.put(torch.rand(5).add(0.1)).requires_grad_()
    explanation = torch._dynamo.explain(fn)(x, step)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_gradcheck_where_smooth(impl):
    """LSQ is piecewise: the straight-through gradient is a definition, not a derivative,
    inside the range. Outside it (both clip sides) y = s * qmin|qmax is smooth in x and
    step, so finite differences must agree with the kernels there."""
    step = impl.put(torch.tensor([0.25, 0.5, 0.125], dtype=torch.float64)).requires_grad_()
    sign = torch.where(torch.rand(3, 10) < 0.5, -1.0, 1.0).to(torch.float64)
    u = impl.put(sign * (torch.rand(3, 10, dtype=torch.float64) * 5 + 9))  # |u| in [9, 14], beyond [-8, 7]
    x = (u * step.detach()[:, None]).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, s: lsq_fast.lsq_quantize(x, s, 4, channel_axis=0, grad_scale=1.0, backend=impl.backend),
        (x, step), eps=1e-6, atol=1e-9,
    )


def test_float64_gradients_match_autograd_of_the_plain_formula(impl, seed):
    """Inside the range, the op's gradients equal autograd through the paper's formula
    written plainly in float64 (the reference at float64), region by region."""
    step = make_step(5, dtype=torch.float64).requires_grad_()
    x = make_x((5, 40), step.detach(), 3, True, 0, torch.float64).requires_grad_()
    grad_y = torch.randn(5, 40, dtype=torch.float64)
    fused = lsq_fast.lsq_quantize(impl.put(x), impl.put(step), 3, channel_axis=0, backend=impl.backend)
    got = [g.cpu() for g in torch.autograd.grad(fused, (x, step), impl.put(grad_y))]
    want = torch.autograd.grad(reference.lsq_quantize(x, step, 3, channel_axis=0), (x, step), grad_y)
    assert torch.equal(got[0], expected_grad_x(x.detach(), step.detach(), grad_y, 3, True, 0))
    torch.testing.assert_close(got[0], want[0], rtol=1e-15, atol=0)  # autograd's (gy * s) / s rounds
    assert_step_grad_close(got[1], x.detach(), step.detach(), grad_y, 3, True, 0, rel=1e-12)
    assert_step_grad_close(want[1], x.detach(), step.detach(), grad_y, 3, True, 0, rel=1e-12)


def test_cpu_isa_is_reported():
    assert lsq_fast.cpu_isa() in ("avx512", "avx2", "default")


# -- the ops as PyTorch sees them ------------------------------------------------------------------


def test_opcheck_lsq_plus_qil_and_soft_round(impl, seed):
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
