"""The inference layers lsq_fast.convert makes of the quantized ones: weights held as packed
integer codes and float32 steps (IntWeight), inputs quantized with their learned step frozen
(FixedQuantizer, FixedQILQuantizer), and IntConv2d, IntLinear and IntEmbedding around them.

Everything here is standard aten ops (no lsq_fast kernel), so that torch.export's program of
a converted model is portable, and computes what the contract's forward computes
(docs/contract.md, sections 1 to 3), in the same order and the same float type: a converted
model's eval output is the quantized model's, bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..export.packing import packed_numel, unpack_codes
from ..ops.args import STEP_FLOOR, qrange
from .quantizer import LearnedQuantizer

SCHEMES = ("lsq", "lsq+", "qil")


def math_type(dtype: torch.dtype) -> torch.dtype:
    """The contract's arithmetic type: float32 for every input dtype, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def qil_levels(bits: int, signed: bool) -> int:
    return qrange(bits, signed)[1]


class Frozen(nn.Module):
    """What the frozen parts share: made with placeholder values by convert(..., empty=True),
    they refuse to run until a state_dict (or convert) fills them; ``_config()`` is the extra
    state a checkpoint must match."""

    def __init__(self):
        super().__init__()
        self._empty = True

    def mark_filled(self) -> None:
        self._empty = False

    def check_filled(self) -> None:
        if self._empty:
            raise RuntimeError(
                f"lsq_fast: this {type(self).__name__} holds no values: it was made by convert(..., empty=True) to "
                "load a converted checkpoint into, and none was loaded"
            )

    def _config(self) -> dict:
        raise NotImplementedError

    def get_extra_state(self) -> dict:
        return self._config()

    def set_extra_state(self, state: dict) -> None:
        self._adopt(state)
        mine = self._config()
        different = [f"{k}={state.get(k)!r} (this one {v!r})" for k, v in mine.items() if state.get(k) != v]
        if different:
            raise ValueError(f"lsq_fast: the checkpoint's {type(self).__name__} differs: {', '.join(different)}")
        self._empty = False

    def _adopt(self, state: dict) -> None:
        """What this module may take from the checkpoint rather than check against it."""


