"""LSQPlusQuantizer: LSQ+ (Bhalgat et al., 2020) as a module: a learned step and a learned
offset, initialised from the data by min/max or by a search that minimises the quantization
error."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.args import check_grad_scale, qrange
from ..ops.lsq_plus import lsq_plus_quantize
from . import distributed
from .quantizer import (
    LearnedQuantizer, check_common_args, grad_scale_over_ranks, granularity, preview, reduce_dims, statistics_view,
    step_shape, usable,
)

LSQ_PLUS_INITS = ("minmax", "mse")


class LSQPlusQuantizer(LearnedQuantizer):
    """Fake-quantizes its input with a learned step and offset (LSQ+):
    ``y = s * round(clip((x - beta) / s, qmin, qmax)) + beta``; for activations that can be
    negative (a network's input, GELU or Swish outputs): the offset moves the grid, unsigned by
    default, onto the values' range.

    Args:
        bits: 1..8 unsigned, 2..8 signed.
        signed: the integer grid; False (LSQ+'s choice: the offset does the shifting) or True.
        channel_axis, num_channels: None for one step and offset (per-tensor), else the axis of
            x they run along and its length.
        grad_scale: the scale of both parameters' gradients; None is LSQ's 1/sqrt(N * qmax), N
            the elements per step (for an activation under DistributedDataParallel, the global
            batch's).
        role: "activation" (the batch is split across data-parallel ranks) or "weight".
        min_step: the floor the step is clamped to after every torch.optim step.
        init: "minmax" or "mse", see below.
        group_size, shape: a step and an offset per group_size consecutive elements of a
            weight's last axis (EfficientQAT's block-wise quantizer); shape is the weight's, as
            in :class:`LSQQuantizer`. role="weight", init="minmax" (per group) only.
        init_batches: how many training batches the initialisation looks at (>= 1).
        backend: as in :func:`lsq_fast.lsq_plus_quantize`.
        device: where the parameters live.

    ``step`` and ``offset`` are float32 Parameters whatever the model's dtype. They are set
    from the first ``init_batches`` training batches, with the statistics reduced over the
    ranks of torch.distributed, so that every rank starts from the same values (per channel
    when per-channel):

    - "minmax": ``s0 = (max - min) / (qmax - qmin)``, ``beta0 = min - qmin * s0``, with min
      and max over the batches seen (the first batch by default): the grid spans the data
      exactly. The running min and max are reduced with MIN/MAX over the ranks at every batch.
    - "mse": the (s, beta) that minimise ``||y - x||^2`` over those batches, by a grid search.
      The candidates are clipping ranges [lo, hi] cut from the global [min, max] of all the
      init batches: ``lo = min + f_i (max - min)``, ``hi = max - f_j (max - min)`` for every
      pair of fractions ``f = 0, 1/(2G), 2/(2G), ..., (G-1)/(2G)`` (G = ``MSE_GRID``: G^2
      candidates, the first the min/max one), each giving ``s = (hi - lo) / (qmax - qmin)``,
      ``beta = lo - qmin * s``. The squared error of each candidate is measured on a weighted
      sample of the data, a fixed number of elements per channel of every init batch on every
      rank (the memory is bounded by init_batches * (MSE_SAMPLES + 2 MSE_EXTREMES) * channels
      values and weights): the ``MSE_EXTREMES`` smallest and largest elements exactly (weight
      1: the few far values that dominate a clipping error are never missed), and
      ``MSE_SAMPLES`` elements at fixed pseudo-random positions (the same for every run of the
      same shapes), those between the extremes weighted to stand for all the elements between
      them; the whole channel, weight 1, where it has no more elements than that. Each rank's
      weighted errors per candidate are summed over the ranks (one all_reduce SUM of G^2 *
      channels float64s), so every rank picks the same candidate, the first of the smallest
      error. The search costs G^2 * init_batches * (MSE_SAMPLES + 2 MSE_EXTREMES) * channels
      element operations, once, and a copy of a batch whose channel axis is not the leading
      one (to sort out its extremes).

    While fewer than ``init_batches`` batches have been seen, the quantizer runs with the
    min/max estimate of the batches so far, so that training is quantized from its first
    step; it is not yet ``initialized`` (evaluating it is an error), and what an optimizer
    does to step and offset meanwhile is overwritten by the next estimate. The samples held
    for "mse" are not part of the state_dict: a checkpoint saved before the initialisation
    ended starts it again. A channel whose range is empty (constant, or no data) takes the
    tensor's step (the one of the whole range), an all-constant tensor step 1.0; the offset
    then puts the constant on the grid.
    """

    _POSITIVE = (("step", "min_step"),)
    MSE_GRID = 20
    MSE_SAMPLES = 2048
    MSE_EXTREMES = 256
    _MSE_CHUNK = 1 << 22  # candidates * channels * samples evaluated at once (memory bound of the search)

    def __init__(
        self,
        bits: int,
        signed: bool = False,
        channel_axis: int | None = None,
        num_channels: int | None = None,
        grad_scale: float | None = None,
        *,
        role: str = "activation",
        min_step: float = 1e-8,
        init: str = "minmax",
        init_batches: int = 1,
        group_size: int | None = None,
        shape: tuple[int, ...] | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
    ):
        if not isinstance(signed, bool):
            raise ValueError(f"lsq_fast: an LSQ+ quantizer's signed must be True or False, got {signed!r}")
        check_common_args((bits, signed), role, backend, min_step=min_step)
        steps = step_shape(channel_axis, num_channels, group_size, shape, role)
        if init not in LSQ_PLUS_INITS:
            raise ValueError(f"lsq_fast: init must be one of {', '.join(LSQ_PLUS_INITS)}, got {init!r}")
        if group_size is not None and init != "minmax":
            raise ValueError("lsq_fast: a per-group LSQ+ quantizer initialises by min/max per group (init='minmax'), "
                             f"as EfficientQAT does; got init={init!r}")
        if isinstance(init_batches, bool) or not isinstance(init_batches, int) or init_batches < 1:
            raise ValueError(f"lsq_fast: init_batches must be an int >= 1, got {init_batches!r}")
        super().__init__(device)
        self.bits = bits
        self.signed = signed
        self.channel_axis = channel_axis
        self.group_size = group_size
        self.grad_scale = check_grad_scale(grad_scale)
        self.role = role
        self.min_step = float(min_step)
        self.init = init
        self.init_batches = init_batches
        self.backend = backend
        self.step = nn.Parameter(torch.ones(steps, dtype=torch.float32, device=device))
        self.offset = nn.Parameter(torch.zeros(steps, dtype=torch.float32, device=device))
        self._clear_observations()

    def _clear_observations(self) -> None:
        """The initialisation's running state (host-side, outside the state_dict)."""
        self._batches_seen = 0
        self._low = self._high = None  # running global min and max per channel, float64
        self._samples: list[tuple[torch.Tensor, torch.Tensor]] = []  # "mse": this rank's (values, weights)

    def _reset(self) -> None:
        self.step.fill_(1.0)
        self.offset.fill_(0.0)
        self._clear_observations()

    def _uninitialised_message(self) -> str:
        message = super()._uninitialised_message()
        if self._batches_seen:
            message += f" (it has seen {self._batches_seen} of its {self.init_batches} initialisation batches)"
        return message

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        return lsq_plus_quantize(
            x,
            self.step,
            self.offset,
            self.bits,
            signed=self.signed,
            channel_axis=self.channel_axis,
            grad_scale=grad_scale_over_ranks(x, self.grad_scale, self.role, self.channel_axis, self._qrange()[1]),
            group_size=self.group_size,
            backend=self.backend,
        )

    def _qrange(self) -> tuple[int, int]:
        return qrange(self.bits, self.signed)

    def _initialize(self, x: torch.Tensor) -> None:
        """One initialisation batch: updates the global min/max (and for "mse" keeps this rank's
        sample), writes the min/max estimate into step and offset; at the last batch of
        init_batches, the final choice (see the class docstring)."""
        v, axis = statistics_view(x, self.step, *self._qrange(), self.channel_axis, self.group_size)
        if self._initialized:  # called again by hand: a fresh initialisation, over init_batches batches
            self._clear_observations()
            self.initialized.fill_(False)
            self._initialized = False
        channels = self.step.numel()
        if v.numel():
            dims = reduce_dims(v, axis)
            low, high = v.amin(dim=dims).double().reshape(-1), v.amax(dim=dims).double().reshape(-1)
        else:
            low = torch.full((channels,), float("inf"), dtype=torch.float64, device=v.device)
            high = -low
        if self._low is not None:
            low, high = torch.minimum(low, self._low), torch.maximum(high, self._high)
        self._low, self._high = distributed.all_reduce_min_max_(low, high)
        if self.init == "mse":
            self._samples.append(_sample(v, axis, self.MSE_SAMPLES, self.MSE_EXTREMES, seed=self._batches_seen))
        self._batches_seen += 1

        step, offset = self._minmax_estimate()
        if self._batches_seen == self.init_batches and self.init == "mse":
            step, offset = self._mse_search(step)
        distributed.assign_(self.step, step.reshape(self.step.shape))
        distributed.assign_(self.offset, offset.reshape(self.offset.shape))
        if self._batches_seen == self.init_batches:
            self._clear_observations()
            self._mark_initialized()

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The global [min, max] per channel so far, 0 where a channel had no finite data."""
        finite = torch.isfinite(self._low) & torch.isfinite(self._high)
        return torch.where(finite, self._low, 0.0), torch.where(finite, self._high, 0.0)

    def _minmax_estimate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s0, beta0) in float64: the grid spanning [min, max], per channel."""
        qmin, qmax = self._qrange()
        low, high = self._range()
        one = torch.ones((), dtype=low.dtype, device=low.device)
        tensor_step = usable((high.max() - low.min()) / (qmax - qmin), one)
        step = usable((high - low) / (qmax - qmin), tensor_step).clamp_min(self.min_step)
        return step, low - qmin * step

    def _mse_search(self, fallback_step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidate (s, beta) of least squared error summed over the samples of every rank."""
        qmin, qmax = self._qrange()
        low, high = self._range()
        grid = self.MSE_GRID
        fractions = torch.arange(grid, dtype=torch.float64, device=low.device) / (2 * grid)
        width = high - low
        lows = low + fractions[:, None] * width  # (G, C)
        highs = high - fractions[:, None] * width
        steps = usable((highs[None, :, :] - lows[:, None, :]) / (qmax - qmin), fallback_step)  # (G_lo, G_hi, C)
        steps = steps.clamp_min(self.min_step)
        offsets = lows[:, None, :] - qmin * steps
        steps, offsets = steps.reshape(grid * grid, -1), offsets.reshape(grid * grid, -1)  # candidate i * G + j

        samples = torch.cat([values for values, _ in self._samples], dim=1)  # (C, n), float32
        weights = torch.cat([weights for _, weights in self._samples], dim=1)  # (C, n), float64
        s32, b32 = steps.float(), offsets.float()  # the values the parameters would hold
        errors = torch.empty_like(steps)
        chunk = max(1, self._MSE_CHUNK // max(1, samples.numel()))
        for start in range(0, steps.shape[0], chunk):
            s, b = s32[start : start + chunk, :, None], b32[start : start + chunk, :, None]
            # the op's arithmetic, float32: subtract, divide, clip, round, multiply, add
            y = ((samples - b) / s).clamp(qmin, qmax).round() * s + b
            errors[start : start + chunk] = ((y - samples).double().square() * weights).sum(dim=2)
        distributed.all_reduce_sum_(errors)
        best = errors.argmin(dim=0)  # the first of the smallest: the same on every rank
        channels = torch.arange(steps.shape[1], device=steps.device)
        return steps[best, channels], offsets[best, channels]

    def _extra_state(self) -> dict:
        return {"signed": self.signed}

    def _set_extra_state(self, state: dict) -> None:
        signed = state.get("signed")
        if signed is not None and signed != self.signed:
            raise ValueError(f"lsq_fast: the checkpoint's quantizer has signed={signed}, this one signed={self.signed}")

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._clear_observations()  # a checkpoint saved mid-initialisation starts it again

    def extra_repr(self) -> str:
        parts = [
            f"bits={self.bits}",
            f"signed={self.signed}",
            granularity(self),
            f"step={preview(self.step)}",
            f"offset={preview(self.offset)}",
            f"init={self.init}" + (f" ({self.init_batches} batches)" if self.init_batches > 1 else ""),
        ]
        if not self._initialized:
            parts.append("uninitialised")
        if self.role != "activation":
            parts.append(f"role={self.role}")
        return ", ".join(parts)


def _sample(v: torch.Tensor, axis: int | None, count: int, extremes: int, seed: int):
    """(values, weights), each (channels, n): the weighted sample of one batch that the MSE
    search measures errors on (see LSQPlusQuantizer). Every element of a channel with at most
    count + 2 * extremes of them, weight 1; else its `extremes` smallest and largest elements,
    weight 1, and `count` elements at positions drawn (with replacement) from a generator
    seeded with `seed`, those strictly between the extremes weighted to stand for all the
    elements between them, the others weighted 0 (the extremes count them already)."""
    per_channel = v.unsqueeze(0) if axis is None else v.movedim(axis, 0)
    flat = per_channel.reshape(per_channel.shape[0], -1)  # a copy only where the layout needs one
    size = flat.shape[1]
    if size <= count + 2 * extremes:
        values = flat.float()
        return values, torch.ones_like(values, dtype=torch.float64)
    low = flat.topk(extremes, dim=1, largest=False).values
    high = flat.topk(extremes, dim=1).values
    generator = torch.Generator().manual_seed(seed)
    middle = flat[:, torch.randint(size, (count,), generator=generator).to(v.device)]
    inside = (middle > low[:, -1:]) & (middle < high[:, -1:])
    stand_for = (size - 2 * extremes) / inside.sum(dim=1, keepdim=True).clamp_min(1).double()
    weights = torch.cat([torch.ones_like(low, dtype=torch.float64).repeat(1, 2), inside * stand_for], dim=1)
    return torch.cat([low, high, middle], dim=1).float(), weights
