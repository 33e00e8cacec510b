"""The two ops a converted model emits while lsq_fast.export_onnx traces it, and their ONNX
translations: a weight's codes through ``DequantizeLinear``, an activation through
``QuantizeLinear`` -> ``DequantizeLinear``, with the learned steps as scales.

Which ONNX integer type holds a b-bit code (``storage``), a documented choice per case:

| codes                        | ONNX type    | b-bit range enforced by        | needs opset     |
|------------------------------|--------------|--------------------------------|-----------------|
| weights of 8 bits            | INT8 / UINT8 | the type                       | 13              |
| weights of 5 to 7 bits       | INT8 / UINT8 | the codes (in range by making) | 13              |
| weights of 1 to 4 bits       | INT4 / UINT4 | the codes                      | 21              |
| groups of weights (any bits) | as above     |                                | 21 (block_size) |
| activations of 8 bits        | INT8 / UINT8 | the type                       | 13              |
| activations of 1 to 7 bits   | INT8 / UINT8 | a ``Clip`` between Q and DQ    | 13              |

Weights are stored, so the narrowest type onnxruntime runs holds them: INT4 (two to a byte in
the file; ONNX has no 2- or 3-bit type that onnxruntime runs, INT2 is opset 25). Activations
are not stored, and a 4-bit activation type is where onnxruntime 1.32 breaks: its fusion of a
``Clip`` followed by QuantizeLinear rejects an INT4/UINT4 zero point when the session starts
(clip_quantizelinear.cc), and its CPU ``Clip`` takes no INT4. So activations below 8 bits are
INT8/UINT8 with a ``Clip`` to [qmin, qmax] between Q and DQ, whose result is the same codes.

LSQ+'s offset beta: where it is a whole number of steps (``beta == -z * s`` exactly in float32,
z an integer the ONNX type holds), it is the zero point z, as QDQ runtimes expect; elsewhere it
is a ``Sub`` before QuantizeLinear and an ``Add`` after DequantizeLinear (weights: an ``Add``
after DequantizeLinear), which computes exactly what the contract does (section 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nn.int_layers import FixedQILQuantizer, FixedQuantizer, IntWeight

INT8, UINT8, UINT4, INT4 = 3, 2, 21, 22  # onnx.TensorProto's data types
TYPE_NAMES = {INT8: "INT8", UINT8: "UINT8", INT4: "INT4", UINT4: "UINT4"}
TYPE_RANGES = {INT8: (-128, 127), UINT8: (0, 255), INT4: (-8, 7), UINT4: (0, 15)}


@dataclass(frozen=True)
class Storage:
    """How a quantizer's codes go to ONNX: the integer type, whether a Clip enforces the grid,
    and the opset that needs."""

    dtype: int
    clip: bool
    opset: int

    @property
    def name(self) -> str:
        return TYPE_NAMES[self.dtype]


def storage(bits: int, signed: bool, weight: bool, grouped: bool = False) -> Storage:
    """The row of the module docstring's table for these codes."""
    if weight and bits <= 4:
        dtype, clip, opset = (INT4 if signed else UINT4), False, 21
    else:
        dtype, clip, opset = (INT8 if signed else UINT8), (not weight and bits != 8), 13
    return Storage(dtype, clip, 21 if grouped else opset)


# -- the ops the layers call while export_onnx traces them ------------------------------------

@torch.library.custom_op("lsq_fast::onnx_dequantize", mutates_args=())
def onnx_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                    offset: torch.Tensor | None, axis: int, block_size: int, storage_type: int) -> torch.Tensor:
    """DequantizeLinear's arithmetic, ``(codes - zero_point) * scale`` in float32, then ``+ offset``;
    per-tensor (scale 0-d), per-axis (scale 1-D along `axis`) or blocked (block_size > 0, blocks
    along the last axis, scale of the codes' shape with it divided by block_size)."""
    return _dequantize(codes, scale, zero_point, offset, axis, block_size)


@onnx_dequantize.register_fake
def _(codes, scale, zero_point, offset, axis, block_size, storage_type):
    return codes.new_empty(codes.shape, dtype=torch.float32)


