// The CPU kernels' interface: raw pointers and sizes, one table per instruction set.
//
// lsq_kernels_impl.h holds the kernels once, as templates over at::vec::Vectorized; each
// isa_*.cpp compiles them for one instruction set, and kernels() picks the best table this
// machine runs, once, at first use.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "lsq_layout.h"

namespace lsq_fast::cpu {

using lsq_fast::Layout;
using lsq_fast::kStepFloor;

// The quantizers the kernels compute (docs/contract.md).
enum class Method : int {
  kLsq,      // section 1 (and section 4's soft-round gradient): params {step}, terms {dy/ds}
  kLsqPlus,  // section 2: params {step, offset}, terms {dy/ds, dy/dbeta}
  kQil,      // section 3, per-tensor: params {center, distance, gamma or null},
             // terms {dx_t/dalpha, dx_t/dbeta, dx_t/dgamma}
};

// What a call computes besides its tensors.
struct MethodArgs {
  Method method = Method::kLsq;
  int64_t qmin = 0, qmax = 1;    // LSQ, LSQ+: the integer grid. QIL: qmax = q, its levels
  double soft_round_k = 0;       // LSQ: > 0 replaces round's straight-through gradient by the
  double soft_round_scale = 0;   // slope of an arctan soft round: scale / (1 + (k (frac(u) - 1/2))^2)
  bool qil_weight = false;       // QIL: weights (sign, |w|, gamma) or activations
};

// The number of parameter arrays a method reads and of gradient terms its backward reduces.
constexpr int method_params(Method m) { return m == Method::kLsq ? 1 : m == Method::kLsqPlus ? 2 : 3; }
constexpr int method_terms(Method m) { return method_params(m); }

// x, y, grad_y, grad_x: `dtype` (float32, float16, bfloat16, float64), dense, one layout.
// params: method_params(method) arrays of `layout.channels` raw values in the math type
// (float64 for float64 x, else float32); the kernels clamp and transform them (QIL's gamma may
// be null: 1). term_sums: method_terms(method) * layout.channels doubles, [term][channel]: the
// sums of grad_y * d(y)/d(term) over each channel's elements, unscaled, reduced in an order
// fixed by the shape alone (not by the thread count).
struct KernelTable {
  const char* isa;
  void (*forward)(c10::ScalarType dtype, const MethodArgs& args, const void* x, const void* const* params,
                  void* y, Layout layout);
  void (*backward)(c10::ScalarType dtype, const MethodArgs& args, const void* grad_y, const void* x,
                   const void* const* params, void* grad_x, double* term_sums, Layout layout);
};

KernelTable kernels_default();  // any CPU: at::vec's generic vectors
KernelTable kernels_avx2();     // x86-64 with AVX2, FMA, F16C, BMI2
KernelTable kernels_avx512();   // x86-64 with AVX-512 F, BW, VL, DQ
// (An entry whose instruction set this compiler cannot target returns a null table.)

// The table for this machine; LSQ_FAST_CPU_ISA=default|avx2|avx512 caps the choice (tests
// use it to check that every instruction set gives the same bits).
const KernelTable& kernels();

}  // namespace lsq_fast::cpu
