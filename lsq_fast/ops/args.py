"""The rules of the quantizers' arguments, shared by every backend and by the reference: the
integer grids, the checks (same messages as the C++ ops' in csrc/lsq_host.cpp), LSQ's default
gradient scale and the soft round's constants (docs/contract.md)."""

from __future__ import annotations

import math

import torch

# Smallest step the quantizers divide by (2^-126, the smallest normal float32); the kernels
# hold the same value (csrc/lsq_layout.h, kStepFloor).
STEP_FLOOR = 2.0**-126

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """The integer grid of a `bits`-bit quantizer: signed [-2^(b-1), 2^(b-1)-1] for b in 2..8,
    unsigned [0, 2^b-1] for b in 1..8."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"lsq_fast: bits must be an int, got {type(bits).__name__}")
    lowest = 2 if signed else 1
    if not lowest <= bits <= 8:
        kind = "signed" if signed else "unsigned"
        raise ValueError(f"lsq_fast: bits must be in {lowest}..8 for {kind} quantization, got {bits}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def default_grad_scale(numel_per_step: int, bits: int, signed: bool) -> float:
    """LSQ's step-gradient scale g = 1 / sqrt(N * qmax), N the elements sharing one step.

    An empty tensor has no gradient to scale, so N = 0 counts as 1 (the kernels do the same).
    """
    return grad_scale_for_qmax(numel_per_step, qrange(bits, signed)[1])


def grad_scale_for_qmax(numel_per_step: int, qmax: int) -> float:
    """default_grad_scale for ops that receive the grid (qmin, qmax) rather than bits."""
    return 1.0 / math.sqrt(max(int(numel_per_step), 1) * qmax)


def check_args(x: torch.Tensor, step: torch.Tensor, bits: int, signed: bool, channel_axis: int | None):
    """Validates a quantizer call; returns (qmin, qmax, channel_axis wrapped to >= 0 or None)."""
    qmin, qmax = qrange(bits, signed)
    return qmin, qmax, check_op_args(x, step, qmin, qmax, channel_axis)


def check_op_args(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, channel_axis: int | None):
    """The checks of an op that takes the grid (qmin, qmax): the Python twin of the C++ ops'
    check_lsq_args (csrc/lsq_host.cpp), same messages. Returns channel_axis wrapped to >= 0."""
    if not isinstance(x, torch.Tensor) or not isinstance(step, torch.Tensor):
        raise TypeError("lsq_fast: x and step must be tensors")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"lsq_fast: x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if not (step.dtype == torch.float32 or (step.dtype == torch.float64 and x.dtype == torch.float64)):
        raise TypeError(f"lsq_fast: step must be float32 (float64 allowed only with float64 x), got {step.dtype}")
    if x.device != step.device:
        raise ValueError(f"lsq_fast: x and step must be on the same device, got x on {x.device} and step on {step.device}")
    if not qmin < qmax:
        raise ValueError(f"lsq_fast: need qmin < qmax, got qmin={qmin} qmax={qmax}")
    if channel_axis is None:
        if step.numel() != 1:
            raise ValueError(
                f"lsq_fast: per-tensor quantization needs a step with one element, got {step.numel()} "
                "(pass channel_axis for per-channel steps)"
            )
        return None
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, int):
        raise TypeError(f"lsq_fast: channel_axis must be an int or None, got {type(channel_axis).__name__}")
    if not -x.dim() <= channel_axis < x.dim() or x.dim() == 0:
        raise ValueError(f"lsq_fast: channel_axis {channel_axis} is out of range for x with {x.dim()} dimensions")
    axis = channel_axis % x.dim()
    if step.numel() != x.shape[axis]:
        raise ValueError(
            f"lsq_fast: per-channel step must have x.shape[{axis}] = {x.shape[axis]} elements, got {step.numel()}"
        )
    return axis


def check_grad_like(grad_y: torch.Tensor, x: torch.Tensor) -> None:
    if grad_y.shape != x.shape:
        raise ValueError(f"lsq_fast: grad_y has shape {list(grad_y.shape)} but x has shape {list(x.shape)}")
    if grad_y.dtype != x.dtype:
        raise TypeError(f"lsq_fast: grad_y is {grad_y.dtype} but x is {x.dtype}")
    if grad_y.device != x.device:
        raise ValueError(f"lsq_fast: grad_y is on {grad_y.device} but x is on {x.device}")


def check_grad_scale(grad_scale: float | None) -> float | None:
    if grad_scale is None:
        return None
    if isinstance(grad_scale, torch.Tensor) or not isinstance(grad_scale, (int, float)) or isinstance(grad_scale, bool):
        raise TypeError(f"lsq_fast: grad_scale must be a Python float or None, got {type(grad_scale).__name__}")
    if not math.isfinite(grad_scale):
        raise ValueError(f"lsq_fast: grad_scale must be finite, got {grad_scale}")
    return float(grad_scale)


def check_step_values(step: torch.Tensor) -> None:
    """A step that is not positive and finite is a ValueError where reading it is free (CPU
    tensors, eager mode); elsewhere the kernels clamp it to STEP_FLOOR, without a host sync."""
    if step.device.type != "cpu" or torch.compiler.is_compiling():
        return
    if not bool(torch.all(torch.isfinite(step) & (step > 0))):
        raise ValueError(f"lsq_fast: step must be positive and finite, got {step.detach().flatten().tolist()[:8]}")


def check_offset(offset: torch.Tensor, step: torch.Tensor) -> None:
    """LSQ+'s offset: one value per step, like it in shape, dtype and device."""
    if not isinstance(offset, torch.Tensor):
        raise TypeError("lsq_fast: offset must be a tensor")
    if offset.shape != step.shape or offset.dtype != step.dtype or offset.device != step.device:
        raise ValueError(
            f"lsq_fast: offset must match step in shape, dtype and device, got offset {list(offset.shape)} "
            f"{offset.dtype} on {offset.device} and step {list(step.shape)} {step.dtype} on {step.device}"
        )


