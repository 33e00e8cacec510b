"""QIL in Triton: a learned quantization interval, centre c and half-width d, and for weights an
exponent gamma (docs/contract.md, section 3; reference/qil.py is the oracle).

    alpha = 0.5 / d,  beta = 0.5 - 0.5 * c / d           (d clamped to 2^-126)
    weights:      z = clip(alpha * |w| + beta, 0, 1),  w_t = sign(w) * z^gamma,  y = round(w_t * q) / q
    activations:  x_t = clip(alpha * x + beta, 0, 1),                          y = round(x_t * q) / q

The ops are `torch.ops.lsq_fast.qil_forward_triton` / `qil_backward_triton`, with the signatures
of the CPU ops; autograd is registered on the forward. One interval per tensor: the kernels
read c, d and gamma from their one-element tensors themselves (no host sync) and compute alpha
and beta in the reference's float32 operation order. Any dense layout is read in place, as one
long row (LSQ's per-tensor view). The backward writes grad_x and reduces three sums per tile
into float32 partials (d/dalpha, d/dbeta and d/dgamma terms), summed in a fixed order by the
backward itself (one program) or by a second tiny kernel, which then applies the chain rule
to c and d in float64: there is no LSQ gradient scale in QIL.

Numerics. Each operation is rounded as the reference rounds it (products never contracted into
an FMA: tile_math.mul_rn), so activations and weights with gamma == 1 (tested on the device, in
the kernel: z itself is used, not a power) give the reference's float32 forward bit for bit.
For gamma != 1, z^gamma is exp2(gamma * log2(z)): a few ulp from the reference's powf, so the
output equals the reference's except where w_t * q falls within a few ulp of a rounding tie.
(libdevice's pow would be closer on a GPU, but the interpreter has no libdevice: one code path
everywhere keeps CI testing what the GPU runs.) Guards as the reference: z^gamma and ln z only
where z > 0, with z at least 2^-126; d clamped to 2^-126 with no gradient where clamped.
"""

import torch
import triton
import triton.language as tl

from ..ops.args import check_grad_like, check_qil_args
from ..ops.layout import dense, like
from .layout import matrix_view
from .lsq import partials_dtype
from .registration import define_quantizer_ops, launch
from .tile_math import (
    STEP_FLOOR, STEP_ONE, cast_for_store, channel_sums, host_scalar, ieee_div, mul_rn, round_half_to_even,
    tile_indices, tile_partials, to_math,
)
from .tiles import one_pass, partials_shape, pick_tile, sum_blocks

Z_FLOOR = STEP_FLOOR  # the floor of z under the power and the log, as reference.qil.Z_FLOOR
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _interval(center_ptr, distance_ptr, x_ptr):
    """(alpha, beta, d) in the math dtype, as reference.qil._interval: d = max(distance, 2^-126)
    (a where, so NaN stays NaN), alpha = 0.5 / d, beta = 0.5 - (0.5 * c) / d, IEEE divisions."""
    c = to_math(tl.load(center_ptr), x_ptr)
    d = to_math(tl.load(distance_ptr), x_ptr)
    d = tl.where(d < STEP_FLOOR, STEP_FLOOR, d)
    alpha = ieee_div(tl.full([], 0.5, d.dtype), d)
    beta = 0.5 - ieee_div(0.5 * c, d)
    return alpha, beta, d


