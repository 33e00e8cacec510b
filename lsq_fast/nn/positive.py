"""Keeps learned positive parameters positive: a clamp right after every torch.optim step.

LSQ's and LSQ+'s step sizes, QIL's interval half-width: SGD can push them through zero. The
kernels then divide by a tiny floor and pass the parameter no gradient, so it would never
recover; a parameter clamped to a small positive value still gets a gradient (for a step every
element clips, dy/ds = qmin or qmax) and can grow back. Clamping after the optimizer, rather
than in the quantizer's forward, costs nothing per forward and leaves the parameter untouched
between forward and backward (a quantizer called twice before backward, or by several
micro-batches, saves the same value each time).

Mechanism: one global optimizer post-step hook (torch.optim.optimizer.
register_optimizer_step_post_hook), installed when the first quantizer module is made. Each
live module registers the names of its parameters to keep positive, with the name of the
attribute that holds each one's floor (``step`` / ``min_step``, ``distance`` / ``min_distance``).
After an optimizer step the hook clamps those parameters that are among that optimizer's
parameters, with one foreach launch per floor value; no host sync.
"""

from __future__ import annotations

import weakref
from collections import defaultdict

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

# module -> {parameter name: name of the attribute holding its floor}; weak, so that a
# registered module is collected like any other.
_REGISTERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HOOK: list = []  # the hook's handle, once installed


def keep_positive(module: torch.nn.Module, param: str = "step", floor: str = "min_step") -> None:
    """Registers `module`, whose parameter named `param` must stay >= the float held by its
    attribute named `floor` after optimizer steps. Registering the same pair again is harmless."""
    _REGISTERED.setdefault(module, {})[param] = floor
    if not _HOOK:
        _HOOK.append(register_optimizer_step_post_hook(_clamp_after_step))


def _clamp_after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    by_floor: dict[float, list[torch.Tensor]] = defaultdict(list)
    for module, params in list(_REGISTERED.items()):
        for name, floor in params.items():
            p = getattr(module, name, None)
            if p is not None and id(p) in updated:
                by_floor[float(getattr(module, floor))].append(p)
    with torch.no_grad():
        for value, tensors in by_floor.items():
            torch._foreach_clamp_min_(tensors, value)
