"""Keeps learned step sizes positive: a clamp right after every torch.optim step.

SGD can push a step through zero. The kernels then divide by a tiny floor and pass the step no
gradient, so it would never recover; a step clamped to a small positive value still gets a
gradient (every element clips, dy/ds = qmin or qmax) and can grow back. Clamping after the
optimizer, rather than in the quantizer's forward, costs nothing per forward and leaves the step
untouched between forward and backward (a quantizer called twice before backward, or by several
micro-batches, saves the same step each time).

Mechanism: one global optimizer post-step hook (torch.optim.optimizer.
register_optimizer_step_post_hook), installed when the first quantizer module is made. It
clamps the steps of the live quantizers whose step is among that optimizer's parameters, with
one foreach launch per floor value; no host sync.
"""

from __future__ import annotations

import weakref
from collections import defaultdict

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_QUANTIZERS: weakref.WeakSet = weakref.WeakSet()  # modules with .step and .min_step
_HOOK: list = []  # the hook's handle, once installed


def keep_positive(quantizer: torch.nn.Module) -> None:
    """Registers a module whose `step` parameter must stay >= its `min_step` after optimizer steps."""
    _QUANTIZERS.add(quantizer)
    if not _HOOK:
        _HOOK.append(register_optimizer_step_post_hook(_clamp_after_step))


def _clamp_after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    by_floor: dict[float, list[torch.Tensor]] = defaultdict(list)
    for quantizer in list(_QUANTIZERS):
        if id(quantizer.step) in updated:
            by_floor[quantizer.min_step].append(quantizer.step)
    with torch.no_grad():
        for floor, steps in by_floor.items():
            torch._foreach_clamp_min_(steps, floor)