@torch.library.custom_op("lsq_fast::onnx_quantize_dequantize", mutates_args=())
def onnx_quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                             offset: torch.Tensor | None, axis: int, qmin: int, qmax: int,
                             storage_type: int, clip: bool) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear on float32 x: ``round(x / s) + z`` saturated to
    [qmin, qmax], then ``(q - z) * s``; with `offset`, x - offset before and + offset after."""
    u = x if offset is None else x - offset
    s = scale if scale.dim() == 0 else scale.reshape([-1 if d == axis % x.dim() else 1 for d in range(x.dim())])
    z = 0 if zero_point is None else zero_point.to(torch.float32).reshape(s.shape)
    q = torch.clamp(torch.round(u / s) + z, qmin, qmax)
    y = (q - z) * s
    return y if offset is None else y + offset


@onnx_quantize_dequantize.register_fake
def _(x, scale, zero_point, offset, axis, qmin, qmax, storage_type, clip):
    return torch.empty_like(x)


def _dequantize(codes, scale, zero_point, offset, axis, block_size):
    c = codes.to(torch.float32)
    if zero_point is not None:
        c = c - (zero_point.to(torch.float32).reshape(-1, 1) if block_size else _per_axis(zero_point.float(), c, axis))
    if block_size:
        w = c.reshape(-1, block_size) * scale.reshape(-1, 1)
        w = w if offset is None else w + offset
        return w.reshape(codes.shape)
    w = c * (scale if scale.dim() == 0 else _per_axis(scale, c, axis))
    return w if offset is None else w + offset


def _per_axis(p: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    return p.reshape([-1 if d == axis else 1 for d in range(like.dim())])


# -- what the layers hand them ------------------------------------------------------------------

def whole_steps(offset: torch.Tensor, step: torch.Tensor, dtype: int) -> torch.Tensor | None:
    """z with offset == -z * step exactly (float32) and z in the ONNX type's range, or None
    where some offset is not a whole number of steps."""
    z = torch.round(-offset / step)
    low, high = TYPE_RANGES[dtype]
    if bool(((z * step == -offset) & (z >= low) & (z <= high)).all()):
        return z.to(torch.int8 if low < 0 else torch.uint8)
    return None


def _stash(module: torch.nn.Module, **tensors: torch.Tensor | None) -> None:
    """The tensors the traced op takes, as buffers out of the state_dict (the exporter lifts
    them to initializers); they are computed before the trace, which sees them as constants."""
    for name, t in tensors.items():
        module.register_buffer(f"onnx_{name}", t, persistent=False)


def unstash(module: torch.nn.Module) -> None:
    for name in [n for n in module._buffers if n.startswith("onnx_")]:
        del module._buffers[name]


def prepare_weight(w: IntWeight) -> None:
    """Stashes what weight_for_onnx hands the op: the codes (unpacked: ONNX packs INT4 itself),
    the scale, and the zero point or the offset (one host read: export time)."""
    kind = storage(w.bits, w.signed or w.scheme == "qil", True, w.group_size is not None)
    codes = w.codes().to(torch.int8 if w.signed or w.scheme == "qil" else torch.uint8)
    zero_point = offset = None
    if w.scheme == "qil":  # code / q as code * fl(1/q): within one rounding of it (docs/export.md)
        scale = torch.tensor(1.0 / w.levels, dtype=torch.float32, device=codes.device)
    else:
        scale = w.step.reshape(()) if w.channel_axis is None and w.group_size is None else w.step.clone()
    if w.scheme == "lsq+":
        zero_point = whole_steps(w.offset, w.step, kind.dtype)
        if zero_point is not None:
            zero_point = zero_point.reshape(scale.shape)
        else:
            offset = w.per_step(w.offset).clone()
    _stash(w, codes=codes, scale=scale, zero_point=zero_point, offset=offset)


def weight_for_onnx(w: IntWeight) -> torch.Tensor:
    """The IntWeight's dequantize() as ONNX computes it (see the module docstring)."""
    kind = storage(w.bits, w.signed or w.scheme == "qil", True, w.group_size is not None)
    axis = 0 if w.channel_axis is None else w.channel_axis
    block = w.group_size or 0
    if block:
        axis = len(w.shape) - 1
    return onnx_dequantize(w.onnx_codes, w.onnx_scale, w.onnx_zero_point, w.onnx_offset, axis, block,
                           kind.dtype).to(w.dtype)


