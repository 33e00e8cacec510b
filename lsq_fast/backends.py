"""Which implementation serves a call: the `backend=` argument of the quantizers."""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "cpu", "reference", "triton", "cuda")


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on CPU tensors, as Python (CI has no GPU).
    It must be set before the first use of backend="triton" in the process."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _fused(device_type: str) -> tuple[str, ...]:
    """Fused backends for a device type, fastest first."""
    if device_type == "cpu":
        return ("cpu", "triton") if triton_interpreting() and _has_triton() else ("cpu",)
    if device_type == "cuda":
        return ("triton",) if _has_triton() else ()
    return ()


def available_backends(device: torch.device | str) -> tuple[str, ...]:
    """The backends that can run on `device`, fastest first ("reference" always last)."""
    return _fused(torch.device(device).type) + ("reference",)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"lsq_fast: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    available = available_backends(device)
    if backend == "auto":
        return available[0]
    if backend not in available:
        raise ValueError(
            f"lsq_fast: backend {backend!r} is not available for tensors on {device} "
            f"(available there: {', '.join(available)})"
        )
    return backend


def lsq_ops(backend: str):
    """(forward, backward) ops of a fused backend, e.g. torch.ops.lsq_fast.lsq_forward_triton.
    The Triton ops are registered when first asked for, so that importing lsq_fast needs no Triton."""
    from ._ops import ops

    if backend == "triton":
        from ._triton import lsq  # noqa: F401  (registers lsq_fast::lsq_{forward,backward}_triton)

        return ops.lsq_forward_triton, ops.lsq_backward_triton
    if backend == "cpu":
        return ops.lsq_forward, ops.lsq_backward
    raise ValueError(f"lsq_fast: {backend!r} is not a fused backend")
