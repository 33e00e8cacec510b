"""convert, the second step after quantize_model (torchao calls the two *prepare* and
*convert*): every quantized layer becomes an inference layer that holds its weight as integer
codes and its input quantizer with the learned step frozen (lsq_fast.nn.int_layers)."""

from __future__ import annotations

import torch
from torch import nn

from ..nn.int_layers import FixedQILQuantizer, FixedQuantizer, IntConv2d, IntEmbedding, IntLinear, IntWeight, math_type
from ..nn.layers import QuantConv2d, QuantEmbedding, QuantizedLayer, QuantLinear
from ..nn.lsq_plus_quantizer import LSQPlusQuantizer
from ..nn.lsq_quantizer import LSQQuantizer
from ..nn.qil_quantizer import QILQuantizer
from ..ops.args import STEP_FLOOR
from ..prepare import replace_modules
from ..reference.qil import qil_transform_weight
from .packing import pack_codes

INT_TYPE = {QuantConv2d: IntConv2d, QuantLinear: IntLinear, QuantEmbedding: IntEmbedding}


def convert(model: nn.Module, *, empty: bool = False) -> nn.Module:
    """Replaces, in place, every QuantConv2d, QuantLinear and QuantEmbedding of `model` by an
    IntConv2d, IntLinear or IntEmbedding and returns the model (a lone quantized layer: returns
    its converted twin).

    - The weight becomes integer codes, packed (4 bits and fewer: two or more to a byte), and
      the float32 steps (and LSQ+'s offsets): the state_dict holds these, not float weights.
      A weight tied between layers (an embedding and the output head) is one IntWeight,
      shared. Biases stay float (the same Parameters).
    - The input quantizer keeps its learned step (and offset, or QIL's interval) fixed.
    - In eval mode the converted model's output is the quantized model's, bit for bit, on the
      CPU (the same float32 arithmetic, docs/export.md); under torch.autocast the quantized model
      quantizes the weight after the cast to the autocast dtype, the converted one before it.

    Every quantizer must be initialised (trained, or loaded from a trained state_dict); an
    uninitialised one is a ValueError naming the layer, and a weight that is not finite too.
    Nothing is changed before every layer is converted.

    ``empty=True`` builds the converted layers with placeholder values (zero codes, unit
    steps), to load a converted checkpoint into: quantize_model the float model as it was
    trained, convert(model, empty=True), then load_state_dict. Their forward is an error
    until a state_dict is loaded.
    """
    lone = isinstance(model, QuantizedLayer)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantizedLayer)]
    if not layers:
        raise ValueError(
            "lsq_fast: convert found no quantized layer (QuantConv2d, QuantLinear, QuantEmbedding) in the model: "
            "quantize_model (and train) it first"
        )
    weights: dict[int, IntWeight] = {}  # id(weight quantizer): a tied weight is converted once
    replacements = {}
    for name, layer in layers:
        if type(layer) not in INT_TYPE:
            raise TypeError(f"lsq_fast: convert does not know {type(layer).__name__} (layer {name!r})")
        where = f"layer {name!r}" if name else f"this {type(layer).__name__}"
        quantizer = layer.weight_quantizer
        if id(quantizer) not in weights:
            weights[id(quantizer)] = int_weight(quantizer, layer.weight, where, empty)
        inputs = None if layer.input_quantizer is None else fixed_quantizer(layer.input_quantizer, where, empty)
        float_config = type(layer)._float_config(layer)
        replacements[id(layer)] = INT_TYPE[type(layer)].build(float_config, weights[id(quantizer)], inputs,
                                                                getattr(layer, "bias", None))
        replacements[id(layer)].train(layer.training)
    if lone:
        return replacements[id(model)]
    replace_modules(model, replacements)
    return model


