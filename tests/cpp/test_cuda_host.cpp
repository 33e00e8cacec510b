// Host test of the CUDA backend's shared pieces, built by g++ with no CUDA and no torch: the
// launch plan (csrc/cuda/lsq_plan.h: which kernel, pack width, grid, partials) with the index
// helpers the kernels use, and the per-element arithmetic (csrc/cuda/lsq_math.cuh) that the
// kernels compile for the device, the arctan soft-round backward (LG-LSQ) included. What the
// device build changes (intrinsics for division, multiply, rint and floor) is checked in CI on
// the PTX (tests/test_cuda_codegen.py) and on a GPU by the Python contract suite.
//
// Built and run by CMake (`make ctest`).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/lsq_math.cuh"
#include "cuda/lsq_plan.h"
#include "expect.h"

namespace {

using lsq_fast::Layout;
using namespace lsq_fast::cuda;

constexpr int kSms = 132;  // an H100 SXM

// Every element of the tensor lies in exactly one rows-kernel item, with its own channel:
// element i of layout [outer, channels, inner] has step (i / inner) % channels.
void expect_rows_cover(const Layout& l, const Plan& p) {
  std::vector<int> seen(l.numel(), 0);
  bool channels_ok = true;
  for (int64_t item = 0; item < p.items; ++item) {
    const RowsItem it = rows_item(p, item);
    for (int64_t i = it.begin; i < it.end; ++i) {
      ++seen[i];
      channels_ok &= it.channel == (l.channels == 1 ? 0 : (i / l.inner) % l.channels);
    }
    channels_ok &= it.begin % p.vec == 0;  // every item starts pack-aligned
  }
  bool once = true;
  for (int s : seen) once &= s == 1;
  EXPECT(once);
  EXPECT(channels_ok);
}

// Every (row, column) of the cols kernel's matrix is loaded by exactly one (band, ty, k), and
// column j's step is (j / inner): the channel of element r * cols + j.
void expect_cols_cover(const Layout& l, const Plan& p, bool backward) {
  std::vector<int> rows_seen(p.rows, 0);
  const int ty_count = kThreads / p.tx;
  for (int64_t band = 0; band < p.bands; ++band)
    for (int ty = 0; ty < ty_count; ++ty)
      for (int k = 0; k < unroll_for(p.vec, backward); ++k) {
        const int64_t r = cols_row(p, band, ty, k);
        if (r < p.rows) ++rows_seen[r];
      }
  bool once = true;
  for (int s : rows_seen) once &= s == 1;
  EXPECT(once);
  EXPECT(static_cast<int64_t>(p.grid_y) * p.tx * p.vec >= p.cols);
  bool channels_ok = true;
  for (int64_t j = 0; j < p.cols; ++j) channels_ok &= cols_channel(p, j) == j / l.inner;
  EXPECT(channels_ok);
}

void test_plans() {
  // A weight, per channel on axis 0: whole rows, one launch (final), 16-byte packs.
  const Layout weight{1, 512, 2304};
  const Plan w = make_plan(weight, 4, true, kSms, true);
  EXPECT(w.kind == KernelKind::kRows && w.per_row && w.vec == 4);
  EXPECT(w.final && w.partials() == 0 && w.chunks_per_row == 1 && w.items == 512);
  expect_rows_cover(weight, w);

  // A weight too long for one item is split, and its partials combined.
  const Layout wide_weight{1, 8, 40000};
  const Plan ww = make_plan(wide_weight, 4, true, kSms, true);
  EXPECT(!ww.final && ww.chunks_per_row > 1 && ww.partials() == 8 * ww.chunks_per_row);
  expect_rows_cover(wide_weight, ww);

  // Per-tensor, large: a grid of kBlocksPerSm blocks per SM, one partial per block.
  const Layout big{1, 1, (int64_t{1} << 24) + 3};
  const Plan t = make_plan(big, 4, true, kSms, true);
  EXPECT(t.kind == KernelKind::kRows && !t.per_row && t.vec == 4);
  EXPECT(t.grid_x == kSms * kBlocksPerSm && !t.final && t.partials() == t.grid_x);
  // Per-tensor, small: one block, which writes grad_step itself.
  const Plan small = make_plan(Layout{1, 1, 1000}, 2, true, kSms, true);
  EXPECT(small.grid_x == 1 && small.final && small.vec == 8);
  expect_rows_cover(Layout{1, 1, 1000}, small);
  // Unaligned pointers: element by element.
  EXPECT(make_plan(Layout{1, 1, 1000}, 4, false, kSms, true).vec == 1);

  // NCHW activation on axis 1: a row per (image, channel), cut into chunks of 2048 (256
  // threads x 4 floats x 2 packs in flight), partials [N, C, chunks].
  const Layout nchw{8, 64, 3136};
  const Plan a = make_plan(nchw, 4, true, kSms, true);
  EXPECT(a.kind == KernelKind::kRows && a.per_row && a.vec == 4 && a.chunk == 2048 && a.chunks_per_row == 2);
  EXPECT(!a.final && a.partial_outer == 8 && a.partial_inner == 2 && a.partials() == 8 * 64 * 2);
  expect_rows_cover(nchw, a);
  // Rows that straddle a 16-byte pack (7x7 maps in bfloat16... 49 elements): element by element.
  const Plan odd = make_plan(Layout{1, 32, 49}, 2, true, kSms, true);
  EXPECT(odd.vec == 1);
  expect_rows_cover(Layout{1, 32, 49}, odd);

  // channels_last activation on axis 1 (memory [N*H*W, C]): the cols kernel.
  const Layout nhwc{8 * 56 * 56, 64, 1};
  const Plan c = make_plan(nhwc, 4, true, kSms, true);
  EXPECT(c.kind == KernelKind::kCols && c.vec == 4 && c.tx == 16 && c.grid_y == 1);
  EXPECT(!c.final && c.partials() == static_cast<int64_t>(c.grid_x) * 64);
  expect_cols_cover(nhwc, c, true);
  // 16-bit packs in the cols kernel hold 4 elements, not 8.
  EXPECT(make_plan(nhwc, 2, true, kSms, true).vec == kColsMaxVec);
  // Few rows: one band, one block per column block, grad_step written directly.
  const Layout linear{4, 300, 1};
  const Plan lin = make_plan(linear, 4, true, kSms, true);
  EXPECT(lin.kind == KernelKind::kCols && lin.grid_x == 1 && lin.final);
  expect_cols_cover(linear, lin, true);
  // One step per element of a vector (a bias-like tensor, axis 0): the cols kernel, one launch.
  const Plan vec_steps = make_plan(Layout{1, 100000, 1}, 4, true, kSms, true);
  EXPECT(vec_steps.kind == KernelKind::kCols && vec_steps.final && vec_steps.grid_y == 98);
  expect_cols_cover(Layout{1, 100000, 1}, vec_steps, true);
  // Short channel runs (inner > 1) go through the cols kernel, combined over inner.
  const Layout short_runs{16, 10, 6};
  const Plan sr = make_plan(short_runs, 4, true, kSms, false);
  EXPECT(sr.kind == KernelKind::kCols && !sr.final && sr.partial_inner == 6);
  expect_cols_cover(short_runs, sr, false);

  // Random layouts: every element covered once, with its channel.
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 200; ++trial) {
    const Layout l{1 + static_cast<int64_t>(rng() % 9), 1 + static_cast<int64_t>(rng() % 40),
                   1 + static_cast<int64_t>(rng() % 1500)};
    const int elem = trial % 3 == 0 ? 2 : trial % 3 == 1 ? 4 : 8;
    const bool backward = trial % 2 == 0;
    const Plan p = make_plan(l, elem, trial % 5 != 0, 1 + static_cast<int>(rng() % 140), backward);
    EXPECT(p.grid_x >= 1 && p.grid_y >= 1);
    if (p.kind == KernelKind::kRows) expect_rows_cover(l, p);
    else expect_cols_cover(l, p, backward);
  }
}

