// The CUDA implementations of the lsq_fast ops: checks, layout and plan on the host, then the
// torch-free launchers of lsq_kernels.cu on the current stream. Built only where torch has
// CUDA (setup.py); CI compiles it with -fsyntax-only against the CPU wheel's headers.
//
// No host sync: nothing is read back from the device (a bad step is clamped inside the
// kernels, not checked), and the only allocations are the outputs and the backward's small
// partials buffer, from the caching allocator: the ops can be captured in a CUDA graph.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "cuda/lsq_cuda.h"
#include "lsq_host.h"

namespace lsq_fast {
namespace {

cuda::DType dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kDouble: return cuda::DType::kFloat64;
    default: TORCH_CHECK_TYPE(false, "lsq_fast: unsupported dtype ", x.scalar_type());  // check_lsq_args caught it
  }
}

bool aligned16(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    if (reinterpret_cast<std::uintptr_t>(t->const_data_ptr()) % 16 != 0) return false;
  return true;
}

// The plan takes nothing from the device (not its multiprocessor count): the same partition,
// and the same step-gradient bits, on every GPU and MIG slice (lsq_plan.h).
cuda::Plan plan_for(const at::Tensor& dense_x, std::optional<int64_t> axis, bool aligned, bool backward) {
  const cuda::Plan plan = cuda::make_plan(memory_layout(dense_x, axis), static_cast<int>(dense_x.element_size()),
                                          aligned, backward);
  TORCH_CHECK_VALUE(plan.grid_y > 0, "lsq_fast: too many channels for the CUDA kernels (",
                    dense_x.numel(), " elements in runs of fewer than ", cuda::kMinRowRun, ")");
  return plan;
}

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.is_cuda(), "lsq_fast: the CUDA kernels got x on ", x.device());
}

// grad_scale and soft_round_k are the backward's (the forward keeps the hard round): ignored,
// and checked by lsq_backward_cuda.
at::Tensor lsq_forward_cuda(const at::Tensor& x, const at::Tensor& step, int64_t qmin, int64_t qmax,
                            std::optional<int64_t> channel_axis, std::optional<double> /*grad_scale*/,
                            std::optional<double> /*soft_round_k*/) {
  const auto axis = check_lsq_args(x, step, qmin, qmax, channel_axis);
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xd = dense(x);
  at::Tensor y = at::empty_like(xd);
  if (xd.numel() == 0) return y;
  const at::Tensor s = step_for_math(step, x);
  const cuda::Plan plan = plan_for(xd, axis, aligned16({&xd, &y}), /*backward=*/false);
  C10_CUDA_CHECK(cuda::lsq_forward(dtype_of(xd), plan, xd.const_data_ptr(), s.const_data_ptr(), y.mutable_data_ptr(),
                                   static_cast<double>(qmin), static_cast<double>(qmax),
                                   c10::cuda::getCurrentCUDAStream()));
  return y;
}

std::tuple<at::Tensor, at::Tensor> lsq_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                     const at::Tensor& step, int64_t qmin, int64_t qmax,
                                                     std::optional<int64_t> channel_axis,
                                                     std::optional<double> grad_scale,
                                                     std::optional<double> soft_round_k) {
  const auto axis = check_lsq_args(x, step, qmin, qmax, channel_axis);
  check_grad_like(grad_y, x);
  checked_soft_round_scale(soft_round_k);  // the error for a bad k (the launcher computes c again)
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xd = dense(x);
  at::Tensor grad_x = at::empty_like(xd);
  if (xd.numel() == 0) return {grad_x, at::zeros_like(step)};
  const at::Tensor gy = same_layout(grad_y, xd);
  const at::Tensor s = step_for_math(step, x);
  const int64_t channels = s.numel();
  const double g = grad_scale_or_default(grad_scale, xd.numel(), channels, qmax);
  const cuda::Plan plan = plan_for(xd, axis, aligned16({&xd, &gy, &grad_x}), /*backward=*/true);
  at::Tensor grad_step = at::empty({channels}, s.options());
  const at::Tensor partials =
      plan.partials() > 0 ? at::empty({plan.partials()}, s.options().dtype(at::kDouble)) : at::Tensor();
  C10_CUDA_CHECK(cuda::lsq_backward(dtype_of(xd), plan, gy.const_data_ptr(), xd.const_data_ptr(), s.const_data_ptr(),
                                    grad_x.mutable_data_ptr(),
                                    partials.defined() ? partials.mutable_data_ptr<double>() : nullptr,
                                    grad_step.mutable_data_ptr(), g, static_cast<double>(qmin),
                                    static_cast<double>(qmax), soft_round_k, c10::cuda::getCurrentCUDAStream()));
  return {grad_x, grad_step.to(step.scalar_type()).view(step.sizes())};
}

}  // namespace
}  // namespace lsq_fast

TORCH_LIBRARY_IMPL(lsq_fast, CUDA, m) {
  m.impl("lsq_forward", &lsq_fast::lsq_forward_cuda);
  m.impl("lsq_backward", &lsq_fast::lsq_backward_cuda);
}
