"""QuantConv2d and QuantLinear: the torch layers with a learned quantizer on their weight and
input activation: LSQ (the default), LSQ+ or QIL."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lsq_plus_quantizer import LSQPlusQuantizer
from .qil_quantizer import QILQuantizer
from .quantizer import LearnedQuantizer, LSQQuantizer
from .reference.soft_round import soft_round_sharpness

METHODS = ("lsq", "lsq+", "qil")


def check_method(method: str, per_channel_weights: bool, act_signed: bool | str, round_grad: str, k: float) -> None:
    """The combinations of method and options that exist; a clear ValueError for the others."""
    if method not in METHODS:
        raise ValueError(f"lsq_fast: method must be one of {', '.join(METHODS)}, got {method!r}")
    soft_round_sharpness(round_grad, k)
    if round_grad != "ste" and method != "lsq":
        raise ValueError(
            f"lsq_fast: round_grad={round_grad!r} (LG-LSQ's soft round) is a variant of LSQ's step gradient: "
            f"it needs method='lsq', got method={method!r}"
        )
    if method == "qil" and per_channel_weights:
        raise ValueError(
            "lsq_fast: QIL learns one interval per layer: per_channel_weights=True needs method 'lsq' or 'lsq+'"
        )
    if act_signed not in (True, False, "auto") or not isinstance(act_signed, (bool, str)):
        raise ValueError(f"lsq_fast: act_signed must be True, False or 'auto', got {act_signed!r}")
    if method == "qil" and act_signed is True:
        raise ValueError(
            "lsq_fast: QIL's activation quantizer is unsigned (it maps [0, max x] to [0, 1]): "
            "act_signed=True needs method 'lsq' or 'lsq+'"
        )


class QuantizedLayer:
    """What QuantConv2d and QuantLinear share: a weight quantizer (signed, per-tensor as in the
    paper or per output channel), an input quantizer (None leaves the input in float), and
    from_float.

    The method picks the quantizers:

    - "lsq": LSQQuantizer on both (``round_grad``/``k`` pick the round's gradient: LSQ's
      straight-through estimator or LG-LSQ's arctangent soft round);
    - "lsq+": the weight by LSQQuantizer with LSQ+'s 3-sigma initialisation (symmetric, no
      offset), the input by LSQPlusQuantizer (a learned offset; the unsigned grid unless
      act_signed is True);
    - "qil": QILQuantizer on both, per-tensor only: the layer computes with weights in [-1, 1]
      and inputs in [0, 1] (QIL's normalised units; the input's negative values are lost).
    """

    FLOAT_TYPE: type[nn.Module]
    weight: nn.Parameter
    weight_quantizer: LearnedQuantizer
    input_quantizer: LearnedQuantizer | None
    method: str

    def _add_quantizers(
        self, weight_bits, act_bits, per_channel_weights, act_signed, backend, device, method, round_grad, k
    ) -> None:
        check_method(method, per_channel_weights, act_signed, round_grad, k)
        self.method = method
        per_channel = dict(channel_axis=0, num_channels=self.weight.shape[0]) if per_channel_weights else {}
        common = dict(backend=backend, device=device)
        if method == "qil":
            self.weight_quantizer = QILQuantizer(weight_bits, "weight", **common)
            self.input_quantizer = None if act_bits is None else QILQuantizer(act_bits, "activation", **common)
            return
        lsq = dict(round_grad=round_grad, k=k, **common)
        init = "lsq+" if method == "lsq+" else "lsq"
        self.weight_quantizer = LSQQuantizer(weight_bits, True, **per_channel, role="weight", init=init, **lsq)
        if act_bits is None:
            self.input_quantizer = None
        elif method == "lsq+":
            self.input_quantizer = LSQPlusQuantizer(act_bits, act_signed is True, **common)
        else:
            self.input_quantizer = LSQQuantizer(act_bits, act_signed, **lsq)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    @classmethod
    def from_float(
        cls,
        layer: nn.Module,
        *,
        weight_bits: int = 4,
        act_bits: int | None = 4,
        per_channel_weights: bool = False,
        act_signed: bool | str = "auto",
        backend: str = "auto",
        method: str = "lsq",
        round_grad: str = "ste",
        k: float = 5.0,
    ):
        """The quantized twin of `layer`, holding the same weight and bias Parameters (an
        optimizer built before the conversion still updates them; add the new step sizes to it).
        The quantizers start uninitialised, on the layer's device."""
        if type(layer) is not cls.FLOAT_TYPE:
            raise TypeError(
                f"lsq_fast: {cls.__name__}.from_float takes an nn.{cls.FLOAT_TYPE.__name__}, got {type(layer).__name__}"
            )
        quantized = torch.nn.utils.skip_init(  # no random init of a weight about to be replaced
            cls,
            **cls._float_config(layer),
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            weight_bits=weight_bits,
            act_bits=act_bits,
            per_channel_weights=per_channel_weights,
            act_signed=act_signed,
            backend=backend,
            method=method,
            round_grad=round_grad,
            k=k,
        )
        quantized.weight, quantized.bias = layer.weight, layer.bias
        for quantizer in (quantized.weight_quantizer, quantized.input_quantizer):
            if quantizer is not None:
                quantizer.reset_parameters()
        return quantized.train(layer.training)

    @staticmethod
    def _float_config(layer: nn.Module) -> dict:
        raise NotImplementedError


class QuantConv2d(QuantizedLayer, nn.Conv2d):
    """nn.Conv2d that fake-quantizes its weight and its input with LSQ (or LSQ+, or QIL).

    Takes nn.Conv2d's arguments, then: weight_bits (signed), act_bits (None: input in float),
    per_channel_weights (one step per output channel), act_signed (True, False or "auto"),
    backend, method ("lsq", "lsq+" or "qil": see QuantizedLayer), round_grad and k (for
    "lsq": the round's gradient, "ste" or LG-LSQ's "arctan" of sharpness k). Under autocast
    the quantized weight and input, and the convolution, are in the autocast dtype; the
    quantizers' parameters stay float32.
    """

    FLOAT_TYPE = nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        weight_bits: int = 4,
        act_bits: int | None = 4,
        per_channel_weights: bool = False,
        act_signed: bool | str = "auto",
        backend: str = "auto",
        method: str = "lsq",
        round_grad: str = "ste",
        k: float = 5.0,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._add_quantizers(
            weight_bits, act_bits, per_channel_weights, act_signed, backend, device, method, round_grad, k
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)

    @staticmethod
    def _float_config(layer: nn.Conv2d) -> dict:
        return dict(
            in_channels=layer.in_channels,
            out_channels=layer.out_channels,
            kernel_size=layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )


class QuantLinear(QuantizedLayer, nn.Linear):
    """nn.Linear that fake-quantizes its weight and its input with LSQ (or LSQ+, or QIL);
    arguments as QuantConv2d's."""

    FLOAT_TYPE = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        weight_bits: int = 4,
        act_bits: int | None = 4,
        per_channel_weights: bool = False,
        act_signed: bool | str = "auto",
        backend: str = "auto",
        method: str = "lsq",
        round_grad: str = "ste",
        k: float = 5.0,
    ):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._add_quantizers(
            weight_bits, act_bits, per_channel_weights, act_signed, backend, device, method, round_grad, k
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

    @staticmethod
    def _float_config(layer: nn.Linear) -> dict:
        return dict(in_features=layer.in_features, out_features=layer.out_features, bias=layer.bias is not None)
