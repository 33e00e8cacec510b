// The LSQ CPU kernels, written once over at::vec::Vectorized.
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
//  - Segment mode (per-tensor, or channel runs of kMinSegment+ elements, e.g. weights on
//    axis 0 or NCHW activations on axis 1): a run of `inner` elements shares one step,
//    broadcast into a vector; long runs are split into blocks.
//  - Pattern mode (short runs, e.g. channels_last activations on axis 1, where the channel
//    is the fastest-moving index): a row of channels*inner elements is walked against a
//    precomputed pattern of its steps, and the step gradient is accumulated per column.
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
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/lsq_kernels.h"

namespace lsq_fast::cpu::LSQ_FAST_ISA {
namespace {

using at::vec::Vectorized;

constexpr int64_t kBlock = 16384;           // elements per work item
constexpr int64_t kMinSegment = 64;         // shorter channel runs use pattern mode
constexpr int64_t kPatternColumns = 1024;   // columns per pattern-mode work item (about)
constexpr int64_t kFoldSteps = 64;  // float32 terms per lane before folding to float64: error <= 63 * 2^-24 = 3.8e-6 of sum|terms|
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
  static void store(scalar_t* p, const Vec& a, const Vec& b) {
    if constexpr (kNative) {
      a.store(p);
      b.store(p + Vec::size());
    } else {
      at::vec::convert_from_float<scalar_t>(a, b).store(p);
    }
  }
};

// The contract's arithmetic on one vector (shared/spec/quantizers.md, section 1). IEEE
// division, round half to even, and masks written so that NaN behaves as in the reference
// (a NaN input is "inside": it passes its gradient and quantizes to NaN).
template <typename opmath_t>
struct LsqMath {
  using Vec = Vectorized<opmath_t>;
  Vec qmin, qmax;

  LsqMath(int64_t lo, int64_t hi) : qmin(static_cast<opmath_t>(lo)), qmax(static_cast<opmath_t>(hi)) {}

  Vec quantize(const Vec& x, const Vec& s) const {
    const Vec u = x / s;
    // Strict comparisons, as the reference's hardtanh (a clamp): u == -0.0 with qmin == 0 stays
    // -0.0, and the sign of zero is part of the bit-exact forward.
    const Vec clipped = Vec::blendv(Vec::blendv(u, qmin, u < qmin), qmax, u > qmax);
    return clipped.round() * s;
  }

  // Returns grad_y * dy/ds and sets grad_x = grad_y * dy/dx.
  Vec backward(const Vec& x, const Vec& gy, const Vec& s, Vec& gx) const {
    const Vec u = x / s;
    const Vec below = u <= qmin;
    const Vec above = u >= qmax;
    gx = Vec::blendv(gy, Vec(0), below | above);
    const Vec dyds = Vec::blendv(Vec::blendv(u.round() - u, qmin, below), qmax, above);
    return gy * dyds;
  }
};

// Where a run's steps come from: one step for the whole run, or a pattern read alongside.
template <typename opmath_t>
struct BroadcastStep {
  Vectorized<opmath_t> s;
  Vectorized<opmath_t> at(int64_t) const { return s; }
};
template <typename opmath_t>
struct PatternStep {
  const opmath_t* p;  // padded by Io::kStep past the run, so a tail may read a full vector
  Vectorized<opmath_t> at(int64_t i) const { return Vectorized<opmath_t>::loadu(p + i); }
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

template <typename scalar_t, typename Steps>
inline void quantize_run(const LsqMath<at::opmath_type<scalar_t>>& m, const scalar_t* x,
                         scalar_t* y, int64_t len, const Steps& steps) {
  using IO = Io<scalar_t>;
  using Vec = typename IO::Vec;
  const scalar_t* const in[1] = {x};
  scalar_t* const out[1] = {y};
  for_each_chunk<scalar_t, 1, 1>(in, out, len, [&](int64_t i, const auto& src, const auto& dst) {
    Vec a, b;
    IO::load(src(0), a, b);
    IO::store(dst(0), m.quantize(a, steps.at(i)), m.quantize(b, steps.at(i + Vec::size())));
  });
}

// Backward over one run; sink.add(i, t0, t1) receives the step-gradient terms of chunk i.
template <typename scalar_t, typename Steps, typename Sink>
inline void backward_run(const LsqMath<at::opmath_type<scalar_t>>& m, const scalar_t* gy,
                         const scalar_t* x, scalar_t* gx, int64_t len, const Steps& steps,
                         Sink& sink) {
  using IO = Io<scalar_t>;
  using Vec = typename IO::Vec;
  const scalar_t* const in[2] = {x, gy};  // the padded tail has grad_y = 0: its terms are 0
  scalar_t* const out[1] = {gx};
  for_each_chunk<scalar_t, 2, 1>(in, out, len, [&](int64_t i, const auto& src, const auto& dst) {
    Vec xa, xb, ga, gb, gxa, gxb;
    IO::load(src(0), xa, xb);
    IO::load(src(1), ga, gb);
    const Vec ta = m.backward(xa, ga, steps.at(i), gxa);
    const Vec tb = m.backward(xb, gb, steps.at(i + Vec::size()), gxb);
    IO::store(dst(0), gxa, gxb);
    sink.add(i, ta, tb);
  });
}

// Segment mode: all terms of a run go to one sum.
template <typename opmath_t>
struct RunSink {
  using Vec = Vectorized<opmath_t>;
  Vec lanes = Vec(0);
  int64_t pending = 0;
  double total = 0;

