"""Helpers for training a quantized model: initialise its quantizers from data without
touching the rest (calibrate), give the optimizer its parameter groups (param_groups), and
find the steps that SGD drove to their floor (steps_at_floor)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .nn.qil_quantizer import QILQuantizer
from .nn.quantizer import LearnedQuantizer


def _quantizers(model: nn.Module) -> list[tuple[str, LearnedQuantizer]]:
    """(name, quantizer) for each learned quantizer of `model`, once each (a tied weight's shared
    quantizer has one entry)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LearnedQuantizer)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, *, forward: Callable | None = None) -> int:
    """Initialises every quantizer of `model` that is not initialised yet from `batches`, and
    changes nothing else: returns how many it initialised.

    The model runs in eval mode (BatchNorm's running statistics and dropout untouched), without
    gradients, with only the uninitialised quantizers in training mode, so that each initialises
    from the first batch that reaches it (LSQ+ with ``init_batches=n`` from its first n) as it
    would on the first training step. Every module's training flag is restored afterwards. It
    stops as soon as all are initialised. Each batch is the model's input: a tensor, or a tuple
    of positional inputs (for a loader of ``(inputs, labels)``, pass ``(x for x, _ in loader)``),
    or anything `forward(model, batch)` takes. Under torch.distributed every rank calls it (the
    statistics are reduced over the ranks).

    A model without quantizers, and a quantizer that no batch reached, are errors.
    """
    quantizers = _quantizers(model)
    if not quantizers:
        raise ValueError("lsq_fast: calibrate: the model has no quantizer (call lsq_fast.quantize_model first)")
    pending = [q for _, q in quantizers if not q._initialized]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for q in pending:
        q.train()
    try:
        for batch in batches:
            if all(q._initialized for q in pending):
                break
            if forward is not None:
                forward(model, batch)
            elif isinstance(batch, (tuple, list)):
                model(*batch)
            else:
                model(batch)
    finally:
        for m, mode in modes.items():
            m.training = mode
    missing = [name for name, q in quantizers if not q._initialized]
    if missing:
        raise RuntimeError(f"lsq_fast: calibrate: no batch reached {', '.join(missing[:8])}"
                           f"{' and others' if len(missing) > 8 else ''} (too few batches, or a branch the inputs "
                           "never take)")
    return len(pending)


def param_groups(model: nn.Module, *, weight_decay: float = 0.0, quantizer_lr: float | None = None,
                 qil_lr: float | None = None) -> list[dict]:
    """The model's parameters as optimizer groups: the model's own (weights, biases, norms) with
    `weight_decay`, and the quantizers' (steps, offsets, intervals) without weight decay, which
    would pull the steps towards zero. `quantizer_lr` sets the quantizers' learning rate (None:
    the optimizer's), `qil_lr` QIL's (QIL trains its intervals at a smaller rate than the
    weights; None: as the other quantizers). Groups left empty are dropped. For example
    ``torch.optim.SGD(lsq_fast.param_groups(model, weight_decay=1e-4), lr=0.01, momentum=0.9)``.
    """
    seen: set[int] = set()
    quantizer, qil = [], []
    for _, q in _quantizers(model):
        for p in q.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                (qil if isinstance(q, QILQuantizer) else quantizer).append(p)
    weights = [p for p in model.parameters() if id(p) not in seen]
    qil_lr = quantizer_lr if qil_lr is None else qil_lr
    groups = [
        dict(params=weights, weight_decay=weight_decay),
        dict(params=quantizer, weight_decay=0.0, **({} if quantizer_lr is None else dict(lr=quantizer_lr))),
        dict(params=qil, weight_decay=0.0, **({} if qil_lr is None else dict(lr=qil_lr))),
    ]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def steps_at_floor(model: nn.Module) -> dict[str, float]:
    """{quantizer parameter's name: fraction of its elements at their floor} for every learned
    positive parameter (LSQ's and LSQ+'s step, QIL's interval) that has any there. A step clamped
    at ``min_step`` after an optimizer step still gets a gradient, but a run whose steps sit
    there (``grad_scale=1`` at 2 bits, a learning rate too high for the steps) has collapsed.
    One host read per parameter: call it between steps, not in the hot loop. The optimizer hook
    also warns once per quantizer when it finds one there (checked every
    ``lsq_fast.nn.positive.FLOOR_CHECK_EVERY`` steps, without waiting on the device)."""
    found = {}
    for name, q in _quantizers(model):
        if not q._initialized:
            continue
        for param, floor in q._POSITIVE:
            p = getattr(q, param)
            fraction = float((p <= getattr(q, floor)).float().mean()) if p.numel() else 0.0
            if fraction:
                found[f"{name}.{param}" if name else param] = fraction
    return found
