"""After training: a quantized model to an integer one, and out of PyTorch.

    convert.py    lsq_fast.convert: the quantized layers to inference layers holding integer codes
    packing.py    the codes packed 8, 4, 2 or 1 to a byte
    onnx.py       lsq_fast.export_onnx: a QDQ graph that onnxruntime runs
    onnx_ops.py   the ops a converted model emits while exported, and their ONNX translations
"""
