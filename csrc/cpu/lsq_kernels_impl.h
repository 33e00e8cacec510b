// The CPU kernels of the LSQ family (LSQ, LSQ+, QIL), written once over at::vec::Vectorized:
// one walk over memory per pass, with each quantizer's arithmetic a small policy (Lsq,
// LsqPlus, Qil) that the walk calls per vector. The arithmetic is docs/contract.md's (sections 1-4).
//
// Included by exactly one isa_*.cpp per instruction set, which selects its target and
// defines CPU_CAPABILITY (at::vec's namespace) and LSQ_FAST_ISA (ours) first, so that the
// copies compiled for different instruction sets never share a symbol.
//
// Shape of the work. A dense tensor is viewed in memory order as [outer, channels, inner]
// (see Layout). It is cut into work items of about kBlock elements by a Tiling that depends
// on the shape alone, never on the thread count: the step-gradient partials are one per item
// (per item and channel), and they are combined in item order. So grad_step has the same
// bits run to run and for any number of threads.
//  - Segment mode (per-tensor, channel runs of kMinSegment+ elements, e.g. weights on axis 0
//    or NCHW activations on axis 1, and runs of any length that do not repeat, outer == 1:
//    per-group steps, whose [numel / G, G] rows make every group a channel): a run of
//    `inner` elements shares its parameters (step, offset, ...), broadcast into vectors; long
//    runs are split into blocks, short ones grouped, kBlock / inner of them to a work item.
//  - Pattern mode (short runs that repeat, e.g. channels_last activations on axis 1, where
//    the channel is the fastest-moving index): a row of channels*inner elements is walked
//    against a precomputed pattern of its parameters, and the gradient terms are accumulated
//    per column. (For one row, outer == 1, the pattern would be as large as the tensor: groups
//    of 32 ran 4x slower in pattern mode than in segment mode.)
//
// Accumulation: float32 vector lanes, each summing at most kFoldSteps terms before they are
// folded, lane by lane, into float64; partials and channel sums are float64.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <climits>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "cpu/lsq_kernels.h"

namespace lsq_fast::cpu::LSQ_FAST_ISA {
namespace {

using at::vec::Vectorized;

constexpr int64_t kBlock = 16384;           // elements per work item
constexpr int64_t kMinSegment = 64;         // shorter channel runs that repeat (outer > 1) use pattern mode
constexpr int64_t kPatternColumns = 1024;   // columns per pattern-mode work item (about)
constexpr int64_t kFoldSteps = 64;  // float32 terms per lane before folding to float64: with the lanes'
                                    // tree (RunSink::fold), error <= (63 + 4) * 2^-24 = 4e-6 of sum|terms|
constexpr int64_t kParallelElements = 32768;  // smaller calls stay on the calling thread

template <typename T>
constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Loads and stores Io::kStep elements of scalar_t as two vectors of the math type.
template <typename scalar_t>
struct Io {
  using opmath_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<opmath_t>;
  static constexpr int64_t kStep = 2 * Vec::size();
  static constexpr bool kNative = std::is_same_v<scalar_t, opmath_t>;
  static_assert(kNative || Vectorized<scalar_t>::size() == kStep);

  static void load(const scalar_t* p, Vec& a, Vec& b) {
    if constexpr (kNative) {
      a = Vec::loadu(p);
      b = Vec::loadu(p + Vec::size());
    } else {
      std::tie(a, b) = at::vec::convert_to_float<scalar_t>(Vectorized<scalar_t>::loadu(p));
    }
  }
  // Stores the chunk (a, b) as scalar_t; with `stream`, where a vector's address is aligned,
  // by a non-temporal store: the output's cache lines are written without first being read
  // (no read-for-ownership) and without evicting the inputs, so an output far larger than the
  // cache costs one transfer per byte instead of two. Callers set `stream` for large outputs
  // only (kStreamBytes) and fence.
  static void store(scalar_t* p, const Vec& a, const Vec& b, bool stream = false) {
    if constexpr (kNative) {
      put(p, a, stream);
      put(p + Vec::size(), b, stream);
    } else {
      put(p, at::vec::convert_from_float<scalar_t>(a, b), stream);
    }
  }
  // store for values that scalar_t holds exactly (a straight-through grad_x: grad_y itself or
  // zero), whose narrowing need not round: bfloat16's bits are then the high half of each
  // float32, gathered by one permute, where rounding them took 16 instructions per 32 elements
  // (a quarter of a bfloat16 backward's arithmetic).
  static void store_exact(scalar_t* p, const Vec& a, const Vec& b, bool stream) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      alignas(64) static constexpr uint16_t kHighHalves[32] = {
          1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31,
          33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
      put(p, Vectorized<scalar_t>(_mm512_permutex2var_epi16(
                 _mm512_castps_si512(a), _mm512_load_si512(kHighHalves), _mm512_castps_si512(b))),
          stream);
      return;
    }
#endif
    store(p, a, b, stream);
  }

