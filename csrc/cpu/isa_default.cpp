// The CPU kernels for any machine: the compiler's baseline instruction set.
#define CPU_CAPABILITY LSQ_DEFAULT
#define LSQ_FAST_ISA isa_default
#include "cpu/lsq_kernels_impl.h"

namespace lsq_fast::cpu {
KernelTable kernels_default() { return {"default", &isa_default::forward, &isa_default::backward}; }
}  // namespace lsq_fast::cpu
