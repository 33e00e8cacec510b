// CPU implementations of the lsq_fast ops: checks, layout, a call into the kernel table, and
// the parameter gradients finished from the kernels' per-channel sums (in float64).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/lsq_kernels.h"
#include "lsq_host.h"

namespace lsq_fast {
namespace {

// On CPU the values cost no device sync to read, so a bad step is an error, not a clamp.
// Passes over the parameters run in parallel chunks of this many: per-group steps of a Llama
// weight are 131072-524288 of them (groups of 128-32), where serial float64 copies of them cost
// as much as the walk itself.
constexpr int64_t kParamGrain = 65536;

// The math-type data of a per-channel parameter (float32, float64 for float64 x), typed.
template <typename Fn>
void with_math_data(const at::Tensor& math_param, const Fn& fn) {
  if (math_param.scalar_type() == at::kDouble) fn(math_param.const_data_ptr<double>());
  else fn(math_param.const_data_ptr<float>());
}

void check_step_values(const at::Tensor& math_step) {
  const int64_t n = math_step.numel();
  with_math_data(math_step, [n](const auto* s) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(s)>>;
    // 0 < v <= max: false for NaN, infinities and non-positive values; branch-free, so that
    // the loop vectorizes (isfinite's call did not: 15% of a group-of-32 forward).
    const auto good = [](T v) { return (v > T(0)) & (v <= std::numeric_limits<T>::max()); };
    const bool all_good = at::parallel_reduce(
        0, n, kParamGrain, true,
        [&](int64_t begin, int64_t end, bool ok) {
          bool all = true;
          for (int64_t i = begin; i < end; ++i) all &= good(s[i]);
          return ok && all;
        },
        [](bool a, bool b) { return a && b; });
    if (all_good) return;
    for (int64_t i = 0; i < n; ++i)  // the first bad one, for the message
      TORCH_CHECK_VALUE(good(s[i]), "lsq_fast: step must be positive and finite, got ", s[i],
                        n > 1 ? " at channel " + std::to_string(i) : std::string());
  });
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

// grad_x, and the float64 sums of each gradient term per channel, [term][channel].
std::pair<at::Tensor, at::Tensor> run_backward(const cpu::MethodArgs& args, const at::Tensor& grad_y,
                                               const at::Tensor& x, const std::vector<at::Tensor>& params,
                                               std::optional<int64_t> axis, int64_t channels) {
  check_grad_like(grad_y, x);
  const at::Tensor xd = dense(x);
  const at::Tensor gy = same_layout(grad_y, xd);
  at::Tensor grad_x = at::empty_like(xd);
  const std::vector<const void*> raw = raw_params(params);
  at::Tensor sums = at::empty({cpu::method_terms(args.method) * channels}, xd.options().dtype(at::kDouble));
  cpu::kernels().backward(xd.scalar_type(), args, gy.const_data_ptr(), xd.const_data_ptr(), raw.data(),
                          grad_x.mutable_data_ptr(), sums.mutable_data_ptr<double>(), memory_layout(xd, axis));
  return {grad_x, sums};
}

// A parameter's gradient, like `param` in shape and dtype: g * sums[first + c], computed in the
// math type (math_step's), and 0 where `zero_below_floor` and the step is below the floor or
// NaN: like torch.clamp_min, the clamp passes no gradient where it acted.
at::Tensor scaled_gradient(const at::Tensor& sums, int64_t first, double g, const at::Tensor& param,
                           const at::Tensor& math_step, bool zero_below_floor) {
  const int64_t n = param.numel();
  const double* sum = sums.const_data_ptr<double>() + first;
  at::Tensor out = at::empty({n}, math_step.options());
  with_math_data(math_step, [&](const auto* step) {
    using M = std::remove_const_t<std::remove_pointer_t<decltype(step)>>;
    M* o = out.mutable_data_ptr<M>();
    at::parallel_for(0, n, kParamGrain, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        o[c] = static_cast<M>(!zero_below_floor || step[c] >= cpu::kStepFloor ? g * sum[c] : 0.0);
    });
  });
  return out.to(param.scalar_type()).view(param.sizes());
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
  return {grad_x, scaled_gradient(sums, 0, g, step, s, true)};
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
  return {grad_x, scaled_gradient(sums, 0, g, step, s, true), scaled_gradient(sums, channels, g, offset, s, false)};
}

// ---- QIL -------------------------------------------------------------------------------------

// QIL's one-element parameters: the value, and a gradient like the parameter.
double value(const at::Tensor& p) { return p.to(at::kDouble).item<double>(); }
at::Tensor scalar_like(double v, const at::Tensor& param) {
  return at::full(param.sizes(), v, param.options().dtype(at::kDouble)).to(param.scalar_type());
}

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
  const double c = value(center), raw_d = value(distance);
  const double d = raw_d < cpu::kStepFloor ? cpu::kStepFloor : raw_d;
  const double* sum = sums.const_data_ptr<double>();
  const double d_alpha = sum[0], d_beta = sum[1];
  const double grad_c = -0.5 / d * d_beta;
  const double grad_d = raw_d >= cpu::kStepFloor ? (-0.5 * d_alpha + 0.5 * c * d_beta) / (d * d) : 0.0;
  return {grad_x, scalar_like(grad_c, center), scalar_like(grad_d, distance),
          scalar_like(gamma.has_value() ? sum[2] : 0.0, gamma.has_value() ? *gamma : center)};
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
