// CPU implementations of the lsq_fast ops: checks, layout, a call into the kernel table, and
// the parameter gradients finished from the kernels' per-channel sums (in float64).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <string>
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

// A parameter's values in float64, to finish gradients on the host.
std::vector<double> values(const at::Tensor& p) {
  const at::Tensor p64 = p.to(at::kDouble).contiguous();
  const double* v = p64.const_data_ptr<double>();
  return std::vector<double>(v, v + p64.numel());
}

// A float64 gradient shaped, typed and placed like its parameter.
at::Tensor gradient_like(const std::vector<double>& g, const at::Tensor& param) {
  at::Tensor out = at::empty({static_cast<int64_t>(g.size())}, param.options().dtype(at::kDouble));
  std::copy(g.begin(), g.end(), out.mutable_data_ptr<double>());
  return out.to(param.scalar_type()).view(param.sizes());
}

// The kernels' parameter arrays: tensors in the math type, one pointer each (an undefined
// tensor passes a null array, which reads as ones).
std::vector<const void*> raw_params(const std::vector<at::Tensor>& params) {
  std::vector<const void*> raw;
  for (const at::Tensor& p : params) raw.push_back(p.defined() ? p.const_data_ptr() : nullptr);
  return raw;
}

// The kernels over a dense x.
at::Tensor run_forward(const cpu::MethodArgs& args, const at::Tensor& x, const std::vector<at::Tensor>& params,
                       std::optional<int64_t> axis) {
  const at::Tensor xd = dense(x);
  at::Tensor y = at::empty_like(xd);
  const std::vector<const void*> raw = raw_params(params);
  cpu::kernels().forward(xd.scalar_type(), args, xd.const_data_ptr(), raw.data(), y.mutable_data_ptr(),
                         memory_layout(xd, axis));
  return y;
}

// grad_x and the kernels' [term][channel] sums.
std::pair<at::Tensor, std::vector<double>> run_backward(const cpu::MethodArgs& args, const at::Tensor& grad_y,
                                                        const at::Tensor& x, const std::vector<at::Tensor>& params,
                                                        std::optional<int64_t> axis, int64_t channels) {
  check_grad_like(grad_y, x);
  const at::Tensor xd = dense(x);
  const at::Tensor gy = same_layout(grad_y, xd);
  at::Tensor grad_x = at::empty_like(xd);
  const std::vector<const void*> raw = raw_params(params);
  std::vector<double> sums(cpu::method_terms(args.method) * channels, 0.0);
  cpu::kernels().backward(xd.scalar_type(), args, gy.const_data_ptr(), xd.const_data_ptr(), raw.data(),
                          grad_x.mutable_data_ptr(), sums.data(), memory_layout(xd, axis));
  return {grad_x, sums};
}

// g * sum per channel; zero where the step was clamped to the floor (or is NaN): like
// torch.clamp_min, the clamp passes no gradient where it acted.
std::vector<double> step_gradient(const std::vector<double>& sums, const std::vector<double>& steps, double g) {
  std::vector<double> out(steps.size());
  for (size_t c = 0; c < steps.size(); ++c) out[c] = steps[c] >= cpu::kStepFloor ? g * sums[c] : 0.0;
  return out;
}

cpu::MethodArgs lsq_args(cpu::Method method, int64_t qmin, int64_t qmax, std::optional<double> soft_round_k) {
  cpu::MethodArgs args;
  args.method = method;
  args.qmin = qmin;
  args.qmax = qmax;
  args.soft_round_scale = checked_soft_round_scale(soft_round_k);
  args.soft_round_k = soft_round_k.value_or(0.0);
  return args;
}

// ---- LSQ -------------------------------------------------------------------------------------

at::Tensor lsq_forward_cpu(const at::Tensor& x, const at::Tensor& step, int64_t qmin, int64_t qmax,
                           std::optional<int64_t> channel_axis, std::optional<double> /*grad_scale*/,
                           std::optional<double> soft_round_k) {
  const auto axis = check_lsq_args(x, step, qmin, qmax, channel_axis);
  const at::Tensor s = step_for_math(step, x);
  check_step_values(s);
  return run_forward(lsq_args(cpu::Method::kLsq, qmin, qmax, soft_round_k), x, {s}, axis);
}

std::tuple<at::Tensor, at::Tensor> lsq_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                    const at::Tensor& step, int64_t qmin, int64_t qmax,
                                                    std::optional<int64_t> channel_axis,
                                                    std::optional<double> grad_scale,
                                                    std::optional<double> soft_round_k) {
  const auto axis = check_lsq_args(x, step, qmin, qmax, channel_axis);
  const at::Tensor s = step_for_math(step, x);
  check_step_values(s);
  const int64_t channels = step.numel();
  auto [grad_x, sums] = run_backward(lsq_args(cpu::Method::kLsq, qmin, qmax, soft_round_k), grad_y, x, {s}, axis, channels);
  const double g = grad_scale_or_default(grad_scale, x.numel(), channels, qmax);
  return {grad_x, gradient_like(step_gradient(sums, values(s), g), step)};
}

