"""Importing this defines the Triton ops of every method in the registry (each method's module
here calls registration.define_quantizer_ops when imported)."""

import importlib

from ..ops.registry import METHODS

for _method in METHODS.values():
    importlib.import_module(_method.triton_module)
