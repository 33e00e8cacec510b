"""The quantizer methods lsq_fast implements, in one table.

A method is a pair of ops, ``torch.ops.lsq_fast.<name>_forward`` and ``<name>_backward``: schemas
and CPU/CUDA kernels in C++ (csrc/lsq_ops.cpp, csrc/cpu, csrc/cuda), autograd from one C++
template (csrc/lsq_autograd.cpp), and Triton twins ``<name>_forward_triton`` /
``<name>_backward_triton`` defined from the same schemas by ``_triton.registration``. Every op of
a method takes ``x``, then the method's learned tensors (``params``), then plain arguments; its
backward takes ``grad_y`` first and returns ``grad_x`` and one gradient per learned tensor. That
shape is what lets one fake kernel, one autograd template and one Triton op helper serve every
method. Adding a method: a row here, and the files CONTRIBUTING.md lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import dense


@dataclass(frozen=True)
class Method:
    name: str  # the ops' prefix: lsq_fast::<name>_forward
    params: tuple[str, ...]  # the learned tensors the ops take after x, in order
    reference: tuple[str, ...]  # its oracle: functions of lsq_fast.reference
    cuda_kernels: bool = False  # csrc/cuda has kernels for it (else Triton serves CUDA tensors)
    optional: tuple[str, ...] = ()  # params that may be None (no gradient then)

    @property
    def forward(self) -> str:
        return f"{self.name}_forward"

    @property
    def backward(self) -> str:
        return f"{self.name}_backward"

    @property
    def triton_module(self) -> str:
        """The module of lsq_fast._triton whose import defines the Triton ops."""
        return f"lsq_fast._triton.{self.name}"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("lsq", ("step",), ("lsq_quantize",), cuda_kernels=True),
        Method("lsq_plus", ("step", "offset"), ("lsq_plus_quantize",)),
        Method("qil", ("center", "distance", "gamma"), ("qil_quantize_weight", "qil_quantize_activation"),
               optional=("gamma",)),
    )
}


# -- fake kernels: what torch.compile and torch.export know of every op's outputs -------------


def fake_forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """y: x's dtype and shape, in x's layout when x is dense (contiguous otherwise), as every
    backend writes it."""
    return torch.empty_like(dense(x))


def fake_backward(m: Method):
    """(grad_x, one gradient per learned tensor, shaped like it; an absent optional tensor's
    gradient is shaped like the first, as the kernels return zeros there)."""

    def fake(grad_y: torch.Tensor, x: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, ...]:
        params = (list(args) + [kwargs[name] for name in m.params if name in kwargs])[: len(m.params)]
        return (torch.empty_like(dense(x)), *(torch.empty_like(params[0] if p is None else p) for p in params))

    return fake


def register_fakes(suffix: str = "") -> None:
    """Registers the fake kernels of every method's ops (suffix "_triton": of the Triton twins)."""
    for m in METHODS.values():
        torch.library.register_fake(f"lsq_fast::{m.forward}{suffix}")(fake_forward)
        torch.library.register_fake(f"lsq_fast::{m.backward}{suffix}")(fake_backward(m))


def _load_triton_ops() -> None:
    """Defines every method's Triton ops (on first use, so that `import lsq_fast` needs no
    Triton). A plain import statement, which torch.compile traces (it refuses importlib)."""
    from .._triton import ops  # noqa: F401


def quantizer_ops(name: str, backend: str):
    """(forward, backward) ops of a method ("lsq", "lsq_plus", "qil") on a fused backend,
    e.g. torch.ops.lsq_fast.lsq_forward_triton. "cpu" and "cuda" are the same ops (e.g.
    lsq_fast::lsq_forward): the dispatcher sends each call to the kernels of its tensors' device."""
    from .library import ops

    m = METHODS[name]
    if backend == "triton":
        _load_triton_ops()
        return getattr(ops, m.forward + "_triton"), getattr(ops, m.backward + "_triton")
    if backend in ("cpu", "cuda"):
        return getattr(ops, m.forward), getattr(ops, m.backward)
    raise ValueError(f"lsq_fast: {backend!r} is not a fused backend")


def lsq_ops(backend: str):
    """(forward, backward) of LSQ on a fused backend: quantizer_ops("lsq", backend)."""
    return quantizer_ops("lsq", backend)
