"""LearnedQuantizer: what every quantizer module of lsq_fast shares (initialisation from data,
autocast, float32 parameters, positivity, checkpoints), and the helpers their constructors and
initialisations share."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.args import check_group_size, check_group_size_value, check_op_args, grad_scale_for_qmax, numel_per_step, qrange
from ..ops.backends import check_backend
from . import distributed
from .positive import keep_positive

ROLES = ("activation", "weight")


class LearnedQuantizer(nn.Module):
    """What the quantizer modules share (LSQQuantizer, LSQPlusQuantizer, QILQuantizer): one
    place for the logic that is the same in all of them.

    - Initialisation from data: the first forward in training mode calls ``initialize_(x)``
      (every rank must: it may hold collectives), which sets the parameters and, when done,
      the ``initialized`` buffer. A host-side copy of that flag is what the forward branches
      on, so that it never reads the device; it is refreshed once per state_dict load.
      Evaluating a quantizer that was never initialised is an error (its parameters would be
      placeholders).
    - FSDP2: see :mod:`lsq_fast.nn.fsdp`; the initialisation writes each rank's slice of a
      sharded parameter (``distributed.assign_``).
    - ``torch.autocast``: the input is cast to the autocast dtype first, as the layer's
      matmul or convolution will be.
    - The learned parameters are float32 whatever the model's dtype (``model.half()`` leaves
      them float32).
    - The parameters named in ``_POSITIVE`` (with the attribute holding each one's floor) are
      clamped to their floor after every torch.optim step that updates them
      (:mod:`lsq_fast.nn.positive`), and must be positive and finite in a loaded checkpoint.
    - The checkpoint's extra state holds ``bits`` (and what a subclass adds); loading a
      checkpoint of other bits is an error.

    A subclass defines ``_initialize(x)`` (under no_grad, outside torch.compile's graphs),
    ``_quantize(x)``, ``_reset()`` (the placeholders) and ``extra_repr``.
    """

    _POSITIVE: tuple[tuple[str, str], ...] = ()  # (parameter name, floor attribute name)
    bits: int

    def __init__(self, device: torch.device | str | None = None):
        super().__init__()
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool, device=device))
        self._initialized = False  # the host-side copy of `initialized`
        # Set by fully_shard_quantizers: a forward pre-hook initialises, on the sharded parameters.
        self._initializes_on_shards = False
        self._keep_positive()

    def _keep_positive(self) -> None:
        for name, floor in self._POSITIVE:
            keep_positive(self, name, floor)

    def reset_parameters(self) -> None:
        """Back to the state before the first batch: the next training forward initialises."""
        with torch.no_grad():
            self._reset()
            self.initialized.fill_(False)
        self._initialized = False

    def _reset(self) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._autocast_input(x)
        if not self._initialized and not self._initializes_on_shards:
            self._first_batch(x)
        try:
            return self._quantize(x)
        except TypeError:  # the op's dtype check; free until it fires (a check here costs ~0.5 us a call)
            for name, p in self._parameters.items():
                if p is not None and p.dtype != torch.float32:
                    raise TypeError(self._not_float32_message(name, p.dtype)) from None
            raise

    @staticmethod
    def _autocast_input(x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):
            return x.to(torch.get_autocast_dtype(x.device.type))
        return x

    @torch.compiler.disable  # reads torch's map of sharded modules; initialize_ is outside the graph anyway
    def _first_batch(self, x: torch.Tensor) -> None:
        """The initialisation from the first training batch x, or the error where it cannot be right."""
        if not self.training:
            raise RuntimeError(self._uninitialised_message())
        if not self._initializes_on_shards and distributed.in_sharded_module(self):
            raise RuntimeError(
                f"lsq_fast: this {type(self).__name__} would initialise inside the forward of a module sharded by "
                "FSDP2 (fully_shard), writing into the gathered copy of its parameters that FSDP2 frees afterwards: "
                "training would go on with placeholder values. Call lsq_fast.fully_shard_quantizers(model) before "
                "fully_shard (its quantizers then initialise on the sharded parameters), or initialise them before "
                "sharding (a training-mode forward on every rank, or a trained state_dict)"
            )
        self.initialize_(x)

    def _not_float32_message(self, name: str, dtype: torch.dtype) -> str:
        return (
            f"lsq_fast: {type(self).__name__}.{name} is {dtype} in this forward; the learned parameters must be "
            "float32. Under FSDP2, MixedPrecisionPolicy(param_dtype=...) casts every parameter of the modules it "
            "shards: call lsq_fast.fully_shard_quantizers(model) before fully_shard to keep the quantizers' "
            "parameters float32"
        )

    def _uninitialised_message(self) -> str:
        return (
            f"lsq_fast: this {type(self).__name__} has not been initialised: run a forward in training mode "
            "first (or call initialize_(x), or load a trained state_dict)"
        )

    # Data-dependent and collective: outside any graph torch.compile builds (it breaks there
    # once, on the first step).
    @torch.compiler.disable
    @torch.no_grad()
    def initialize_(self, x: torch.Tensor) -> None:
        """Sets the parameters from the batch x (see the class docstring). Every rank of
        torch.distributed must call it with its own batch: the statistics are reduced over them."""
        self._initialize(x)

    def _initialize(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _mark_initialized(self) -> None:
        self.initialized.fill_(True)
        self._initialized = True

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- state: what a checkpoint holds beyond the parameters and `initialized` ---------------

    def get_extra_state(self) -> dict:
        return {"bits": self.bits, **self._extra_state()}

    def set_extra_state(self, state: dict) -> None:
        if state.get("bits") != self.bits:
            raise ValueError(f"lsq_fast: the checkpoint's quantizer has bits={state.get('bits')}, this one bits={self.bits}")
        self._set_extra_state(state)

    def _extra_state(self) -> dict:
        return {}

    def _set_extra_state(self, state: dict) -> None:
        pass

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._initialized = bool(self.initialized)  # one read per load, not per forward
        if not self._initialized:
            return
        for name, p in self._parameters.items():
            if p is None:
                continue
            positive = any(name == positive_name for positive_name, _ in self._POSITIVE)
            p = distributed.full_value(p)  # every rank loads: a sharded parameter is checked whole
            ok = torch.isfinite(p) & (p > 0) if positive else torch.isfinite(p)
            if not bool(torch.all(ok)):
                kind = "positive and finite" if positive else "finite"
                error_msgs.append(f"lsq_fast: {prefix}{name} must be {kind}, got {preview(p)}")
        self._check_loaded(prefix, error_msgs)

    def _check_loaded(self, prefix: str, error_msgs: list) -> None:
        pass

    def __setstate__(self, state):  # copy.deepcopy and pickle: the copy is kept positive too
        super().__setstate__(state)
        self._keep_positive()

    def _apply(self, fn, recurse=True):
        """.to(), .cuda(), .half(), ...: moves the parameters like every tensor but keeps them
        float32 (converted from the float32 values held before, never through a narrower type)."""
        before = {name: p.data for name, p in self._parameters.items() if p is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            p = self._parameters[name]
            if p.dtype != torch.float32:
                if old.is_meta:  # to_empty(): nothing to keep
                    p.data = torch.empty_like(p, dtype=torch.float32)
                else:
                    p.data = old.to(device=p.device, dtype=torch.float32)
        return self


def grad_scale_over_ranks(x: torch.Tensor, grad_scale: float | None, role: str, axis: int | None, qmax: int):
    """grad_scale, or None (the op's 1/sqrt(N * qmax)) unless N must count the other ranks'
    batches too: an activation under data parallelism, whose batch is a slice of the global one."""
    world = distributed.world_size()
    if grad_scale is not None or role == "weight" or world == 1:
        return grad_scale
    axis = None if axis is None else axis % x.dim()
    return grad_scale_for_qmax(numel_per_step(x, axis) * world, qmax)


def check_common_args(bits_signed: tuple[int, bool], role: str, backend: str, **floors: float) -> None:
    """The constructor checks the quantizer modules share: bits (for the grid signed or not),
    role, backend and each positive floor (min_step, min_distance)."""
    qrange(*bits_signed)
    if role not in ROLES:
        raise ValueError(f"lsq_fast: role must be one of {', '.join(ROLES)}, got {role!r}")
    for name, value in floors.items():
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"lsq_fast: {name} must be a positive finite float, got {value!r}")
    check_backend(backend)


def channel_shape(channel_axis: int | None, num_channels: int | None) -> tuple[int]:
    """The shape of a per-tensor (channel_axis None) or per-channel parameter, checked."""
    if channel_axis is None:
        if num_channels is not None:
            raise ValueError("lsq_fast: num_channels is for per-channel quantizers; set channel_axis too")
        return (1,)
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, int):
        raise TypeError(f"lsq_fast: channel_axis must be an int or None, got {type(channel_axis).__name__}")
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"lsq_fast: a per-channel quantizer needs num_channels >= 1, got {num_channels!r}")
    return (num_channels,)


def step_shape(channel_axis: int | None, num_channels: int | None, group_size: int | None, shape, role: str):
    """The shape of a per-tensor, per-channel or per-group parameter, checked. Per-group
    (weights only: an activation's groups would change with its batch) takes `shape`, the
    quantized tensor's, and gives shape[:-1] + [shape[-1] / group_size]."""
    if group_size is None:
        if shape is not None:
            raise ValueError("lsq_fast: shape is for per-group quantizers; set group_size too")
        return channel_shape(channel_axis, num_channels)
    # num_channels belongs to a channel axis: the same conflict
    check_group_size_value(group_size, channel_axis if num_channels is None else num_channels)
    if role != "weight":
        raise ValueError("lsq_fast: per-group steps are for weights (role='weight'): an activation's groups "
                         "would change with its batch")
    if not isinstance(shape, (tuple, list, torch.Size)) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"lsq_fast: a per-group quantizer needs shape, the weight's shape, got {shape!r}")
    if shape[-1] % group_size:
        raise ValueError(f"lsq_fast: group_size {group_size} does not divide the last dimension of shape {list(shape)}")
    return (*shape[:-1], shape[-1] // group_size)


def statistics_view(x: torch.Tensor, param: torch.Tensor, qmin: int, qmax: int, channel_axis: int | None,
                    group_size: int | None) -> tuple[torch.Tensor, int | None]:
    """(x detached, the axis its per-step statistics keep), checked with the op's messages: x
    itself per-tensor or per-channel, its rows of one group (axis 0) per-group."""
    if group_size is None:
        return x.detach(), check_op_args(x, param, qmin, qmax, channel_axis)
    check_group_size(x, param, group_size, channel_axis)
    rows = x.detach().reshape(-1, group_size)
    check_op_args(rows, torch.empty(rows.shape[0], device=rows.device), qmin, qmax, 0)  # x's dtype and device
    return rows, 0


def granularity(q) -> str:
    """The repr's word for a quantizer's steps: per-tensor, per-channel or per-group."""
    if getattr(q, "group_size", None) is not None:
        return f"per-group ({q.group_size} elements, steps {list(q.step.shape)})"
    if q.channel_axis is None:
        return "per-tensor"
    return f"per-channel (axis {q.channel_axis}, {q.step.numel()})"


def reduce_dims(v: torch.Tensor, axis: int | None) -> list[int]:
    """The dimensions a per-tensor (axis None) or per-channel statistic reduces over."""
    return [d for d in range(v.dim()) if d != axis]


def usable(step: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """step where it is positive and finite, else fallback: an all-zero (or empty) batch, or a
    channel of zeros, must not give a zero step."""
    return torch.where(torch.isfinite(step) & (step > 0), step, fallback)


def preview(t: torch.Tensor) -> str:
    if t.is_meta:
        return "(meta)"
    if distributed.is_sharded(t):  # its values would need a collective, and repr runs on one rank
        return "(sharded)"
    values = t.detach().float().cpu()
    if values.numel() == 1:
        return f"{values.item():.6g}"
    return f"[{values.min().item():.4g} .. {values.max().item():.4g}]"
