// The contract's per-element arithmetic (docs/contract.md, section 1) for the CUDA
// kernels. __host__ __device__ and free of torch and of CUDA-only headers outside the device
// pass, so g++ compiles the same functions for tests/cpp/test_cuda_math.cpp.
//
// Every operation whose rounding the forward's bits depend on is spelled as an intrinsic:
// the division is IEEE (__fdiv_rn, not the reciprocal -use_fast_math would make of `/`),
// the multiply is one rounding (__fmul_rn: never contracted into an FMA), the rounding is
// half to even (rintf: cvt.rni). Math is float32, or float64 for float64 tensors.
//
// The backward's round surrogate is a switch (docs/contract.md, section 4): the straight-through estimator
// (Quantizer::backward), or LG-LSQ's arctangent soft round of sharpness k (ArctanRound, and the
// Quantizer::backward overload that takes one), in the backward pass only: the forward keeps
// the hard round either way.
#pragma once

#include <cmath>
#include <type_traits>

#include "cuda/lsq_hd.h"
#include "lsq_layout.h"

namespace lsq_fast::cuda {

template <typename M>
LSQ_HD M div_rn(M a, M b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<M, float>) return __fdiv_rn(a, b);
  else return __ddiv_rn(a, b);
#else
  return a / b;  // x86-64 SSE: IEEE, one rounding
#endif
}
template <typename M>
LSQ_HD M mul_rn(M a, M b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<M, float>) return __fmul_rn(a, b);
  else return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
// Round half to even in the default rounding mode; rint(-0.3) is -0.0, as torch.round.
LSQ_HD float round_even(float v) { return rintf(v); }
LSQ_HD double round_even(double v) { return rint(v); }

// Floor toward -infinity (cvt.rmi on the device).
LSQ_HD float floor_down(float v) { return floorf(v); }
LSQ_HD double floor_down(double v) { return floor(v); }

// A step below the floor (zero, negative) is clamped to it, without a host sync. A compare
// and select rather than fmax, so that a NaN step stays NaN, as in the reference.
template <typename M>
LSQ_HD M clamp_step(M s) {
  return s < static_cast<M>(kStepFloor) ? static_cast<M>(kStepFloor) : s;
}

// LG-LSQ's arctangent soft round (ASR), as the backward pass's slope of round(u).
//
// This is the project's reading of the LG-LSQ abstract (arXiv 2202.09009, docs/contract.md, section 4),
// not a transcription of the paper, whose equations this project does not have; it matches
// lsq_fast/reference/soft_round.py. On each unit interval [n, n + 1) the soft round rises from n
// to n + 1 along an arctangent centred on the half-integer,
//     soft(u) = n + 1/2 + atan(k (f - 1/2)) / (2 atan(k/2)),   n = floor(u), f = u - n,
// and the backward uses its slope in place of the straight-through 1:
//     soft'(u) = c / (1 + t^2),   t = k (f - 1/2),   c = k / (2 atan(k/2)),
// which is never zero, so the gradient never vanishes. c is computed once on the host in
// float64 (soft_round_scale) and cast to the math type with k.
template <typename M>
struct ArctanRound {
  M k;  // sharpness, > 0
  M c;  // soft_round_scale(k)

  // Every multiply and the division spelled as one rounding (no FMA contraction), as the CPU
  // kernels built with -ffp-contract=off compute them.
  LSQ_HD M slope(M u) const {
    // Exact for u >= 0; a tiny negative u may give f = 1, whose slope is that of f = 0.
    const M f = u - floor_down(u);
    const M t = mul_rn(k, f - M(0.5));
    return div_rn(c, M(1) + mul_rn(t, t));
  }
};

using lsq_fast::soft_round_scale;  // c, from lsq_layout.h: every backend's

template <typename M>
struct Quantizer {
  M qmin;
  M qmax;

  // Strict compares, as the reference's hardtanh: u == -0.0 on the unsigned grid stays
  // -0.0, and NaN falls through both to stay NaN.
  LSQ_HD M clip(M u) const { return u < qmin ? qmin : (u > qmax ? qmax : u); }

  LSQ_HD M forward(M x, M s) const { return mul_rn(round_even(clip(div_rn(x, s))), s); }

  // Sets grad_x = grad_y inside (qmin, qmax), +0 at and beyond the clip points (NaN counts as
  // inside), and returns grad_y * dy/ds.
  LSQ_HD M backward(M x, M grad_y, M s, M& grad_x) const {
    const M u = div_rn(x, s);
    const bool below = u <= qmin;
    const bool above = u >= qmax;
    grad_x = below || above ? M(0) : grad_y;
    const M dy_ds = below ? qmin : (above ? qmax : round_even(u) - u);
    return grad_y * dy_ds;
  }

  // The same with the arctangent soft round's slope (ArctanRound) in place of the
  // straight-through 1: inside (qmin, qmax), grad_x = grad_y * slope and
  // dy/ds = round(u) - u * slope (the derivative of s * soft-surrogate(x / s) in s); at and
  // beyond the clip points as above. A NaN u counts as inside and gives NaN (the slope of NaN).
  LSQ_HD M backward(M x, M grad_y, M s, const ArctanRound<M>& r, M& grad_x) const {
    const M u = div_rn(x, s);
    const bool below = u <= qmin;
    const bool above = u >= qmax;
    M dy_ds;
    if (below || above) {
      grad_x = M(0);
      dy_ds = below ? qmin : qmax;
    } else {
      const M slope = r.slope(u);
      grad_x = mul_rn(grad_y, slope);
      dy_ds = round_even(u) - mul_rn(u, slope);
    }
    return grad_y * dy_ds;
  }
};

// grad_step = g * sum, in float64 then cast, as the CPU kernels do; zero where the step was
// clamped (or is NaN): like torch.clamp_min, the clamp passes no gradient where it acted.
template <typename M>
LSQ_HD M scaled_step_grad(M raw_step, double sum, double grad_scale) {
  return raw_step >= static_cast<M>(kStepFloor) ? static_cast<M>(sum * grad_scale) : M(0);
}

}  // namespace lsq_fast::cuda