 private:
  // One vector to p: streamed where asked and p is aligned to it (not float64's: at::vec's
  // double vectors have no streamed path here), else an ordinary store.
  template <typename T>
  static void put(T* p, const Vectorized<T>& v, bool stream) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    if constexpr (!std::is_same_v<T, double>) {
      if (stream && (reinterpret_cast<uintptr_t>(p) & (sizeof(v) - 1)) == 0) {
        stream_vec(p, v);
        return;
      }
    }
#endif
    v.store(p);
  }
#if defined(CPU_CAPABILITY_AVX512)
  static void stream_vec(float* p, const Vectorized<float>& v) { _mm512_stream_ps(p, v); }
  template <typename T>
  static void stream_vec(T* p, const Vectorized<T>& v) { _mm512_stream_si512(reinterpret_cast<__m512i*>(p), v); }
#elif defined(CPU_CAPABILITY_AVX2)
  static void stream_vec(float* p, const Vectorized<float>& v) { _mm256_stream_ps(p, v); }
  template <typename T>
  static void stream_vec(T* p, const Vectorized<T>& v) { _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v); }
#endif
};

// Outputs of at least this many bytes are written with non-temporal stores (Io::store): they
// cannot stay in the last-level cache anyway (32 MB on this EPYC), and the working set of a
// pass is two to four such arrays. Below it, the output is left in the cache for whoever reads
// it next.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

// The non-temporal stores of a work item are made visible before the item ends (they are
// weakly ordered: the join of the parallel region must not overtake them).
inline void fence_streams(bool stream) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if (stream) _mm_sfence();
#endif
}

// ---- the quantizers' arithmetic on one vector ------------------------------------------------
//
// A policy holds a call's constants and computes, for vectors of x (and grad_y) and of the
// element's parameters p[0..kParams), the forward value, or grad_x and the kTerms gradient
// terms. prepare() turns the raw parameters of one channel into the ones the vectors carry
// (steps clamped to the floor, QIL's interval turned into a line). Every operation the forward's
// bits depend on is one IEEE operation in the reference's order (setup.py compiles with
// -ffp-contract=off: no FMA contraction). Masks are written so that NaN behaves as in the
// reference: a NaN input is "inside", passes its gradient and quantizes to NaN.

template <typename opmath_t>
opmath_t clamp_step(opmath_t s) {  // NaN stays NaN: a comparison with NaN is false
  const auto floor = static_cast<opmath_t>(kStepFloor);
  return s < floor ? floor : s;
}

// u clipped to [lo, hi] with strict comparisons, as the reference's hardtanh (a clamp): u < lo
// gives lo, u > hi gives hi, and anything else is u itself: NaN, and u == -0.0 with lo == 0
// (the sign of zero is part of the bit-exact forward). at::vec's clamp_min(u, lo) and
// clamp_max(u, hi) are defined as exactly that, and on x86 are one max(lo, u) / min(hi, u)
// instruction each (which return their second operand unless the first is strictly beyond it),
// where two compares and two blends through at::vec's vector masks took eight (a float32
// forward 0.25 -> 0.17 ns/element on one core of this EPYC, bfloat16 0.31 -> 0.23).
template <typename Vec>
Vec clip(const Vec& u, const Vec& lo, const Vec& hi) {
  return at::vec::clamp_max(at::vec::clamp_min(u, lo), hi);
}

// LSQ (section 1), with section 4's arctan soft-round gradient when args.soft_round_k > 0.
template <typename opmath_t>
struct Lsq {
  using Vec = Vectorized<opmath_t>;
  static constexpr int kParams = 1;  // step
  static constexpr int kTerms = 1;   // dy/ds
  Vec qmin, qmax;
  bool soft;
  Vec k, slope_scale;

  Lsq(const MethodArgs& a, const opmath_t*)
      : qmin(static_cast<opmath_t>(a.qmin)), qmax(static_cast<opmath_t>(a.qmax)), soft(a.soft_round_k > 0),
        k(static_cast<opmath_t>(a.soft_round_k)), slope_scale(static_cast<opmath_t>(a.soft_round_scale)) {}