class IntWeight(Frozen):
    """A weight as integer codes (packed, lsq_fast.export.packing) and float32 steps.

    ``dequantize()`` (also ``forward()``) gives the weight the quantizer's forward gave, in the
    weight's dtype: ``code * s`` ("lsq"), ``code * s + beta`` ("lsq+"), ``code / q`` ("qil",
    whose codes are in [-q, q], q = 2^(b-1) - 1, and whose layer sees weights in [-1, 1]), each
    in float32 (float64 for a float64 weight) before the cast. Steps are per tensor, per channel
    along ``channel_axis``, or per group of ``group_size`` elements of the last axis, with the
    shapes the quantizer's parameters had.

    The state_dict holds ``packed`` (uint8), ``step`` (and ``offset`` for "lsq+") and, as extra
    state, what loading checks against: bits, grid, scheme, shape, dtype, granularity.
    """

    def __init__(
        self,
        shape,
        bits: int,
        signed: bool,
        *,
        scheme: str = "lsq",
        channel_axis: int | None = None,
        group_size: int | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"lsq_fast: scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        self.shape = torch.Size(shape)
        self.bits, self.signed, self.scheme = bits, bool(signed), scheme
        self.channel_axis = None if channel_axis is None else channel_axis % len(self.shape)
        self.group_size = group_size
        self.dtype = dtype
        if scheme == "qil":  # codes in [-q, q]: 2^b - 1 values, in b bits
            self.levels = qil_levels(bits, True)
            self.qmin, self.qmax = -self.levels, self.levels
        else:
            self.qmin, self.qmax = qrange(bits, signed)
        self.register_buffer("packed", torch.zeros(packed_numel(self.shape.numel(), bits), dtype=torch.uint8,
                                                   device=device))
        if scheme != "qil":
            self.register_buffer("step", torch.ones(self.step_shape(), dtype=torch.float32, device=device))
        if scheme == "lsq+":
            self.register_buffer("offset", torch.zeros(self.step_shape(), dtype=torch.float32, device=device))

    def step_shape(self) -> tuple[int, ...]:
        if self.group_size is not None:
            return (*self.shape[:-1], self.shape[-1] // self.group_size)
        return (1,) if self.channel_axis is None else (self.shape[self.channel_axis],)

    @torch.no_grad()
    def set_values(self, packed: torch.Tensor, step: torch.Tensor | None = None, offset: torch.Tensor | None = None):
        """Fills the codes (packed) and the parameters; what convert does."""
        self.packed.copy_(packed)
        if step is not None:
            self.step.copy_(step.reshape(self.step.shape))
        if offset is not None:
            self.offset.copy_(offset.reshape(self.offset.shape))
        self.mark_filled()

    def codes(self) -> torch.Tensor:
        """The integer codes, an int16 tensor of the weight's shape."""
        return unpack_codes(self.packed, self.bits, self.qmin, self.shape)

    def per_step(self, p: torch.Tensor) -> torch.Tensor:
        """A step-shaped tensor shaped to broadcast against codes_by_step()."""
        if self.group_size is not None:
            return p.reshape(-1, 1)
        if self.channel_axis is None:
            return p.reshape(())
        return p.reshape([-1 if d == self.channel_axis else 1 for d in range(len(self.shape))])

    def codes_by_step(self, codes: torch.Tensor) -> torch.Tensor:
        """codes with one group per row where per-group (the reference's group_rows), else as they are."""
        return codes.reshape(-1, self.group_size) if self.group_size is not None else codes

    def dequantize(self) -> torch.Tensor:
        self.check_filled()
        if onnx_exporting():
            from ..export.onnx_ops import weight_for_onnx

            return weight_for_onnx(self)
        m = math_type(self.dtype)
        codes = self.codes().to(m)
        if self.scheme == "qil":
            return (codes / self.levels).to(self.dtype)
        w = self.codes_by_step(codes) * self.per_step(self.step.to(m))
        if self.scheme == "lsq+":
            w = w + self.per_step(self.offset.to(m))
        return w.reshape(self.shape).to(self.dtype)

    forward = dequantize

    def _config(self) -> dict:
        return dict(bits=self.bits, signed=self.signed, scheme=self.scheme, shape=list(self.shape),
                    dtype=str(self.dtype).removeprefix("torch."), channel_axis=self.channel_axis,
                    group_size=self.group_size)

    def extra_repr(self) -> str:
        where = (f"groups of {self.group_size}" if self.group_size is not None
                 else "per-tensor" if self.channel_axis is None else f"per-channel (axis {self.channel_axis})")
        grid = "signed" if self.signed else "unsigned"
        return (f"{self.scheme}, {self.bits}-bit {grid}, shape={list(self.shape)}, {where}, "
                f"{self.packed.numel()} bytes of codes" + (", empty" if self._empty else ""))


class FixedQuantizer(Frozen):
    """An LSQ (or, with ``offset=True``, LSQ+) quantizer with its step (and offset) frozen:
    ``y = s * round(clip((x - beta) / s, qmin, qmax)) + beta`` in float32 (float64 for float64
    x), in x's dtype; under torch.autocast x is first cast to the autocast dtype, as the trained
    quantizer did. Per-tensor, or per channel along ``channel_axis``."""

    def __init__(self, bits: int, signed: bool, *, offset: bool = False, channel_axis: int | None = None,
                 num_channels: int = 1, device=None):
        super().__init__()
        self.bits, self.signed = bits, bool(signed)
        self.qmin, self.qmax = qrange(bits, signed)
        self.channel_axis = channel_axis
        shape = (1,) if channel_axis is None else (num_channels,)
        self.register_buffer("step", torch.ones(shape, dtype=torch.float32, device=device))
        self.register_buffer("offset", torch.zeros(shape, dtype=torch.float32, device=device) if offset else None)
        # Made empty from an "auto" quantizer that saw no batch: the checkpoint says the grid.
        self.grid_from_checkpoint = False

    def along(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None:
            return p.reshape(())
        axis = self.channel_axis % x.dim()
        return p.reshape([-1 if d == axis else 1 for d in range(x.dim())])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_filled()
        x = LearnedQuantizer._autocast_input(x)
        if onnx_exporting():
            from ..export.onnx_ops import activation_for_onnx

            return activation_for_onnx(self, x)
        m = math_type(x.dtype)
        s = self.along(self.step.to(m), x)
        u = x.to(m)
        if self.offset is not None:
            u = u - self.along(self.offset.to(m), x)
        y = torch.round(torch.clamp(u / s, self.qmin, self.qmax)) * s
        if self.offset is not None:
            y = y + self.along(self.offset.to(m), x)
        return y.to(x.dtype)

    def _config(self) -> dict:
        return {"bits": self.bits, "signed": self.signed}

    def _adopt(self, state: dict) -> None:
        if self.grid_from_checkpoint and isinstance(state.get("signed"), bool):
            self.signed = state["signed"]
            self.qmin, self.qmax = qrange(self.bits, self.signed)

    def extra_repr(self) -> str:
        kind = "lsq+" if self.offset is not None else "lsq"
        where = "per-tensor" if self.channel_axis is None else f"per-channel (axis {self.channel_axis})"
        return f"{kind}, {self.bits}-bit {'signed' if self.signed else 'unsigned'}, {where}"


class FixedQILQuantizer(Frozen):
    """QIL's activation quantizer with its interval frozen: ``round(clip(alpha x + beta, 0, 1) * q) / q``,
    q = 2^b - 1, alpha = 0.5 / d, beta = 0.5 - 0.5 c / d (docs/contract.md, section 3)."""

    def __init__(self, bits: int, device=None):
        super().__init__()
        self.bits = bits
        self.levels = qil_levels(bits, False)
        self.register_buffer("center", torch.full((1,), 0.5, dtype=torch.float32, device=device))
        self.register_buffer("distance", torch.full((1,), 0.5, dtype=torch.float32, device=device))

    def interval(self, m: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta) in the math type, as the reference computes them."""
        c = self.center.to(m).reshape(())
        d = self.distance.to(m).reshape(()).clamp_min(STEP_FLOOR)
        return 0.5 / d, 0.5 - 0.5 * c / d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_filled()
        x = LearnedQuantizer._autocast_input(x)
        m = math_type(x.dtype)
        alpha, beta = self.interval(m)
        t = torch.clamp(alpha * x.to(m) + beta, 0.0, 1.0)
        if onnx_exporting():
            from ..export.onnx_ops import qil_activation_for_onnx

            return qil_activation_for_onnx(self, t).to(x.dtype)
        return (torch.round(t * self.levels) / self.levels).to(x.dtype)

    def _config(self) -> dict:
        return {"bits": self.bits}

    def extra_repr(self) -> str:
        return f"qil, {self.bits}-bit"


class IntLayer:
    """What IntConv2d, IntLinear and IntEmbedding share: ``qweight`` (an IntWeight, shared by
    tied layers), ``input_quantizer`` (a fixed quantizer, or None: the input stays float), and
    ``weight``, the dequantized weight, read-only, computed on every read (the torch layer's
    forward reads it; nothing float is stored)."""

    qweight: IntWeight
    input_quantizer: nn.Module | None

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.dequantize()

    def reset_parameters(self) -> None:  # the torch layer's constructor: there is no float weight to initialise
        pass

    def _set_parts(self, qweight: IntWeight, input_quantizer: nn.Module | None, bias) -> None:
        del self._parameters["weight"]  # the constructor's placeholder (on the meta device)
        self.qweight = qweight
        self.input_quantizer = input_quantizer
        if "bias" in self._parameters:
            self.register_parameter("bias", bias)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    @classmethod
    def build(cls, float_config: dict, qweight: IntWeight, input_quantizer: nn.Module | None, bias):
        """The layer of `float_config` (the torch layer's constructor arguments), with these parts."""
        layer = cls(**float_config, device="meta")
        layer._set_parts(qweight, input_quantizer, bias)
        return layer


class IntConv2d(IntLayer, nn.Conv2d):
    """nn.Conv2d with integer weight codes (IntWeight) and a fixed input quantizer: what
    lsq_fast.convert makes of a QuantConv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.weight, self.bias)


class IntLinear(IntLayer, nn.Linear):
    """nn.Linear with integer weight codes and a fixed input quantizer: convert's QuantLinear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.weight, self.bias)


class IntEmbedding(IntLayer, nn.Embedding):
    """nn.Embedding with an integer table: convert's QuantEmbedding (weight-only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                           self.sparse)


# -- the ONNX exporter's switch ---------------------------------------------------------------

_ONNX_EXPORTING = [False]


def onnx_exporting() -> bool:
    """True inside lsq_fast.export_onnx: the layers then emit the ops it translates to
    QuantizeLinear/DequantizeLinear (lsq_fast.export.onnx_ops) instead of their aten arithmetic."""
    return _ONNX_EXPORTING[0]
