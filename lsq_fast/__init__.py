"""lsq_fast: fused kernels for Learned Step Size Quantization and its relatives.

The numerical contract is shared/spec/quantizers.md; :mod:`lsq_fast.reference` is its
plain-PyTorch oracle.
"""

from . import reference
from ._args import default_grad_scale, qrange
from ._ops import cpu_isa
from .backends import available_backends
from .layers import QuantConv2d, QuantLinear
from .lsq import lsq_quantize
from .lsq_plus import lsq_plus_quantize
from .qil import qil_quantize_activation, qil_quantize_weight
from .convert import QuantizationSummary, quantize_model
from .quantizer import LSQQuantizer
from .lsq_plus_quantizer import LSQPlusQuantizer
from .qil_quantizer import QILQuantizer

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
    "quantize_model",
    "QuantizationSummary",
    "qrange",
    "default_grad_scale",
    "available_backends",
    "cpu_isa",
    "reference",
]
__version__ = "0.1.0"