  static void prepare(const MethodArgs&, const opmath_t* raw, opmath_t* out) { out[0] = clamp_step(raw[0]); }
  bool exact_grad_x() const { return !soft; }  // grad_x is grad_y or 0 (x's dtype holds it exactly)

  Vec quantize(const Vec& x, const Vec* p) const {
    return clip(x / p[0], qmin, qmax).round() * p[0];
  }

  void backward(const Vec& x, const Vec& gy, const Vec* p, Vec& gx, Vec* terms) const {
    const Vec u = x / p[0];
    const Vec below = u <= qmin;
    const Vec above = u >= qmax;
    const Vec outside = below | above;
    Vec inside_dyds;
    if (soft) {  // d round(u)/du := the soft round's slope, in grad_x and in dy/ds = round(u) - u round'(u)
      const Vec t = k * (u - u.floor() - Vec(opmath_t(0.5)));
      const Vec slope = slope_scale / (Vec(opmath_t(1)) + t * t);
      gx = Vec::blendv(gy * slope, Vec(0), outside);
      inside_dyds = u.round() - u * slope;
    } else {
      gx = Vec::blendv(gy, Vec(0), outside);
      inside_dyds = u.round() - u;
    }
    terms[0] = gy * Vec::blendv(Vec::blendv(inside_dyds, qmin, below), qmax, above);
  }
};

// LSQ+ (section 2): u = (x - beta) / s, y = round(clip(u)) * s + beta.
template <typename opmath_t>
struct LsqPlus {
  using Vec = Vectorized<opmath_t>;
  static constexpr int kParams = 2;  // step, offset
  static constexpr int kTerms = 2;   // dy/ds, dy/dbeta
  Vec qmin, qmax;

  LsqPlus(const MethodArgs& a, const opmath_t*)
      : qmin(static_cast<opmath_t>(a.qmin)), qmax(static_cast<opmath_t>(a.qmax)) {}

  static void prepare(const MethodArgs&, const opmath_t* raw, opmath_t* out) {
    out[0] = clamp_step(raw[0]);
    out[1] = raw[1];
  }
  bool exact_grad_x() const { return true; }  // grad_y or 0

  Vec quantize(const Vec& x, const Vec* p) const {
    return clip((x - p[1]) / p[0], qmin, qmax).round() * p[0] + p[1];  // two roundings, as the reference's multiply then add
  }

  void backward(const Vec& x, const Vec& gy, const Vec* p, Vec& gx, Vec* terms) const {
    const Vec u = (x - p[1]) / p[0];
    const Vec below = u <= qmin;
    const Vec above = u >= qmax;
    const Vec outside = below | above;
    gx = Vec::blendv(gy, Vec(0), outside);
    terms[0] = gy * Vec::blendv(Vec::blendv(u.round() - u, qmin, below), qmax, above);
    terms[1] = Vec::blendv(Vec(0), gy, outside);
  }
};

// QIL (section 3), one interval per tensor. prepare() makes the line of the transformer,
// alpha = 0.5 / d and beta = 0.5 - 0.5 * c / d (d clamped to the floor), in the reference's
// order; p = {alpha, beta, gamma}. Weights: z = clip(alpha |w| + beta, 0, 1), w_t = sign(w) z^gamma;
// activations: x_t = clip(alpha x + beta, 0, 1). y = round(x_t q) / q.
template <typename opmath_t>
struct Qil {
  using Vec = Vectorized<opmath_t>;
  static constexpr int kParams = 3;  // alpha, beta, gamma
  static constexpr int kTerms = 3;   // dx_t/dalpha, dx_t/dbeta, dx_t/dgamma (weights)
  Vec q, zero = Vec(0), one = Vec(1), floor = Vec(static_cast<opmath_t>(kStepFloor));
  bool weight;
  bool unit_gamma;  // gamma == 1: z^gamma is z itself (as torch.pow gives it), no pow

  Qil(const MethodArgs& a, const opmath_t* prepared)
      : q(static_cast<opmath_t>(a.qmax)), weight(a.qil_weight), unit_gamma(prepared[2] == opmath_t(1)) {}
  bool exact_grad_x() const { return false; }  // grad_y times the transformer's slope: rounded

  static void prepare(const MethodArgs& a, const opmath_t* raw, opmath_t* out) {
    const opmath_t c = raw[0];
    const opmath_t d = clamp_step(raw[1]);
    out[0] = opmath_t(0.5) / d;
    out[1] = opmath_t(0.5) - opmath_t(0.5) * c / d;
    out[2] = a.qil_weight ? raw[2] : opmath_t(1);
  }

