// C++ test of the lsq_fast CPU ops, called through the dispatcher as any C++ caller would.
// Hand-picked inputs with exact expected values from the contract (docs/contract.md,
// section 1): y = s * round_half_even(clip(x / s, qmin, qmax)) in float32; grad_x = grad_y
// where qmin < u < qmax, else 0; grad_step = g * sum(grad_y * dyds). Every step is a power
// of two, so x / s is exact and so is every expected value below.
//
// Built and run by CMake (`make ctest`); LSQ_FAST_CPU_ISA=default|avx2|avx512 caps the ISA.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "expect.h"

namespace {

using Forward = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, std::optional<int64_t>,
                           std::optional<double>, std::optional<double>);
using Backward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                     int64_t, int64_t, std::optional<int64_t>,
                                                     std::optional<double>, std::optional<double>);

at::Tensor forward(const at::Tensor& x, const at::Tensor& step, int64_t qmin, int64_t qmax,
                   std::optional<int64_t> axis = std::nullopt) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("lsq_fast::lsq_forward", "").typed<Forward>();
  return op.call(x, step, qmin, qmax, axis, std::nullopt, std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& step,
                                            int64_t qmin, int64_t qmax, std::optional<int64_t> axis,
                                            std::optional<double> grad_scale) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("lsq_fast::lsq_backward", "").typed<Backward>();
  return op.call(gy, x, step, qmin, qmax, axis, grad_scale, std::nullopt);
}

std::string cpu_isa() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("lsq_fast::cpu_isa", "").typed<std::string()>();
  return op.call();
}

at::Tensor f32(std::vector<float> v) { return at::tensor(v, at::kFloat); }

// Element-wise exact equality, signs of zero included (bitwise for these values).
bool same(const at::Tensor& got, const std::vector<float>& want) {
  const at::Tensor g = got.contiguous().reshape(-1);
  if (g.scalar_type() != at::kFloat || g.numel() != static_cast<int64_t>(want.size())) return false;
  const float* p = g.const_data_ptr<float>();
  bool ok = true;
  for (size_t i = 0; i < want.size(); ++i) {
    if (p[i] != want[i] || std::signbit(p[i]) != std::signbit(want[i])) {
      std::printf("  [%zu] got %.9g, want %.9g\n", i, p[i], want[i]);
      ok = false;
    }
  }
  return ok;
}

// True when fn throws c10::Error whose message mentions `word`.
bool throws_mentioning(const std::function<void()>& fn, const std::string& word) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    if (msg.find(word) != std::string::npos) return true;
    std::printf("  threw, but without \"%s\": %s\n", word.c_str(), msg.c_str());
    return false;
  }
  std::printf("  did not throw\n");
  return false;
}

void group(const char* name) { std::printf("%s\n", name); }

constexpr int64_t QMIN = -8, QMAX = 7;  // signed 4-bit

void test_forward_ties_and_clips() {
  group("forward: round half to even, clip points, out of range (step 0.5, int4)");
  const at::Tensor step = f32({0.5f});
  //                   u:   0.5    1.5    -0.5   2.5   -1.5   7    -8    6.98  -7.98  200   -200
  const at::Tensor x = f32({0.25f, 0.75f, -0.25f, 1.25f, -0.75f, 3.5f, -4.0f, 3.49f, -3.99f, 100.f, -100.f});
  EXPECT(same(forward(x, step, QMIN, QMAX), {0.0f, 1.0f, -0.0f, 1.0f, -1.0f, 3.5f, -4.0f, 3.5f, -4.0f, 3.5f, -4.0f}));
  // Unsigned 2-bit {0..3}: negatives clip to 0.
  EXPECT(same(forward(f32({-1.0f, 0.25f, 0.75f, 9.0f}), step, 0, 3), {0.0f, 0.0f, 1.0f, 1.5f}));
}