uint32_t bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

void test_element_math() {
  const Quantizer<float> q{-8.0f, 7.0f};  // signed 4-bit
  const float s = 0.25f;
  // Ties round to even: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2 (in steps).
  EXPECT(q.forward(0.125f, s) == 0.0f);
  EXPECT(q.forward(0.375f, s) == 0.5f);
  EXPECT(q.forward(-0.625f, s) == -0.5f);
  // Clip points and beyond; -0.0 keeps its sign; NaN stays NaN.
  EXPECT(q.forward(1.75f, s) == 1.75f && q.forward(100.0f, s) == 1.75f && q.forward(-5.0f, s) == -2.0f);
  EXPECT(bits(q.forward(-0.0f, s)) == bits(-0.0f) && bits(q.forward(-0.01f, s)) == bits(-0.0f));
  EXPECT(std::isnan(q.forward(NAN, s)));
  const Quantizer<float> u{0.0f, 15.0f};  // unsigned 4-bit: u == -0.0 is not below qmin
  EXPECT(bits(u.forward(-0.0f, s)) == bits(-0.0f) && u.forward(-1.0f, s) == 0.0f);

  // Backward: strict at the clip points, dy/ds per region.
  float gx = -1.0f;
  EXPECT(q.backward(1.75f, 2.0f, s, gx) == 2.0f * 7.0f && gx == 0.0f);  // u == qmax
  EXPECT(q.backward(-2.0f, 2.0f, s, gx) == 2.0f * -8.0f && gx == 0.0f);  // u == qmin
  EXPECT(q.backward(0.3f, 2.0f, s, gx) == 2.0f * (1.0f - 0.3f / 0.25f) && gx == 2.0f);
  EXPECT(std::isnan(q.backward(NAN, 2.0f, s, gx)) && gx == 2.0f);  // NaN is inside

  // The step floor: a zero or negative step divides by 2^-126; a NaN step stays NaN and passes
  // no gradient.
  EXPECT(clamp_step(0.0f) == static_cast<float>(lsq_fast::kStepFloor) && clamp_step(-1.0f) == clamp_step(0.0f));
  EXPECT(std::isnan(clamp_step(NAN)));
  EXPECT(scaled_step_grad(0.5f, 3.0, 0.5) == 1.5f && scaled_step_grad(0.0f, 3.0, 0.5) == 0.0f);
  EXPECT(scaled_step_grad(NAN, 3.0, 0.5) == 0.0f);

  // Random inputs against a float64 oracle: x / s in float64 rounded once to float32 is the
  // correctly rounded quotient (53 >= 2 * 24 + 2), so the forward must match it bit for bit.
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  bool all_same = true;
  for (int i = 0; i < 200000; ++i) {
    const float step = std::ldexp(1.0f + (rng() % 1000) / 1000.0f, -static_cast<int>(rng() % 12));
    const float x = normal(rng) * step * 6.0f;
    const float uq = static_cast<float>(static_cast<double>(x) / static_cast<double>(step));
    const float clipped = uq < -8.0f ? -8.0f : (uq > 7.0f ? 7.0f : uq);
    const float expected = std::nearbyint(clipped) * step;
    all_same &= bits(q.forward(x, step)) == bits(expected);
  }
  EXPECT(all_same);
}

