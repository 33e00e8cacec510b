"""LSQQuantizer: the LSQ quantizer as a module, with the paper's initialisation of the step; and
LearnedQuantizer, the machinery every quantizer module of lsq_fast shares."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _distributed
from ._args import check_grad_scale, check_op_args, grad_scale_for_qmax, numel_per_step, qrange
from ._positive_step import keep_positive
from .backends import BACKENDS
from .lsq import lsq_quantize
from .reference.soft_round import soft_round_sharpness

ROLES = ("activation", "weight")
LSQ_INITS = ("lsq", "lsq+")


class LearnedQuantizer(nn.Module):
    """What the quantizer modules share (LSQQuantizer, LSQPlusQuantizer, QILQuantizer): one
    place for the logic that is the same in all of them.

    - Initialisation from data: the first forward in training mode calls ``initialize_(x)``
      (every rank must: it may hold collectives), which sets the parameters and, when done,
      the ``initialized`` buffer. A host-side copy of that flag is what the forward branches
      on, so that it never reads the device; it is refreshed once per state_dict load.
      Evaluating a quantizer that was never initialised is an error (its parameters would be
      placeholders).
    - ``torch.autocast``: the input is cast to the autocast dtype first, as the layer's
      matmul or convolution will be.
    - The learned parameters are float32 whatever the model's dtype (``model.half()`` leaves
      them float32).
    - The parameters named in ``_POSITIVE`` (with the attribute holding each one's floor) are
      clamped to their floor after every torch.optim step that updates them
      (:mod:`lsq_fast._positive_step`), and must be positive and finite in a loaded checkpoint.
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
        if x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if not self._initialized:
            if not self.training:
                raise RuntimeError(self._uninitialised_message())
            self.initialize_(x)
        return self._quantize(x)

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
            ok = torch.isfinite(p) & (p > 0) if positive else torch.isfinite(p)
            if not bool(torch.all(ok)):
                kind = "positive and finite" if positive else "finite"
                error_msgs.append(f"lsq_fast: {prefix}{name} must be {kind}, got {_preview(p)}")
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
    world = _distributed.world_size()
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
    if backend not in BACKENDS:
        raise ValueError(f"lsq_fast: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


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


def reduce_dims(v: torch.Tensor, axis: int | None) -> list[int]:
    """The dimensions a per-tensor (axis None) or per-channel statistic reduces over."""
    return [d for d in range(v.dim()) if d != axis]


class LSQQuantizer(LearnedQuantizer):
    """Fake-quantizes its input with a learned step size (LSQ, Esser et al., ICLR 2020).

    Args:
        bits: 2..8 signed, 1..8 unsigned.
        signed: True (weights), False (ReLU outputs) or "auto": signed if the first batch has a
            negative value, on any rank.
        channel_axis: None for one step (per-tensor), else the axis of x the steps run along.
        num_channels: the number of steps when channel_axis is set (x.shape[channel_axis]).
        grad_scale: the step gradient's scale; None is LSQ's 1/sqrt(N * qmax), N the elements per
            step (for an activation under DistributedDataParallel, the global batch's).
        role: "activation" (the batch is split across data-parallel ranks) or "weight" (every
            rank holds all of it): decides N in the default grad_scale.
        min_step: the floor the step is clamped to after every torch.optim step.
        round_grad: the derivative the backward pass gives round(): "ste" (LSQ's
            straight-through estimator) or "arctan" (LG-LSQ's arctangent soft round of sharpness
            ``k``, as this project reads the LG-LSQ abstract; see :func:`lsq_fast.lsq_quantize`).
            The forward pass is the same.
        k: the soft round's sharpness (> 0), for round_grad="arctan".
        init: "lsq" (the LSQ paper's ``2 * mean|x| / sqrt(qmax)``) or "lsq+" (LSQ+'s weight
            initialisation ``max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1)``, mu and sigma the
            mean and standard deviation of x; for a signed quantizer only).
        backend: as in :func:`lsq_fast.lsq_quantize`.
        device: where the step lives.

    The step is a float32 Parameter whatever the model's dtype (``model.half()`` leaves it
    float32). Its first forward in training mode sets it from that batch as ``init`` says (per
    channel when per-channel), with the statistics (sums of x, of |x| or of x^2, and counts)
    summed over the ranks of torch.distributed in one collective, so that every rank starts
    from the same step. A channel whose statistic gives 0 takes the tensor's step; an all-zero
    tensor takes 1.0. The ``initialized`` buffer records that this happened, so a loaded
    checkpoint is never initialised again. Under ``torch.autocast`` the input is cast to the
    autocast dtype first.

    Evaluating a quantizer that was never initialised is an error: its step would be a
    placeholder. Under ``torch.compile(fullgraph=True)``, run the first (initialising) step
    eagerly; plain ``torch.compile`` breaks the graph there once.
    """

    _POSITIVE = (("step", "min_step"),)

    def __init__(
        self,
        bits: int,
        signed: bool | str = "auto",
        channel_axis: int | None = None,
        num_channels: int | None = None,
        grad_scale: float | None = None,
        *,
        role: str = "activation",
        min_step: float = 1e-8,
        round_grad: str = "ste",
        k: float = 5.0,
        init: str = "lsq",
        backend: str = "auto",
        device: torch.device | str | None = None,
    ):
        if signed not in (True, False, "auto") or not isinstance(signed, (bool, str)):
            raise ValueError(f"lsq_fast: signed must be True, False or 'auto', got {signed!r}")
        # "auto" admits 1 bit; a signed decision checks again
        check_common_args((bits, signed is True), role, backend, min_step=min_step)
        shape = channel_shape(channel_axis, num_channels)
        soft_round_sharpness(round_grad, k)  # the op's checks and messages, now rather than at the first forward
        if init not in LSQ_INITS:
            raise ValueError(f"lsq_fast: init must be one of {', '.join(LSQ_INITS)}, got {init!r}")
        if init == "lsq+" and signed is not True:
            raise ValueError(
                "lsq_fast: init='lsq+' is LSQ+'s initialisation of a symmetric (weight) quantizer: it needs signed=True"
            )
        super().__init__(device)
        self.bits = bits
        self.signed_mode = signed
        self.channel_axis = channel_axis
        self.grad_scale = check_grad_scale(grad_scale)
        self.role = role
        self.min_step = float(min_step)
        self.round_grad = round_grad
        self.k = float(k)
        self.init = init
        self.backend = backend
        self.step = nn.Parameter(torch.ones(shape, dtype=torch.float32, device=device))
        # Host-side copy of what the forward branches on, so that it never reads the device.
        self._signed = None if signed == "auto" else signed

    def _reset(self) -> None:
        self.step.fill_(1.0)
        self._signed = None if self.signed_mode == "auto" else self.signed_mode

    @property
    def signed(self) -> bool | None:
        """The grid in use: True, False, or None while "auto" has not seen a batch."""
        return self._signed

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        return lsq_quantize(
            x,
            self.step,
            self.bits,
            signed=self._signed,
            channel_axis=self.channel_axis,
            grad_scale=self._grad_scale(x),
            round_grad=self.round_grad,
            k=self.k,
            backend=self.backend,
        )

    def _initialize(self, x: torch.Tensor) -> None:
        """Sets the step from x as `init` says (see the class docstring), summing the statistics
        over torch.distributed ranks; decides the sign of "auto"."""
        axis = check_op_args(x, self.step, *qrange(self.bits, False), self.channel_axis)  # the op's messages
        v = x.detach()
        dims = reduce_dims(v, axis)
        if self.init == "lsq":
            sums = [v.abs().sum(dim=dims, dtype=torch.float64).reshape(-1)]
        else:  # LSQ+'s weights: the mean and the variance, from the sums of x and x^2
            sums = [v.sum(dim=dims, dtype=torch.float64).reshape(-1), v.double().square().sum(dim=dims).reshape(-1)]
        channels = sums[0].numel()
        negative = (v < 0).any().reshape(1) if self.signed_mode == "auto" else sums[0].new_zeros(1)
        stats = _distributed.all_reduce_sum_(torch.cat([*sums, sums[0].new_full((1,), v.numel()), negative.double()]))
        numel, negative = stats[-2], stats[-1]
        sums = stats[:-2].reshape(len(sums), channels)

        signed = bool(negative > 0) if self.signed_mode == "auto" else self.signed_mode  # one read, once
        if signed and self.bits < 2:
            raise ValueError("lsq_fast: a 1-bit quantizer is unsigned, but its first batch has negative values")
        if self.init == "lsq":
            scale = 2.0 / math.sqrt(qrange(self.bits, signed)[1])
            tensor_step = _usable(scale * sums[0].sum() / numel, torch.ones_like(numel))
            channel_step = _usable(scale * sums[0] / (numel / channels), tensor_step)
        else:
            levels = 2.0 ** (self.bits - 1)
            tensor_step = _usable(_three_sigma(sums.sum(dim=1), numel) / levels, torch.ones_like(numel))
            channel_step = _usable(_three_sigma(sums, numel / channels) / levels, tensor_step)
        self.step.copy_(channel_step.clamp_min(self.min_step))
        self._signed = signed
        self._mark_initialized()

    def _grad_scale(self, x: torch.Tensor) -> float | None:
        qmax = qrange(self.bits, self._signed)[1]
        return grad_scale_over_ranks(x, self.grad_scale, self.role, self.channel_axis, qmax)

    def _extra_state(self) -> dict:
        return {"signed": self._signed}

    def _set_extra_state(self, state: dict) -> None:
        signed = state.get("signed")
        if self.signed_mode != "auto" and signed is not None and signed != self.signed_mode:
            raise ValueError(f"lsq_fast: the checkpoint's quantizer has signed={signed}, this one signed={self.signed_mode}")
        self._signed = signed if self.signed_mode == "auto" else self.signed_mode

    def _check_loaded(self, prefix: str, error_msgs: list) -> None:
        if self._signed is None:
            error_msgs.append(f"lsq_fast: {prefix}initialized is set but the checkpoint does not say the sign")

    def extra_repr(self) -> str:
        signed = self.signed_mode if self.signed_mode != "auto" else f"auto ({_decided(self._signed)})"
        where = "per-tensor" if self.channel_axis is None else f"per-channel (axis {self.channel_axis}, {self.step.numel()})"
        parts = [f"bits={self.bits}", f"signed={signed}", where, f"step={_preview(self.step)}"]
        if not self._initialized:
            parts.append("uninitialised")
        if self.role != "activation":
            parts.append(f"role={self.role}")
        if self.init != "lsq":
            parts.append(f"init={self.init}")
        if self.round_grad != "ste":
            parts.append(f"round_grad={self.round_grad} (k={self.k:g})")
        return ", ".join(parts)


def _three_sigma(sums: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """max(|mu - 3 sigma|, |mu + 3 sigma|) from sums = (sum x, sum x^2) over `count` elements
    (population statistics, float64; NaN where count is 0, which _usable replaces)."""
    mu = sums[0] / count
    sigma = (sums[1] / count - mu * mu).clamp_min(0).sqrt()
    return torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs())


def _usable(step: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """step where it is positive and finite, else fallback: an all-zero (or empty) batch, or a
    channel of zeros, must not give a zero step."""
    return torch.where(torch.isfinite(step) & (step > 0), step, fallback)


def _decided(signed: bool | None) -> str:
    return "undecided" if signed is None else str(signed)


def _preview(t: torch.Tensor) -> str:
    if t.is_meta:
        return "(meta)"
    values = t.detach().float().cpu()
    if values.numel() == 1:
        return f"{values.item():.6g}"
    return f"[{values.min().item():.4g} .. {values.max().item():.4g}]"