void test_backward_per_tensor() {
  group("backward per-tensor: grad_x masks, step gradient by hand");
  const at::Tensor step = f32({0.5f});
  // Strict at the clip points: u = 7 and u = -8 pass no gradient to x; u = 6.98, -7.98 do.
  {
    const at::Tensor x = f32({3.49f, 3.5f, -3.99f, -4.0f, 100.f, -100.f});
    const at::Tensor gy = f32({1.5f, 2.f, 3.f, 4.f, 5.f, 6.f});
    auto [gx, gs] = backward(gy, x, step, QMIN, QMAX, std::nullopt, 1.0);
    EXPECT(same(gx, {1.5f, 0.f, 3.f, 0.f, 0.f, 0.f}));
  }
  // x:     0.25  0.75  -0.25  3.5   -4.0  100   -100  1.25
  // u:     0.5   1.5   -0.5   7     -8    200   -200  2.5
  // dyds: -0.5   0.5    0.5   7(q)  -8(q) 7(q)  -8(q) -0.5
  // gy:    1     2      3     4      5    6      7    8
  // sum = -0.5 + 1 + 1.5 + 28 - 40 + 42 - 56 - 4 = -28
  const at::Tensor x = f32({0.25f, 0.75f, -0.25f, 3.5f, -4.0f, 100.f, -100.f, 1.25f});
  const at::Tensor gy = f32({1, 2, 3, 4, 5, 6, 7, 8});
  auto [gx, gs] = backward(gy, x, step, QMIN, QMAX, std::nullopt, 1.0);
  EXPECT(same(gx, {1, 2, 3, 0, 0, 0, 0, 8}));
  EXPECT(gs.sizes() == step.sizes());
  EXPECT(same(gs, {-28.0f}));
  // Explicit scale multiplies the sum.
  EXPECT(same(std::get<1>(backward(gy, x, step, QMIN, QMAX, std::nullopt, 0.25)), {-7.0f}));
  // Default g = 1 / sqrt(N * qmax) = 1 / sqrt(56): -28 / sqrt(56) = -sqrt(14).
  const at::Tensor gd = std::get<1>(backward(gy, x, step, QMIN, QMAX, std::nullopt, std::nullopt));
  EXPECT(std::abs(gd.item<float>() + std::sqrt(14.0f)) <= 1e-6f * std::sqrt(14.0f));
}

void test_per_channel() {
  group("per-channel: x [2,3], channel_axis 0, steps {0.5, 0.25}");
  const at::Tensor step = f32({0.5f, 0.25f});
  // Row 0 (s = 0.5):  u = 0.5, 1.5, 10  -> 0, 2, 7(clip)  -> y 0, 1, 3.5
  // Row 1 (s = 0.25): u = 0.5, 1.5, -12 -> 0, 2, -8(clip) -> y 0, 0.5, -2
  const at::Tensor x = f32({0.25f, 0.75f, 5.0f, 0.125f, 0.375f, -3.0f}).reshape({2, 3});
  EXPECT(same(forward(x, step, QMIN, QMAX, 0), {0.f, 1.f, 3.5f, 0.f, 0.5f, -2.f}));
  EXPECT(same(forward(x, step, QMIN, QMAX, -2), {0.f, 1.f, 3.5f, 0.f, 0.5f, -2.f}));  // axis -2 == 0
  // grad_y = 1: row 0 dyds -0.5 + 0.5 + 7 = 7; row 1 -0.5 + 0.5 - 8 = -8.
  auto [gx, gs] = backward(at::ones({2, 3}, at::kFloat), x, step, QMIN, QMAX, 0, 1.0);
  EXPECT(same(gx, {1, 1, 0, 1, 1, 0}));
  EXPECT(same(gs, {7.f, -8.f}));
}

void test_bad_inputs() {
  group("bad inputs throw c10::Error naming the step");
  const at::Tensor x = f32({0.25f, 0.75f, 1.0f, 2.0f}).reshape({2, 2});
  EXPECT(throws_mentioning([&] { forward(x, f32({0.5f, 0.5f}), QMIN, QMAX); }, "step"));        // per-tensor, 2 steps
  EXPECT(throws_mentioning([&] { forward(x, f32({0.5f, 0.5f, 0.5f}), QMIN, QMAX, 0); }, "step"));  // 3 steps, 2 rows
  EXPECT(throws_mentioning([&] { forward(x, f32({0.0f}), QMIN, QMAX); }, "step"));
  EXPECT(throws_mentioning([&] { forward(x, f32({-0.5f}), QMIN, QMAX); }, "step"));
  EXPECT(throws_mentioning([&] { backward(at::ones_like(x), x, f32({0.5f, -1.0f}), QMIN, QMAX, 1, 1.0); }, "step"));
}

}  // namespace

int main() {
  std::printf("lsq_fast CPU ops, kernels for ISA: %s\n", cpu_isa().c_str());
  const std::function<void()> groups[] = {test_forward_ties_and_clips, test_backward_per_tensor, test_per_channel,
                                          test_bad_inputs};
  for (const auto& g : groups) {
    try {
      g();
    } catch (const std::exception& e) {  // an unexpected error fails the group, not the run
      ++lsq_fast_test::failed;
      std::printf("  FAILED: unexpected exception: %s\n", e.what());
    }
  }
  return lsq_fast_test::expect_summary();
}
