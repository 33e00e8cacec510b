"""Turning the host functions that launch a method's Triton kernels into torch ops: the Triton
twins of its C++ ops, with the same schemas, fakes and autograd (define_quantizer_ops).

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
import inspect
from typing import Callable, Optional

import torch
from triton.runtime.interpreter import InterpretedFunction

from ..ops.registry import METHODS, fake_backward, fake_forward
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


def _define_op(name: str, fn: Callable, signature: inspect.Signature, fake: Callable):
    fn = on_input_device(fn)
    fn.__signature__ = signature  # what triton_op and custom_op infer the schema from
    if INTERPRETED:
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fake)
        return op
    return torch.library.triton_op(name, fn, mutates_args=())  # fn is its own fake there


_PYTHON_TYPES = {"Tensor": torch.Tensor, "int": int, "float": float, "bool": bool}


def _python_type(schema_type: str):
    """The annotation of a schema type as str() writes it: "Tensor", "Optional[int]", ..."""
    inner = schema_type.removeprefix("Optional[").removesuffix("]")
    return _PYTHON_TYPES[inner] if inner == schema_type else Optional[_PYTHON_TYPES[inner]]


def _signature_of(op_name: str) -> inspect.Signature:
    """The typed signature of the C++ op lsq_fast::<op_name> (names, types, defaults), from which
    triton_op and custom_op infer the Triton twin's schema (triton_op takes no schema string):
    the two ops of a method then have the same arguments."""
    from ..ops.library import ops

    schema = getattr(ops, op_name).default._schema
    params = [
        inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_python_type(str(a.type)),
                          default=a.default_value if a.has_default_value() else inspect.Parameter.empty)
        for a in schema.arguments
    ]
    returns = tuple[(torch.Tensor,) * len(schema.returns)] if len(schema.returns) > 1 else torch.Tensor
    return inspect.Signature(params, return_annotation=returns)


def define_quantizer_ops(method: str, forward: Callable, backward: Callable):
    """lsq_fast::<method>_forward_triton and _backward_triton, from the op bodies `forward`
    (called with the forward op's arguments, by their schema names) and `backward` (grad_y
    first): the C++ ops' arguments (their int inferred as SymInt), the registry's fake kernels
    (under the interpreter; triton_op traces the body itself), and autograd on the forward that
    saves x and the learned tensors and calls the backward op. Returns (forward op, backward op)."""
    m = METHODS[method]
    backward_op = _define_op(f"lsq_fast::{m.backward}_triton", backward, _signature_of(m.backward), fake_backward(m))
    forward_op = _define_op(f"lsq_fast::{m.forward}_triton", forward, _signature_of(m.forward), fake_forward)
    tensors = 1 + len(m.params)  # x and the learned tensors lead every forward's arguments

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:tensors])
        ctx.args = inputs[tensors:]

    def backward_fn(ctx, grad_y):
        saved = ctx.saved_tensors
        grads = backward_op(grad_y, *saved, *ctx.args)
        # no gradient for an absent optional tensor (QIL's gamma of activations), nor for plain arguments
        return (*(None if t is None else g for t, g in zip(saved, grads)), *(None,) * len(ctx.args))

    forward_op.register_autograd(backward_fn, setup_context=setup_context)
    return forward_op, backward_op
