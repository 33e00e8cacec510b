// Autograd for every method's forward op (lsq_forward, lsq_plus_forward, qil_forward), from one
// template, in C++ rather than through Python's torch.library.register_autograd: the Python
// wrapper costs about 40 us more per forward+backward (measured: 89 us with it, 49 us with this,
// on a 16-element tensor), more than the kernels themselves take on a small layer's weight.
//
// Every method's ops have one shape (lsq_fast/ops/registry.py): the forward takes x, then its
// learned tensors (an optional one may be absent), then plain arguments; the backward takes
// grad_y followed by exactly the forward's arguments and returns grad_x and one gradient per
// learned tensor. So the forward saves its tensor arguments for backward and its plain ones as
// IValues, and the backward hands them all back in order. Backend-independent: the forward
// redispatches below Autograd, so every backend's kernels get it. torch.compile traces through
// it (AOTAutograd records the forward and backward op calls).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace lsq_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename T>
constexpr bool kIsTensor = std::is_same_v<T, at::Tensor> || std::is_same_v<T, std::optional<at::Tensor>>;

// How many of the first I arguments are tensors: where argument I sits among the saved tensors.
template <size_t I, typename... Args>
constexpr size_t tensors_before() {
  constexpr bool is_tensor[] = {kIsTensor<std::decay_t<Args>>..., false};
  size_t count = 0;
  for (size_t i = 0; i < I; ++i) count += is_tensor[i];
  return count;
}

template <typename T>
at::Tensor as_saved(const T& t) {
  if constexpr (std::is_same_v<T, at::Tensor>) {
    return t;
  } else {
    return t.value_or(at::Tensor());  // undefined: absent (QIL's gamma of activations)
  }
}

template <typename T>
T from_saved(const at::Tensor& t) {
  if constexpr (std::is_same_v<T, at::Tensor>) {
    return t;
  } else {
    return t.defined() ? T(t) : std::nullopt;
  }
}

// Op names a method's two ops: Op::kForward, Op::kBackward (e.g. "lsq_fast::lsq_forward"),
// and Op::Grads, the backward's std::tuple of gradients. Forward is the forward's C++ signature.
template <typename Op, typename Forward>
struct QuantizerAutograd;

template <typename Op, typename... Args>
struct QuantizerAutograd<Op, at::Tensor(Args...)> {
  using BackwardSignature = typename Op::Grads(const at::Tensor&, Args...);
  static constexpr size_t kArgs = sizeof...(Args);

  class Function : public torch::autograd::Function<Function> {
   public:
    static at::Tensor forward(AutogradContext* ctx, Args... args) {
      save(ctx, std::index_sequence_for<Args...>{}, args...);
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      static const auto op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow(Op::kForward, "")
                                 .template typed<at::Tensor(Args...)>();
      return op.call(args...);
    }

    static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
      variable_list grads;
      if (grad_outputs[0].defined()) {
        const auto saved = ctx->get_saved_variables();
        static const auto op = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow(Op::kBackward, "")
                                   .template typed<BackwardSignature>();
        const auto all = call_backward(op, ctx, saved, grad_outputs[0], std::index_sequence_for<Args...>{});
        std::apply([&grads](const auto&... g) { (grads.push_back(g), ...); }, all);
        for (size_t i = 0; i < grads.size(); ++i) {
          if (!saved[i].defined()) grads[i] = at::Tensor();  // an absent tensor gets no gradient
        }
      }
      grads.resize(kArgs);  // the plain arguments get none
      return grads;
    }

   private:
    template <size_t... I>
    static void save(AutogradContext* ctx, std::index_sequence<I...>, const Args&... args) {
      std::vector<at::Tensor> tensors;
      (
          [&] {
            using T = std::decay_t<Args>;
            if constexpr (kIsTensor<T>) {
              tensors.push_back(as_saved(args));
            } else {
              ctx->saved_data[std::to_string(I)] = args;
            }
          }(),
          ...);
      ctx->save_for_backward(tensors);
    }

    template <typename Handle, size_t... I>
    static typename Op::Grads call_backward(const Handle& op, AutogradContext* ctx, const variable_list& saved,
                                            const at::Tensor& grad_y, std::index_sequence<I...>) {
      return op.call(grad_y, argument<I, std::decay_t<Args>>(ctx, saved)...);
    }

    template <size_t I, typename T>
    static T argument(AutogradContext* ctx, const variable_list& saved) {
      if constexpr (kIsTensor<T>) {
        return from_saved<T>(saved[tensors_before<I, Args...>()]);
      } else {
        return ctx->saved_data[std::to_string(I)].template to<T>();
      }
    }
  };

  static at::Tensor apply(Args... args) { return Function::apply(args...); }
};

// ---- the methods: their ops' names and gradients (schemas in lsq_ops.cpp) --------------------

using at::Tensor;
using std::optional;

struct Lsq {
  static constexpr const char* kForward = "lsq_fast::lsq_forward";
  static constexpr const char* kBackward = "lsq_fast::lsq_backward";
  using Grads = std::tuple<Tensor, Tensor>;  // x, step
  using Forward = Tensor(const Tensor&, const Tensor&, int64_t, int64_t, optional<int64_t>, optional<double>,
                         optional<double>);
};

struct LsqPlus {
  static constexpr const char* kForward = "lsq_fast::lsq_plus_forward";
  static constexpr const char* kBackward = "lsq_fast::lsq_plus_backward";
  using Grads = std::tuple<Tensor, Tensor, Tensor>;  // x, step, offset
  using Forward = Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t, optional<int64_t>,
                         optional<double>);
};

struct Qil {
  static constexpr const char* kForward = "lsq_fast::qil_forward";
  static constexpr const char* kBackward = "lsq_fast::qil_backward";
  using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor>;  // x, center, distance, gamma
  using Forward = Tensor(const Tensor&, const Tensor&, const Tensor&, const optional<Tensor>&, int64_t, bool);
};

template <typename Op>
constexpr auto autograd_of = &QuantizerAutograd<Op, typename Op::Forward>::apply;

}  // namespace
}  // namespace lsq_fast

TORCH_LIBRARY_IMPL(lsq_fast, Autograd, m) {
  m.impl("lsq_forward", lsq_fast::autograd_of<lsq_fast::Lsq>);
  m.impl("lsq_plus_forward", lsq_fast::autograd_of<lsq_fast::LsqPlus>);
  m.impl("qil_forward", lsq_fast::autograd_of<lsq_fast::Qil>);
}