// LG-LSQ's arctangent soft round in the backward (spec section 4; the project's reading of the
// paper's abstract, not a transcription of its equations). The formula, written plainly: inside
// (qmin, qmax), f = u - floor(u), t = k (f - 1/2), slope = c / (1 + t^2), c = k / (2 atan(k/2)),
// grad_x = grad_y * slope, dy/ds = round(u) - u * slope; at and beyond the clip points as STE.
template <typename M>
M plain_soft_backward(M qmin, M qmax, M k, M c, M x, M grad_y, M s, M& grad_x) {
  const M u = x / s;
  if (u <= qmin) {
    grad_x = 0;
    return grad_y * qmin;
  }
  if (u >= qmax) {
    grad_x = 0;
    return grad_y * qmax;
  }
  const M f = u - std::floor(u);
  const M t = k * (f - M(0.5));
  const M slope = c / (1 + t * t);
  grad_x = grad_y * slope;
  return grad_y * (std::nearbyint(u) - u * slope);
}

// The soft round itself, in float64: n + 1/2 + atan(k (f - 1/2)) / (2 atan(k/2)).
double soft_round(double u, double k) {
  const double n = std::floor(u);
  return n + 0.5 + std::atan(k * (u - n - 0.5)) / (2 * std::atan(k / 2));
}

