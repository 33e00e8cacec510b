"""lsq_fast: fused kernels for Learned Step Size Quantization and its relatives.

    lsq_fast.ops        the functional API (lsq_quantize, ...) and its dispatch to the backends
    lsq_fast.nn         the quantizer modules and the quantized layers
    lsq_fast.prepare    quantize_model: a float model to a quantization-aware one
    lsq_fast.training   calibrate, param_groups (for the optimizer), steps_at_floor
    lsq_fast.export     convert (integer weights), export_onnx (a QDQ graph)
    lsq_fast.reference  the quantizers in plain PyTorch: the oracle of every test
    docs/contract.md    the numerical contract every backend meets
"""

import sys

from . import ops  # noqa: I001  (first: loads the compiled ops the rest dispatch to)
from . import reference
from .nn import (
    LSQPlusQuantizer, LSQQuantizer, QILQuantizer, QuantConfig, QuantConv2d, QuantEmbedding, QuantLinear,
    fully_shard_quantizers, load_full_state_dict,
)
from .ops import (
    available_backends, cpu_isa, default_grad_scale, lsq_plus_quantize, lsq_quantize, qil_quantize_activation,
    qil_quantize_weight, qrange,
)
from .prepare import QuantizationSummary, quantize_model
from .training import calibrate, param_groups, steps_at_floor
from .nn.int_layers import FixedQILQuantizer, FixedQuantizer, IntConv2d, IntEmbedding, IntLinear, IntWeight
from . import _compat

_compat.install(sys.modules[__name__])
from .export.convert import convert  # noqa: E402  (after the aliases: lsq_fast.convert is this function)
from .export.onnx import export_onnx  # noqa: E402

__all__ = [
    "lsq_quantize",
    "lsq_plus_quantize",
    "qil_quantize_weight",
    "qil_quantize_activation",
    "LSQQuantizer",
    "LSQPlusQuantizer",
    "QILQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "QuantEmbedding",
    "QuantConfig",
    "quantize_model",
    "calibrate",
    "param_groups",
    "steps_at_floor",
    "convert",
    "export_onnx",
    "IntConv2d",
    "IntLinear",
    "IntEmbedding",
    "IntWeight",
    "FixedQuantizer",
    "FixedQILQuantizer",
    "fully_shard_quantizers",
    "load_full_state_dict",
    "QuantizationSummary",
    "qrange",
    "default_grad_scale",
    "available_backends",
    "cpu_isa",
    "reference",
]
__version__ = "0.1.0"