  // sign(x): -1, 0 or +1, with 0 for +-0 and NaN (torch.sign of a NaN is 0 after the compares).
  Vec sign(const Vec& x) const { return Vec::blendv(zero, one, x > zero) - Vec::blendv(zero, one, x < zero); }

  // The pre-clip line and its clip: z (or x_t) and its pass band.
  Vec line(const Vec& x, const Vec* p) const { return p[0] * (weight ? x.abs() : x) + p[1]; }
  Vec clip01(const Vec& v) const { return Vec::blendv(Vec::blendv(v, zero, v < zero), one, v > one); }

  // z^gamma where z > 0, at z no smaller than the floor; 0 where z == 0 (pruned).
  Vec power(const Vec& z, const Vec& z_safe, const Vec& gamma) const {
    if (unit_gamma) return Vec::blendv(zero, z_safe, z > zero);
    return Vec::blendv(zero, z_safe.pow(gamma), z > zero);
  }
  Vec safe(const Vec& z) const { return Vec::blendv(one, Vec::blendv(z, floor, z < floor), z > zero); }

  Vec quantize(const Vec& x, const Vec* p) const {
    const Vec z = clip01(line(x, p));
    const Vec t = weight ? sign(x) * power(z, safe(z), p[2]) : z;
    return (t * q).round() / q;
  }

  void backward(const Vec& x, const Vec& gy, const Vec* p, Vec& gx, Vec* terms) const {
    const Vec pre = line(x, p);
    if (!weight) {  // x_t = clip(alpha x + beta): dx_t/dx = alpha, /dalpha = x, /dbeta = 1 inside
      const Vec inside = (pre > zero) & (pre < one);
      gx = Vec::blendv(zero, gy * p[0], inside);
      terms[0] = Vec::blendv(zero, gy * x, inside);
      terms[1] = Vec::blendv(zero, gy, inside);
      terms[2] = zero;
      return;
    }
    // The reference's pass bands: hardtanh's (0 < pre < 1) and clamp_min(z, floor)'s (z >= floor).
    const Vec inside = (pre >= floor) & (pre < one);
    const Vec z = clip01(pre);
    const Vec z_safe = safe(z);
    const Vec sg = sign(x);
    // d z^gamma / dz = gamma z^(gamma - 1) = gamma z^gamma / z; d z^gamma / dgamma = z^gamma ln z
    // (where z > 0). One log and one exp (z^gamma = exp(gamma ln z)) serve both: the backward
    // owes no bits to the reference's pow, and two pows and a log cost three times as much.
    const Vec ln_z = z_safe.log();
    const Vec z_gamma = unit_gamma ? z_safe : (p[2] * ln_z).exp();
    const Vec slope = unit_gamma ? one : p[2] * z_gamma / z_safe;
    const Vec t = gy * slope * sg;  // d y / d(alpha |x| + beta), times sign(x)
    gx = Vec::blendv(zero, t * p[0] * sg, inside);
    terms[0] = Vec::blendv(zero, t * x.abs(), inside);
    terms[1] = Vec::blendv(zero, t, inside);
    terms[2] = Vec::blendv(zero, gy * sg * z_gamma * ln_z, z > zero);
  }
};

// Where a run's parameters come from: one set for the whole run, or patterns read alongside.
template <typename opmath_t, int P>
struct BroadcastParams {
  Vectorized<opmath_t> v[P];
  void at(int64_t, Vectorized<opmath_t>* out) const {
    for (int k = 0; k < P; ++k) out[k] = v[k];
  }
};
template <typename opmath_t, int P>
struct PatternParams {
  const opmath_t* p[P];  // padded by Io::kStep past the run, so a tail may read a full vector
  void at(int64_t i, Vectorized<opmath_t>* out) const {
    for (int k = 0; k < P; ++k) out[k] = Vectorized<opmath_t>::loadu(p[k] + i);
  }
};

// Calls body(i, ptrs...) for each full kStep chunk of a run of `len` elements, then once for
// the tail on zero-padded copies (written back to the outputs' first `len - i` elements).
// One body serves both, so the tail computes exactly what a full chunk would.
template <typename scalar_t, int kIn, int kOut, typename Body>
inline void for_each_chunk(const scalar_t* const (&in)[kIn], scalar_t* const (&out)[kOut],
                           int64_t len, const Body& body) {
  constexpr int64_t kStep = Io<scalar_t>::kStep;
  int64_t i = 0;
  for (; i + kStep <= len; i += kStep) {
    body(i, [&](int k) { return in[k] + i; }, [&](int k) { return out[k] + i; });
  }
  if (i == len) return;
  const int64_t rest = len - i;
  scalar_t in_buf[kIn][kStep] = {};
  scalar_t out_buf[kOut][kStep];
  for (int k = 0; k < kIn; ++k) std::copy(in[k] + i, in[k] + len, in_buf[k]);
  body(i, [&](int k) { return static_cast<const scalar_t*>(in_buf[k]); },
       [&](int k) { return static_cast<scalar_t*>(out_buf[k]); });
  for (int k = 0; k < kOut; ++k) std::copy(out_buf[k], out_buf[k] + rest, out[k] + i);
}

