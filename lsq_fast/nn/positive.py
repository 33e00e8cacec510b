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

A parameter that sits at its floor usually means a collapsed run (LSQ with g = 1 at 2 bits: the
step is pushed through zero on every step). Every FLOOR_CHECK_EVERY optimizer steps the hook
asks, per device, which clamped parameters are at their floor, with a copy to the host that it
does not wait for: the answer is read at a later step, once the device has it (an event query,
never a sync), and each quantizer found there is warned about once.
"""

from __future__ import annotations

import warnings
import weakref
from collections import defaultdict

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from .distributed import is_sharded

# module -> {parameter name: name of the attribute holding its floor}; weak, so that a
# registered module is collected like any other.
_REGISTERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HOOK: list = []  # the hook's handle, once installed
FLOOR_CHECK_EVERY = 100  # optimizer steps between two looks at the floors (a few reductions each)


class _FloorWatch:
    """The floor checks in flight: (modules and names, flags on the host, event or None) per device."""

    def __init__(self):
        self.steps = 0
        self.pending: list[tuple[list, torch.Tensor, object]] = []
        self.warned: weakref.WeakSet = weakref.WeakSet()

    def after_step(self, clamped: list[tuple[torch.nn.Module, str, torch.Tensor, float]]) -> None:
        still = []
        for entry in self.pending:
            owners, flags, event = entry
            if event is not None and not event.query():
                still.append(entry)
                continue
            for (module, name), hit in zip(owners, flags.tolist()):
                if hit and module not in self.warned:
                    self.warned.add(module)
                    warnings.warn(
                        f"lsq_fast: {type(module).__name__}({module.extra_repr()}).{name} has reached its floor "
                        f"({getattr(module, _REGISTERED[module][name])!r}): the run is likely collapsing (LSQ with "
                        "grad_scale=1 at low bits, or a learning rate too high for the steps). "
                        "lsq_fast.steps_at_floor(model) lists every step there", RuntimeWarning, stacklevel=3)
        self.pending = still
        self.steps += 1
        if self.steps % FLOOR_CHECK_EVERY or self.pending:
            return
        by_device = defaultdict(list)
        for module, name, p, floor in clamped:
            if module not in self.warned and p.numel() and not is_sharded(p):  # a shard's any() is a collective
                by_device[p.device].append((module, name, p, floor))
        for device, entries in by_device.items():
            flags = torch.stack([(p <= floor).any() for _, _, p, floor in entries])
            event = None
            if device.type == "cuda":
                flags = flags.to("cpu", non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            self.pending.append(([(m, n) for m, n, _, _ in entries], flags, event))


_WATCH = _FloorWatch()


def keep_positive(module: torch.nn.Module, param: str = "step", floor: str = "min_step") -> None:
    """Registers `module`, whose parameter named `param` must stay >= the float held by its
    attribute named `floor` after optimizer steps. Registering the same pair again is harmless."""
    _REGISTERED.setdefault(module, {})[param] = floor
    if not _HOOK:
        _HOOK.append(register_optimizer_step_post_hook(_clamp_after_step))


def _clamp_after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    by_floor: dict[float, list[torch.Tensor]] = defaultdict(list)
    clamped = []
    for module, params in list(_REGISTERED.items()):
        for name, floor in params.items():
            p = getattr(module, name, None)
            if p is not None and id(p) in updated:
                value = float(getattr(module, floor))
                by_floor[value].append(p)
                clamped.append((module, name, p, value))
    with torch.no_grad():
        for value, tensors in by_floor.items():
            torch._foreach_clamp_min_(tensors, value)
        _WATCH.after_step(clamped)
