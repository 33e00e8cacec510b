"""The peers the kernel benchmark times beside lsq_fast (bench_lsq.py --providers): other
libraries' learned-scale fake quantizers, each on the case's own tensors, with the case's step
in the peer's own parameterisation and the same upstream gradient.

Each builder takes (case, inputs) and returns f(x, *params) with the quantizer's parameters (LSQ:
the step; LSQ+: step and offset) the tensors the call's autograd reaches, or None where the peer
cannot compute the case. Every layout the benchmark has (per tensor, per output channel along
axis 0, per group of the last axis) gives each step one contiguous block of x, so a peer sees x
as [steps, block] and its scale as a column (`blocks`): a view, no copy.

Where a peer's semantics differ from lsq_fast's contract, SEMANTICS says so, and the benchmark
prints it beside the numbers; the share of forward outputs off the reference's is measured per
row (bench_lsq.py's "fwd ≠ reference" column). tests/test_bench_peers.py checks each
parameterisation: Brevitas's and torchao's float32 forwards are the reference's bit for bit, and
Brevitas's step gradient is LSQ's with g = 1 (within the contract's bound) wherever its wider pass
band admits nothing; NNCF's float32 forward is an ulp off at most (by hand on a 64x512 group-128
weight: under 1e-6 of a step, on a third of the elements; its bfloat16 one up to a whole step).
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import torch

import lsq_fast
from cases import Case, Inputs

QuantFn = Callable[..., torch.Tensor]

# NNCF compiles its CPU extension on first use: about 50 s on a 2-core machine, next to its
# default 60 s load timeout. Set before nncf is imported.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")

SEMANTICS = {
    "torch_learnable": "PyTorch's op: g as its grad_factor; multiplies by 1/scale (ties may round the other way); "
                       "pass band [qmin-0.5, qmax+0.5], so a ReLU's exact zeros get a step gradient; float32 only",
    "torchao": "torchao's QAT prototype (IntxFakeQuantizer, range_learning=True): g = 1 (its step gradient is 1/g "
               "times LSQ's); pass band [qmin-0.5, qmax+0.5]; plain autograd over eager ops; signed grids only",
    "brevitas": "Brevitas's IntQuant (the core of its learned-scale quantizers): divides and rounds half to even "
                "as LSQ does, g = 1, pass band [qmin-0.5, qmax+0.5] (it clamps after rounding); a float32 step "
                "makes its output float32, cast back to x's dtype here",
    "nncf": "NNCF's symmetric (LSQ) and asymmetric (LSQ+) quantizers, its CPU extension, g = 1: scale = step * qmax "
            "(LSQ+: range = step * (qmax - qmin)); multiplies by the range's reciprocal and adds its low end "
            "back (outputs off the reference's by an ulp); clip points inside the pass band (inclusive); its "
            "symmetric step gradient weighs the rounding terms by qmax / (qmax - qmin) against the clip terms "
            "(7/15 at 4 signed bits); for bfloat16 inputs it computes in bfloat16 (outputs off by up to a step)",
}
SEMANTICS["torchao+compile"] = SEMANTICS["torchao"].replace("plain autograd over eager ops", "under torch.compile")


def blocks(x: torch.Tensor, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x as [steps, block] and a parameter as a [steps, 1] column: each step's elements are one
    contiguous block in every layout the benchmark times (see the module docstring)."""
    return x.reshape(param.numel(), -1), param.reshape(-1, 1)


def _layout_ok(case: Case) -> bool:
    return case.group_size is not None or case.channel_axis in (None, 0)


@functools.cache
def available(name: str) -> bool:
    """Whether the peer's library imports here (the `peers` extra); tried once per peer."""
    module = {"torchao": "torchao.quantization.qat", "brevitas": "brevitas.core.quant",
              "nncf": "nncf.torch.quantization.quantize_functions"}[name.split("+")[0]]
    try:
        __import__(module)
    except Exception:  # noqa: BLE001 - not installed, or built for another torch
        return False
    return True


# --- torchao