def prepare_activation(q: FixedQuantizer) -> None:
    kind = storage(q.bits, q.signed, False)
    scale = q.step.reshape(()) if q.channel_axis is None else q.step.clone()
    zero_point = offset = None
    if q.offset is not None:
        zero_point = whole_steps(q.offset, q.step, kind.dtype)
        if zero_point is not None:
            zero_point = zero_point.reshape(scale.shape)
        else:
            offset = q.offset.clone()
    _stash(q, scale=scale, zero_point=zero_point, offset=offset)


def activation_for_onnx(q: FixedQuantizer, x: torch.Tensor) -> torch.Tensor:
    kind = storage(q.bits, q.signed, False)
    axis = 1 if q.channel_axis is None else q.channel_axis % x.dim()
    offset = None if q.onnx_offset is None else q.along(q.onnx_offset, x)
    y = onnx_quantize_dequantize(x.to(torch.float32), q.onnx_scale, q.onnx_zero_point, offset, axis, q.qmin, q.qmax,
                                 kind.dtype, kind.clip)
    return y.to(x.dtype)


def prepare_qil_activation(q: FixedQILQuantizer) -> None:
    _stash(q, scale=torch.tensor(1.0 / q.levels, dtype=torch.float32, device=q.center.device))


def qil_activation_for_onnx(q: FixedQILQuantizer, t: torch.Tensor) -> torch.Tensor:
    """round(t * q) / q as QuantizeLinear/DequantizeLinear of scale fl(1/q): t / fl(1/q) may
    round to the other side of a tie than t * q, and code * fl(1/q) is within one rounding of
    code / q (docs/export.md measures both)."""
    kind = storage(q.bits, False, False)
    return onnx_quantize_dequantize(t.to(torch.float32), q.onnx_scale, None, None, 1, 0, q.levels, kind.dtype,
                                    kind.clip)


def prepare(model: torch.nn.Module) -> None:
    """Stashes the tensors of every converted part of `model` (export_onnx, before the trace)."""
    for m in model.modules():
        if isinstance(m, IntWeight):
            prepare_weight(m)
        elif isinstance(m, FixedQuantizer):
            prepare_activation(m)
        elif isinstance(m, FixedQILQuantizer):
            prepare_qil_activation(m)


# -- their ONNX translations (onnxscript: imported by export_onnx only) -------------------------

def translation_table(opset: int) -> dict:
    """The ops' translations, written with the ONNX ops of `opset` (QuantizeLinear and
    DequantizeLinear change between opsets: block_size and INT4 from 21)."""
    import onnx
    import onnxscript

    op = getattr(onnxscript, f"opset{opset}")

    def typed(value: int, dtype: int):
        return op.Constant(value=onnx.helper.make_tensor("c", dtype, [], [value]))

    def dequantize(codes, scale, zero_point, offset, axis: int, block_size: int, storage_type: int):
        codes = op.Cast(codes, to=storage_type)  # folded into an initializer of that type (export_onnx)
        attrs = dict(axis=axis, block_size=block_size) if block_size else dict(axis=axis)
        if zero_point is None:
            w = op.DequantizeLinear(codes, scale, **attrs)
        else:
            w = op.DequantizeLinear(codes, scale, op.Cast(zero_point, to=storage_type), **attrs)
        if offset is None:
            return w
        if block_size:
            rows = op.Reshape(w, op.Constant(value_ints=[-1, block_size]))
            return op.Reshape(op.Add(rows, offset), op.Shape(codes))
        return op.Add(w, offset)

    def quantize_dequantize(x, scale, zero_point, offset, axis: int, qmin: int, qmax: int, storage_type: int,
                            clip: bool):
        if offset is not None:
            x = op.Sub(x, offset)
        z = typed(0, storage_type) if zero_point is None else op.Cast(zero_point, to=storage_type)
        q = op.QuantizeLinear(x, scale, z, axis=axis)
        if clip:
            q = op.Clip(q, typed(qmin, storage_type), typed(qmax, storage_type))
        y = op.DequantizeLinear(q, scale, z, axis=axis)
        return y if offset is None else op.Add(y, offset)

    return {
        torch.ops.lsq_fast.onnx_dequantize.default: dequantize,
        torch.ops.lsq_fast.onnx_quantize_dequantize.default: quantize_dequantize,
    }