  void add(int64_t, const Vec& a, const Vec& b) {
    lanes = lanes + a + b;  // each lane gains two terms
    if (++pending == kFoldSteps / 2) fold();
  }
  void fold() {
    alignas(64) opmath_t buf[Vec::size()];
    lanes.store(buf);
    for (int64_t k = 0; k < Vec::size(); ++k) total += static_cast<double>(buf[k]);
    lanes = Vec(0);
    pending = 0;
  }
};

// Pattern mode: term i of a row goes to column i's sum; fold() after every few rows.
template <typename opmath_t>
struct ColumnSink {
  using Vec = Vectorized<opmath_t>;
  std::vector<opmath_t> lanes;  // padded by a chunk: a tail adds zeros past the columns
  std::vector<double> total;

  explicit ColumnSink(int64_t columns) : lanes(columns + 2 * Vec::size(), 0), total(columns, 0) {}
  void add(int64_t i, const Vec& a, const Vec& b) {
    (Vec::loadu(&lanes[i]) + a).store(&lanes[i]);
    (Vec::loadu(&lanes[i + Vec::size()]) + b).store(&lanes[i + Vec::size()]);
  }
  void fold() {
    for (size_t k = 0; k < total.size(); ++k) {
      total[k] += static_cast<double>(lanes[k]);
      lanes[k] = 0;
    }
  }
};

// The fixed decomposition of a Layout into work items (see the top of this file).
struct Tiling {
  Layout l;
  bool pattern;
  // Segment mode: item = (segment, block), segment = o * channels + c.
  int64_t blocks_per_segment = 1;
  // Pattern mode: item = (row block, column block) of the [outer, row_len] matrix.
  int64_t row_len = 0, columns = 0, column_blocks = 1, rows = 1;
  int64_t items = 0;

