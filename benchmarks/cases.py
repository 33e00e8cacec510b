"""The tensors the LSQ benchmark quantizes, grouped in suites, and their inputs.

    main      two representative tensors (what `make bench` times on any machine)
    sizes     one per-tensor activation quantizer per size, 4K to 256M elements (x4 steps; --max-size
              caps it: `make bench` stops at 4M on a CPU, 64M on a GPU)
    resnet18  every distinct quantized tensor of ResNet-18 at batch 32 (or another), 224x224: the input of
              each conv and of the fc layer (per-tensor; unsigned after a ReLU, signed 8-bit for
              the image) and each weight (per output channel; 8-bit for the first and last
              layer, as in the LSQ paper). `count` says how often the tensor occurs per step.
    llm       the Linear weights of a Llama-3-8B block (q/o 4096x4096, k/v 1024x4096, gate/up
              14336x4096, down 4096x14336), 4-bit, a step per group of 128 inputs; and groups of
              32 and 64 on 4096x4096 (weight-only LLM QAT; lsq and lsq+ only)

make_inputs draws a case's tensors; what the quantizer learns (LSQ's step by default; LSQ+'s
and QIL's parameters in benchmarks/quantizers.py) comes from a parameter maker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

import lsq_fast


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, ...]
    bits: int
    signed: bool
    channel_axis: Optional[int]
    relu: bool  # activations after a ReLU are non-negative: the unsigned grid's use
    count: int = 1  # occurrences per network step (resnet18 suite)
    role: str = "activation"  # or "weight": which of a quantizer's two forms applies (QIL's, LSQ+'s grid)
    group_size: Optional[int] = None  # per-group steps along the last axis (the llm suite)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _act(name, shape, count=1, bits=4, relu=True):
    return Case(name, shape, bits=bits, signed=not relu, channel_axis=None, relu=relu, count=count)


def _weight(name, shape, count=1, bits=4):
    return Case(name, shape, bits=bits, signed=True, channel_axis=0, relu=False, count=count, role="weight")


def _group_weight(name, shape, group=128, count=1, bits=4):
    return Case(name, shape, bits=bits, signed=True, channel_axis=None, relu=False, count=count, role="weight",
                group_size=group)


def _size_label(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K"


SUITES: dict[str, list[Case]] = {
    "main": [
        # ResNet-18's first-stage activation (batch 8): one step for the whole tensor.
        _act("activation", (8, 64, 56, 56)),
        # ResNet-18's largest 3x3 conv weight (layer4): one step per output channel.
        _weight("weight", (512, 256, 3, 3)),
    ],
    "sizes": [_act(f"act-{_size_label(1 << k)}", (1 << k,)) for k in range(12, 29, 2)],
    "resnet18": [],  # filled in below, at batch 32: resnet18_cases(batch) for others
    "llm": [
        _group_weight("q_proj", (4096, 4096), count=2),  # and o_proj
        _group_weight("k_proj", (1024, 4096), count=2),  # and v_proj
        _group_weight("gate_proj", (14336, 4096), count=2),  # and up_proj
        _group_weight("down_proj", (4096, 14336)),
        _group_weight("q_proj.g32", (4096, 4096), group=32),
        _group_weight("q_proj.g64", (4096, 4096), group=64),
    ],
}


def resnet18_cases(batch: int = 32) -> list[Case]:
    """Every distinct quantized tensor of ResNet-18 on 224x224 images (see the module docstring)."""
    b = batch
    return [
        _act("conv1.in", (b, 3, 224, 224), bits=8, relu=False),
        # Each conv quantizes its own input: 64x56x56 enters layer1's 4 convs and layer2.0's
        # conv1 and downsample, 6 quantizers; 21 activation and 21 weight quantizers in all.
        _act("layer1.in", (b, 64, 56, 56), count=6),
        _act("layer2.in", (b, 128, 28, 28), count=5),  # 3 convs of layer2, layer3.0.conv1 and .downsample
        _act("layer3.in", (b, 256, 14, 14), count=5),
        _act("layer4.in", (b, 512, 7, 7), count=3),
        _act("fc.in", (b, 512), bits=8),
        _weight("conv1.w", (64, 3, 7, 7), bits=8),
        _weight("layer1.w", (64, 64, 3, 3), count=4),
        _weight("layer2.0.conv1.w", (128, 64, 3, 3)),
        _weight("layer2.w", (128, 128, 3, 3), count=3),
        _weight("layer2.down.w", (128, 64, 1, 1)),
        _weight("layer3.0.conv1.w", (256, 128, 3, 3)),
        _weight("layer3.w", (256, 256, 3, 3), count=3),
        _weight("layer3.down.w", (256, 128, 1, 1)),
        _weight("layer4.0.conv1.w", (512, 256, 3, 3)),
        _weight("layer4.w", (512, 512, 3, 3), count=3),
        _weight("layer4.down.w", (512, 256, 1, 1)),
        _weight("fc.w", (1000, 512), bits=8),
    ]


SUITES["resnet18"] = resnet18_cases()


def suite_cases(name: str, *, batch: int = 32, max_numel: Optional[int] = None) -> list[Case]:
    """A suite's cases: ResNet-18's at `batch`, and none larger than max_numel elements."""
    cases = resnet18_cases(batch) if name == "resnet18" else SUITES[name]
    return [c for c in cases if max_numel is None or c.numel <= max_numel]


@dataclass
class Inputs:
    x: torch.Tensor  # requires grad
    params: tuple[torch.Tensor, ...]  # the quantizer's learned parameters (LSQ: (step,)), float32, require grad
    grad_y: torch.Tensor
    grad_scale: Optional[float]  # LSQ's gradient scale g of the parameters; None where the quantizer has none


# (case, x as drawn: float32 on the CPU) -> (parameter values, float32 on the CPU; grad scale)
ParamsMaker = Callable[[Case, torch.Tensor], tuple[tuple[torch.Tensor, ...], Optional[float]]]


def per_step(case: Case, x: torch.Tensor, stat: Callable[..., torch.Tensor]) -> torch.Tensor:
    """stat (torch.mean, torch.amin, ...) of x over what one parameter value covers: the whole
    tensor (shape (1,)), each channel along the case's channel axis, or each group of the last
    axis (shape [..., K / G])."""
    if case.group_size is not None:
        return stat(x.reshape(*x.shape[:-1], -1, case.group_size), dim=-1)
    if case.channel_axis is None:
        return stat(x).reshape(1)
    return stat(x, dim=[d for d in range(x.dim()) if d != case.channel_axis])


def lsq_params(case: Case, x: torch.Tensor, signed: Optional[bool] = None):
    """LSQ's step, its paper's init 2*mean|x|/sqrt(qmax) (per channel where the case has
    channels), and LSQ's grad scale 1/sqrt(N * qmax) for the case's grid (or `signed`'s)."""
    signed = case.signed if signed is None else signed
    _, qmax = lsq_fast.qrange(case.bits, signed)
    step = 2 * per_step(case, x.abs(), torch.mean) / qmax**0.5
    return (step,), lsq_fast.default_grad_scale(x.numel() // step.numel(), case.bits, signed)


def make_inputs(case: Case, dtype: torch.dtype, device: torch.device, seed: int = 0,
                params: ParamsMaker = lsq_params) -> Inputs:
    """Random x (non-negative after a ReLU), the quantizer's parameters from `params` (LSQ's
    step by default) and a random upstream gradient. Drawn in float32 on the CPU, so every
    device, dtype and quantizer sees the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.shape, generator=gen)
    if case.relu:
        x = x.relu()
    values, grad_scale = params(case, x)
    grad_y = torch.randn(case.shape, generator=gen)
    return Inputs(
        x=x.to(device=device, dtype=dtype).requires_grad_(),
        params=tuple(v.to(device=device, dtype=torch.float32).requires_grad_() for v in values),
        grad_y=grad_y.to(device=device, dtype=dtype),
        grad_scale=grad_scale,
    )