template <typename scalar_t, typename Policy, typename Params>
inline void quantize_run(const Policy& m, const scalar_t* x, scalar_t* y, int64_t len, const Params& params,
                         bool stream) {
  using IO = Io<scalar_t>;
  using Vec = typename IO::Vec;
  const scalar_t* const in[1] = {x};
  scalar_t* const out[1] = {y};
  for_each_chunk<scalar_t, 1, 1>(in, out, len, [&](int64_t i, const auto& src, const auto& dst) {
    Vec a, b, pa[Policy::kParams], pb[Policy::kParams];
    IO::load(src(0), a, b);
    params.at(i, pa);
    params.at(i + Vec::size(), pb);
    IO::store(dst(0), m.quantize(a, pa), m.quantize(b, pb), stream);
  });
}

// Backward over one run; sink.add(i, ta, tb) receives the gradient terms of chunk i.
template <typename scalar_t, typename Policy, typename Params, typename Sink>
inline void backward_run(const Policy& m, const scalar_t* gy, const scalar_t* x, scalar_t* gx, int64_t len,
                         const Params& params, Sink& sink, bool stream) {
  using IO = Io<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int P = Policy::kParams, K = Policy::kTerms;
  const scalar_t* const in[2] = {x, gy};  // the padded tail has grad_y = 0: its terms are 0
  scalar_t* const out[1] = {gx};
  const bool exact = m.exact_grad_x();
  for_each_chunk<scalar_t, 2, 1>(in, out, len, [&](int64_t i, const auto& src, const auto& dst) {
    Vec xa, xb, ga, gb, gxa, gxb, pa[P], pb[P], ta[K], tb[K];
    IO::load(src(0), xa, xb);
    IO::load(src(1), ga, gb);
    params.at(i, pa);
    params.at(i + Vec::size(), pb);
    m.backward(xa, ga, pa, gxa, ta);
    m.backward(xb, gb, pb, gxb, tb);
    if (exact) IO::store_exact(dst(0), gxa, gxb, stream);
    else IO::store(dst(0), gxa, gxb, stream);
    sink.add(i, ta, tb);
  });
}

// Segment mode: all terms k of a run go to one sum each.
template <typename opmath_t, int K>
struct RunSink {
  using Vec = Vectorized<opmath_t>;
  Vec lanes[K];
  int64_t pending = 0;
  double total[K] = {};

  RunSink() {
    for (int k = 0; k < K; ++k) lanes[k] = Vec(0);
  }
  void add(int64_t, const Vec* a, const Vec* b) {
    for (int k = 0; k < K; ++k) lanes[k] = lanes[k] + a[k] + b[k];  // each lane gains two terms
    if (++pending == kFoldSteps / 2) fold();
  }
  // The lanes' sum in a fixed shuffle tree within the vector (float32, depth log2 of the
  // lanes), into float64. A group of 32 elements folds once, and a chain of 16 dependent
  // float64 adds there cost more than the group's arithmetic.
  void fold() {
    for (int k = 0; k < K; ++k) {
      total[k] += static_cast<double>(at::vec::vec_reduce_all<opmath_t>([](Vec& a, Vec& b) { return a + b; }, lanes[k]));
      lanes[k] = Vec(0);
    }
    pending = 0;
  }
};

// Pattern mode: term k of column i goes to column i's k-th sum; fold() after every few rows.
template <typename opmath_t, int K>
struct ColumnSink {
  using Vec = Vectorized<opmath_t>;
  std::vector<opmath_t> lanes[K];  // padded by a chunk: a tail adds zeros past the columns
  std::vector<double> total[K];

  explicit ColumnSink(int64_t columns) {
    for (int k = 0; k < K; ++k) {
      lanes[k].assign(columns + 2 * Vec::size(), 0);
      total[k].assign(columns, 0);
    }
  }
  void add(int64_t i, const Vec* a, const Vec* b) {
    for (int k = 0; k < K; ++k) {
      (Vec::loadu(&lanes[k][i]) + a[k]).store(&lanes[k][i]);
      (Vec::loadu(&lanes[k][i + Vec::size()]) + b[k]).store(&lanes[k][i + Vec::size()]);
    }
  }
  void fold() {
    for (int k = 0; k < K; ++k)
      for (size_t j = 0; j < total[k].size(); ++j) {
        total[k][j] += static_cast<double>(lanes[k][j]);
        lanes[k][j] = 0;
      }
  }
};

