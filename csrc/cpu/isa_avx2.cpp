// The CPU kernels for x86-64 with AVX2, FMA and F16C: at::vec's AVX2 intrinsics. The pragma
// must precede every include so that all inline code of this file is compiled for the
// target; the dispatcher only calls it where the CPU has it.
#include "cpu/lsq_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// g++ (unlike gcc) does not define the target's feature macros after the pragma; the
// headers (sleef.h, at::vec) select their code by them.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __BMI__ 1
#define __BMI2__ 1
#define CPU_CAPABILITY LSQ_AVX2
#define CPU_CAPABILITY_AVX2
#define LSQ_FAST_ISA isa_avx2
#include "cpu/lsq_kernels_impl.h"

namespace lsq_fast::cpu {
KernelTable kernels_avx2() { return {"avx2", &isa_avx2::forward, &isa_avx2::backward}; }
}  // namespace lsq_fast::cpu
#else
namespace lsq_fast::cpu {
KernelTable kernels_avx2() { return {nullptr, nullptr, nullptr}; }
}  // namespace lsq_fast::cpu
#endif