  explicit Tiling(Layout layout) : l(layout), pattern(layout.channels > 1 && layout.inner < kMinSegment) {
    if (!pattern) {
      blocks_per_segment = ceil_div(l.inner, kBlock);
      items = l.outer * l.channels * blocks_per_segment;
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
  // Segment mode: the item's flat offset, length and channel.
  void segment(int64_t item, int64_t& offset, int64_t& len, int64_t& channel) const {
    const int64_t seg = item / blocks_per_segment, block = item % blocks_per_segment;
    offset = seg * l.inner + block * kBlock;
    len = std::min(kBlock, l.inner - block * kBlock);
    channel = seg % l.channels;
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

// Steps clamped to the floor (NaN stays NaN: a comparison with NaN is false), and for
// pattern mode expanded to one per column, padded with ones for a tail's full-vector read.
template <typename opmath_t>
std::vector<opmath_t> prepare_steps(const opmath_t* step, const Tiling& t) {
  const auto floor = static_cast<opmath_t>(kStepFloor);
  const auto clamp = [floor](opmath_t s) { return s < floor ? floor : s; };
  if (!t.pattern) {
    std::vector<opmath_t> out(t.l.channels);
    for (int64_t c = 0; c < t.l.channels; ++c) out[c] = clamp(step[c]);
    return out;
  }
  std::vector<opmath_t> out(t.row_len + 2 * Vectorized<opmath_t>::size(), opmath_t(1));
  for (int64_t j = 0; j < t.row_len; ++j) out[j] = clamp(step[j / t.l.inner]);
  return out;
}

template <typename scalar_t>
void forward_typed(const scalar_t* x, const at::opmath_type<scalar_t>* step, scalar_t* y,
                   Layout layout, int64_t qmin, int64_t qmax) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Tiling t(layout);
  if (t.items == 0) return;
  const LsqMath<opmath_t> m(qmin, qmax);
  const std::vector<opmath_t> steps = prepare_steps(step, t);
  at::parallel_for(0, t.items, t.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      if (!t.pattern) {
        int64_t offset, len, c;
        t.segment(item, offset, len, c);
        quantize_run(m, x + offset, y + offset, len, BroadcastStep<opmath_t>{Vectorized<opmath_t>(steps[c])});
      } else {
        int64_t r0, r1, c0, c1;
        t.tile(item, r0, r1, c0, c1);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t offset = r * t.row_len + c0;
          quantize_run(m, x + offset, y + offset, c1 - c0, PatternStep<opmath_t>{steps.data() + c0});
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_typed(const scalar_t* gy, const scalar_t* x, const at::opmath_type<scalar_t>* step,
                    scalar_t* gx, double* channel_sums, Layout layout, int64_t qmin, int64_t qmax) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Tiling t(layout);
  std::fill(channel_sums, channel_sums + layout.channels, 0.0);
  if (t.items == 0) return;
  const LsqMath<opmath_t> m(qmin, qmax);
  const std::vector<opmath_t> steps = prepare_steps(step, t);

  if (!t.pattern) {
    std::vector<double> partial(t.items);  // one per item
    at::parallel_for(0, t.items, t.grain(), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        int64_t offset, len, c;
        t.segment(item, offset, len, c);
        RunSink<opmath_t> sink;
        backward_run(m, gy + offset, x + offset, gx + offset, len,
                     BroadcastStep<opmath_t>{Vectorized<opmath_t>(steps[c])}, sink);
        sink.fold();
        partial[item] = sink.total;
      }
    });
    // item = (o * channels + c) * blocks_per_segment + block, summed over o then block.
    for (int64_t o = 0; o < layout.outer; ++o)
      for (int64_t c = 0; c < layout.channels; ++c)
        for (int64_t b = 0; b < t.blocks_per_segment; ++b)
          channel_sums[c] += partial[(o * layout.channels + c) * t.blocks_per_segment + b];
    return;
  }

  const int64_t row_blocks = ceil_div(layout.outer, t.rows);
  std::vector<double> partial(row_blocks * layout.channels, 0.0);  // [row block, channel]
  at::parallel_for(0, t.items, t.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      int64_t r0, r1, c0, c1;
      t.tile(item, r0, r1, c0, c1);
      ColumnSink<opmath_t> sink(c1 - c0);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t offset = r * t.row_len + c0;
        backward_run(m, gy + offset, x + offset, gx + offset, c1 - c0,
                     PatternStep<opmath_t>{steps.data() + c0}, sink);
        if ((r - r0 + 1) % kFoldSteps == 0) sink.fold();
      }
      sink.fold();
      double* out = partial.data() + (item / t.column_blocks) * layout.channels;
      for (int64_t col = c0; col < c1; ++col) out[col / layout.inner] += sink.total[col - c0];
    }
  });
  for (int64_t rb = 0; rb < row_blocks; ++rb)
    for (int64_t c = 0; c < layout.channels; ++c) channel_sums[c] += partial[rb * layout.channels + c];
}

// Type dispatch at the table boundary: the table's entries take type-erased pointers.
template <typename Fn>
void dispatch_dtype(c10::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case c10::ScalarType::Float: return fn(float{});
    case c10::ScalarType::Double: return fn(double{});
    case c10::ScalarType::Half: return fn(c10::Half{});
    case c10::ScalarType::BFloat16: return fn(c10::BFloat16{});
    default: TORCH_CHECK(false, "lsq_fast: unsupported dtype ", dtype);
  }
}

void forward(c10::ScalarType dtype, const void* x, const void* step, void* y, Layout layout,
             int64_t qmin, int64_t qmax) {
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    forward_typed(static_cast<const scalar_t*>(x), static_cast<const at::opmath_type<scalar_t>*>(step),
                  static_cast<scalar_t*>(y), layout, qmin, qmax);
  });
}

void backward(c10::ScalarType dtype, const void* grad_y, const void* x, const void* step,
              void* grad_x, double* channel_sums, Layout layout, int64_t qmin, int64_t qmax) {
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    backward_typed(static_cast<const scalar_t*>(grad_y), static_cast<const scalar_t*>(x),
                   static_cast<const at::opmath_type<scalar_t>*>(step), static_cast<scalar_t*>(grad_x),
                   channel_sums, layout, qmin, qmax);
  });
}

}  // namespace
}  // namespace lsq_fast::cpu::LSQ_FAST_ISA