def check_qil_args(x: torch.Tensor, levels: int, weight: bool, **params: torch.Tensor | None) -> None:
    """QIL's checks: x a float tensor; each interval parameter (center, distance, and gamma for
    weights; None where absent) a one-element float32 tensor (float64 with float64 x) on x's
    device; levels >= 1. The Python twin of check_qil_args in csrc/lsq_host.cpp."""
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"lsq_fast: x must be a float32, float16, bfloat16 or float64 tensor, got {getattr(x, 'dtype', x)!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"lsq_fast: QIL needs levels >= 1, got {levels!r}")
    if not weight and params.get("gamma") is not None:
        raise ValueError("lsq_fast: QIL's exponent gamma is for weights only; activations use gamma = 1")
    for name, p in params.items():
        if p is None:
            continue
        if not isinstance(p, torch.Tensor) or p.numel() != 1:
            raise ValueError(f"lsq_fast: QIL's {name} must be a tensor with one element (one per layer)")
        if not (p.dtype == torch.float32 or (p.dtype == torch.float64 and x.dtype == torch.float64)):
            raise TypeError(f"lsq_fast: QIL's {name} must be float32 (float64 allowed only with float64 x), got {p.dtype}")
        if p.device != x.device:
            raise ValueError(f"lsq_fast: QIL's {name} is on {p.device} but x is on {x.device}")


def check_group_size_value(group_size: int, channel_axis: int | None) -> None:
    """group_size itself: an int >= 1, and not with a channel axis (the ops' and the modules' check)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"lsq_fast: group_size must be an int >= 1, got {group_size!r}")
    if channel_axis is not None:
        raise ValueError("lsq_fast: pass group_size or channel_axis, not both: groups run along the last axis")


def check_group_size(x: torch.Tensor, step: torch.Tensor, group_size: int, channel_axis: int | None) -> int:
    """Per-group steps (docs/contract.md, section 1): `group_size` G consecutive elements of x's
    last axis share a step, so x of shape [..., K] takes a step of shape [..., K / G]. Returns G."""
    if not isinstance(x, torch.Tensor) or not isinstance(step, torch.Tensor):
        raise TypeError("lsq_fast: x and step must be tensors")
    check_group_size_value(group_size, channel_axis)
    if x.dim() == 0:
        raise ValueError("lsq_fast: per-group quantization needs x with at least one dimension")
    if x.shape[-1] % group_size:
        raise ValueError(f"lsq_fast: group_size {group_size} does not divide x's last dimension {x.shape[-1]}")
    want = [*x.shape[:-1], x.shape[-1] // group_size]
    if list(step.shape) != want:
        raise ValueError(
            f"lsq_fast: a per-group step must have shape {want} (x's shape with its last dimension divided by "
            f"group_size {group_size}), got {list(step.shape)}"
        )
    return group_size


def group_rows(x: torch.Tensor, group_size: int, *per_step: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x as rows of one group each, [x.numel() / G, G] (a view where x's last axis is contiguous,
    else one copy), and each per-step tensor flat: the per-channel quantizer on axis 0 of these
    is the per-group one, element for element and group for group."""
    return (x.reshape(-1, group_size), *(t.reshape(-1) for t in per_step))


def numel_per_step(x: torch.Tensor, channel_axis: int | None) -> int:
    if channel_axis is None:
        return x.numel()
    channels = x.shape[channel_axis]
    return x.numel() // channels if channels else 0


# -- the soft round (LG-LSQ's arctangent, as docs/contract.md section 4 reads it) -----------

ROUND_GRADS = ("ste", "arctan")


def check_sharpness(k: float) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"lsq_fast: the soft round's sharpness k must be a positive finite float, got {k!r}")
    return float(k)


def soft_round_sharpness(round_grad: str, k: float) -> float | None:
    """The round_grad/k arguments as the ops take them (soft_round_k): None for the
    straight-through round, else the checked sharpness k."""
    if round_grad == "ste":
        return None
    if round_grad == "arctan":
        return check_sharpness(k)
    raise ValueError(f"lsq_fast: round_grad must be one of {', '.join(ROUND_GRADS)}, got {round_grad!r}")


def soft_round_scale(k: float) -> float:
    """The slope's constant c = k / (2 atan(k/2)), the host-side value every fused kernel is
    handed (the Python twin of soft_round_scale in csrc/lsq_layout.h). Below k = 1e-8 it is 1 to
    float64 precision: taken as exactly 1, so that a subnormal k cannot give a wrong or infinite c."""
    return 1.0 if k < 1e-8 else k / (2.0 * math.atan(k / 2.0))
