#include "lsq_host.h"

#include <ATen/WrapDimUtils.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace lsq_fast {

namespace {
bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}
}  // namespace

std::optional<int64_t> check_lsq_args(const at::Tensor& x, const at::Tensor& step, int64_t qmin,
                                      int64_t qmax, std::optional<int64_t> channel_axis) {
  TORCH_CHECK_TYPE(is_supported_dtype(x.scalar_type()),
                   "lsq_fast: x must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
  TORCH_CHECK_TYPE(step.scalar_type() == at::kFloat || (step.scalar_type() == at::kDouble && x.scalar_type() == at::kDouble),
                   "lsq_fast: step must be float32 (float64 allowed only with float64 x), got ", step.scalar_type());
  TORCH_CHECK_VALUE(x.device() == step.device(), "lsq_fast: x and step must be on the same device, got x on ",
                    x.device(), " and step on ", step.device());
  TORCH_CHECK_VALUE(qmin < qmax, "lsq_fast: need qmin < qmax, got qmin=", qmin, " qmax=", qmax);
  if (!channel_axis.has_value()) {
    TORCH_CHECK_VALUE(step.numel() == 1, "lsq_fast: per-tensor quantization needs a step with one element, got ",
                      step.numel(), " elements (pass channel_axis for per-channel steps)");
    return std::nullopt;
  }
  TORCH_CHECK_VALUE(x.dim() > 0, "lsq_fast: channel_axis needs x with at least one dimension");
  TORCH_CHECK_VALUE(*channel_axis >= -x.dim() && *channel_axis < x.dim(), "lsq_fast: channel_axis ", *channel_axis,
                    " is out of range for x with ", x.dim(), " dimensions");
  const int64_t axis = at::maybe_wrap_dim(*channel_axis, x.dim());
  TORCH_CHECK_VALUE(step.numel() == x.size(axis), "lsq_fast: per-channel step must have x.shape[", axis,
                    "] = ", x.size(axis), " elements, got ", step.numel());
  return axis;
}

void check_offset(const at::Tensor& offset, const at::Tensor& step) {
  TORCH_CHECK_VALUE(offset.sizes() == step.sizes() && offset.scalar_type() == step.scalar_type() &&
                        offset.device() == step.device(),
                    "lsq_fast: offset must match step in shape, dtype and device, got offset ", offset.sizes(), " ",
                    offset.scalar_type(), " on ", offset.device(), " and step ", step.sizes(), " ",
                    step.scalar_type(), " on ", step.device());
}

void check_qil_args(const at::Tensor& x, const at::Tensor& center, const at::Tensor& distance,
                    const std::optional<at::Tensor>& gamma, int64_t levels, bool weight) {
  TORCH_CHECK_TYPE(is_supported_dtype(x.scalar_type()),
                   "lsq_fast: x must be a float32, float16, bfloat16 or float64 tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(levels >= 1, "lsq_fast: QIL needs levels >= 1, got ", levels);
  TORCH_CHECK_VALUE(weight || !gamma.has_value(),
                    "lsq_fast: QIL's exponent gamma is for weights only; activations use gamma = 1");
  const auto check = [&x](const at::Tensor& p, const char* name) {
    TORCH_CHECK_VALUE(p.numel() == 1, "lsq_fast: QIL's ", name, " must be a tensor with one element (one per layer)");
    TORCH_CHECK_TYPE(p.scalar_type() == at::kFloat || (p.scalar_type() == at::kDouble && x.scalar_type() == at::kDouble),
                     "lsq_fast: QIL's ", name, " must be float32 (float64 allowed only with float64 x), got ",
                     p.scalar_type());
    TORCH_CHECK_VALUE(p.device() == x.device(), "lsq_fast: QIL's ", name, " is on ", p.device(), " but x is on ",
                      x.device());
  };
  check(center, "center");
  check(distance, "distance");
  if (gamma.has_value()) check(*gamma, "gamma");
}

double checked_soft_round_scale(std::optional<double> k) {
  if (!k.has_value()) return 0.0;
  TORCH_CHECK_VALUE(std::isfinite(*k) && *k > 0,
                    "lsq_fast: the soft round's sharpness k (soft_round_k) must be a positive finite float, got ", *k);
  return soft_round_scale(*k);
}

void check_grad_like(const at::Tensor& grad_y, const at::Tensor& x) {
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "lsq_fast: grad_y has shape ", grad_y.sizes(),
                    " but x has shape ", x.sizes());
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), "lsq_fast: grad_y is ", grad_y.scalar_type(),
                   " but x is ", x.scalar_type());
  TORCH_CHECK_VALUE(grad_y.device() == x.device(), "lsq_fast: grad_y is on ", grad_y.device(), " but x is on ",
                    x.device());
}

at::Tensor dense(const at::Tensor& x) {
  return x.is_non_overlapping_and_dense() ? x : x.contiguous();
}

at::Tensor same_layout(const at::Tensor& grad_y, const at::Tensor& like) {
  // Strides of size-1 dimensions never matter; compare the rest.
  bool same = grad_y.is_non_overlapping_and_dense();
  for (int64_t d = 0; same && d < like.dim(); ++d)
    same = like.size(d) <= 1 || grad_y.stride(d) == like.stride(d);
  return same ? grad_y : at::empty_like(like).copy_(grad_y);
}

Layout memory_layout(const at::Tensor& dense_x, std::optional<int64_t> channel_axis) {
  const int64_t n = dense_x.numel();
  if (!channel_axis.has_value()) return Layout{1, 1, n};
  const int64_t channels = dense_x.size(*channel_axis);
  if (n == 0) return Layout{0, channels, 1};
  if (channels == 1) return Layout{1, 1, n};
  // In a dense tensor, the stride of the channel axis is the number of elements that sit
  // inside one channel step in memory; everything outside it repeats every C * stride.
  const int64_t inner = dense_x.stride(*channel_axis);
  return Layout{n / (channels * inner), channels, inner};
}

double grad_scale_or_default(std::optional<double> grad_scale, int64_t numel, int64_t steps, int64_t qmax) {
  if (grad_scale.has_value()) return *grad_scale;
  const int64_t numel_per_step = numel / std::max<int64_t>(steps, 1);
  return 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(numel_per_step, 1)) * static_cast<double>(qmax));
}

at::Tensor step_for_math(const at::Tensor& step, const at::Tensor& x) {
  const auto math = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return step.to(math).contiguous();
}

}  // namespace lsq_fast