// The fixed decomposition of a Layout into work items (see the top of this file).
struct Tiling {
  Layout l;
  bool pattern;
  // Segment mode: unit = (segment, block), segment = o * channels + c; item = units_per_item
  // consecutive units (several whole segments when they are short, else one block).
  int64_t blocks_per_segment = 1, units = 0, units_per_item = 1;
  // Pattern mode: item = (row block, column block) of the [outer, row_len] matrix.
  int64_t row_len = 0, columns = 0, column_blocks = 1, rows = 1;
  int64_t items = 0;

  explicit Tiling(Layout layout)
      : l(layout), pattern(layout.channels > 1 && layout.inner < kMinSegment && layout.outer > 1) {
    if (!pattern) {
      blocks_per_segment = ceil_div(l.inner, kBlock);
      units = l.outer * l.channels * blocks_per_segment;
      units_per_item = blocks_per_segment == 1 ? std::max<int64_t>(1, kBlock / std::max<int64_t>(l.inner, 1)) : 1;
      items = ceil_div(units, units_per_item);
    } else {
      row_len = l.channels * l.inner;
      // Column blocks hold whole channels, so a channel's terms never straddle two items.
      columns = row_len <= kPatternColumns ? row_len : std::max<int64_t>(1, kPatternColumns / l.inner) * l.inner;
      column_blocks = ceil_div(row_len, columns);
      rows = std::max<int64_t>(1, kBlock / columns);
      items = ceil_div(l.outer, rows) * column_blocks;
    }
  }
  int64_t grain() const {
    const int64_t per_item = std::max<int64_t>(1, l.numel() / std::max<int64_t>(items, 1));
    return std::max<int64_t>(1, kParallelElements / per_item);
  }
  // Segment mode: the item's units [u0, u1); a unit's flat offset, length and channel.
  void unit_range(int64_t item, int64_t& u0, int64_t& u1) const {
    u0 = item * units_per_item;
    u1 = std::min(units, u0 + units_per_item);
  }
  void segment(int64_t unit, int64_t& offset, int64_t& len, int64_t& channel) const {
    const int64_t seg = unit / blocks_per_segment, block = unit % blocks_per_segment;
    offset = seg * l.inner + block * kBlock;
    len = std::min(kBlock, l.inner - block * kBlock);
    channel = seg % l.channels;
  }
  // fn(unit, offset, len, channel) for each unit of a segment-mode item, in order. An item of
  // several short segments walks them with no division per segment (two 64-bit divisions
  // cost as much as a group of 32 elements' arithmetic).
  template <typename Fn>
  void for_each_unit(int64_t item, const Fn& fn) const {
    int64_t u0, u1, offset, len, channel;
    unit_range(item, u0, u1);
    if (blocks_per_segment != 1) {
      for (int64_t u = u0; u < u1; ++u) {
        segment(u, offset, len, channel);
        fn(u, offset, len, channel);
      }
      return;
    }
    channel = u0 % l.channels;
    for (int64_t u = u0; u < u1; ++u) {
      fn(u, u * l.inner, l.inner, channel);
      if (++channel == l.channels) channel = 0;
    }
  }
  // Pattern mode: the item's rows [r0, r1) and columns [c0, c1).
  void tile(int64_t item, int64_t& r0, int64_t& r1, int64_t& c0, int64_t& c1) const {
    const int64_t rb = item / column_blocks, cb = item % column_blocks;
    r0 = rb * rows;
    r1 = std::min(l.outer, r0 + rows);
    c0 = cb * columns;
    c1 = std::min(row_len, c0 + columns);
  }
};

// The parameters of every channel, prepared by the policy ([param][channel]; a null raw array
// reads as ones), and for pattern
// mode expanded to one per column, padded with ones for a tail's full-vector read.
template <typename Policy, typename opmath_t>
struct PreparedParams {
  static constexpr int P = Policy::kParams;
  std::vector<opmath_t> by_channel[P];
  std::vector<opmath_t> by_column[P];

