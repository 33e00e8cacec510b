"""QuantConfig: how a layer is quantized, validated once where it is made (quantize_model,
from_float, a layer's constructor) and carried by the layer; and the table of methods that says
which quantizer modules each method puts on a layer's weight and input."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from ..ops.args import check_grad_scale, qrange, soft_round_sharpness
from ..ops.backends import check_backend
from .lsq_plus_quantizer import LSQPlusQuantizer
from .lsq_quantizer import LSQQuantizer
from .qil_quantizer import QILQuantizer
from .quantizer import LearnedQuantizer


@dataclass(frozen=True)
class QuantConfig:
    """A layer's quantization, checked when made (a ValueError names the first bad field).

    Args:
        weight_bits: the weight's bits (a signed grid).
        act_bits: the input's bits; None leaves the input in float (weight-only).
        per_channel_weights: one step per output channel instead of one per tensor.
        weight_group_size: a step per this many consecutive input features of each output's
            weight row (per-group, for LLM weights; QuantLinear only): "lsq" learns a step per
            group (LSQ's init per group), "lsq+" a step and an offset per group (EfficientQAT's
            asymmetric block-wise quantizer: LSQPlusQuantizer on the unsigned grid, min/max
            init per group).
        act_signed: the input's grid: True, False or "auto" (signed if the first batch has a
            negative value).
        backend: the kernels' backend, as in :func:`lsq_fast.lsq_quantize`.
        method: "lsq", "lsq+" or "qil": which quantizers (see ``LAYER_METHODS``).
        round_grad, k: for "lsq", the round's gradient: "ste" or LG-LSQ's "arctan" of sharpness k.
        grad_scale: the learned parameters' gradient scale in every quantizer ("lsq" and
            "lsq+"); None is LSQ's g = 1/sqrt(N * qmax), N the elements per step; 1.0 turns the
            scaling off.
    """

    weight_bits: int = 4
    act_bits: int | None = 4
    per_channel_weights: bool = False
    act_signed: bool | str = "auto"
    backend: str = "auto"
    method: str = "lsq"
    round_grad: str = "ste"
    k: float = 5.0
    weight_group_size: int | None = None
    grad_scale: float | None = None

    def __post_init__(self):
        if self.method not in LAYER_METHODS:
            raise ValueError(f"lsq_fast: method must be one of {', '.join(LAYER_METHODS)}, got {self.method!r}")
        layer_method = LAYER_METHODS[self.method]
        soft_round_sharpness(self.round_grad, self.k)
        if self.round_grad != "ste" and not layer_method.soft_round:
            raise ValueError(
                f"lsq_fast: round_grad={self.round_grad!r} (LG-LSQ's soft round) is a variant of LSQ's step "
                f"gradient: it needs method={_having('soft_round')}, got method={self.method!r}"
            )
        if self.per_channel_weights and not layer_method.per_channel:
            raise ValueError(f"lsq_fast: {layer_method.why_not_per_channel}: per_channel_weights=True needs method "
                             f"{_having('per_channel')}")
        if self.act_signed not in (True, False, "auto") or not isinstance(self.act_signed, (bool, str)):
            raise ValueError(f"lsq_fast: act_signed must be True, False or 'auto', got {self.act_signed!r}")
        if self.act_signed is True and not layer_method.signed_inputs:
            raise ValueError(f"lsq_fast: {layer_method.why_not_signed_inputs}: act_signed=True needs method "
                             f"{_having('signed_inputs')}")
        if self.weight_group_size is not None:
            if isinstance(self.weight_group_size, bool) or not isinstance(self.weight_group_size, int) \
                    or self.weight_group_size < 1:
                raise ValueError(f"lsq_fast: weight_group_size must be an int >= 1, got {self.weight_group_size!r}")
            if self.per_channel_weights:
                raise ValueError("lsq_fast: per_channel_weights and weight_group_size exclude each other")
            if not layer_method.per_group:
                raise ValueError(f"lsq_fast: {layer_method.why_not_per_group}: weight_group_size needs method "
                                 f"{_having('per_group')}")
        if check_grad_scale(self.grad_scale) is not None and not layer_method.grad_scale:
            raise ValueError(f"lsq_fast: {layer_method.why_not_grad_scale}: grad_scale needs method "
                             f"{_having('grad_scale')}, got method={self.method!r}")
        check_backend(self.backend)
        qrange(self.weight_bits, True)
        if self.act_bits is not None:
            qrange(self.act_bits, self.act_signed is True)  # "auto" admits 1 bit; a signed decision checks again

    @classmethod
    def of(cls, config: QuantConfig | None, options: dict) -> QuantConfig:
        """`config` (default: QuantConfig()) with the fields named in `options` replaced: the
        layers' and from_float's keywords."""
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(
                f"lsq_fast: unknown quantization option {unknown[0]!r}; the options are QuantConfig's fields: "
                + ", ".join(f.name for f in dataclasses.fields(cls))
            )
        if config is not None and not isinstance(config, cls):
            raise TypeError(f"lsq_fast: config must be a QuantConfig, got {type(config).__name__}")
        return dataclasses.replace(config or cls(), **options)

    def quantizers(self, weight_shape, device=None) -> tuple[LearnedQuantizer, LearnedQuantizer | None]:
        """(weight quantizer, input quantizer or None) for a layer whose weight has `weight_shape`
        (outputs first)."""
        layer_method = LAYER_METHODS[self.method]
        per_step = {}
        if self.per_channel_weights:
            per_step = dict(channel_axis=0, num_channels=weight_shape[0])
        elif self.weight_group_size is not None:
            per_step = dict(group_size=self.weight_group_size, shape=tuple(weight_shape))
        weight = layer_method.weight(self, dict(backend=self.backend, device=device, **per_step))
        inputs = None if self.act_bits is None else layer_method.input(self, dict(backend=self.backend, device=device))
        return weight, inputs


def _lsq_options(config: QuantConfig) -> dict:
    return dict(round_grad=config.round_grad, k=config.k, grad_scale=config.grad_scale)


@dataclass(frozen=True)
class LayerMethod:
    """What a method puts on a layer: `weight(config, options)` and `input(config, options)`
    build its quantizers (options: backend, device, and the per-channel or per-group arguments
    for weights), the options it supports, and the summary's description."""

    weight: Callable[[QuantConfig, dict], LearnedQuantizer]
    input: Callable[[QuantConfig, dict], LearnedQuantizer]
    description: str
    soft_round: bool = False
    per_channel: bool = True
    per_group: bool = True
    signed_inputs: bool = True
    grad_scale: bool = True
    why_not_per_channel: str = ""
    why_not_per_group: str = ""
    why_not_signed_inputs: str = ""
    why_not_grad_scale: str = ""


