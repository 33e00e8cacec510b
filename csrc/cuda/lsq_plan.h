// How the CUDA kernels cut a tensor into work: plain C++ (no CUDA, no torch), so the host
// binding, the kernels and a g++-built test (tests/cpp/test_cuda_plan.cpp) share one rule:
// make_plan on the host, and the LSQ_HD index helpers in the kernels and the test alike.
//
// Two kernels cover every dense layout [outer, channels, inner] (see lsq_layout.h):
//  - rows: memory is rows of `cols` elements with one step per row (per-tensor: one row of
//    every element; weights on axis 0 and NCHW activations on axis 1: a row per channel run).
//    Work items are chunks of a row; a block strides over items.
//  - cols: short channel runs (channels_last activations, the last axis): memory is a
//    [outer, channels * inner] matrix, column j has step j / inner. Each thread keeps the
//    same columns for the whole launch, so it loads its steps once and sums its columns'
//    step gradients in registers; blocks stride over bands of rows.
//
// The step gradient: float32 per thread within a work item (rows kernel) or per element (cols
// kernel, into float64 totals in shared memory), folded into float64, reduced across the
// block in a fixed order, one float64 partial per block (per-tensor), per item
// (rows kernel, a step per row) or per block and column (cols kernel), then summed per
// channel by a second tiny kernel in a fixed order. No atomics: the same bits on every run.
// Where each partial already is a channel's whole sum (one block; a weight's rows, one item
// per row), the backward writes grad_step itself and the second kernel is skipped.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cuda/lsq_hd.h"
#include "lsq_layout.h"

namespace lsq_fast::cuda {

constexpr int kThreads = 256;          // threads per block, every kernel
constexpr int kBlocksPerSm = 4;        // a grid-stride grid holds this many blocks per multiprocessor
constexpr int64_t kMinRowRun = 512;    // channel runs shorter than this use the cols kernel
constexpr int64_t kWholeRowMax = 16384;  // a weight's row up to this long is one work item
constexpr int64_t kMinWeightRow = 32;    // shorter weight rows (a vector of steps) use the cols kernel
constexpr int kMaxGridY = 65535;
// The cols kernel's packs hold at most 4 elements (8-byte accesses for 16-bit types): each
// thread keeps a step per element, and 8 of them with 8 IEEE divisions would spill.
constexpr int kColsMaxVec = 4;

// Accesses per input a thread issues before it uses any (memory-level parallelism): 64 bytes
// per thread in flight for float32, in the forward (one input) and the backward (two), 32
// for 16-bit types. More would cost registers the IEEE division's slow path needs: at 64
// registers (kBlocksPerSm blocks resident) the kernels must not spill.
LSQ_HD constexpr int unroll_for(int vec, bool backward) {
  const int per_input = (backward ? 8 : 16) / (vec > 4 ? vec : 4);
  return per_input > 1 ? per_input : 1;
}

enum class KernelKind : int { kRows, kCols };

struct Plan {
  KernelKind kind;
  int vec;          // elements per memory access: 16 bytes' worth (at most kColsMaxVec in the
                    // cols kernel), or 1 (unaligned pointers, rows that straddle a pack)
  bool per_row;     // rows kernel: row r has step r % channels (else one step for all)
  int64_t rows;     // rows kernel: rows of `cols` elements; cols kernel: matrix rows (= outer)
  int64_t cols;
  int64_t channels;
  int64_t inner;    // cols kernel: columns per channel (column j has step j / inner)
  // rows kernel: work item = (row, chunk of `chunk` elements)
  int64_t chunk;
  int64_t chunks_per_row;
  int64_t items;
  // cols kernel: threads per block across columns (the rest go down rows), bands of rows
  int tx;
  int64_t band_rows;  // (kThreads / tx) * unroll: each thread loads `unroll` rows of a band
  int64_t bands;
  unsigned grid_x;
  unsigned grid_y;
  // Step-gradient partials, float64, laid out [partial_outer, channels, partial_inner]:
  // channel c sums [:, c, :]. `final`: each partial is a channel's whole sum, written as
  // grad_step by the backward kernel itself.
  int64_t partial_outer;
  int64_t partial_inner;
  bool final;

