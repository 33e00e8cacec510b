"""FSDP2 (torch.distributed.fsdp.fully_shard) with the quantizer modules: one call before the
layers are sharded, fully_shard_quantizers(model).

fully_shard shards the parameters of the modules it is given and, for each forward, all-gathers
them into a copy that it frees afterwards. Sharded with their layer's parameters, a layer's
quantizers would go wrong twice:

- The first-batch initialisation runs inside the layer's forward and writes into the gathered
  copy: the write is lost, and the model trains with the placeholder steps (1.0).
- MixedPrecisionPolicy(param_dtype=torch.bfloat16) casts that copy, the steps included, and a
  bfloat16 step moves the grid: the contract's steps are float32.

fully_shard_quantizers makes the quantizers FSDP units of their own: a quantized layer's two
quantizers one unit, any other quantizer (a weight-only layer's, one that tied layers share, a
quantizer outside a layer) a unit alone. A unit's parameters and
gradient reduction are float32 whatever policy the layers get, and its inputs are left as they
come (the layer has cast them already). A forward pre-hook does the initialisation while the
parameters are still the sharded ones, before the unit's gather: on the layer, which FSDP2 has
gathered by then, with its input and its weight, or on a lone quantizer, before FSDP2's own
hook. Each rank writes its slice of the values (distributed.assign_), the statistics reduced
over the ranks as under DDP, so the shards hold what one process on the whole batch would. A
quantizer sharded with its layer instead raises at its first forward rather than train on
placeholders.

The price is latency: each unit is one small all-gather in the forward and one reduce-scatter
in the backward (and one more all-gather there with reshard_after_forward=True), where the layer
itself has three collectives: 24 collectives a step become 40 for 8 quantized layers
(benchmarks/bench_fsdp.py; 56 with a unit per quantizer, as a first version had). One unit for
many layers cannot be initialised this way: the first layer's forward gathers it.
"""

from __future__ import annotations

import torch
from torch import nn

from . import distributed
from .quantizer import LearnedQuantizer


def fully_shard_quantizers(module: nn.Module, *, mesh=None, reshard_after_forward: bool = False) -> nn.Module:
    """Makes the quantizers inside `module` FSDP2 units of their own: a quantized layer's pair
    one unit, every other quantizer a unit alone (see the module docstring). Call it on every
    rank, after quantize_model and before fully_shard on the layers and the root; `mesh` as
    fully_shard takes it. By default a unit stays gathered from its forward to the end of the
    backward (a few floats per layer): two collectives per unit and step, where resharding
    after the forward (reshard_after_forward=True) gathers it again for the backward, three.
    Returns `module`."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from .layers import QuantizedLayer

    float32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)

    def shard(quantizers: list[LearnedQuantizer]) -> None:
        for q in quantizers:
            if q._initializes_on_shards:
                raise ValueError(f"lsq_fast: this {type(q).__name__} is sharded already: call fully_shard_quantizers once")
            if any(distributed.is_sharded(p) for p in q.parameters()):
                raise ValueError(
                    "lsq_fast: the quantizers' parameters are sharded already (fully_shard on their layer or the "
                    "model): call fully_shard_quantizers(model) before fully_shard"
                )
        fully_shard(quantizers if len(quantizers) > 1 else quantizers[0], mesh=mesh,
                    reshard_after_forward=reshard_after_forward, mp_policy=float32)
        for q in quantizers:
            q._initializes_on_shards = True

    layers = [m for m in module.modules() if isinstance(m, QuantizedLayer)]
    uses: dict[LearnedQuantizer, int] = {}
    for layer in layers:
        for q in (layer.input_quantizer, layer.weight_quantizer):
            if q is not None:
                uses[q] = uses.get(q, 0) + 1
    in_layers = set()
    for layer in layers:
        # a quantizer several layers share (a tied weight's) is a unit alone, below
        quantizers = [q for q in (layer.input_quantizer, layer.weight_quantizer) if q is not None and uses[q] == 1]
        if len(quantizers) < 2 or layer.input_quantizer is None:
            continue
        shard(quantizers)
        layer.register_forward_pre_hook(_initialize_layer_on_shards)  # after the layer's own FSDP2 gather
        in_layers.update(quantizers)
    for q in module.modules():
        if isinstance(q, LearnedQuantizer) and q not in in_layers:
            shard([q])
            q.register_forward_pre_hook(_initialize_on_shards, prepend=True)  # before FSDP2's gather
    return module


def _to_shards(unit: LearnedQuantizer) -> None:
    """Makes the unit's parameters the sharded ones again if an earlier forward left them gathered
    (reshard_after_forward=False, no backward since): the initialisation writes the shards."""
    if unit.training and not all(distributed.is_sharded(p) for p in unit.parameters()):
        unit.reshard()


def _initialize_on_shards(q: LearnedQuantizer, args: tuple) -> None:
    if q._initialized:
        return
    _to_shards(q)
    q._first_batch(q._autocast_input(args[0]))


def _initialize_layer_on_shards(layer: nn.Module, args: tuple) -> None:
    """The layer's two quantizers from its input and its weight, as its forward will give them."""
    inputs, weights = layer.input_quantizer, layer.weight_quantizer
    if weights._initialized and inputs._initialized:
        return
    _to_shards(weights)  # the unit: both quantizers
    if not inputs._initialized:
        inputs._first_batch(inputs._autocast_input(args[0]))
    if not weights._initialized:
        weights._first_batch(weights._autocast_input(layer.weight))


def load_full_state_dict(module: nn.Module, state: dict) -> None:
    """Loads a whole-tensor state dict (one process's ``model.state_dict()``, or torch's
    ``get_model_state_dict(..., full_state_dict=True)``) into a model sharded by FSDP2, tied
    weights and shared quantizers included, on every rank.

    torch's ``set_model_state_dict(..., full_state_dict=True)`` distributes each tensor once,
    under its first name, then fails copying a second name's plain tensor into the DTensor
    shard: a tied model's shared quantizer (an embedding's, shared with the output head) is
    ``embed.weight_quantizer`` and ``head.weight_quantizer``. Here the second names are left
    out of the load (both names hold the same tensors) and every other key must match, as a
    strict load: a key the model lacks, or one of its first names the state lacks, is a
    KeyError naming them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    firsts = _first_names(module)
    expected = set(module.state_dict().keys())
    unexpected = sorted(set(state) - expected)
    missing = sorted(firsts & expected - set(state))
    if unexpected or missing:
        raise KeyError(f"lsq_fast: the state dict does not fit the model: unexpected keys {unexpected[:8]}, "
                       f"missing keys {missing[:8]}")
    set_model_state_dict(module, {k: v for k, v in state.items() if k in firsts},
                         options=StateDictOptions(full_state_dict=True, strict=False))


def _first_names(module: nn.Module) -> set[str]:
    """The state-dict keys of each parameter, buffer and extra state under its first name only
    (named_modules and named_parameters skip a shared module's or tied tensor's second names)."""
    firsts = {name for name, _ in module.named_parameters()} | {name for name, _ in module.named_buffers()}
    suffix = torch.nn.modules.module._EXTRA_STATE_KEY_SUFFIX
    return firsts | {f"{name}.{suffix}" if name else suffix for name, _ in module.named_modules()}
