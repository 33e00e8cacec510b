"""QILQuantizer: QIL (Jung et al., CVPR 2019) as a module: a learned quantization interval
(centre, half-width) and, for weights, the transformer's exponent."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..ops.qil import qil_quantize_activation, qil_quantize_weight
from . import distributed
from .quantizer import LearnedQuantizer, check_common_args, preview


class QILQuantizer(LearnedQuantizer):
    """Fake-quantizes its input with a learned quantization interval (QIL).

    Args:
        bits: 2..8 for weights (the grid -q..q, q = 2^(b-1) - 1, 0 on it), 1..8 for
            activations (0..q, q = 2^b - 1).
        role: "weight" (``sign(w) * z^gamma``, z the position of |w| in the interval) or
            "activation" (the position of x in the interval, gamma = 1).
        min_distance: the floor the half-width is clamped to after every torch.optim step.
        backend: as in :func:`lsq_fast.qil_quantize_weight`.
        device: where the parameters live.

    Parameters: ``center`` (c) and ``distance`` (d, the half-width, kept >= min_distance after
    optimizer steps), and for weights ``gamma`` (the exponent, 1.0 at first): one-element
    float32 tensors whatever the model's dtype. Values below ``c - d`` are pruned to 0 (for
    weights, by magnitude), values above ``c + d`` clipped to 1 (or -1).

    **The output is in normalised units**, as in the QIL paper: weights in [-1, 1] and
    activations in [0, 1], not in the input's units. A layer quantized with QIL convolves
    these: its output's scale differs from the float layer's by about the interval's width
    (the following batch norm, or the training, absorbs it). An activation that can be
    negative loses its negative part (QIL is for ReLU outputs).

    Initialisation, on the first training forward, so that at first nothing is pruned and
    nothing clipped: weights, the interval [0, max|w|] (``c = d = max|w| / 2``: ``z = |w| /
    max|w|``); activations, [0, max x] of the first batch, with max reduced (MAX) over the ranks
    of torch.distributed so that every rank starts from the same interval. A batch whose
    maximum is not positive and finite gives [0, 1]. An activation batch with negative values
    (on any rank) gives a warning, once: QIL clips them to 0.

    Checkpoints, eval-before-initialisation errors, autocast and torch.compile behave as for
    :class:`lsq_fast.LSQQuantizer`.
    """

    _POSITIVE = (("distance", "min_distance"),)

    def __init__(
        self,
        bits: int,
        role: str,
        *,
        min_distance: float = 1e-8,
        backend: str = "auto",
        device: torch.device | str | None = None,
    ):
        check_common_args((bits, role == "weight"), role, backend, min_distance=min_distance)
        super().__init__(device)
        self.bits = bits
        self.role = role
        self.min_distance = float(min_distance)
        self.backend = backend
        self.center = nn.Parameter(torch.full((1,), 0.5, dtype=torch.float32, device=device))
        self.distance = nn.Parameter(torch.full((1,), 0.5, dtype=torch.float32, device=device))
        gamma = nn.Parameter(torch.ones(1, dtype=torch.float32, device=device)) if role == "weight" else None
        self.register_parameter("gamma", gamma)

    def _reset(self) -> None:
        """The placeholder interval [0, 1], gamma 1."""
        self.center.fill_(0.5)
        self.distance.fill_(0.5)
        if self.gamma is not None:
            self.gamma.fill_(1.0)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.role == "weight":
            return qil_quantize_weight(x, self.center, self.distance, self.gamma, self.bits, backend=self.backend)
        return qil_quantize_activation(x, self.center, self.distance, self.bits, backend=self.backend)

    def _initialize(self, x: torch.Tensor) -> None:
        """Sets the interval to [0, max|w|] (weights) or [0, max x] (activations), max over the ranks."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(
                f"lsq_fast: x must be a float32, float16, bfloat16 or float64 tensor, got {getattr(x, 'dtype', x)!r}"
            )
        v = x.detach()
        if self.role == "weight":
            v = v.abs()
        if v.numel():
            stats = torch.stack([v.max(), -v.min()]).double()
        else:
            stats = torch.full((2,), float("-inf"), dtype=torch.float64, device=v.device)
        high, negative = distributed.all_reduce_max_(stats).tolist()  # one read, once
        if self.role == "activation" and negative > 0:
            warnings.warn(
                "lsq_fast: a QILQuantizer(role='activation') initialises on a batch with negative values: "
                "QIL's interval starts at 0 and its output is in [0, 1], so they are quantized to 0",
                stacklevel=2,
            )
        half = high / 2 if high > 0 and high != float("inf") else 0.5
        self.center.fill_(half)
        self.distance.fill_(max(half, self.min_distance))
        if self.gamma is not None:
            self.gamma.fill_(1.0)
        self._mark_initialized()

    def _extra_state(self) -> dict:
        return {"role": self.role}

    def _set_extra_state(self, state: dict) -> None:
        role = state.get("role")
        if role is not None and role != self.role:
            raise ValueError(f"lsq_fast: the checkpoint's quantizer has role={role}, this one role={self.role}")

    def extra_repr(self) -> str:
        parts = [f"bits={self.bits}", f"role={self.role}"]
        parts += [f"center={preview(self.center)}", f"distance={preview(self.distance)}"]
        if self.gamma is not None:
            parts.append(f"gamma={preview(self.gamma)}")
        if not self._initialized:
            parts.append("uninitialised")
        return ", ".join(parts)
