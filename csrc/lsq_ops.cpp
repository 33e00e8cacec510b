// Operator schemas of the lsq_fast library. Kernels register per backend
// (cpu/lsq_cpu.cpp, later cuda/); fake kernels and autograd live in lsq_fast/_ops.py.
#include <torch/library.h>

#include "cpu/lsq_kernels.h"

TORCH_LIBRARY(lsq_fast, m) {
  // Quantize-dequantize: y = s * round(clip(x / s, qmin, qmax)), float32 math (float64 for
  // float64 x), y in x's dtype and layout. channel_axis=None: step has one element;
  // otherwise step has x.size(channel_axis) elements. grad_scale does not change y: it is
  // carried for the registered autograd, which hands it to lsq_backward.
  m.def(
      "lsq_forward(Tensor x, Tensor step, int qmin, int qmax, int? channel_axis, float? grad_scale=None) "
      "-> Tensor");
  // One pass: grad_x = grad_y inside (qmin, qmax), 0 outside; grad_step = g * sum over the
  // elements sharing a step of grad_y * {round(u) - u | qmin | qmax}, reduced in a fixed order.
  // grad_scale=None means g = 1 / sqrt(N * qmax), N the elements per step.
  m.def(
      "lsq_backward(Tensor grad_y, Tensor x, Tensor step, int qmin, int qmax, int? channel_axis, "
      "float? grad_scale) -> (Tensor, Tensor)");
  // Which instruction set the CPU kernels dispatch to on this machine ("avx512", "avx2", "default").
  m.def("cpu_isa() -> str", [] { return std::string(lsq_fast::cpu::kernels().isa); });
}