  int64_t partials() const { return final ? 0 : partial_outer * channels * partial_inner; }
};

// One work item of the rows kernel: elements [begin, end) of memory, all with step `channel`.
struct RowsItem {
  int64_t begin;
  int64_t end;
  int64_t channel;
};

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
constexpr int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

LSQ_HD RowsItem rows_item(const Plan& p, int64_t item) {
  const int64_t row = p.per_row ? item / p.chunks_per_row : 0;
  const int64_t row_begin = row * p.cols;
  const int64_t begin = row_begin + (item - row * p.chunks_per_row) * p.chunk;
  const int64_t row_end = row_begin + p.cols;
  return RowsItem{begin, begin + p.chunk < row_end ? begin + p.chunk : row_end, p.per_row ? row % p.channels : 0};
}

// The cols kernel: the step of column `col`, and the row a thread at `ty` of a block loads
// `k`-th in band `band`.
LSQ_HD int64_t cols_channel(const Plan& p, int64_t col) { return col / p.inner; }
LSQ_HD int64_t cols_row(const Plan& p, int64_t band, int ty, int k) {
  return band * p.band_rows + ty + static_cast<int64_t>(k) * (kThreads / p.tx);
}

// layout: of a non-empty dense tensor; elem_size: bytes per element; aligned: every pointer
// the kernel touches is 16-byte aligned; sm_count: the device's multiprocessors; backward:
// the plan of the backward kernel (its unroll differs from the forward's). Throws
// nothing: a plan that cannot launch (more than 65535 column blocks) has grid_y == 0, which
// the caller reports.
inline Plan make_plan(const Layout& l, int elem_size, bool aligned, int sm_count, bool backward) {
  Plan p{};
  const int wide = 16 / elem_size;
  const int64_t resident = static_cast<int64_t>(std::max(sm_count, 1)) * kBlocksPerSm;
  p.channels = l.channels;
  p.tx = 1;
  p.grid_y = 1;
  const bool one_step = l.channels == 1;
  // A weight (outer == 1) keeps rows down to a warp's width: one item per row is its channel's
  // whole sum, so the backward is one launch.
  if (one_step || l.inner >= kMinRowRun || (l.outer == 1 && l.inner >= kMinWeightRow)) {
    p.kind = KernelKind::kRows;
    p.per_row = !one_step;
    p.rows = one_step ? 1 : l.outer * l.channels;
    p.cols = one_step ? l.numel() : l.inner;
    p.inner = 1;
    // Per-tensor tolerates a ragged end (a scalar tail); rows must each start aligned.
    p.vec = aligned && (one_step || p.cols % wide == 0) ? wide : 1;
    const int64_t pass = static_cast<int64_t>(kThreads) * p.vec;  // elements one sweep of a block covers
    const int64_t run = round_up(p.cols, pass);
    if (p.per_row && l.outer == 1 && p.cols <= kWholeRowMax) {
      p.chunk = run;  // a weight: whole rows, so each item's sum is its channel's gradient
    } else {
      p.chunk = std::min(pass * unroll_for(p.vec, backward), run);
    }
    p.chunks_per_row = ceil_div(p.cols, p.chunk);
    p.items = p.rows * p.chunks_per_row;
    p.grid_x = static_cast<unsigned>(std::min(p.items, resident));
    if (p.per_row) {
      p.partial_outer = l.outer;
      p.partial_inner = p.chunks_per_row;
      p.final = l.outer == 1 && p.chunks_per_row == 1;
    } else {
      p.partial_outer = 1;
      p.partial_inner = p.grid_x;
      p.final = p.grid_x == 1;
    }
    return p;
  }
  p.kind = KernelKind::kCols;
  p.per_row = false;
  p.rows = l.outer;
  p.cols = l.channels * l.inner;
  p.inner = l.inner;
  const int cols_wide = std::min(wide, kColsMaxVec);
  p.vec = aligned && p.cols % cols_wide == 0 ? cols_wide : 1;
  const int64_t col_vecs = p.cols / p.vec;
  p.tx = static_cast<int>(std::min<int64_t>(next_pow2(col_vecs), kThreads));
  const int64_t col_blocks = ceil_div(col_vecs, p.tx);
  p.band_rows = static_cast<int64_t>(kThreads / p.tx) * unroll_for(p.vec, backward);
  p.bands = ceil_div(p.rows, p.band_rows);
  p.grid_y = col_blocks <= kMaxGridY ? static_cast<unsigned>(col_blocks) : 0;
  p.grid_x = static_cast<unsigned>(std::min(p.bands, std::max<int64_t>(1, resident / col_blocks)));
  p.partial_outer = p.grid_x;
  p.partial_inner = l.inner;
  p.final = p.grid_x == 1 && l.inner == 1;
  return p;
}

}  // namespace lsq_fast::cuda