LAYER_METHODS: dict[str, LayerMethod] = {
    "lsq": LayerMethod(
        weight=lambda c, o: LSQQuantizer(c.weight_bits, True, role="weight", **_lsq_options(c), **o),
        input=lambda c, o: LSQQuantizer(c.act_bits, c.act_signed, **_lsq_options(c), **o),
        description="LSQ, a learned step, on weights and inputs",
        soft_round=True,
    ),
    "lsq+": LayerMethod(
        weight=lambda c, o: (
            LSQPlusQuantizer(c.weight_bits, False, role="weight", grad_scale=c.grad_scale, **o)
            if c.weight_group_size is not None
            else LSQQuantizer(c.weight_bits, True, role="weight", init="lsq+", grad_scale=c.grad_scale, **o)
        ),
        input=lambda c, o: LSQPlusQuantizer(c.act_bits, c.act_signed is True, grad_scale=c.grad_scale, **o),
        description="weights: LSQ with LSQ+'s 3-sigma init, no offset (per-group: LSQ+, a step and an offset per "
        "group); inputs: LSQ+, a learned step and offset",
    ),
    "qil": LayerMethod(
        weight=lambda c, o: QILQuantizer(c.weight_bits, "weight", **o),
        input=lambda c, o: QILQuantizer(c.act_bits, "activation", **o),
        description="QIL, a learned interval, on weights and inputs; "
        "the layers see weights in [-1, 1], inputs in [0, 1]",
        per_channel=False,
        per_group=False,
        signed_inputs=False,
        grad_scale=False,
        why_not_per_channel="QIL learns one interval per layer",
        why_not_per_group="QIL learns one interval per layer",
        why_not_signed_inputs="QIL's activation quantizer is unsigned (it maps [0, max x] to [0, 1])",
        why_not_grad_scale="QIL's interval gradients are unscaled (its paper has no g)",
    ),
}


def _having(feature: str) -> str:
    """The methods that support `feature`, as the error messages list them: 'lsq' or 'lsq+'."""
    names = [name for name, m in LAYER_METHODS.items() if getattr(m, feature)]
    return " or ".join(f"'{name}'" for name in names) if len(names) > 1 else f"'{names[0]}'"
