"""Turning a host function that launches Triton kernels into a torch op.

On a GPU the op is a `torch.library.triton_op` and every launch goes through `wrap_triton`,
so torch.compile traces into the kernels (fullgraph, CUDA graphs with "reduce-overhead").
Under TRITON_INTERPRET=1 the kernels are interpreted Python that wrap_triton cannot trace,
so there the same function becomes an opaque `torch.library.custom_op` with a fake kernel:
CI still checks the op's schema, fake kernel and autograd with opcheck and torch.compile.
"""

from __future__ import annotations

from typing import Callable

import torch
from triton.runtime.interpreter import InterpretedFunction

from .tile_math import tile_indices

INTERPRETED = isinstance(tile_indices, InterpretedFunction)


def launch(kernel, programs: int):
    """kernel[(programs,)], traceable by torch.compile (a no-op wrapper in eager mode)."""
    return torch.library.wrap_triton(kernel)[(programs,)]


def define_op(name: str, fn: Callable, fake: Callable):
    if INTERPRETED:
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fake)
        return op
    return torch.library.triton_op(name, fn, mutates_args=())