def torchao_lsq(case: Case, inp: Inputs) -> Optional[QuantFn]:
    """torchao's fake quantizer with learned scales: IntxFakeQuantizeConfig(int<bits>, PerGroup(block),
    symmetric, range_learning=True) on x as [steps, block], our step its scale, its zero point 0:
    LSQ's signed grid. PerGroup of the whole block is how torchao itself expresses PerAxis(0);
    it has no per-tensor integer granularity, so a per-tensor case is one block."""
    if not case.signed or not _layout_ok(case) or not available("torchao"):
        return None
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.qat import IntxFakeQuantizeConfig
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    step = inp.params[0]
    block = inp.x.numel() // step.numel()
    config = IntxFakeQuantizeConfig(getattr(torch, f"int{case.bits}"), granularity=PerGroup(block),
                                    is_symmetric=True, is_dynamic=False, range_learning=True)
    quantizer = IntxFakeQuantizer(config)
    quantizer._initialized = True  # what torchao.quantization.qat.initialize_fake_quantizers sets
    zero_point = torch.zeros((step.numel(), 1), dtype=torch.int32, device=inp.x.device)

    def run(x, step):
        x2, quantizer.scale = blocks(x, step)
        quantizer.zero_point = zero_point
        return quantizer(x2).reshape(x.shape)

    return run


# --- Brevitas


def brevitas_lsq(case: Case, inp: Inputs) -> Optional[QuantFn]:
    """Brevitas's integer fake quantizer, IntQuant(scale, zero_point, bit_width, x), as its
    learned-scale quantizers (scaling_impl_type=PARAMETER) call it: round with a straight-through
    estimator, clamp to the grid, times the scale. Our step is its scale, zero point 0."""
    if not _layout_ok(case) or not available("brevitas"):
        return None
    from brevitas.core.function_wrapper import RoundSte, TensorClamp
    from brevitas.core.quant import IntQuant

    quant = IntQuant(narrow_range=False, signed=case.signed, input_view_impl=torch.nn.Identity(),
                     float_to_int_impl=RoundSte(), tensor_clamp_impl=TensorClamp())
    bit_width = torch.tensor(float(case.bits), device=inp.x.device)
    zero_point = torch.zeros((), device=inp.x.device)

    def run(x, step):
        x2, scale = blocks(x, step)
        return quant(scale, zero_point, bit_width, x2).reshape(x.shape).to(x.dtype)

    return run


# --- NNCF


def nncf_levels(bits: int, signed: bool) -> tuple[int, int, int]:
    """NNCF's (levels, level_low, level_high) for a b-bit grid: LSQ's qmin and qmax."""
    qmin, qmax = lsq_fast.qrange(bits, signed)
    return qmax - qmin + 1, qmin, qmax


def nncf_lsq(case: Case, inp: Inputs) -> Optional[QuantFn]:
    """NNCF's symmetric quantizer with a learned scale (symmetric_quantize, eps 0): its scale is
    the grid's top, step * qmax, so the grid is LSQ's for either sign."""
    if not _layout_ok(case) or not available("nncf"):
        return None
    from nncf.torch.quantization.quantize_functions import symmetric_quantize

    levels, low, high = nncf_levels(case.bits, case.signed)

    def run(x, step):
        x2, s = blocks(x, step)
        return symmetric_quantize(x2, levels, low, high, s * high, 0.0).reshape(x.shape)

    return run


def nncf_lsq_plus(case: Case, inp: Inputs, signed: bool) -> Optional[QuantFn]:
    """NNCF's asymmetric quantizer (learned input_low and input_range, eps 0) on LSQ+'s grid:
    input_low = offset + qmin * step, input_range = (qmax - qmin) * step. NNCF then moves the
    range so that zero is on the grid (its TuneRange), as LSQ+'s benchmark offsets already are."""
    if not _layout_ok(case) or not available("nncf"):
        return None
    from nncf.torch.quantization.quantize_functions import asymmetric_quantize

    levels, low, high = nncf_levels(case.bits, signed)

    def run(x, step, offset):
        x2, s = blocks(x, step)
        _, beta = blocks(x, offset)
        return asymmetric_quantize(x2, levels, low, high, beta + low * s, (high - low) * s, 0.0).reshape(x.shape)

    return run
