"""Which implementation serves a call: the `backend=` argument of the quantizers."""

from __future__ import annotations

import importlib.util
import os

import torch

from .registry import METHODS
from .registry import lsq_ops, quantizer_ops  # noqa: F401  (found here in 0.1)

BACKENDS = ("auto", "cpu", "reference", "triton", "cuda")


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on CPU tensors, as Python (CI has no GPU).
    It must be set before the first use of backend="triton" in the process."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


_CUDA_KERNELS: list[bool] = []  # memo of has_cuda_kernels


# A constant to torch.compile, which calls it while tracing rather than tracing into it.
@torch.compiler.assume_constant_result
def has_cuda_kernels() -> bool:
    """True when lsq_fast was built with its CUDA kernels (csrc/cuda; torch with CUDA at build time)."""
    if not _CUDA_KERNELS:
        from .library import ops  # noqa: F401  (loads the library, which registers its kernels)

        _CUDA_KERNELS.append(torch._C._dispatch_has_kernel_for_dispatch_key("lsq_fast::lsq_forward", "CUDA"))
    return _CUDA_KERNELS[0]


def _fused(device_type: str) -> tuple[str, ...]:
    """Fused backends for a device type, auto's default first."""
    if device_type == "cpu":
        return ("cpu", "triton") if triton_interpreting() and _has_triton() else ("cpu",)
    if device_type == "cuda":
        return tuple(name for name, present in (("triton", _has_triton()), ("cuda", has_cuda_kernels())) if present)
    return ()


def available_backends(device: torch.device | str) -> tuple[str, ...]:
    """The backends that can run on `device`, auto's default first ("reference" always last).
    On CUDA tensors "auto" picks between "cuda" and "triton" per tensor (backend_table.py)."""
    return _fused(torch.device(device).type) + ("reference",)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"lsq_fast: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def resolve_backend(backend: str, x: torch.Tensor, channel_axis: int | None = None, *, method: str = "lsq") -> str:
    """The backend that runs `method` (a name in registry.METHODS) on x: `backend` itself when
    x's device has it, or auto's choice. A method without CUDA C++ kernels runs on CUDA tensors
    with Triton only."""
    cuda_kernels = METHODS[method].cuda_kernels
    check_backend(backend)
    device = x.device
    available = available_backends(device)
    if not cuda_kernels:
        available = tuple(name for name in available if name != "cuda")
    if backend == "auto":
        if "cuda" in available and "triton" in available:
            from .backend_table import choose

            return choose(x, channel_axis)
        return available[0]
    if backend not in available:
        raise ValueError(
            f"lsq_fast: backend {backend!r} is not available for tensors on {device} "
            f"(available there{'' if cuda_kernels else ' for this op'}: {', '.join(available)})"
        )
    return backend
