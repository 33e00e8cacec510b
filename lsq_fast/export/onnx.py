"""export_onnx: a quantized (or converted) model as a standard QDQ ONNX graph, through torch's
own exporter (torch.onnx.export, dynamo=True) with two translated ops (onnx_ops.py)."""

from __future__ import annotations

import contextlib
import copy
import os

import torch
from torch import nn

from ..nn.int_layers import _ONNX_EXPORTING, FixedQILQuantizer, FixedQuantizer, IntLayer
from ..nn.layers import QuantizedLayer
from .convert import convert
from .onnx_ops import INT4, UINT4, prepare, storage, translation_table, unstash

DEFAULT_OPSET = 21  # INT4/UINT4 and DequantizeLinear's block_size (per-group weights)
LOWEST_OPSET = 18  # torch.onnx's exporter
HIGHEST_OPSET = 23  # the newest whose ops onnxscript 0.7 writes and onnxruntime 1.32 runs (checked in the tests)


def export_onnx(model: nn.Module, example_inputs: tuple, path: str | os.PathLike, *, opset: int | None = None):
    """Writes `model` (quantized by quantize_model, converted or not) to `path` as an ONNX graph
    of standard ops, checked by onnx.checker, and returns torch's ONNXProgram (call it to run
    the graph in onnxruntime).

    - Weights: integer initializers (INT4/UINT4 for 4 bits and fewer, two to a byte; else
      INT8/UINT8) and ``DequantizeLinear``: per tensor, per channel (``axis``) or per group
      (``block_size``, opset 21).
    - Activations: ``QuantizeLinear`` -> ``DequantizeLinear`` with the learned step as scale,
      INT8/UINT8; below 8 bits with a ``Clip`` to the b-bit grid between the two; LSQ+ offsets as zero points where they are whole steps, else ``Sub`` and
      ``Add`` around the pair. lsq_fast/export/onnx_ops.py has the table; docs/export.md what
      onnxruntime computes.

    `example_inputs` is a tuple, as torch.onnx.export takes it; `opset` defaults to 21, and
    weights of 4 bits or fewer, or in groups, need 21 or newer (an older one is a ValueError naming the layer).
    A quantized model is converted on a copy (it is left as it is; its quantizers must be
    initialised); the graph is traced in eval mode, and the model's modes are restored after.
    Needs onnx, onnxscript and onnxruntime (``pip install "lsq_fast[export]"``).
    """
    try:
        import onnx
        import onnx_ir as ir
    except ImportError as e:
        raise ImportError(
            'lsq_fast: export_onnx needs onnx and onnxscript: pip install "torch==<yours>" "lsq_fast[export]"'
        ) from e
    if not isinstance(example_inputs, tuple):
        raise TypeError(f"lsq_fast: example_inputs must be a tuple of the model's inputs, got "
                        f"{type(example_inputs).__name__}")
    opset = DEFAULT_OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or not LOWEST_OPSET <= opset <= HIGHEST_OPSET:
        raise ValueError(f"lsq_fast: opset must be an int in {LOWEST_OPSET}..{HIGHEST_OPSET} (torch.onnx's exporter "
                         f"and onnxscript's ops), got {opset!r}")
    if any(isinstance(m, QuantizedLayer) for m in model.modules()):
        model = convert(copy.deepcopy(model))
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, IntLayer)]
    if not layers:
        raise ValueError("lsq_fast: export_onnx found no quantized or converted layer in the model: quantize_model "
                         "(and train) it first")
    for name, layer in layers:
        need, why = opset_needed(layer)
        if opset < need:
            raise ValueError(f"lsq_fast: layer {name!r} has {why}, which needs ONNX opset {need} or newer; "
                             f"opset={opset} was asked for")

    with _exporting(model):
        program = torch.onnx.export(model, example_inputs, dynamo=True, opset_version=opset, verbose=False,
                                    custom_translation_table=translation_table(opset))
    _fold_narrow_casts(program.model, ir)
    _name_codes(program.model)
    program.save(os.fspath(path))
    onnx.checker.check_model(os.fspath(path), full_check=True)
    return program


def opset_needed(layer: IntLayer) -> tuple[int, str]:
    """(the lowest opset that holds this layer's codes, why) from onnx_ops.storage's table."""
    w = layer.qweight
    weight = storage(w.bits, w.signed or w.scheme == "qil", True, w.group_size is not None)
    need, why = weight.opset, f"{w.bits}-bit weights as {weight.name}"
    if w.group_size is not None:
        why += f" in groups of {w.group_size} (block_size)"
    q = layer.input_quantizer
    if isinstance(q, (FixedQuantizer, FixedQILQuantizer)):
        signed = isinstance(q, FixedQuantizer) and q.signed
        inputs = storage(q.bits, signed, False)
        if inputs.opset > need:
            need, why = inputs.opset, f"{q.bits}-bit inputs as {inputs.name}"
    return need, why


@contextlib.contextmanager
def _exporting(model: nn.Module):
    """Eval mode and the layers' ONNX ops for the trace; the modes as they were after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        prepare(model)
        _ONNX_EXPORTING[0] = True
        yield
    finally:
        _ONNX_EXPORTING[0] = False
        for m, training in modes:
            m.training = training
            unstash(m)


def _fold_narrow_casts(model, ir) -> None:
    """Each Cast of an initializer to INT4/UINT4 becomes an INT4/UINT4 initializer (packed two
    to a byte in the file). torch.onnx's optimizer folds such casts only for small tensors."""
    import ml_dtypes

    narrow = {INT4: ml_dtypes.int4, UINT4: ml_dtypes.uint4}
    graph = model.graph
    for node in list(graph):
        if node.op_type != "Cast" or node.attributes["to"].as_int() not in narrow:
            continue
        source = node.inputs[0]
        if source.const_value is None:
            continue
        dtype = ir.DataType(node.attributes["to"].as_int())
        values = source.const_value.numpy().astype(narrow[dtype])
        folded = ir.Value(name=f"{source.name}_{dtype.name.lower()}", shape=source.shape, type=ir.TensorType(dtype),
                          const_value=ir.Tensor(values, dtype=dtype))
        graph.register_initializer(folded)
        ir.convenience.replace_all_uses_with(node.outputs[0], folded)
        graph.remove(node, safe=True)
        if not source.uses() and source.name in graph.initializers:
            del graph.initializers[source.name]


def _name_codes(model) -> None:
    """The exporter names the folded codes val_<n>: name each after its layer, as its scale is
    ("blocks.0.attn.q.qweight.codes" beside "blocks.0.attn.q.qweight.onnx_scale")."""
    taken = set(model.graph.initializers)
    for node in model.graph:
        if node.op_type != "DequantizeLinear" or not node.inputs[0].is_initializer():
            continue
        codes, scale = node.inputs[0], node.inputs[1]
        if not codes.name.startswith("val_") or not scale.name.endswith(".onnx_scale"):
            continue
        name = scale.name.removesuffix("onnx_scale") + "codes"
        if name not in taken:
            del model.graph.initializers[codes.name]
            codes.name = name
            model.graph.register_initializer(codes)
            taken.add(name)
