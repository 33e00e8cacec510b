"""Test inputs, and exact oracles for every parameter gradient (docs/contract.md).

A parameter gradient (LSQ's step, LSQ+'s step and offset, QIL's centre, distance and exponent)
is a sum of per-element terms, and the contract bounds its error by 1e-5 of the sum of the
terms' absolute values: cancellation can leave the sum itself far smaller, so a bare rtol on
the result fails on some seeds. Every such comparison in the suite goes through one helper,
`assert_grad_within`, against a `Bound`: the exact float64 sum of the terms (from the inputs as
the kernels see them) and its allowed error. `QuantizerTaps` gets the terms of every quantizer
inside a model, from its input and the gradient reaching its output.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch

import lsq_fast
from lsq_fast import reference
from lsq_fast.ops.args import STEP_FLOOR, numel_per_step
from lsq_fast.nn.quantizer import grad_scale_over_ranks

GRAD_REL = 1e-5  # the contract's bound on a parameter gradient, relative to the sum of |terms|

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def grids() -> list[tuple[int, bool]]:
    """Every (bits, signed) the contract admits: 1..8 unsigned, 2..8 signed."""
    return [(bits, signed) for bits in range(1, 9) for signed in (False, True) if bits >= 2 or not signed]


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
    s = step.to(math).clamp_min(STEP_FLOOR)
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
    moved = t.movedim(channel_axis, 0)
    return moved.reshape(len(moved), -1).sum(1) if moved.numel() else moved.new_zeros(len(moved))


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def along(p: torch.Tensor, x: torch.Tensor, axis) -> torch.Tensor:
    """A per-step tensor shaped to broadcast against x (a scalar for axis None)."""
    return p.reshape(()) if axis is None else p.reshape([-1 if d == axis % x.dim() else 1 for d in range(x.dim())])


class Bound(NamedTuple):
    """A parameter gradient's exact value (float64, flat) and the error the contract allows."""

    exact: torch.Tensor
    bound: torch.Tensor


def sum_bound(terms, axis, scale=1.0, abs_terms=None, rel=GRAD_REL) -> Bound:
    """scale * (the sum of `terms` per step), within rel * |scale| * (the sum of |terms| per
    step), or of `abs_terms` where the rounding errors scale with something else (a difference
    of large values, a reference's own operation order)."""
    ax = None if axis is None else axis % terms.dim()
    magnitude = terms.abs() if abs_terms is None else abs_terms
    return Bound(scale * per_step_sum(terms, ax), rel * abs(scale) * per_step_sum(magnitude, ax))


def assert_grad_within(actual: torch.Tensor, b: Bound, what: str = "gradient") -> None:
    """The one comparison of a parameter gradient: |actual - exact| <= bound, elementwise."""
    err = (actual.detach().cpu().to(torch.float64).reshape(-1) - b.exact.reshape(-1)).abs()
    bound = b.bound.reshape(-1) + 1e-30
    assert torch.all(err <= bound), (
        f"{what} off by {(err / bound).max():.3g} x the bound: got {actual.detach().cpu().reshape(-1)[:8].tolist()}, "
        f"want {b.exact.reshape(-1)[:8].tolist()}"
    )


def default_scale(x, bits, signed, axis, grad_scale=None) -> float:
    """grad_scale, or LSQ's 1 / sqrt(N * qmax) for x (N the elements per step)."""
    return grad_scale if grad_scale is not None else lsq_fast.default_grad_scale(numel_per_step(x, axis), bits, signed)


def soft_round_oracle(x, step, grad_y, bits, signed, axis, k):
    """LG-LSQ's arctan soft round: grad_x, the step-gradient terms, and the magnitude their
    rounding errors scale with (round(u) - u * slope is a difference), all float64 from u as the
    kernels compute it."""
    qmin, qmax = lsq_fast.qrange(bits, signed)
    u = u_in_math(x, step, axis).to(torch.float64)
    f = u - u.floor()
    slope = k / (2 * math.atan(k / 2)) / (1 + (k * (f - 0.5)) ** 2)
    below, above = u <= qmin, u >= qmax
    gy = grad_y.to(torch.float64)
    gx = torch.where(below | above, 0.0, gy * slope)
    terms = gy * torch.where(below, float(qmin), torch.where(above, float(qmax), u.round() - u * slope))
    scale = gy.abs() * torch.where(below | above, float(max(-qmin, qmax)), u.round().abs() + (u * slope).abs())
    return gx, terms, scale