template <typename M>
bool same_bits(M a, M b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

template <typename M>
void expect_soft_matches_plain(M qmin, M qmax, double k, unsigned seed) {
  const M km = static_cast<M>(k);
  const M c = static_cast<M>(soft_round_scale(k));
  const Quantizer<M> q{qmin, qmax};
  const ArctanRound<M> r{km, c};
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  bool all_same = true;
  for (int i = 0; i < 100000; ++i) {
    const M step = static_cast<M>(std::ldexp(1.0 + (rng() % 1000) / 1000.0, -static_cast<int>(rng() % 12)));
    const M x = static_cast<M>(normal(rng) * step * (qmax - qmin) * 0.4);
    const M gy = static_cast<M>(normal(rng));
    M gx = -1, gx_plain = -2;
    const M dyds = q.backward(x, gy, step, r, gx);
    const M dyds_plain = plain_soft_backward(qmin, qmax, km, c, x, gy, step, gx_plain);
    all_same &= same_bits(dyds, dyds_plain) && same_bits(gx, gx_plain);
  }
  EXPECT(all_same);
}

void test_soft_round_math() {
  // c = k / (2 atan(k/2)), in float64; 1 below k = 1e-8 (a subnormal k included, whose k/2
  // would round), where the formula's value is 1 to float64 precision.
  for (double k : {1e-8, 1e-3, 0.5, 1.0, 4.0, 10.0, 100.0, 1e6})
    EXPECT(soft_round_scale(k) == k / (2 * std::atan(k / 2)));
  EXPECT(soft_round_scale(1e-9) == 1.0 && soft_round_scale(1e-300) == 1.0);
  EXPECT(soft_round_scale(4.9406564584124654e-324) == 1.0);
  EXPECT(std::fabs(soft_round_scale(1e-7) - 1.0) < 1e-15);

  // The slope is the soft round's derivative (a central difference in float64), largest at the
  // half-integers (c) and smallest, never zero, at the integers (c / (1 + k^2/4)); over a unit
  // interval it integrates to exactly 1, the soft round's rise (Simpson's rule).
  for (double k : {0.25, 1.0, 4.0, 12.0}) {
    const ArctanRound<double> r{k, soft_round_scale(k)};
    bool derivative_ok = true;
    for (double u = -3.9; u < 4.0; u += 0.0625) {
      const double h = 1e-6;
      const double fd = (soft_round(u + h, k) - soft_round(u - h, k)) / (2 * h);
      derivative_ok &= std::fabs(fd - r.slope(u)) < 1e-6 * (1 + fd);
    }
    EXPECT(derivative_ok);
    EXPECT(r.slope(2.5) == r.c && r.slope(-1.5) == r.c);
    EXPECT(r.slope(3.0) == r.c / (1 + k * k / 4) && r.slope(3.0) > 0);
    double integral = 0;
    const int n = 2000;
    for (int i = 0; i <= n; ++i) {
      const double w = i == 0 || i == n ? 1 : (i % 2 ? 4 : 2);
      integral += w * r.slope(1.0 + static_cast<double>(i) / n);  // slope(2) is the limit at f -> 1
    }
    integral /= 3 * n;
    EXPECT(std::fabs(integral - 1) < 1e-9);
  }
  // k -> 0: the straight-through slope 1.
  EXPECT(std::fabs(ArctanRound<double>{1e-4, soft_round_scale(1e-4)}.slope(0.5) - 1) < 1e-8);

  // The kernels' backward against the plain formula, bit for bit (float32 and float64, signed
  // and unsigned grids): the same IEEE operations, each rounded once.
  expect_soft_matches_plain<float>(-8.0f, 7.0f, 4.0, 7);
  expect_soft_matches_plain<float>(0.0f, 3.0f, 10.0, 8);
  expect_soft_matches_plain<float>(-128.0f, 127.0f, 0.7, 9);
  expect_soft_matches_plain<double>(-8.0, 7.0, 4.0, 10);
  expect_soft_matches_plain<double>(0.0, 255.0, 25.0, 11);

  // Hand-checked values, k = 4 on the signed 4-bit grid, s = 0.25.
  const Quantizer<float> q{-8.0f, 7.0f};
  const float c = static_cast<float>(soft_round_scale(4.0));  // 2 / atan(2) = 1.80644...
  const ArctanRound<float> r{4.0f, c};
  EXPECT(std::fabs(c - 1.8064421f) < 1e-6f);
  float gx = -1.0f;
  // u = 2.5 (a half-integer): slope c; dy/ds = round(2.5) - 2.5 c = 2 - 2.5 c.
  EXPECT(q.backward(0.625f, 2.0f, 0.25f, r, gx) == 2.0f * (2.0f - 2.5f * c) && gx == 2.0f * c);
  // u = 3 (an integer): slope c / 5; dy/ds = 3 - 3 c / 5.
  const float at_int = c / 5.0f;
  EXPECT(q.backward(0.75f, 1.0f, 0.25f, r, gx) == 3.0f - 3.0f * at_int && gx == at_int);
  // Clip points and beyond as the straight-through backward: grad_x = 0, dy/ds = qmin / qmax.
  EXPECT(q.backward(1.75f, 2.0f, 0.25f, r, gx) == 2.0f * 7.0f && gx == 0.0f);   // u == qmax
  EXPECT(q.backward(-2.0f, 2.0f, 0.25f, r, gx) == 2.0f * -8.0f && gx == 0.0f);  // u == qmin
  EXPECT(q.backward(9.0f, 2.0f, 0.25f, r, gx) == 2.0f * 7.0f && gx == 0.0f);
  EXPECT(q.backward(-9.0f, 2.0f, 0.25f, r, gx) == 2.0f * -8.0f && gx == 0.0f);
  EXPECT(q.backward(INFINITY, 2.0f, 0.25f, r, gx) == 2.0f * 7.0f && gx == 0.0f);
  // NaN counts as inside, and its slope is NaN.
  EXPECT(std::isnan(q.backward(NAN, 2.0f, 0.25f, r, gx)) && std::isnan(gx));
  // A tiny negative u: f rounds to 1, whose slope is that of f = 0 (t = +-k/2).
  EXPECT(r.slope(-1e-10f) == r.slope(0.0f));
}

}  // namespace

int main() {
  test_plans();
  test_element_math();
  test_soft_round_math();
  return lsq_fast_test::expect_summary();
}
