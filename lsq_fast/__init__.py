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
from .convert import QuantizationSummary, quantize_model
from .quantizer import LSQQuantizer

__all__ = [
    "lsq_quantize",
    "LSQQuantizer",
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