def lsq_step_bound(x, step, grad_y, bits, signed, axis, grad_scale=None, soft_round_k=None, rel=GRAD_REL) -> Bound:
    """LSQ's step gradient (straight-through, or LG-LSQ's soft round with sharpness k)."""
    g = default_scale(x, bits, signed, axis, grad_scale)
    if soft_round_k is None:
        return sum_bound(step_grad_terms(x, step, grad_y, bits, signed, axis), axis, g, rel=rel)
    _, terms, magnitude = soft_round_oracle(x, step, grad_y, bits, signed, axis, soft_round_k)
    return sum_bound(terms, axis, g, abs_terms=magnitude, rel=rel)


def assert_step_grad_close(actual, x, step, grad_y, bits, signed, channel_axis, grad_scale=None, rel=GRAD_REL,
                           soft_round_k=None):
    """LSQ's step gradient within the contract's bound of the exact sum."""
    b = lsq_step_bound(x, step, grad_y, bits, signed, channel_axis, grad_scale, soft_round_k, rel)
    assert_grad_within(actual, b, "grad_step")


def lsq_plus_terms(x, step, offset, grad_y, bits, signed, axis):
    """LSQ+ from u = (x - beta) / s as the kernels compute it: (u, clipped, step terms, offset
    terms), the terms in float64 (the offset's are grad_y where clipped: y = clip(...) * s + beta)."""
    qmin, qmax = lsq_fast.qrange(bits, signed)
    m = math_dtype(x.dtype)
    u = (x.to(m) - along(offset.to(m), x, axis)) / along(step.to(m).clamp_min(STEP_FLOOR), x, axis)
    below, above = u <= qmin, u >= qmax
    gy = grad_y.to(torch.float64)
    dyds = torch.where(below, float(qmin), torch.where(above, float(qmax), u.round() - u)).to(torch.float64)
    return u, below | above, gy * dyds, gy * (below | above)


def lsq_plus_bounds(x, step, offset, grad_y, bits, signed, axis, grad_scale=None) -> dict[str, Bound]:
    """LSQ+'s step and offset gradients (both scaled by g)."""
    g = default_scale(x, bits, signed, axis, grad_scale)
    _, _, step_terms, offset_terms = lsq_plus_terms(x, step, offset, grad_y, bits, signed, axis)
    return {"step": sum_bound(step_terms, axis, g), "offset": sum_bound(offset_terms, axis, g)}


def qil_oracle(x, center, distance, gamma, grad_y, weight):
    """QIL's gradients (docs/contract.md, section 3) in float64 from pre = alpha * |x| + beta as the reference
    rounds it: (grad_x, {center, distance, gamma: Bound}, inside, pre, alpha)."""
    m = math_dtype(x.dtype)
    alpha, beta = reference.qil._interval(center, distance, m)
    xm = x.to(m)
    pre = alpha * (xm.abs() if weight else xm) + beta
    c64, raw_d = float(center), float(distance)
    d64 = max(raw_d, STEP_FLOOR)
    gy = grad_y.to(torch.float64)
    x64 = xm.to(torch.float64)
    if weight:
        g = 1.0 if gamma is None else float(gamma.to(m))
        inside = (pre >= STEP_FLOOR) & (pre < 1)
        z = pre.clamp(0, 1).to(torch.float64)
        kept = z > 0
        zs = torch.where(kept, z.clamp_min(STEP_FLOOR), torch.ones_like(z))
        sign = torch.sign(x64)
        p = g * zs ** (g - 1)
        gx = torch.where(inside & (x64 != 0), gy * p * float(alpha), 0.0)
        b_terms = torch.where(inside, gy * p * sign, 0.0)
        a_terms = b_terms * x64.abs()
        g_terms = torch.where(kept, gy * sign * zs**g * torch.log(zs), 0.0)
    else:
        inside = ~((pre <= 0) | (pre >= 1))
        gx = torch.where(inside, gy * float(alpha), 0.0)
        b_terms = torch.where(inside, gy, 0.0)
        a_terms = torch.where(inside, gy * x64, 0.0)
        g_terms = torch.zeros_like(gy)
    A, B, G = a_terms.sum(), b_terms.sum(), g_terms.sum()
    absA, absB, absG = a_terms.abs().sum(), b_terms.abs().sum(), g_terms.abs().sum()
    live_d = raw_d >= STEP_FLOOR
    # c and d through alpha = 0.5 / d and beta = 0.5 - 0.5 c / d: the chain rule on A and B
    bounds = {
        "center": Bound((B * (-0.5 / d64)).reshape(1), (GRAD_REL * absB * 0.5 / d64).reshape(1)),
        "distance": Bound(((A * (-0.5 / d64**2) + B * (0.5 * c64 / d64**2)) * live_d).reshape(1),
                          (GRAD_REL * (absA * 0.5 / d64**2 + absB * 0.5 * abs(c64) / d64**2) * live_d).reshape(1)),
        "gamma": Bound(G.reshape(1), (GRAD_REL * absG).reshape(1)),
    }
    return gx, bounds, inside, pre, alpha


