// CPU implementations of the lsq_fast ops: checks, layout, and a call into the kernel table.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "cpu/lsq_kernels.h"
#include "lsq_host.h"

namespace lsq_fast {
namespace {

// On CPU the values cost no device sync to read, so a bad step is an error, not a clamp.
void check_step_values(const at::Tensor& math_step) {
  const int64_t n = math_step.numel();
  const auto check = [n](const auto* s) {
    for (int64_t i = 0; i < n; ++i)
      TORCH_CHECK_VALUE(std::isfinite(static_cast<double>(s[i])) && s[i] > 0,
                        "lsq_fast: step must be positive and finite, got ", s[i],
                        n > 1 ? " at channel " + std::to_string(i) : std::string());
  };
  if (math_step.scalar_type() == at::kDouble) check(math_step.const_data_ptr<double>());
  else check(math_step.const_data_ptr<float>());
}

at::Tensor lsq_forward_cpu(const at::Tensor& x, const at::Tensor& step, int64_t qmin, int64_t qmax,
                           std::optional<int64_t> channel_axis, std::optional<double> /*grad_scale*/) {
  const auto axis = check_lsq_args(x, step, qmin, qmax, channel_axis);
  const at::Tensor s = step_for_math(step, x);
  check_step_values(s);
  const at::Tensor xd = dense(x);
  at::Tensor y = at::empty_like(xd);
  cpu::kernels().forward(xd.scalar_type(), xd.const_data_ptr(), s.const_data_ptr(), y.mutable_data_ptr(),
                         memory_layout(xd, axis), qmin, qmax);
  return y;
}

std::tuple<at::Tensor, at::Tensor> lsq_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                    const at::Tensor& step, int64_t qmin, int64_t qmax,
                                                    std::optional<int64_t> channel_axis,
                                                    std::optional<double> grad_scale) {
  const auto axis = check_lsq_args(x, step, qmin, qmax, channel_axis);
  check_grad_like(grad_y, x);
  const at::Tensor s = step_for_math(step, x);
  check_step_values(s);
  const at::Tensor xd = dense(x);
  const at::Tensor gy = same_layout(grad_y, xd);
  at::Tensor grad_x = at::empty_like(xd);
  const Layout layout = memory_layout(xd, axis);

  const int64_t channels = step.numel();
  std::vector<double> sums(channels, 0.0);
  cpu::kernels().backward(xd.scalar_type(), gy.const_data_ptr(), xd.const_data_ptr(), s.const_data_ptr(),
                          grad_x.mutable_data_ptr(), sums.data(), layout, qmin, qmax);

  const double g = grad_scale_or_default(grad_scale, x.numel(), channels, qmax);
  // The step is clamped to the floor in the forward; like torch.clamp_min, the clamp passes
  // no gradient where it acted (nor for a NaN step).
  const at::Tensor s64 = s.to(at::kDouble);
  const double* steps = s64.const_data_ptr<double>();
  at::Tensor grad_step = at::empty({channels}, s64.options());
  double* out = grad_step.mutable_data_ptr<double>();
  for (int64_t c = 0; c < channels; ++c) out[c] = steps[c] >= cpu::kStepFloor ? g * sums[c] : 0.0;
  grad_step = grad_step.to(step.scalar_type()).view(step.sizes());
  return {grad_x, grad_step};
}

}  // namespace
}  // namespace lsq_fast

TORCH_LIBRARY_IMPL(lsq_fast, CPU, m) {
  m.impl("lsq_forward", &lsq_fast::lsq_forward_cpu);
  m.impl("lsq_backward", &lsq_fast::lsq_backward_cpu);
}
