"""QuantConv2d and QuantLinear: the torch layers with LSQ on their weight and input activation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import LSQQuantizer


class QuantizedLayer:
    """What QuantConv2d and QuantLinear share: a weight quantizer (signed, per-tensor as in the
    paper or per output channel), an input quantizer (None leaves the input in float), and
    from_float."""

    FLOAT_TYPE: type[nn.Module]
    weight: nn.Parameter
    weight_quantizer: LSQQuantizer
    input_quantizer: LSQQuantizer | None

    def _add_quantizers(self, weight_bits, act_bits, per_channel_weights, act_signed, backend, device) -> None:
        per_channel = dict(channel_axis=0, num_channels=self.weight.shape[0]) if per_channel_weights else {}
        self.weight_quantizer = LSQQuantizer(
            weight_bits, True, **per_channel, role="weight", backend=backend, device=device
        )
        self.input_quantizer = (
            None if act_bits is None else LSQQuantizer(act_bits, act_signed, backend=backend, device=device)
        )

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
    """nn.Conv2d that fake-quantizes its weight and its input with LSQ.

    Takes nn.Conv2d's arguments, then: weight_bits (signed), act_bits (None: input in float),
    per_channel_weights (one step per output channel), act_signed (True, False or "auto"),
    backend. Under autocast the quantized weight and input, and the convolution, are in the
    autocast dtype; the steps stay float32.
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
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._add_quantizers(weight_bits, act_bits, per_channel_weights, act_signed, backend, device)

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
    """nn.Linear that fake-quantizes its weight and its input with LSQ; arguments as QuantConv2d's."""

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
    ):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._add_quantizers(weight_bits, act_bits, per_channel_weights, act_signed, backend, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

    @staticmethod
    def _float_config(layer: nn.Linear) -> dict:
        return dict(in_features=layer.in_features, out_features=layer.out_features, bias=layer.bias is not None)
