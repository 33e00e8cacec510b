// Operator schemas of the lsq_fast library. Kernels register per backend (cpu/lsq_cpu.cpp,
// cuda/lsq_cuda_ops.cpp), autograd in lsq_autograd.cpp; fake kernels live in lsq_fast/_ops.py.
// Every op computes in float32 (float64 for float64 x) and returns x's dtype and layout; the
// parameter gradients are reduced in float32 or better, in an order fixed by the shape.
#include <torch/library.h>

#include "cpu/lsq_kernels.h"

TORCH_LIBRARY(lsq_fast, m) {
  // LSQ (docs/contract.md, section 1). Quantize-dequantize: y = s * round(clip(x / s, qmin, qmax)).
  // channel_axis=None: step has one element; otherwise step has x.size(channel_axis) elements.
  // grad_scale and soft_round_k do not change y: they are carried for the registered autograd,
  // which hands them to lsq_backward.
  m.def(
      "lsq_forward(Tensor x, Tensor step, int qmin, int qmax, int? channel_axis, float? grad_scale=None, "
      "float? soft_round_k=None) -> Tensor");
  // One pass: grad_x = grad_y inside (qmin, qmax), 0 outside; grad_step = g * sum over the
  // elements sharing a step of grad_y * {round(u) - u | qmin | qmax}, reduced in a fixed order.
  // grad_scale=None means g = 1 / sqrt(N * qmax), N the elements per step. soft_round_k = k
  // (section 4) replaces round's straight-through derivative 1 by the slope of an arctan soft
  // round of sharpness k, in grad_x and in dy/ds = round(u) - u * slope.
  m.def(
      "lsq_backward(Tensor grad_y, Tensor x, Tensor step, int qmin, int qmax, int? channel_axis, "
      "float? grad_scale, float? soft_round_k=None) -> (Tensor, Tensor)");

  // LSQ+ (section 2): y = s * round(clip((x - offset) / s, qmin, qmax)) + offset; offset is
  // shaped like step. The backward returns (grad_x, grad_step, grad_offset), both parameter
  // gradients scaled by the same g.
  m.def(
      "lsq_plus_forward(Tensor x, Tensor step, Tensor offset, int qmin, int qmax, int? channel_axis, "
      "float? grad_scale=None) -> Tensor");
  m.def(
      "lsq_plus_backward(Tensor grad_y, Tensor x, Tensor step, Tensor offset, int qmin, int qmax, "
      "int? channel_axis, float? grad_scale) -> (Tensor, Tensor, Tensor)");

  // QIL (section 3), one interval per tensor: y = round(x_t * levels) / levels with
  // x_t = sign(x) * clip(|x| / 2d + 1/2 - c / 2d, 0, 1)^gamma (weight=True; gamma=None is 1)
  // or clip(x / 2d + 1/2 - c / 2d, 0, 1) (weight=False, no gamma). The backward returns
  // (grad_x, grad_center, grad_distance, grad_gamma); grad_gamma is zeros when gamma is None.
  m.def("qil_forward(Tensor x, Tensor center, Tensor distance, Tensor? gamma, int levels, bool weight) -> Tensor");
  m.def(
      "qil_backward(Tensor grad_y, Tensor x, Tensor center, Tensor distance, Tensor? gamma, int levels, "
      "bool weight) -> (Tensor, Tensor, Tensor, Tensor)");

  // Which instruction set the CPU kernels dispatch to on this machine ("avx512", "avx2", "default").
  m.def("cpu_isa() -> str", [] { return std::string(lsq_fast::cpu::kernels().isa); });
}