  PreparedParams(const MethodArgs& args, const opmath_t* const* raw, const Tiling& t) {
    for (int k = 0; k < P; ++k) by_channel[k].resize(t.l.channels);
    // In parallel chunks: per-group steps number up to half a million.
    at::parallel_for(0, t.l.channels, kParallelElements, [&](int64_t begin, int64_t end) {
      opmath_t in[P], out[P];
      for (int64_t c = begin; c < end; ++c) {
        for (int k = 0; k < P; ++k) in[k] = raw[k] != nullptr ? raw[k][c] : opmath_t(1);  // absent: 1 (QIL's gamma)
        Policy::prepare(args, in, out);
        for (int k = 0; k < P; ++k) by_channel[k][c] = out[k];
      }
    });
    if (!t.pattern) return;
    for (int k = 0; k < P; ++k) {
      by_column[k].assign(t.row_len + 2 * Vectorized<opmath_t>::size(), opmath_t(1));
      for (int64_t j = 0; j < t.row_len; ++j) by_column[k][j] = by_channel[k][j / t.l.inner];
    }
  }
  // Channel 0's values, for the policy's constructor (QIL: is gamma 1?); ones when empty.
  std::array<opmath_t, P> first() const {
    std::array<opmath_t, P> f;
    for (int k = 0; k < P; ++k) f[k] = by_channel[k].empty() ? opmath_t(1) : by_channel[k][0];
    return f;
  }
  BroadcastParams<opmath_t, P> broadcast(int64_t c) const {
    BroadcastParams<opmath_t, P> b;
    for (int k = 0; k < P; ++k) b.v[k] = Vectorized<opmath_t>(by_channel[k][c]);
    return b;
  }
  PatternParams<opmath_t, P> pattern(int64_t column) const {
    PatternParams<opmath_t, P> p;
    for (int k = 0; k < P; ++k) p.p[k] = by_column[k].data() + column;
    return p;
  }
};

// Whether a pass writes its output with non-temporal stores: outputs of kStreamBytes or more.
// LSQ_FAST_CPU_STREAM=<bytes> moves the threshold, 0 turns them off (to measure either way).
template <typename scalar_t>
bool stream_output(const Layout& layout) {
  static const int64_t threshold = [] {
    const char* v = std::getenv("LSQ_FAST_CPU_STREAM");
    if (v == nullptr || *v == '\0') return kStreamBytes;
    const long long bytes = std::strtoll(v, nullptr, 10);
    return bytes > 0 ? static_cast<int64_t>(bytes) : INT64_MAX;
  }();
  return layout.numel() * static_cast<int64_t>(sizeof(scalar_t)) >= threshold;
}

template <typename Policy, typename scalar_t>
void forward_typed(const MethodArgs& args, const scalar_t* x, const at::opmath_type<scalar_t>* const* raw,
                   scalar_t* y, Layout layout) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Tiling t(layout);
  if (t.items == 0) return;
  const PreparedParams<Policy, opmath_t> params(args, raw, t);
  const Policy m(args, params.first().data());
  const bool stream = stream_output<scalar_t>(layout);
  at::parallel_for(0, t.items, t.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      if (!t.pattern) {
        t.for_each_unit(item, [&](int64_t, int64_t offset, int64_t len, int64_t c) {
          quantize_run(m, x + offset, y + offset, len, params.broadcast(c), stream);
        });
      } else {
        int64_t r0, r1, c0, c1;
        t.tile(item, r0, r1, c0, c1);
        const auto pattern = params.pattern(c0);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t offset = r * t.row_len + c0;
          quantize_run(m, x + offset, y + offset, c1 - c0, pattern, stream);
        }
      }
    }
    fence_streams(stream);
  });
}

