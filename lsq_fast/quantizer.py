"""LSQQuantizer: the LSQ quantizer as a module, with the paper's initialisation of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _distributed
from ._args import check_grad_scale, check_op_args, grad_scale_for_qmax, numel_per_step, qrange
from ._positive_step import keep_positive
from .backends import BACKENDS
from .lsq import lsq_quantize

ROLES = ("activation", "weight")


class LSQQuantizer(nn.Module):
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
        backend: as in :func:`lsq_fast.lsq_quantize`.
        device: where the step lives.

    The step is a float32 Parameter whatever the model's dtype (``model.half()`` leaves it
    float32). Its first forward in training mode sets it as the paper does, ``2 * mean|x| /
    sqrt(qmax)`` (per channel when per-channel), with the statistics summed over the ranks of
    torch.distributed so that every rank starts from the same step. A channel whose mean is 0
    takes the tensor's step; an all-zero tensor takes 1.0. The ``initialized`` buffer records
    that this happened, so a loaded checkpoint is never initialised again. Under
    ``torch.autocast`` the input is cast to the autocast dtype first.

    Evaluating a quantizer that was never initialised is an error: its step would be a
    placeholder. Under ``torch.compile(fullgraph=True)``, run the first (initialising) step
    eagerly; plain ``torch.compile`` breaks the graph there once.
    """

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
        backend: str = "auto",
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if signed not in (True, False, "auto") or not isinstance(signed, (bool, str)):
            raise ValueError(f"lsq_fast: signed must be True, False or 'auto', got {signed!r}")
        qrange(bits, signed is True)  # "auto" admits 1 bit; a signed decision checks again
        if channel_axis is None:
            if num_channels is not None:
                raise ValueError("lsq_fast: num_channels is for per-channel quantizers; set channel_axis too")
            shape = (1,)
        else:
            if isinstance(channel_axis, bool) or not isinstance(channel_axis, int):
                raise TypeError(f"lsq_fast: channel_axis must be an int or None, got {type(channel_axis).__name__}")
            if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
                raise ValueError(f"lsq_fast: a per-channel quantizer needs num_channels >= 1, got {num_channels!r}")
            shape = (num_channels,)
        if role not in ROLES:
            raise ValueError(f"lsq_fast: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not (isinstance(min_step, (int, float)) and math.isfinite(min_step) and min_step > 0):
            raise ValueError(f"lsq_fast: min_step must be a positive finite float, got {min_step!r}")
        if backend not in BACKENDS:
            raise ValueError(f"lsq_fast: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")

        self.bits = bits
        self.signed_mode = signed
        self.channel_axis = channel_axis
        self.grad_scale = check_grad_scale(grad_scale)
        self.role = role
        self.min_step = float(min_step)
        self.backend = backend
        self.step = nn.Parameter(torch.ones(shape, dtype=torch.float32, device=device))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool, device=device))
        # Host-side copies of what the forward branches on, so that it never reads the device.
        self._initialized = False
        self._signed = None if signed == "auto" else signed
        keep_positive(self)

    def reset_parameters(self) -> None:
        """Back to the state before the first batch: the next training forward initialises."""
        with torch.no_grad():
            self.step.fill_(1.0)
            self.initialized.fill_(False)
        self._initialized = False
        self._signed = None if self.signed_mode == "auto" else self.signed_mode

    @property
    def signed(self) -> bool | None:
        """The grid in use: True, False, or None while "auto" has not seen a batch."""
        return self._signed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if not self._initialized:
            if not self.training:
                raise RuntimeError(
                    "lsq_fast: this LSQQuantizer has not been initialised: run a forward in training mode "
                    "first (or call initialize_(x), or load a trained state_dict)"
                )
            self.initialize_(x)
        return lsq_quantize(
            x,
            self.step,
            self.bits,
            signed=self._signed,
            channel_axis=self.channel_axis,
            grad_scale=self._grad_scale(x),
            backend=self.backend,
        )

    # Data-dependent and collective: outside any graph torch.compile builds (it breaks there
    # once, on the first step).
    @torch.compiler.disable
    @torch.no_grad()
    def initialize_(self, x: torch.Tensor) -> None:
        """Sets the step from x as the paper does (see the class docstring), summing the
        statistics over torch.distributed ranks; decides the sign of "auto". Every rank must call it."""
        axis = check_op_args(x, self.step, *qrange(self.bits, False), self.channel_axis)  # the op's messages
        v = x.detach()
        sums = v.abs().sum(dim=[d for d in range(v.dim()) if d != axis], dtype=torch.float64).reshape(-1)
        negative = (v < 0).any().reshape(1) if self.signed_mode == "auto" else sums.new_zeros(1)
        stats = _distributed.all_reduce_sum_(torch.cat([sums, sums.new_full((1,), v.numel()), negative.double()]))
        sums, numel, negative = stats[:-2], stats[-2], stats[-1]

        signed = bool(negative > 0) if self.signed_mode == "auto" else self.signed_mode  # one read, once
        if signed and self.bits < 2:
            raise ValueError("lsq_fast: a 1-bit quantizer is unsigned, but its first batch has negative values")
        scale = 2.0 / math.sqrt(qrange(self.bits, signed)[1])
        tensor_step = _usable(scale * sums.sum() / numel, torch.ones_like(numel))
        channel_step = _usable(scale * sums / (numel / sums.numel()), tensor_step)
        self.step.copy_(channel_step.clamp_min(self.min_step))
        self.initialized.fill_(True)
        self._initialized, self._signed = True, signed

    def _grad_scale(self, x: torch.Tensor) -> float | None:
        """None (the op's 1/sqrt(N * qmax)) unless N must count the other ranks' batches too."""
        world = _distributed.world_size()
        if self.grad_scale is not None or self.role == "weight" or world == 1:
            return self.grad_scale
        axis = None if self.channel_axis is None else self.channel_axis % x.dim()
        return grad_scale_for_qmax(numel_per_step(x, axis) * world, qrange(self.bits, self._signed)[1])

    # -- state: what a checkpoint holds beyond step and initialized ---------------------------

    def get_extra_state(self) -> dict:
        return {"bits": self.bits, "signed": self._signed}

    def set_extra_state(self, state: dict) -> None:
        if state.get("bits") != self.bits:
            raise ValueError(f"lsq_fast: the checkpoint's quantizer has bits={state.get('bits')}, this one bits={self.bits}")
        signed = state.get("signed")
        if self.signed_mode != "auto" and signed is not None and signed != self.signed_mode:
            raise ValueError(f"lsq_fast: the checkpoint's quantizer has signed={signed}, this one signed={self.signed_mode}")
        self._signed = signed if self.signed_mode == "auto" else self.signed_mode

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._initialized = bool(self.initialized)  # one read per load, not per forward
        if self._initialized and self._signed is None:
            error_msgs.append(f"lsq_fast: {prefix}initialized is set but the checkpoint does not say the sign")
        if self._initialized and not bool(torch.all(torch.isfinite(self.step) & (self.step > 0))):
            error_msgs.append(f"lsq_fast: {prefix}step must be positive and finite, got {_preview(self.step)}")

    def __setstate__(self, state):  # copy.deepcopy and pickle: the copy's step stays positive too
        super().__setstate__(state)
        keep_positive(self)

    def _apply(self, fn, recurse=True):
        """.to(), .cuda(), .half(), ...: moves the step like every tensor but keeps it float32
        (converted from the float32 value held before, never through a narrower type)."""
        before = self.step.data
        super()._apply(fn, recurse)
        if self.step.dtype != torch.float32:
            if before.is_meta:  # to_empty(): nothing to keep
                self.step.data = torch.empty_like(self.step, dtype=torch.float32)
            else:
                self.step.data = before.to(device=self.step.device, dtype=torch.float32)
        return self

    def extra_repr(self) -> str:
        signed = self.signed_mode if self.signed_mode != "auto" else f"auto ({_decided(self._signed)})"
        where = "per-tensor" if self.channel_axis is None else f"per-channel (axis {self.channel_axis}, {self.step.numel()})"
        parts = [f"bits={self.bits}", f"signed={signed}", where, f"step={_preview(self.step)}"]
        if not self._initialized:
            parts.append("uninitialised")
        if self.role != "activation":
            parts.append(f"role={self.role}")
        return ", ".join(parts)


def _usable(step: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """step where it is positive and finite, else fallback: an all-zero (or empty) batch, or a
    channel of zeros, must not give a zero step."""
    return torch.where(torch.isfinite(step) & (step > 0), step, fallback)


def _decided(signed: bool | None) -> str:
    return "undecided" if signed is None else str(signed)


def _preview(step: torch.Tensor) -> str:
    if step.is_meta:
        return "(meta)"
    values = step.detach().float().cpu()
    if values.numel() == 1:
        return f"{values.item():.6g}"
    return f"[{values.min().item():.4g} .. {values.max().item():.4g}]"
