"""QuantConv2d and QuantLinear: the torch layers with a learned quantizer on their weight and
input activation, as a QuantConfig says: LSQ (the default), LSQ+ or QIL; and QuantEmbedding,
weight-only (its input is indices)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .config import QuantConfig
from .quantizer import LearnedQuantizer


class QuantizedLayer:
    """What QuantConv2d and QuantLinear share: a QuantConfig (``config``), the weight quantizer
    (signed, per-tensor as in the paper or per output channel) and the input quantizer (None
    leaves the input in float) it builds, and from_float.

    The method picks the quantizers (nn/config.py, LAYER_METHODS):

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
    config: QuantConfig
    weight_quantizer: LearnedQuantizer
    input_quantizer: LearnedQuantizer | None

    # Whether groups of steps can run along the weight's rows (QuantLinear, QuantEmbedding)
    WEIGHT_GROUPS = False

    def _add_quantizers(self, config: QuantConfig, device) -> None:
        if config.weight_group_size is not None and not self.WEIGHT_GROUPS:
            raise ValueError(
                f"lsq_fast: weight_group_size is for QuantLinear and QuantEmbedding (groups along the weight's rows); "
                f"a {type(self).__name__}'s weight takes per-tensor or per-channel steps"
            )
        if config.weight_group_size is not None and self.weight.shape[-1] % config.weight_group_size:
            raise ValueError(
                f"lsq_fast: weight_group_size {config.weight_group_size} does not divide the rows of this "
                f"{type(self).__name__}'s weight ({self.weight.shape[-1]} elements)"
            )
        self.config = config
        self.weight_quantizer, self.input_quantizer = config.quantizers(self.weight.shape, device)

    @property
    def method(self) -> str:
        return self.config.method

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    @classmethod
    def from_float(cls, layer: nn.Module, config: QuantConfig | None = None, **options):
        """The quantized twin of `layer`, holding the same weight and bias Parameters (an
        optimizer built before the conversion still updates them; add the new step sizes to it).
        `config` (default QuantConfig()) with `options` (its fields, e.g. weight_bits=2) replaced
        says how. The quantizers start uninitialised, on the layer's device."""
        if type(layer) is not cls.FLOAT_TYPE:
            raise TypeError(
                f"lsq_fast: {cls.__name__}.from_float takes an nn.{cls.FLOAT_TYPE.__name__}, got {type(layer).__name__}"
            )
        quantized = torch.nn.utils.skip_init(  # no random init of a weight about to be replaced
            cls,
            **cls._float_config(layer),
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            config=QuantConfig.of(config, options),
        )
        quantized.weight = layer.weight
        if hasattr(layer, "bias"):
            quantized.bias = layer.bias
        for quantizer in (quantized.weight_quantizer, quantized.input_quantizer):
            if quantizer is not None:
                quantizer.reset_parameters()
        return quantized.train(layer.training)

    @staticmethod
    def _float_config(layer: nn.Module) -> dict:
        raise NotImplementedError


class QuantConv2d(QuantizedLayer, nn.Conv2d):
    """nn.Conv2d that fake-quantizes its weight and its input with LSQ (or LSQ+, or QIL).

    Takes nn.Conv2d's arguments, then a QuantConfig (``config``) and/or its fields as keywords:
    weight_bits (signed), act_bits (None: input in float), per_channel_weights (one step per
    output channel), act_signed (True, False or "auto"), backend, method ("lsq", "lsq+" or
    "qil": see QuantizedLayer), round_grad and k (for "lsq": the round's gradient, "ste" or
    LG-LSQ's "arctan" of sharpness k). Under autocast
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
        config: QuantConfig | None = None,
        **options,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._add_quantizers(QuantConfig.of(config, options), device)

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
    arguments as QuantConv2d's, and weight_group_size: a step (and for "lsq+" an offset) per
    that many consecutive input features of each output's row, for LLM weights."""

    FLOAT_TYPE = nn.Linear
    WEIGHT_GROUPS = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        config: QuantConfig | None = None,
        **options,
    ):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._add_quantizers(QuantConfig.of(config, options), device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

    @staticmethod
    def _float_config(layer: nn.Linear) -> dict:
        return dict(in_features=layer.in_features, out_features=layer.out_features, bias=layer.bias is not None)


class QuantEmbedding(QuantizedLayer, nn.Embedding):
    """nn.Embedding whose table is fake-quantized: weight-only (its input is indices, so the
    config's act_bits is not used), with a step per tensor, per row (per_channel_weights) or
    per group of weight_group_size features of each row (LLM embeddings). Takes nn.Embedding's
    arguments, then a QuantConfig and/or its fields as QuantConv2d does; max_norm (which
    renormalises the table in place) and sparse gradients are not supported."""

    FLOAT_TYPE = nn.Embedding
    WEIGHT_GROUPS = True

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: torch.Tensor | None = None,
        _freeze: bool = False,
        device=None,
        dtype=None,
        *,
        config: QuantConfig | None = None,
        **options,
    ):
        if max_norm is not None or sparse:
            raise ValueError("lsq_fast: QuantEmbedding supports neither max_norm (it renormalises the table in place) "
                             "nor sparse gradients")
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
                         _weight, _freeze, device, dtype)
        self._add_quantizers(dataclasses.replace(QuantConfig.of(config, options), act_bits=None), device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self.quantized_weight(), self.padding_idx, None, self.norm_type, self.scale_grad_by_freq)

    @staticmethod
    def _float_config(layer: nn.Embedding) -> dict:
        return dict(num_embeddings=layer.num_embeddings, embedding_dim=layer.embedding_dim,
                    padding_idx=layer.padding_idx, max_norm=layer.max_norm, norm_type=layer.norm_type,
                    scale_grad_by_freq=layer.scale_grad_by_freq, sparse=layer.sparse)