template <typename Policy, typename scalar_t>
void backward_typed(const MethodArgs& args, const scalar_t* gy, const scalar_t* x,
                    const at::opmath_type<scalar_t>* const* raw, scalar_t* gx, double* term_sums, Layout layout) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int K = Policy::kTerms;
  const int64_t channels = layout.channels;
  const Tiling t(layout);
  // One unit per channel (outer == 1, runs of at most kBlock: per-group steps, a weight's
  // rows): a unit's sum is its channel's, written in place. Else partials [unit][term].
  const bool unit_is_channel = !t.pattern && layout.outer == 1 && t.blocks_per_segment == 1 && t.items > 0;
  if (!unit_is_channel) std::fill(term_sums, term_sums + K * channels, 0.0);
  if (t.items == 0) return;
  const PreparedParams<Policy, opmath_t> params(args, raw, t);
  const Policy m(args, params.first().data());
  const bool stream = stream_output<scalar_t>(layout);

  if (!t.pattern) {
    std::vector<double> partial(unit_is_channel ? 0 : t.units * K);
    at::parallel_for(0, t.items, t.grain(), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        t.for_each_unit(item, [&](int64_t u, int64_t offset, int64_t len, int64_t c) {
          RunSink<opmath_t, K> sink;
          backward_run(m, gy + offset, x + offset, gx + offset, len, params.broadcast(c), sink, stream);
          sink.fold();
          for (int k = 0; k < K; ++k) {
            if (unit_is_channel) term_sums[k * channels + c] = sink.total[k];
            else partial[u * K + k] = sink.total[k];
          }
        });
      }
      fence_streams(stream);
    });
    if (unit_is_channel) return;
    // unit = (o * channels + c) * blocks_per_segment + block, summed over o then block.
    for (int64_t o = 0; o < layout.outer; ++o)
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t b = 0; b < t.blocks_per_segment; ++b)
          for (int k = 0; k < K; ++k)
            term_sums[k * channels + c] += partial[((o * channels + c) * t.blocks_per_segment + b) * K + k];
    return;
  }

  const int64_t row_blocks = ceil_div(layout.outer, t.rows);
  std::vector<double> partial(row_blocks * K * channels, 0.0);  // [row block][term][channel]
  at::parallel_for(0, t.items, t.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      int64_t r0, r1, c0, c1;
      t.tile(item, r0, r1, c0, c1);
      ColumnSink<opmath_t, K> sink(c1 - c0);
      const auto pattern = params.pattern(c0);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t offset = r * t.row_len + c0;
        backward_run(m, gy + offset, x + offset, gx + offset, c1 - c0, pattern, sink, stream);
        if ((r - r0 + 1) % kFoldSteps == 0) sink.fold();
      }
      sink.fold();
      double* out = partial.data() + (item / t.column_blocks) * K * channels;
      for (int k = 0; k < K; ++k)
        for (int64_t col = c0; col < c1; ++col) out[k * channels + col / layout.inner] += sink.total[k][col - c0];
    }
    fence_streams(stream);
  });
  for (int64_t rb = 0; rb < row_blocks; ++rb)
    for (int64_t j = 0; j < K * channels; ++j) term_sums[j] += partial[rb * K * channels + j];
}

// Type and method dispatch at the table boundary: the table's entries take type-erased pointers.
// fn(scalar_t{}, (Policy*)nullptr) runs the kernels of one element type and one quantizer.
template <typename Fn>
void dispatch(c10::ScalarType dtype, Method method, const Fn& fn) {
  const auto with_type = [&](auto tag) {
    using opmath_t = at::opmath_type<decltype(tag)>;
    switch (method) {
      case Method::kLsq: return fn(tag, static_cast<Lsq<opmath_t>*>(nullptr));
      case Method::kLsqPlus: return fn(tag, static_cast<LsqPlus<opmath_t>*>(nullptr));
      case Method::kQil: return fn(tag, static_cast<Qil<opmath_t>*>(nullptr));
    }
    TORCH_CHECK(false, "lsq_fast: unknown quantizer method ", static_cast<int>(method));
  };
  switch (dtype) {
    case c10::ScalarType::Float: return with_type(float{});
    case c10::ScalarType::Double: return with_type(double{});
    case c10::ScalarType::Half: return with_type(c10::Half{});
    case c10::ScalarType::BFloat16: return with_type(c10::BFloat16{});
    default: TORCH_CHECK(false, "lsq_fast: unsupported dtype ", dtype);
  }
}

void forward(c10::ScalarType dtype, const MethodArgs& args, const void* x, const void* const* params, void* y,
             Layout layout) {
  dispatch(dtype, args.method, [&](auto tag, auto* policy) {
    using scalar_t = decltype(tag);
    using Policy = std::remove_pointer_t<decltype(policy)>;
    forward_typed<Policy>(args, static_cast<const scalar_t*>(x),
                          reinterpret_cast<const at::opmath_type<scalar_t>* const*>(params),
                          static_cast<scalar_t*>(y), layout);
  });
}

void backward(c10::ScalarType dtype, const MethodArgs& args, const void* grad_y, const void* x,
              const void* const* params, void* grad_x, double* term_sums, Layout layout) {
  dispatch(dtype, args.method, [&](auto tag, auto* policy) {
    using scalar_t = decltype(tag);
    using Policy = std::remove_pointer_t<decltype(policy)>;
    backward_typed<Policy>(args, static_cast<const scalar_t*>(grad_y), static_cast<const scalar_t*>(x),
                           reinterpret_cast<const at::opmath_type<scalar_t>* const*>(params),
                           static_cast<scalar_t*>(grad_x), term_sums, layout);
  });
}

}  // namespace
}  // namespace lsq_fast::cpu::LSQ_FAST_ISA
