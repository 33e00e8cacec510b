"""Test inputs and an exact oracle for the step gradient (shared/spec/quantizers.md, section 1)."""

from __future__ import annotations

import torch

import lsq_fast

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def make_step(channels: int, dtype=torch.float32, power_of_two: bool = False) -> torch.Tensor:
    """Positive steps; powers of two make x / step exact, so ties and clip points are exact."""
    if power_of_two:
        return 2.0 ** torch.randint(-6, 0, (channels,)).to(dtype)
    return (torch.rand(channels, dtype=dtype) * 0.4 + 0.02).to(dtype)


def make_x(shape, step: torch.Tensor, bits: int, signed: bool, channel_axis, dtype=torch.float32) -> torch.Tensor:
    """Random values over the whole grid and past both ends, mixed with exact ties (k + 1/2),
    exact clip points (qmin, qmax) where the step allows, and -0.0 and small negatives (whose
    round is -0.0: the sign of zero is part of the bit-exact forward)."""
    qmin, qmax = lsq_fast.qrange(bits, signed)
    s = step.to(torch.float64)
    s = s.reshape(()) if channel_axis is None else s.reshape([-1 if d == channel_axis % len(shape) else 1 for d in range(len(shape))])
    u = torch.empty(shape, dtype=torch.float64).uniform_(qmin - 3, qmax + 3)
    kind = torch.randint(0, 8, shape)
    ties = torch.randint(qmin, qmax, shape).to(torch.float64) + 0.5
    clips = torch.where(torch.rand(shape) < 0.5, float(qmin), float(qmax)).to(torch.float64)
    zeros = torch.where(torch.rand(shape) < 0.5, -0.0, -0.25).to(torch.float64)
    u = torch.where(kind >= 5, ties, u)
    u = torch.where(kind >= 6, clips, u)
    u = torch.where(kind == 7, zeros, u)
    return (u * s).to(dtype)


_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit for bit, the sign of zero included (torch.equal calls -0.0 and +0.0 equal); any NaN
    matches any NaN."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    bits = _SAME_WIDTH_INT[actual.dtype]
    differ = actual.contiguous().view(bits) != expected.contiguous().view(bits)
    differ &= ~(actual.isnan() & expected.isnan())
    where = differ.nonzero()[:5].tolist()
    assert not differ.any(), f"differs at {where}: {actual[differ][:5].tolist()} vs {expected[differ][:5].tolist()}"


def u_in_math(x: torch.Tensor, step: torch.Tensor, channel_axis) -> torch.Tensor:
    math = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = step.to(math).clamp_min(lsq_fast._args.STEP_FLOOR)
    s = s.reshape(()) if channel_axis is None else s.reshape([-1 if d == channel_axis % x.dim() else 1 for d in range(x.dim())])
    return x.to(math) / s


def expected_grad_x(x, step, grad_y, bits, signed, channel_axis) -> torch.Tensor:
    """grad_y where qmin < u < qmax (strict), else 0: exact."""
    qmin, qmax = lsq_fast.qrange(bits, signed)
    u = u_in_math(x, step, channel_axis)
    inside = ~((u <= qmin) | (u >= qmax))
    return torch.where(inside, grad_y, torch.zeros_like(grad_y))


def step_grad_terms(x, step, grad_y, bits, signed, channel_axis) -> torch.Tensor:
    """grad_y * dy/ds per element, in float64, from u as the kernels compute it (float32
    division): round(u) - u is then exact, so only the products and the sum round."""
    qmin, qmax = lsq_fast.qrange(bits, signed)
    u = u_in_math(x, step, channel_axis)
    dyds = torch.where(u <= qmin, float(qmin), torch.where(u >= qmax, float(qmax), (u.round() - u))).to(torch.float64)
    return grad_y.to(torch.float64) * dyds


def per_step_sum(t: torch.Tensor, channel_axis) -> torch.Tensor:
    if channel_axis is None:
        return t.sum().reshape(1)
    return t.movedim(channel_axis, 0).reshape(t.shape[channel_axis], -1).sum(1)


def assert_step_grad_close(actual, x, step, grad_y, bits, signed, channel_axis, grad_scale=None, rel=1e-5):
    """Within `rel` of the float64 sum, relative to the sum of the absolute terms (the issue's bound)."""
    terms = step_grad_terms(x, step, grad_y, bits, signed, channel_axis)
    axis = None if channel_axis is None else channel_axis % x.dim()
    g = grad_scale
    if g is None:
        n = x.numel() if axis is None else (x.numel() // x.shape[axis] if x.shape[axis] else 0)
        g = lsq_fast.default_grad_scale(n, bits, signed)
    exact = g * per_step_sum(terms, axis)
    bound = rel * abs(g) * per_step_sum(terms.abs(), axis) + 1e-30
    err = (actual.detach().to(torch.float64).reshape(-1) - exact).abs()
    assert torch.all(err <= bound), f"step grad off by {(err / bound).max():.3g} x the bound; got {actual}, want {exact}"