@triton.jit
def _sign(x):
    """torch.sign: +1, -1, and +0.0 for +-0.0 and NaN."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _clip01(v):
    """hardtanh(v, 0, 1) as a where: -0.0 and NaN pass through unchanged."""
    return tl.where(v < 0.0, 0.0, tl.where(v > 1.0, 1.0, v))


@triton.jit
def _transform(x, alpha, beta, gamma, WEIGHT: tl.constexpr, HAS_GAMMA: tl.constexpr):
    """(x_t, pre, z_safe, log2 z_safe, kept, sign): QIL's transformer on the tile, and what
    the backward reuses. Activations: x_t = clip(pre) with pre = alpha * x + beta (the other
    values unused). Weights: pre = alpha * |x| + beta, z = clip(pre), kept = z > 0,
    z_safe = max(z, 2^-126) where kept (1 elsewhere), x_t = sign(x) * z_safe^gamma where kept
    (0 elsewhere); z_safe^gamma is z_safe itself when gamma == 1 exactly."""
    if WEIGHT:
        pre = mul_rn(alpha, tl.abs(x)) + beta
        z = _clip01(pre)
        kept = z > 0.0
        z_safe = tl.where(kept, tl.where(z < Z_FLOOR, Z_FLOOR, z), 1.0)
        log2_z = tl.log2(z_safe)
        if HAS_GAMMA:
            z_gamma = tl.where(gamma == 1.0, z_safe, tl.exp2(gamma * log2_z))
        else:
            z_gamma = z_safe
        sign = _sign(x)
        x_t = sign * tl.where(kept, z_gamma, 0.0)
    else:
        pre = mul_rn(alpha, x) + beta
        x_t = _clip01(pre)
        z_safe, log2_z, kept, sign = x_t, x_t, pre > 0.0, x_t  # unused by activations
    return x_t, pre, z_safe, log2_z, kept, sign


@triton.jit
def _load_gamma(gamma_ptr, x_ptr, HAS_GAMMA: tl.constexpr):
    if HAS_GAMMA:
        return to_math(tl.load(gamma_ptr), x_ptr)
    else:
        return to_math(tl.full([], 1.0, tl.float32), x_ptr)


@triton.jit
def _qil_forward_kernel(
    x_ptr, y_ptr, center_ptr, distance_ptr, gamma_ptr, levels: tl.float64, n_cols,
    WEIGHT: tl.constexpr, HAS_GAMMA: tl.constexpr, BLOCK_C: tl.constexpr,
):
    _, _, _, _, mask, offsets = tile_indices(1, n_cols, 1, BLOCK_C, True)
    alpha, beta, _ = _interval(center_ptr, distance_ptr, x_ptr)
    gamma = _load_gamma(gamma_ptr, x_ptr, HAS_GAMMA)
    x = to_math(tl.load(x_ptr + offsets, mask=mask), x_ptr)
    x_t, _, _, _, _, _ = _transform(x, alpha, beta, gamma, WEIGHT, HAS_GAMMA)
    q = host_scalar(levels, x)  # an integer: exact in any float dtype
    y = ieee_div(round_half_to_even(mul_rn(x_t, q)), q)
    tl.store(y_ptr + offsets, cast_for_store(y, y_ptr), mask=mask)


@triton.jit
def _finish_qil_grads(center_ptr, distance_ptr, grad_center_ptr, grad_distance_ptr, grad_gamma_ptr, index,
                      sum_a, sum_b, sum_g, mask, HAS_GAMMA: tl.constexpr):
    """The parameter gradients from the sums of the d/dalpha (A), d/dbeta (B) and d/dgamma (G)
    terms, in float64: grad_c = B * (-0.5 / d), grad_d = A * (-0.5 / d^2) + B * (0.5 * c / d^2)
    (0 where the raw d is below the floor, or NaN: the clamp passes no gradient), grad_gamma = G."""
    c = tl.load(center_ptr).to(tl.float64)
    raw_d = tl.load(distance_ptr).to(tl.float64)
    d = tl.where(raw_d < STEP_FLOOR, STEP_FLOOR, raw_d)
    d2 = d * d
    a, b = sum_a.to(tl.float64), sum_b.to(tl.float64)
    grad_c = b * (-0.5 / d)
    grad_d = tl.where(raw_d >= STEP_FLOOR, a * (-0.5 / d2) + b * (0.5 * c / d2), 0.0)
    tl.store(grad_center_ptr + index, grad_c.to(grad_center_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_distance_ptr + index, grad_d.to(grad_distance_ptr.dtype.element_ty), mask=mask)
    if HAS_GAMMA:
        tl.store(grad_gamma_ptr + index, sum_g.to(tl.float64).to(grad_gamma_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _qil_backward_kernel(
    grad_y_ptr, x_ptr, center_ptr, distance_ptr, gamma_ptr, grad_x_ptr, partial_ptr,
    grad_center_ptr, grad_distance_ptr, grad_gamma_ptr, n_cols,
    WEIGHT: tl.constexpr, HAS_GAMMA: tl.constexpr, BLOCK_C: tl.constexpr, FINAL: tl.constexpr,
):
    """grad_x, and this tile's partials of the A, B (and, with gamma, G) terms: partial_ptr
    holds [3][programs]. With FINAL (one program) the gradients are finished here.

    The pass band is the reference's: the clip's strict one (0 < pre < 1; NaN inside, as
    hardtanh's) for activations; for weights also the clamp_min(z, 2^-126) of z_safe, which
    passes gradient where z >= 2^-126, so 2^-126 <= pre < 1 (NaN outside). With the
    straight-through round (dy/dx_t = 1) and p = gamma z_safe^(gamma - 1) (weights; 1 for
    activations), inside the band: grad_x = grad_y p alpha (times sign(x)^2 for weights),
    A = grad_y p sign |x| (weights) or grad_y x (activations), B = grad_y p sign or grad_y;
    G = grad_y sign z_safe^gamma ln z_safe wherever z > 0 (z = 1 clipped included: ln 1 = 0)."""
    _, cols, _, col_block, mask, offsets = tile_indices(1, n_cols, 1, BLOCK_C, True)
    alpha, beta, _ = _interval(center_ptr, distance_ptr, x_ptr)
    gamma = _load_gamma(gamma_ptr, x_ptr, HAS_GAMMA)
    x = to_math(tl.load(x_ptr + offsets, mask=mask), x_ptr)
    grad_y = to_math(tl.load(grad_y_ptr + offsets, mask=mask, other=0.0), x_ptr)
    x_t, pre, z_safe, log2_z, kept, sign = _transform(x, alpha, beta, gamma, WEIGHT, HAS_GAMMA)
    if WEIGHT:
        inside = mask & (pre >= Z_FLOOR) & (pre < 1.0)
        if HAS_GAMMA:
            p = tl.where(gamma == 1.0, 1.0, gamma * tl.exp2((gamma - 1.0) * log2_z))
        else:
            p = tl.full([], 1.0, x.dtype)
        grad_p = grad_y * p
        grad_x = tl.where(inside & (x != 0.0), grad_p * alpha, 0.0)
        term_b = tl.where(inside, grad_p * sign, 0.0)
        term_a = term_b * tl.abs(x)
        if HAS_GAMMA:
            # sign * z_safe^gamma is x_t where kept; ln z_safe = log2 z_safe * ln 2
            term_g = tl.where(mask & kept, grad_y * x_t * (log2_z * LN2), 0.0)
        else:
            term_g = tl.zeros_like(term_a)
    else:
        inside = mask & ~((pre <= 0.0) | (pre >= 1.0))
        grad_x = tl.where(inside, grad_y * alpha, 0.0)
        term_b = tl.where(inside, grad_y, 0.0)
        term_a = tl.where(inside, grad_y * x, 0.0)
        term_g = tl.zeros_like(term_a)
    tl.store(grad_x_ptr + offsets, cast_for_store(grad_x, grad_x_ptr), mask=mask)
    sum_a, index, slot_mask = tile_partials(term_a, cols, cols, 0, col_block, 1, n_cols, BLOCK_C, STEP_ONE)
    sum_b, _, _ = tile_partials(term_b, cols, cols, 0, col_block, 1, n_cols, BLOCK_C, STEP_ONE)
    sum_g, _, _ = tile_partials(term_g, cols, cols, 0, col_block, 1, n_cols, BLOCK_C, STEP_ONE)
    if FINAL:
        _finish_qil_grads(center_ptr, distance_ptr, grad_center_ptr, grad_distance_ptr, grad_gamma_ptr, 0,
                          sum_a, sum_b, sum_g, True, HAS_GAMMA)
    else:
        programs = tl.num_programs(0)  # three runs of `programs` partials; pointer steps, no int32 product
        tl.store(partial_ptr + index, sum_a)
        tl.store(partial_ptr + programs + index, sum_b)
        tl.store(partial_ptr + programs + programs + index, sum_g)


@triton.jit
def _qil_sum_partials_kernel(
    partial_ptr, center_ptr, distance_ptr, grad_center_ptr, grad_distance_ptr, grad_gamma_ptr, n_partials,
    HAS_GAMMA: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The second launch: the three sums of partials [3][n_partials] in a fixed order (one
    channel, LSQ's channel_sums), then the parameter gradients."""
    ch = tl.arange(0, 1)
    ch_mask = ch < 1
    sum_a = channel_sums(partial_ptr, ch, ch_mask, n_partials, 1, n_partials, 1, BLOCK_K)
    sum_b = channel_sums(partial_ptr + n_partials, ch, ch_mask, n_partials, 1, n_partials, 1, BLOCK_K)
    sum_g = channel_sums(partial_ptr + n_partials + n_partials, ch, ch_mask, n_partials, 1, n_partials, 1, BLOCK_K)
    _finish_qil_grads(center_ptr, distance_ptr, grad_center_ptr, grad_distance_ptr, grad_gamma_ptr, ch,
                      sum_a, sum_b, sum_g, ch_mask, HAS_GAMMA)


def _check(x, center, distance, gamma, levels, weight):
    check_qil_args(x, levels, weight, center=center, distance=distance, gamma=gamma)


def _one(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1)  # a one-element parameter, whatever its shape: a view, no copy


def forward(x, center, distance, gamma, levels, weight):
    """The forward op's body."""
    _check(x, center, distance, gamma, levels, weight)
    x = dense(x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    view = matrix_view(x, None)
    tile = pick_tile(view)
    center, distance = _one(center), _one(distance)
    launch(_qil_forward_kernel, tile.programs)(
        x, y, center, distance, center if gamma is None else _one(gamma), float(levels), view.cols,
        WEIGHT=weight, HAS_GAMMA=gamma is not None, BLOCK_C=tile.block_cols, num_warps=tile.num_warps)
    return y


def backward(grad_y, x, center, distance, gamma, levels, weight):
    """The backward op's body: (grad_x, grad_center, grad_distance, grad_gamma); grad_gamma is
    zeros shaped like center when there is no gamma."""
    _check(x, center, distance, gamma, levels, weight)
    check_grad_like(grad_y, x)
    x = dense(x)
    grad_y = like(grad_y, x)
    grad_x = torch.empty_like(x)
    grad_center, grad_distance = torch.zeros_like(center), torch.zeros_like(distance)
    grad_gamma = torch.zeros_like(center if gamma is None else gamma)
    if x.numel() == 0:
        return grad_x, grad_center, grad_distance, grad_gamma
    view = matrix_view(x, None)
    tile = pick_tile(view)
    partials_of = partials_shape(view, tile)
    n_partials, final = partials_of[2], one_pass(partials_of)
    c, d = _one(center), _one(distance)
    g = c if gamma is None else _one(gamma)
    gc, gd, gg = _one(grad_center), _one(grad_distance), _one(grad_gamma)
    partials = gc if final else torch.empty(3 * n_partials, device=x.device, dtype=partials_dtype(x))
    launch(_qil_backward_kernel, tile.programs)(
        grad_y, x, c, d, g, grad_x, partials, gc, gd, gg, view.cols,
        WEIGHT=weight, HAS_GAMMA=gamma is not None, BLOCK_C=tile.block_cols, FINAL=final, num_warps=tile.num_warps)
    if not final:
        _, block_k = sum_blocks(1, n_partials)
        launch(_qil_sum_partials_kernel, 1)(
            partials, c, d, gc, gd, gg, n_partials, HAS_GAMMA=gamma is not None, BLOCK_K=block_k,
            num_warps=8)  # three [1, BLOCK_K] accumulators: 4 warps would spill at BLOCK_K = 2048
    return grad_x, grad_center, grad_distance, grad_gamma


qil_forward_triton, qil_backward_triton = define_quantizer_ops("qil", forward, backward)
