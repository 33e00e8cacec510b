"""Which implementation serves a call: the `backend=` argument of the quantizers."""

from __future__ import annotations

import torch

BACKENDS = ("auto", "cpu", "reference", "triton", "cuda")

# Fused backends in order of preference, per device type. The GPU backends arrive with
# their own issues; until then "auto" on a GPU tensor runs the reference.
_FUSED = {"cpu": ("cpu",)}


def available_backends(device: torch.device | str) -> tuple[str, ...]:
    """The backends that can run on `device`, fastest first ("reference" always last)."""
    return _FUSED.get(torch.device(device).type, ()) + ("reference",)


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
