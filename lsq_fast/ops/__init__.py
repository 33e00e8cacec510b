"""The functional API: one function per quantizer, each checking its arguments once and handing
the call to a backend ("cpu", "cuda", "triton" or "reference").

    lsq.py, lsq_plus.py, qil.py    lsq_quantize, lsq_plus_quantize, qil_quantize_weight/activation
    args.py                        the arguments' rules: grids, checks, default gradient scale
    registry.py                    the methods: their ops, learned tensors, fake kernels, reference
    library.py                     loading the compiled ops (lsq_fast/_C) and their fakes
    backends.py, backend_table.py  which backend serves a call
    layout.py                      which layouts are read in place
"""

from . import library  # noqa: F401  (first: the ops the others dispatch to)
from .args import default_grad_scale, qrange
from .backends import available_backends
from .library import cpu_isa
from .lsq import lsq_quantize
from .lsq_plus import lsq_plus_quantize
from .qil import qil_quantize_activation, qil_quantize_weight
from .registry import METHODS

__all__ = [
    "lsq_quantize",
    "lsq_plus_quantize",
    "qil_quantize_weight",
    "qil_quantize_activation",
    "qrange",
    "default_grad_scale",
    "available_backends",
    "cpu_isa",
    "METHODS",
]
