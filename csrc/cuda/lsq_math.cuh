// The contract's per-element arithmetic (shared/spec/quantizers.md, section 1) for the CUDA
// kernels. __host__ __device__ and free of torch and of CUDA-only headers outside the device
// pass, so g++ compiles the same functions for tests/cpp/test_cuda_math.cpp.
//
// Every operation whose rounding the forward's bits depend on is spelled as an intrinsic:
// the division is IEEE (__fdiv_rn, not the reciprocal -use_fast_math would make of `/`),
// the multiply is one rounding (__fmul_rn: never contracted into an FMA), the rounding is
// half to even (rintf: cvt.rni). Math is float32, or float64 for float64 tensors.
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

// A step below the floor (zero, negative) is clamped to it, without a host sync. A compare
// and select rather than fmax, so that a NaN step stays NaN, as in the reference.
template <typename M>
LSQ_HD M clamp_step(M s) {
  return s < static_cast<M>(kStepFloor) ? static_cast<M>(kStepFloor) : s;
}

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
};

// grad_step = g * sum, in float64 then cast, as the CPU kernels do; zero where the step was
// clamped (or is NaN): like torch.clamp_min, the clamp passes no gradient where it acted.
template <typename M>
LSQ_HD M scaled_step_grad(M raw_step, double sum, double grad_scale) {
  return raw_step >= static_cast<M>(kStepFloor) ? static_cast<M>(sum * grad_scale) : M(0);
}

}  // namespace lsq_fast::cuda
