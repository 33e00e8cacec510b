"""quantize_model, the *prepare* step of quantization-aware training: one call that turns a
float model into an LSQ model, as the paper trains it (or an LSQ+ or QIL model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

from torch import nn

from .nn.config import LAYER_METHODS, QuantConfig
from .nn.layers import QuantConv2d, QuantEmbedding, QuantizedLayer, QuantLinear

# Exact types only: a subclass of Conv2d or Linear may have its own forward (or, like
# MultiheadAttention's out_proj, be read by its parent through .weight), which a swap would lose.
_QUANTIZED_TYPE = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear, nn.Embedding: QuantEmbedding}


@dataclass(frozen=True)
class LayerSummary:
    name: str
    kind: str  # "Conv2d", "Linear" or "Embedding"
    weight_bits: int | None  # None: left in float (skipped)
    act_bits: int | None
    per_channel_weights: bool
    note: str = ""
    method: str | None = "lsq"  # "lsq", "lsq+" or "qil"; None for a skipped layer
    weight_group_size: int | None = None


@dataclass(frozen=True)
class QuantizationSummary:
    """What quantize_model did, one row per Conv2d/Linear; prints as a table, then a line that
    says the method (and, for LSQ with LG-LSQ's soft round, the round's gradient)."""

    layers: tuple[LayerSummary, ...]
    round_grad: str = "ste"
    k: float = 5.0

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods of the quantized layers, in order of first appearance (one, from quantize_model)."""
        return tuple(dict.fromkeys(layer.method for layer in self.layers if layer.method is not None))

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __str__(self) -> str:
        header = ("layer", "kind", "weight", "activation", "note")
        rows = [header] + [
            (
                layer.name,
                layer.kind,
                _bits(layer.weight_bits) + (" per-channel" if layer.per_channel_weights else "")
                + (f" g{layer.weight_group_size}" if layer.weight_group_size else ""),
                _bits(layer.act_bits),
                layer.note,
            )
            for layer in self.layers
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
        for method in self.methods:
            line = f"method: {method} ({LAYER_METHODS[method].description})"
            if method == "lsq" and self.round_grad != "ste":
                line += f"; round gradient: {self.round_grad} soft round (k={self.k:g}, LG-LSQ)"
            lines.append(line)
        return "\n".join(lines)

    __repr__ = __str__


def quantize_model(
    model: nn.Module,
    weight_bits: int = 4,
    act_bits: int | None = 4,
    first_last_bits: int | None = 8,
    per_channel_weights: bool = False,
    skip: Iterable[str] = (),
    *,
    act_signed: bool | str = "auto",
    backend: str = "auto",
    method: str = "lsq",
    round_grad: str = "ste",
    k: float = 5.0,
    weight_group_size: int | None = None,
    quantize_embeddings: bool = False,
    grad_scale: float | None = None,
) -> QuantizationSummary:
    """Replaces, in place, every nn.Conv2d and nn.Linear of `model` by QuantConv2d/QuantLinear.

    The first and the last of them (in registration order, which is the order of a CNN's
    layers) get `first_last_bits` for weights and inputs, as in the LSQ paper; None gives them
    the same bits as the rest. Layers named in `skip` (their names in named_modules) stay
    float. Input activations use `act_signed` ("auto": signed when the first batch has a
    negative value, as a normalised image does). Weights and biases are kept (the same
    Parameters); the quantizers' new parameters (step sizes, offsets, intervals) are
    Parameters to add to the optimizer. To shard the model with FSDP2, call
    :func:`lsq_fast.fully_shard_quantizers` next, before ``fully_shard``.

    The arguments after `skip` are a :class:`lsq_fast.QuantConfig`'s fields, checked once,
    before the model is touched. `method` picks the quantizers (see
    :class:`lsq_fast.nn.layers.QuantizedLayer`):

    - "lsq" (the default): LSQQuantizer on weights and inputs; `round_grad` ("ste" or
      "arctan") and `k` choose the round's gradient (LG-LSQ's arctangent soft round, as
      :func:`lsq_fast.lsq_quantize` documents it).
    - "lsq+": weights by LSQQuantizer with LSQ+'s 3-sigma initialisation (symmetric, no
      offset), inputs by LSQPlusQuantizer (min/max initialisation, learned offset; the
      unsigned grid unless act_signed is True, the offset taking care of negative inputs).
    - "qil": QILQuantizer on weights and inputs, per-tensor only. Its outputs are in
      normalised units (weights in [-1, 1], inputs in [0, 1]), and an input's negative values
      are quantized to 0: the first layer's normalised image loses its negative part (it
      warns when it initialises; keep that layer float with `skip`, or use another method).

    `weight_group_size`: per-group weight steps for Linear layers (LLM QAT; see
    :class:`lsq_fast.QuantConfig`), usually with act_bits=None (weight-only) and
    first_last_bits=None. `quantize_embeddings`: nn.Embedding layers too (QuantEmbedding,
    weight-only; they count among the layers, the first and last included). Tied weights (an
    embedding's table shared with the output head) get one weight quantizer, shared by both
    layers: the weight is quantized once and the same way in both; a tie between a layer
    that is quantized and one that is not (skipped, or an embedding without
    quantize_embeddings) is a ValueError, rather than a weight that is quantized in one use
    and float in the other.

    `grad_scale`: every quantizer's gradient scale (None: LSQ's 1/sqrt(N * qmax); 1.0 turns
    it off), for "lsq" and "lsq+".

    per_channel_weights=True with method "qil", act_signed=True with "qil", round_grad other
    than "ste" with a method other than "lsq", and weight_group_size with "qil", with a Conv2d
    or with a Linear whose input features it does not divide are ValueErrors.

    Returns the summary of what it did (it prints as a table). A model that already holds
    quantized layers is an error: quantizing twice would quantize a quantized weight.
    """
    config = QuantConfig(weight_bits, act_bits, per_channel_weights, act_signed, backend, method, round_grad, k,
                         weight_group_size, grad_scale)
    edge_config = config if first_last_bits is None else dataclasses.replace(
        config, weight_bits=first_last_bits, act_bits=None if act_bits is None else first_last_bits
    )
    if type(model) in _QUANTIZED_TYPE:
        raise ValueError(
            f"lsq_fast: quantize_model replaces the layers inside a model; for a lone {type(model).__name__} "
            f"use {_QUANTIZED_TYPE[type(model)].__name__}.from_float"
        )
    already = [name for name, m in model.named_modules() if isinstance(m, QuantizedLayer)]
    if already:
        first = model.get_submodule(already[0])
        raise ValueError(f"lsq_fast: the model is already quantized ({already[0]} is a {type(first).__name__})")
    kinds = _QUANTIZED_TYPE if quantize_embeddings else {t: q for t, q in _QUANTIZED_TYPE.items() if t is not nn.Embedding}
    names = [name for name, m in model.named_modules() if type(m) in kinds]
    if not names:
        raise ValueError("lsq_fast: the model has no nn.Conv2d or nn.Linear layer to quantize")
    skip = {skip} if isinstance(skip, str) else set(skip)
    unknown = sorted(skip.difference(names))
    if unknown:
        raise ValueError(
            f"lsq_fast: skip names layers the model does not have as Conv2d/Linear: {', '.join(unknown)} "
            f"(its layers: {_abbreviate(names)})"
        )

    # Build every replacement before touching the model, so that a bad argument leaves it as it was.
    edges = {names[0]: "first", names[-1]: "last"} if first_last_bits is not None else {}
    replacements, rows = {}, []
    for name in names:
        layer = model.get_submodule(name)
        kind = type(layer).__name__
        if name in skip:
            rows.append(LayerSummary(name, kind, None, None, False, "skipped", None))
            continue
        # the edges' activations stay float where the caller asked for weights only
        layer_config = edge_config if name in edges else config
        try:
            replacements[id(layer)] = _QUANTIZED_TYPE[type(layer)].from_float(layer, layer_config)
        except ValueError as e:  # a layer the options do not fit (weight_group_size on a Conv2d, ...): name it
            raise ValueError(f"{e} (layer {name!r}; nothing was changed)") from None
        rows.append(LayerSummary(name, kind, layer_config.weight_bits, layer_config.act_bits, per_channel_weights,
                                 edges.get(name, ""), method, weight_group_size))

    _share_tied_weight_quantizers(model, names, skip, replacements)

    replace_modules(model, replacements)
    return QuantizationSummary(tuple(rows), round_grad, float(k))


def replace_modules(model: nn.Module, replacements: dict[int, nn.Module]) -> None:
    """Puts replacements[id(m)] in every place a module m of `model` appears: a module shared
    by two parents is replaced in both (quantize_model's and convert's swap)."""
    places = [
        (parent, child_name, replacements[id(child)])
        for _, parent in model.named_modules(remove_duplicate=False)
        for child_name, child in parent._modules.items()  # named_children() would list a shared child once
        if child is not None and id(child) in replacements
    ]
    for parent, child_name, replacement in places:
        setattr(parent, child_name, replacement)


def _bits(bits: int | None) -> str:
    return "float" if bits is None else f"{bits}-bit"


def _abbreviate(names: list[str], keep: int = 8) -> str:
    shown = ", ".join(names[:keep])
    return shown + (f", ... ({len(names)} in all)" if len(names) > keep else "")


def _share_tied_weight_quantizers(model: nn.Module, names: list[str], skip: set, replacements: dict) -> None:
    """One weight quantizer for a weight that several quantized layers share (tied weights: an
    embedding and the output head): the first layer's, given to the others. A weight shared by
    a quantized layer and one left float is an error (see quantize_model)."""
    holders: dict[int, list[str]] = {}
    for name, m in model.named_modules():
        if type(m) in _QUANTIZED_TYPE and isinstance(getattr(m, "weight", None), nn.Parameter):
            holders.setdefault(id(m.weight), []).append(name)
    quantized = {name for name in names if name not in skip}
    for tied in holders.values():
        tied = list(dict.fromkeys(tied))  # a module shared by two parents is one layer
        if len(tied) < 2 or not quantized.intersection(tied):
            continue
        float_ones = [name for name in tied if name not in quantized]
        if float_ones:
            raise ValueError(
                f"lsq_fast: {', '.join(tied)} share one weight (tied weights), but {', '.join(float_ones)} would stay "
                "float: quantize every layer that uses it (quantize_embeddings=True for an embedding) or none of "
                "them (skip=)"
            )
        layers = [replacements[id(model.get_submodule(name))] for name in tied]
        configs = {layer.config for layer in layers}
        if len({(c.weight_bits, c.per_channel_weights, c.weight_group_size, c.method) for c in configs}) > 1:
            raise ValueError(
                f"lsq_fast: {', '.join(tied)} share one weight (tied weights) but would quantize it differently "
                "(the first or last layer's bits?): pass first_last_bits=None, or skip them"
            )
        for layer in layers[1:]:
            layer.weight_quantizer = layers[0].weight_quantizer