class QuantizerTaps:
    """Records, by module hooks, each quantizer's input and parameters in a forward and the
    gradient reaching its output in the backward, then gives the contract's Bound of every
    quantizer parameter's gradient (by its name in the model). For eager models: the compiled
    or distributed twin is checked against the eager one's bounds, as both see the same inputs.
    Use as a context manager; `clear()` between steps. A quantizer's latest call is what counts;
    with accumulate=True every call since the last clear() (a quantizer shared by two layers,
    as tied weights share one, is called twice a forward, and its gradient sums both)."""

    def __init__(self, model: torch.nn.Module, accumulate: bool = False):
        self._records = {}
        self._accumulate = accumulate
        self._handles = []
        for name, module in model.named_modules():
            if isinstance(module, (lsq_fast.LSQQuantizer, lsq_fast.LSQPlusQuantizer, lsq_fast.QILQuantizer)):
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def record(module, inputs, y):
            x = inputs[0].detach().clone()  # a copy: FSDP2 frees the gathered weight it may be after the backward
            if x.dtype != y.dtype:  # autocast: the quantizer ran in y's dtype
                x = x.to(y.dtype)
            entry = {"module": module, "x": x, "params": {k: p.detach().clone() for k, p in module.named_parameters()}}
            if self._accumulate:
                self._records.setdefault(name, []).append(entry)
            else:
                self._records[name] = [entry]
            if y.requires_grad:
                y.register_hook(lambda g: entry.__setitem__("grad_y", g.detach()))

        return record

    def clear(self) -> None:
        self._records.clear()

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def bounds(self) -> dict[str, Bound]:
        out = {}
        for name, calls in self._records.items():
            prefix = f"{name}." if name else ""
            for r in calls:  # the gradient of a quantizer called several times sums every call's terms
                for param, b in _quantizer_bounds(r["module"], r["x"], r["params"], r["grad_y"]).items():
                    seen = out.get(prefix + param)
                    out[prefix + param] = b if seen is None else Bound(seen.exact + b.exact, seen.bound + b.bound)
        return out


def _quantizer_bounds(q, x, params, grad_y) -> dict[str, Bound]:
    x, grad_y = x.cpu(), grad_y.cpu()
    params = {k: v.cpu() for k, v in params.items()}
    axis, group = getattr(q, "channel_axis", None), getattr(q, "group_size", None)
    if group is not None:  # each group a channel (axis 0) of x's rows of one group
        x, grad_y, axis = x.reshape(-1, group), grad_y.reshape(-1, group), 0
        params = {k: v.reshape(-1) for k, v in params.items()}
    if isinstance(q, lsq_fast.LSQQuantizer):
        k = None if q.round_grad == "ste" else q.k
        return {"step": lsq_step_bound(x, params["step"], grad_y, q.bits, q.signed, axis, q._grad_scale(x),
                                       soft_round_k=k)}
    if isinstance(q, lsq_fast.LSQPlusQuantizer):
        g = grad_scale_over_ranks(x, q.grad_scale, q.role, axis, lsq_fast.qrange(q.bits, q.signed)[1])
        return lsq_plus_bounds(x, params["step"], params["offset"], grad_y, q.bits, q.signed, axis, g)
    weight = q.role == "weight"
    _, bounds, *_ = qil_oracle(x, params["center"], params["distance"], params.get("gamma"), grad_y, weight)
    return {k: b for k, b in bounds.items() if k in params}


def assert_quantizer_grads_within(grads: dict[str, torch.Tensor], bounds: dict[str, Bound], what: str = "") -> None:
    """Every quantizer parameter's gradient in `grads` (name -> tensor) within its bound."""
    assert bounds, "no quantizer was recorded"
    for name, b in bounds.items():
        assert name in grads, f"no gradient for {name}"
        assert_grad_within(grads[name], b, f"{what}{name}")


# -- what the method tests share (test_ops_*.py) --------------------------------------------

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
