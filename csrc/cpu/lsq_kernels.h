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

// x, y, grad_y, grad_x: `dtype` (float32, float16, bfloat16, float64), dense, one layout.
// step: `layout.channels` values in the math type (float64 for float64 x, else float32).
// channel_sums: `layout.channels` doubles, sum of grad_y * dy/ds per channel, unscaled,
// reduced in an order fixed by the shape alone (not by the thread count).
struct KernelTable {
  const char* isa;
  void (*forward)(c10::ScalarType dtype, const void* x, const void* step, void* y,
                  Layout layout, int64_t qmin, int64_t qmax);
  void (*backward)(c10::ScalarType dtype, const void* grad_y, const void* x, const void* step,
                   void* grad_x, double* channel_sums, Layout layout, int64_t qmin, int64_t qmax);
};

KernelTable kernels_default();  // any CPU: at::vec's generic vectors
KernelTable kernels_avx2();     // x86-64 with AVX2, FMA, F16C, BMI2
KernelTable kernels_avx512();   // x86-64 with AVX-512 F, BW, VL, DQ
// (An entry whose instruction set this compiler cannot target returns a null table.)

// The table for this machine; LSQ_FAST_CPU_ISA=default|avx2|avx512 caps the choice (tests
// use it to check that every instruction set gives the same bits).
const KernelTable& kernels();

}  // namespace lsq_fast::cpu
