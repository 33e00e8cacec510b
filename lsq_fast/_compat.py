"""The module paths of lsq_fast 0.1's flat layout, kept for one release as aliases of the modules
that now hold their code (``import lsq_fast.layers`` is ``lsq_fast.nn.layers``). New code imports
from ``lsq_fast`` itself, or from ``lsq_fast.ops`` / ``lsq_fast.nn``."""

from __future__ import annotations

import importlib
import sys

OLD_PATHS = {
    "_args": "ops.args",
    "_ops": "ops.library",
    "backends": "ops.backends",
    "backend_table": "ops.backend_table",
    "lsq": "ops.lsq",
    "lsq_plus": "ops.lsq_plus",
    "qil": "ops.qil",
    "quantizer": "nn.lsq_quantizer",  # held LearnedQuantizer and LSQQuantizer: the second imports the first
    "lsq_plus_quantizer": "nn.lsq_plus_quantizer",
    "qil_quantizer": "nn.qil_quantizer",
    "layers": "nn.layers",
    "_positive_step": "nn.positive",
    "_distributed": "nn.distributed",
}


def install(package) -> None:
    for old, new in OLD_PATHS.items():
        module = importlib.import_module(f"{package.__name__}.{new}")
        sys.modules[f"{package.__name__}.{old}"] = module
        setattr(package, old, module)
