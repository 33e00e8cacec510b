"""LSQQuantizer: the LSQ quantizer as a module, with the paper's initialisation of the step
(or LSQ+'s, for weights)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.args import check_grad_scale, qrange, soft_round_sharpness
from ..ops.lsq import lsq_quantize
from . import distributed
from .quantizer import (
    LearnedQuantizer, check_common_args, grad_scale_over_ranks, granularity, preview, reduce_dims, statistics_view,
    step_shape, usable,
)

LSQ_INITS = ("lsq", "lsq+")


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
        group_size, shape: per-group steps for a weight (LLM weights): a step per group_size
            consecutive elements of the weight's last axis; shape is the weight's shape, and the
            step's is shape[:-1] + [shape[-1] / group_size] (see :func:`lsq_fast.lsq_quantize`).
            Not with channel_axis; role="weight" only.
        init: "lsq" (the LSQ paper's ``2 * mean|x| / sqrt(qmax)``) or "lsq+" (LSQ+'s weight
            initialisation ``max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1)``, mu and sigma the
            mean and standard deviation of x; for a signed quantizer only).
        backend: as in :func:`lsq_fast.lsq_quantize`.
        device: where the step lives.

    The step is a float32 Parameter whatever the model's dtype (``model.half()`` leaves it
    float32). Its first forward in training mode sets it from that batch as ``init`` says (per
    channel or group), with the statistics (sums of x, of |x| or of x^2, and counts)
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
        group_size: int | None = None,
        shape: tuple[int, ...] | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
    ):
        if signed not in (True, False, "auto") or not isinstance(signed, (bool, str)):
            raise ValueError(f"lsq_fast: signed must be True, False or 'auto', got {signed!r}")
        # "auto" admits 1 bit; a signed decision checks again
        check_common_args((bits, signed is True), role, backend, min_step=min_step)
        steps = step_shape(channel_axis, num_channels, group_size, shape, role)
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
        self.group_size = group_size
        self.grad_scale = check_grad_scale(grad_scale)
        self.role = role
        self.min_step = float(min_step)
        self.round_grad = round_grad
        self.k = float(k)
        self.init = init
        self.backend = backend
        self.step = nn.Parameter(torch.ones(steps, dtype=torch.float32, device=device))
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
            group_size=self.group_size,
            backend=self.backend,
        )

    def _initialize(self, x: torch.Tensor) -> None:
        """Sets the step from x as `init` says (see the class docstring), summing the statistics
        over torch.distributed ranks; decides the sign of "auto"."""
        v, axis = statistics_view(x, self.step, *qrange(self.bits, False), self.channel_axis, self.group_size)
        dims = reduce_dims(v, axis)
        if self.init == "lsq":
            sums = [v.abs().sum(dim=dims, dtype=torch.float64).reshape(-1)]
        else:  # LSQ+'s weights: the mean and the variance, from the sums of x and x^2
            sums = [v.sum(dim=dims, dtype=torch.float64).reshape(-1), v.double().square().sum(dim=dims).reshape(-1)]
        channels = sums[0].numel()
        negative = (v < 0).any().reshape(1) if self.signed_mode == "auto" else sums[0].new_zeros(1)
        stats = distributed.all_reduce_sum_(torch.cat([*sums, sums[0].new_full((1,), v.numel()), negative.double()]))
        numel, negative = stats[-2], stats[-1]
        sums = stats[:-2].reshape(len(sums), channels)

        signed = bool(negative > 0) if self.signed_mode == "auto" else self.signed_mode  # one read, once
        if signed and self.bits < 2:
            raise ValueError("lsq_fast: a 1-bit quantizer is unsigned, but its first batch has negative values")
        if self.init == "lsq":
            scale = 2.0 / math.sqrt(qrange(self.bits, signed)[1])
            tensor_step = usable(scale * sums[0].sum() / numel, torch.ones_like(numel))
            channel_step = usable(scale * sums[0] / (numel / channels), tensor_step)
        else:
            levels = 2.0 ** (self.bits - 1)
            tensor_step = usable(_three_sigma(sums.sum(dim=1), numel) / levels, torch.ones_like(numel))
            channel_step = usable(_three_sigma(sums, numel / channels) / levels, tensor_step)
        distributed.assign_(self.step, channel_step.clamp_min(self.min_step).reshape(self.step.shape))
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
        decided = "undecided" if self._signed is None else self._signed
        signed = self.signed_mode if self.signed_mode != "auto" else f"auto ({decided})"
        parts = [f"bits={self.bits}", f"signed={signed}", granularity(self), f"step={preview(self.step)}"]
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
