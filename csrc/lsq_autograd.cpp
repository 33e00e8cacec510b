// Autograd for lsq_fast::lsq_forward, in C++ rather than through Python's
// torch.library.register_autograd: the Python wrapper costs about 40 us more per
// forward+backward (measured: 89 us with it, 49 us with this, on a 16-element tensor), more
// than the kernels themselves take on a small layer's weight. Backend-independent: it redispatches below Autograd, so every
// backend's kernels get it. torch.compile traces through it (AOTAutograd records the
// lsq_forward and lsq_backward calls it makes).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace lsq_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& x, const at::Tensor& step, int64_t qmin, int64_t qmax,
                        std::optional<int64_t> channel_axis, std::optional<double> grad_scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lsq_fast::lsq_forward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                               std::optional<int64_t>, std::optional<double>)>();
  return op.call(x, step, qmin, qmax, channel_axis, grad_scale);
}

std::tuple<at::Tensor, at::Tensor> call_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& step,
                                                 int64_t qmin, int64_t qmax, std::optional<int64_t> channel_axis,
                                                 std::optional<double> grad_scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lsq_fast::lsq_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                 std::optional<int64_t>, std::optional<double>)>();
  return op.call(grad_y, x, step, qmin, qmax, channel_axis, grad_scale);
}

class LsqFunction : public torch::autograd::Function<LsqFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& step, int64_t qmin,
                            int64_t qmax, std::optional<int64_t> channel_axis, std::optional<double> grad_scale) {
    ctx->save_for_backward({x, step});
    ctx->saved_data["qmin"] = qmin;
    ctx->saved_data["qmax"] = qmax;
    ctx->saved_data["channel_axis"] = channel_axis;
    ctx->saved_data["grad_scale"] = grad_scale;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_forward(x, step, qmin, qmax, channel_axis, grad_scale);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_y = grad_outputs[0];
    if (!grad_y.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    auto [grad_x, grad_step] =
        call_backward(grad_y, saved[0], saved[1], ctx->saved_data["qmin"].toInt(), ctx->saved_data["qmax"].toInt(),
                      ctx->saved_data["channel_axis"].toOptional<int64_t>(),
                      ctx->saved_data["grad_scale"].toOptional<double>());
    return {grad_x, grad_step, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor lsq_forward_autograd(const at::Tensor& x, const at::Tensor& step, int64_t qmin, int64_t qmax,
                                std::optional<int64_t> channel_axis, std::optional<double> grad_scale) {
  return LsqFunction::apply(x, step, qmin, qmax, channel_axis, grad_scale);
}

}  // namespace
}  // namespace lsq_fast

TORCH_LIBRARY_IMPL(lsq_fast, Autograd, m) {
  m.impl("lsq_forward", &lsq_fast::lsq_forward_autograd);
}
