"""Turning a host function that launches Triton kernels into a torch op.

On a GPU the op is a `torch.library.triton_op` and every launch goes through `wrap_triton`,
so torch.compile traces into the kernels (fullgraph, CUDA graphs with "reduce-overhead").
Under TRITON_INTERPRET=1 the kernels are interpreted Python that wrap_triton cannot trace,
so there the same function becomes an opaque `torch.library.custom_op` with a fake kernel:
CI still checks the op's schema, fake kernel and autograd with opcheck and torch.compile.

Triton launches on the current CUDA device, not on its arguments' (a tensor on cuda:1 while
cuda:0 is current would be read by a kernel on the wrong GPU), so every op body runs under
`torch.cuda.device(x.device)`, x its first tensor argument, as torch's own CUDA ops do with a
device guard.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
from triton.runtime.interpreter import InterpretedFunction

from .tile_math import tile_indices

INTERPRETED = isinstance(tile_indices, InterpretedFunction)


def launch(kernel, programs: int):
    """kernel[(programs,)], traceable by torch.compile (a no-op wrapper in eager mode)."""
    return torch.library.wrap_triton(kernel)[(programs,)]


def on_input_device(fn: Callable) -> Callable:
    """fn, run with its first tensor argument's CUDA device current (no-op for CPU tensors)."""

    @functools.wraps(fn)  # keeps fn's signature, from which the op's schema is inferred
    def body(*args, **kwargs):
        x = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        guard = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
        with guard:
            return fn(*args, **kwargs)

    return body


def define_op(name: str, fn: Callable, fake: Callable):
    fn = on_input_device(fn)
    if INTERPRETED:
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fake)
        return op
    return torch.library.triton_op(name, fn, mutates_args=())
