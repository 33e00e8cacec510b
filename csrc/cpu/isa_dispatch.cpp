// Picks the CPU kernel table once: the widest instruction set both built and supported.
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

#include "cpu/lsq_kernels.h"

namespace lsq_fast::cpu {
namespace {

#if defined(__x86_64__) && defined(__GNUC__)
bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
         __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
}
#else
bool cpu_has_avx512() { return false; }
bool cpu_has_avx2() { return false; }
#endif

KernelTable pick() {
  const char* env = std::getenv("LSQ_FAST_CPU_ISA");
  const std::string cap = env != nullptr ? env : "";
  TORCH_CHECK(cap.empty() || cap == "avx512" || cap == "avx2" || cap == "default",
              "lsq_fast: LSQ_FAST_CPU_ISA=", cap, " is not one of avx512, avx2, default");
  const bool allow_avx512 = cap.empty() || cap == "avx512";
  const bool allow_avx2 = allow_avx512 || cap == "avx2";
  if (allow_avx512 && kernels_avx512().isa != nullptr && cpu_has_avx512() && cpu_has_avx2()) return kernels_avx512();
  if (allow_avx2 && kernels_avx2().isa != nullptr && cpu_has_avx2()) return kernels_avx2();
  return kernels_default();
}

}  // namespace

const KernelTable& kernels() {
  static const KernelTable table = pick();
  return table;
}

}  // namespace lsq_fast::cpu