def _check_initialised(quantizer: nn.Module, role: str, where: str, empty: bool) -> None:
    if not empty and not quantizer._initialized:
        raise ValueError(
            f"lsq_fast: convert: the {role} quantizer of {where} has not been initialised (no training forward, no "
            "trained state_dict): its steps are placeholders. Train or load the model first; to build a model to "
            "load a converted checkpoint into, pass empty=True"
        )


@torch.no_grad()
def int_weight(quantizer: nn.Module, weight: torch.Tensor, where: str, empty: bool) -> IntWeight:
    """The IntWeight of `weight` under its quantizer: codes as the quantizer's forward rounds them."""
    _check_initialised(quantizer, "weight", where, empty)
    if isinstance(quantizer, LSQQuantizer):
        scheme, signed = "lsq", quantizer.signed if quantizer.signed is not None else quantizer.signed_mode is True
    elif isinstance(quantizer, LSQPlusQuantizer):
        scheme, signed = "lsq+", quantizer.signed
    elif isinstance(quantizer, QILQuantizer):
        scheme, signed = "qil", True
    else:
        raise TypeError(f"lsq_fast: convert does not know the weight quantizer {type(quantizer).__name__} of {where}")
    target = IntWeight(weight.shape, quantizer.bits, signed, scheme=scheme,
                       channel_axis=getattr(quantizer, "channel_axis", None),
                       group_size=getattr(quantizer, "group_size", None), dtype=weight.dtype, device=weight.device)
    if empty:
        return target
    m = math_type(weight.dtype)
    w = weight.detach().to(m)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"lsq_fast: convert: the weight of {where} is not finite: it has no integer codes")
    if scheme == "qil":
        codes = torch.round(qil_transform_weight(weight.detach(), quantizer.center, quantizer.distance,
                                                 quantizer.gamma) * target.levels)
        target.set_values(pack_codes(codes.to(torch.int16), target.bits, target.qmin))
        return target
    # the contract's forward up to the round (docs/contract.md, sections 1 and 2), in its order
    step = quantizer.step.detach().clamp_min(STEP_FLOOR)
    u = target.codes_by_step(w)
    offset = quantizer.offset.detach() if scheme == "lsq+" else None
    if offset is not None:
        u = u - target.per_step(offset.to(m))
    codes = torch.round(torch.clamp(u / target.per_step(step.to(m)), target.qmin, target.qmax)).reshape(weight.shape)
    target.set_values(pack_codes(codes.to(torch.int16), target.bits, target.qmin), step, offset)
    return target


@torch.no_grad()
def fixed_quantizer(quantizer: nn.Module, where: str, empty: bool) -> nn.Module:
    """The input quantizer with its parameters frozen."""
    _check_initialised(quantizer, "input", where, empty)
    device = quantizer.initialized.device
    if isinstance(quantizer, QILQuantizer):
        fixed = FixedQILQuantizer(quantizer.bits, device=device)
        if not empty:
            fixed.center.copy_(quantizer.center)
            fixed.distance.copy_(quantizer.distance)
            fixed.mark_filled()
        return fixed
    if isinstance(quantizer, LSQQuantizer):
        # an "auto" grid that an empty conversion has not seen decided: the checkpoint's says
        signed = quantizer.signed if quantizer.signed is not None else quantizer.signed_mode is True
        offset = False
    elif isinstance(quantizer, LSQPlusQuantizer):
        signed, offset = quantizer.signed, True
    else:
        raise TypeError(f"lsq_fast: convert does not know the input quantizer {type(quantizer).__name__} of {where}")
    fixed = FixedQuantizer(quantizer.bits, signed, offset=offset, channel_axis=quantizer.channel_axis,
                           num_channels=quantizer.step.numel(), device=device)
    fixed.grid_from_checkpoint = empty and getattr(quantizer, "signed_mode", None) == "auto"
    if not empty:
        fixed.step.copy_(quantizer.step.clamp_min(STEP_FLOOR))
        if offset:
            fixed.offset.copy_(quantizer.offset)
        fixed.mark_filled()
    return fixed