// ---- LSQ+ ------------------------------------------------------------------------------------

at::Tensor lsq_plus_forward_cpu(const at::Tensor& x, const at::Tensor& step, const at::Tensor& offset, int64_t qmin,
                                int64_t qmax, std::optional<int64_t> channel_axis,
                                std::optional<double> /*grad_scale*/) {
  const auto axis = check_lsq_args(x, step, qmin, qmax, channel_axis);
  check_offset(offset, step);
  const at::Tensor s = step_for_math(step, x);
  check_step_values(s);
  return run_forward(lsq_args(cpu::Method::kLsqPlus, qmin, qmax, std::nullopt), x, {s, step_for_math(offset, x)}, axis);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lsq_plus_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& step, const at::Tensor& offset, int64_t qmin,
    int64_t qmax, std::optional<int64_t> channel_axis, std::optional<double> grad_scale) {
  const auto axis = check_lsq_args(x, step, qmin, qmax, channel_axis);
  check_offset(offset, step);
  const at::Tensor s = step_for_math(step, x);
  check_step_values(s);
  const int64_t channels = step.numel();
  auto [grad_x, sums] = run_backward(lsq_args(cpu::Method::kLsqPlus, qmin, qmax, std::nullopt), grad_y, x,
                                     {s, step_for_math(offset, x)}, axis, channels);
  const double g = grad_scale_or_default(grad_scale, x.numel(), channels, qmax);
  const std::vector<double> step_sums(sums.begin(), sums.begin() + channels);
  std::vector<double> offset_grad(sums.begin() + channels, sums.end());
  for (double& v : offset_grad) v *= g;
  return {grad_x, gradient_like(step_gradient(step_sums, values(s), g), step), gradient_like(offset_grad, offset)};
}

// ---- QIL -------------------------------------------------------------------------------------

cpu::MethodArgs qil_args(int64_t levels, bool weight) {
  cpu::MethodArgs args;
  args.method = cpu::Method::kQil;
  args.qmin = 0;
  args.qmax = levels;
  args.qil_weight = weight;
  return args;
}

std::vector<at::Tensor> qil_params(const at::Tensor& x, const at::Tensor& center, const at::Tensor& distance,
                                   const std::optional<at::Tensor>& gamma) {
  return {step_for_math(center, x), step_for_math(distance, x),
          gamma.has_value() ? step_for_math(*gamma, x) : at::Tensor()};
}

at::Tensor qil_forward_cpu(const at::Tensor& x, const at::Tensor& center, const at::Tensor& distance,
                           const std::optional<at::Tensor>& gamma, int64_t levels, bool weight) {
  check_qil_args(x, center, distance, gamma, levels, weight);
  return run_forward(qil_args(levels, weight), x, qil_params(x, center, distance, gamma), std::nullopt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> qil_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& center, const at::Tensor& distance,
    const std::optional<at::Tensor>& gamma, int64_t levels, bool weight) {
  check_qil_args(x, center, distance, gamma, levels, weight);
  auto [grad_x, sums] =
      run_backward(qil_args(levels, weight), grad_y, x, qil_params(x, center, distance, gamma), std::nullopt, 1);
  // The kernels reduce d/dalpha, d/dbeta and d/dgamma; the chain rule through alpha = 0.5 / d
  // and beta = 0.5 - 0.5 c / d (d clamped to the floor, which passes no gradient where it acted):
  // dc = -0.5 / d dbeta, dd = -0.5 / d^2 dalpha + 0.5 c / d^2 dbeta.
  const double c = values(center)[0], raw_d = values(distance)[0];
  const double d = raw_d < cpu::kStepFloor ? cpu::kStepFloor : raw_d;
  const double d_alpha = sums[0], d_beta = sums[1];
  const double grad_c = -0.5 / d * d_beta;
  const double grad_d = raw_d >= cpu::kStepFloor ? (-0.5 * d_alpha + 0.5 * c * d_beta) / (d * d) : 0.0;
  return {grad_x, gradient_like({grad_c}, center), gradient_like({grad_d}, distance),
          gradient_like({gamma.has_value() ? sums[2] : 0.0}, gamma.has_value() ? *gamma : center)};
}

}  // namespace
}  // namespace lsq_fast

TORCH_LIBRARY_IMPL(lsq_fast, CPU, m) {
  m.impl("lsq_forward", &lsq_fast::lsq_forward_cpu);
  m.impl("lsq_backward", &lsq_fast::lsq_backward_cpu);
  m.impl("lsq_plus_forward", &lsq_fast::lsq_plus_forward_cpu);
  m.impl("lsq_plus_backward", &lsq_fast::lsq_plus_backward_cpu);
  m.impl("qil_forward", &lsq_fast::qil_forward_cpu);
  m.impl("qil_backward", &lsq_fast::qil_backward_cpu);
}
