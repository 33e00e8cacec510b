"""The quantizers the kernel benchmark times (bench_lsq.py --quantizer): LSQ and its relatives,
each a fused lsq_fast op beside its plain-PyTorch reference, on the same tensors (cases.py).

    lsq         lsq_fast.lsq_quantize(x, step, bits, signed, channel_axis, grad_scale)
    lsq-arctan  the same with round_grad="arctan", k=5 (LG-LSQ's soft-round gradient)
    lsq+        lsq_fast.lsq_plus_quantize(x, step, offset, bits, ...): an unsigned grid on
                activations (LSQ+'s use), the case's grid on weights; step and offset from
                LSQ+'s min/max init, s = (max - min) / (qmax - qmin), beta = min - qmin * s
                rounded to whole steps (see lsq_plus_params)
    qil         lsq_fast.qil_quantize_activation(x, c, d, bits) on activations,
                qil_quantize_weight(w, c, d, gamma=0.75, bits) on weights (gamma != 1: the
                exponent's path); per tensor only (weights too), interval [0, max|x|]: c = d = max|x|/2

Each entry: its parameter maker (cases.ParamsMaker), the call on a case (the fused function, its
reference and the arguments after (x, *params), the same for both), whether lsq_fast has CUDA
C++ kernels for it (else backend "cuda" is left out), and its peers where they compute the same
thing: PyTorch's learnable fake-quant op (here), torchao's, Brevitas's and NNCF's learned-scale
quantizers (benchmarks/peers.py, when the `peers` extra is installed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import lsq_fast
import peers
from cases import Case, Inputs, ParamsMaker, lsq_params, per_step

QuantFn = Callable[..., torch.Tensor]  # f(x, *params) -> y


@dataclass(frozen=True)
class Call:
    """A quantizer on one case: fused(x, *params, *args, **kwargs, backend=...) and
    reference(x, *params, *args, **kwargs)."""

    fused: Callable[..., torch.Tensor]
    reference: Callable[..., torch.Tensor]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Quantizer:
    name: str
    title: str  # for chart titles
    params: ParamsMaker
    call: Callable[[Case, Optional[float]], Call]  # (case, grad scale) -> Call
    cuda_kernels: bool = False  # lsq_fast has CUDA C++ kernels for it (backend "cuda")
    groups: bool = False  # takes per-group steps (the llm suite's cases)
    # Peers computing the same quantizer, by provider name (torch_learnable: PyTorch's learnable
    # fake-quant op; torchao, brevitas, nncf: benchmarks/peers.py): each (case, inputs) ->
    # f(x, *params), or None where the peer cannot run the case.
    peers: dict[str, Callable[[Case, Inputs], Optional[QuantFn]]] = field(default_factory=dict)


# --- LSQ and LG-LSQ's soft round


def lsq_call(**extra) -> Callable[[Case, Optional[float]], Call]:
    def call(case: Case, grad_scale: Optional[float]) -> Call:
        kw = dict(signed=case.signed, channel_axis=case.channel_axis, grad_scale=grad_scale,
                  group_size=case.group_size, **extra)
        return Call(lsq_fast.lsq_quantize, lsq_fast.reference.lsq_quantize, (case.bits,), kw)

    return call


def learnable_fake_quant(case: Case, inp: Inputs, signed: bool) -> Optional[Callable[..., torch.Tensor]]:
    """torch._fake_quantize_learnable_per_{tensor,channel}_affine as f(x, scale, zero_point),
    with the case's bits, `signed`'s grid and grad scale (its grad_factor)."""
    if inp.x.dtype != torch.float32 or case.group_size is not None:  # float32, per tensor or channel only
        return None
    qmin, qmax = lsq_fast.qrange(case.bits, signed)
    g = inp.grad_scale
    if case.channel_axis is None:
        return lambda x, s, z: torch._fake_quantize_learnable_per_tensor_affine(x, s, z, qmin, qmax, g)
    axis = case.channel_axis
    return lambda x, s, z: torch._fake_quantize_learnable_per_channel_affine(x, s, z, axis, qmin, qmax, g)


def lsq_learnable(case: Case, inp: Inputs) -> Optional[QuantFn]:
    op = learnable_fake_quant(case, inp, case.signed)
    if op is None:
        return None
    zero_point = torch.zeros_like(inp.params[0])  # float32 zeros, not learned: LSQ has no offset
    return lambda x, step: op(x, step, zero_point)


# --- LSQ+


def lsq_plus_signed(case: Case) -> bool:
    """LSQ+'s grid: unsigned on activations (the offset does the shifting), the case's on weights."""
    return case.signed if case.role == "weight" else False


def lsq_plus_params(case: Case, x: torch.Tensor):
    """LSQ+'s min/max init, per step group (s = (max - min) / (qmax - qmin), beta = min - qmin * s:
    the grid spans the data), with beta then moved to the nearest whole number of steps (0 for a
    ReLU's output on the unsigned grid): PyTorch's learnable op rounds its zero point -beta/s to
    an integer, so only then does it compute LSQ+'s grid and the mismatch guard keep its meaning
    for it. The values do not change what any provider's kernels do."""
    signed = lsq_plus_signed(case)
    qmin, qmax = lsq_fast.qrange(case.bits, signed)
    low, high = per_step(case, x, torch.amin), per_step(case, x, torch.amax)
    step = ((high - low) / (qmax - qmin)).clamp_min(1e-8)
    offset = torch.round((low - qmin * step) / step) * step
    return (step, offset), lsq_fast.default_grad_scale(x.numel() // step.numel(), case.bits, signed)


def lsq_plus_call(case: Case, grad_scale: Optional[float]) -> Call:
    kw = dict(signed=lsq_plus_signed(case), channel_axis=case.channel_axis, grad_scale=grad_scale,
              group_size=case.group_size)
    return Call(lsq_fast.lsq_plus_quantize, lsq_fast.reference.lsq_plus_quantize, (case.bits,), kw)


def lsq_plus_learnable(case: Case, inp: Inputs) -> Optional[QuantFn]:
    """PyTorch's op learns a zero point: zero_point = -offset / step, computed in the call so
    that the gradient reaches step and offset as it does for the other providers (two
    one-element ops more). Its forward rounds the zero point to an integer, LSQ+ keeps the
    offset exact: the mismatch column shows where that moves outputs."""
    op = learnable_fake_quant(case, inp, lsq_plus_signed(case))
    if op is None:
        return None
    return lambda x, step, offset: op(x, step, -offset / step)


def lsq_plus_nncf(case: Case, inp: Inputs) -> Optional[QuantFn]:
    return peers.nncf_lsq_plus(case, inp, lsq_plus_signed(case))


# --- QIL


QIL_GAMMA = 0.75  # a non-unit exponent: the weight transformer's expensive path (pow, log)


def qil_params(case: Case, x: torch.Tensor):
    """The interval [0, max|x|]: c = d = max|x|/2 (and gamma for weights); no grad scale."""
    half = (x.abs().amax() / 2).reshape(1)
    params = (half, half.clone())
    if case.role == "weight":
        params += (torch.full((1,), QIL_GAMMA),)
    return params, None


def qil_call(case: Case, grad_scale: Optional[float]) -> Call:
    if case.role == "weight":
        return Call(lsq_fast.qil_quantize_weight, lsq_fast.reference.qil_quantize_weight, (case.bits,))
    return Call(lsq_fast.qil_quantize_activation, lsq_fast.reference.qil_quantize_activation, (case.bits,))


QUANTIZERS: dict[str, Quantizer] = {
    q.name: q
    for q in [
        Quantizer("lsq", "LSQ", lsq_params, lsq_call(), cuda_kernels=True, groups=True,
                  peers={"torch_learnable": lsq_learnable, "torchao": peers.torchao_lsq,
                         "brevitas": peers.brevitas_lsq, "nncf": peers.nncf_lsq}),
        Quantizer("lsq-arctan", "LSQ, arctan round gradient", lsq_params, lsq_call(round_grad="arctan", k=5.0),
                  cuda_kernels=True, groups=True),
        Quantizer("lsq+", "LSQ+", lsq_plus_params, lsq_plus_call, groups=True,
                  peers={"torch_learnable": lsq_plus_learnable, "nncf": lsq_plus_nncf}),
        Quantizer("qil", "QIL", qil_params, qil_call),
    ]
}
