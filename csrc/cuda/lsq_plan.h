// How the CUDA kernels cut a tensor into work: plain C++ (no CUDA, no torch), so the host
// binding, the kernels and a g++-built test (tests/cpp/test_cuda_host.cpp) share one rule:
// make_plan on the host, and the LSQ_HD index helpers in the kernels and the test alike.
//
// Three kernels cover every dense layout [outer, channels, inner] (see lsq_layout.h):
//  - rows: memory is rows of `cols` elements with one step per row (per-tensor: one row of
//    every element; weights on axis 0 and NCHW activations on axis 1: a row per channel run).
//    Work items are chunks of a row; a block strides over items.
//  - cols: short channel runs (channels_last activations, the last axis, weights with rows
//    shorter than a warp): memory is a [outer, channels * inner] matrix, column j has step
//    j / inner. Each thread keeps the same columns for the whole launch, so it loads its steps
//    once and sums its columns' step gradients; blocks stride over bands of rows.
//  - groups: rows shorter than one block-wide sweep of 16-byte accesses (4 KB: per-group
//    steps of LLM weights, [numel / G, G], and short weight rows), where the rows kernel would
//    leave most of a block idle (a row of 128 float32 is 32 of its 256 threads). `lanes`
//    threads of a warp (a power of two, up to 32) share a group; a warp takes 32 / lanes
//    groups at a time, `rounds` times per work item, so that each thread has about
//    unroll_for() accesses in flight; a group's step gradient is reduced by warp shuffles
//    among its lanes and written by its first lane: one launch, no shared memory.
//
// The step gradient: float32 per thread within a work item (rows kernel) or per element (cols
// kernel, into float64 totals in shared memory), folded into float64, reduced across the
// block in a fixed order, one float64 partial per block (per-tensor), per item
// (rows kernel, a step per row) or per block and column (cols kernel), then summed per
// channel by a second tiny kernel in a fixed order; in the groups kernel, float32 per thread
// within its group (at most 64 terms: a row is under 4 KB), folded into float64 and summed
// over the group's lanes by a fixed shuffle tree. No atomics: the same bits on every run.
// Where a block holds a channel's whole sum, the backward writes grad_step itself and the
// second kernel is skipped (Plan::final): a weight's rows (one item per row; short rows and
// groups always, in the groups kernel), a small tensor
// (one item, or one block down every column), a weight with short rows (one row: one block
// down each column block, the blocks cut at channel boundaries).
//
// The plan is a function of the shape, the element size, the pointers' alignment and the
// direction alone, never of the device: the partition, and so the step gradient's float bits,
// is the same on every GPU and MIG slice, as the Triton path's (lsq_fast/_triton/tiles.py).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cuda/lsq_hd.h"
#include "lsq_layout.h"

namespace lsq_fast::cuda {

constexpr int kThreads = 256;    // threads per block, every kernel
constexpr int kBlocksPerSm = 4;  // __launch_bounds__(kThreads, kBlocksPerSm): 64 registers a thread
constexpr int64_t kMinRowRun = 512;      // channel runs shorter than this use the cols kernel
constexpr int64_t kWholeRowMax = 16384;  // a weight's row up to this long is one work item
constexpr int64_t kMinWeightRow = 32;    // shorter weight rows (a vector of steps) use the cols kernel
constexpr int kMaxGridY = 65535;
// The cols kernel's packs hold at most 4 elements (8-byte accesses for 16-bit types): each
// thread keeps a step per element, and 8 of them with 8 IEEE divisions would spill.
constexpr int kColsMaxVec = 4;

// Grid-stride grids have at most kGridBlocks blocks, a constant rather than the device's
// multiprocessors x kBlocksPerSm, so that the partition does not depend on the GPU. 1024
// blocks are about two waves of an H200 or H100 SXM (132 SMs x 4 resident = 528 blocks;
// the second wave 496), 1.7 of a B200 (148 x 4), 2.4 of an A100 (108 x 4), 16 of a 1g MIG
// slice (16 SMs). Even the partial last wave keeps every SM busy with 3-4 blocks; one block
// has 16 KB of float32 loads in flight (256 threads x 64 bytes, unroll_for), so two cover an
// SM's share of an H200's bandwidth-latency product (4.8 TB/s x ~0.7 us / 132 SMs = 25 KB).
// A 16M-element float32 per-tensor backward: 8192 items of 2048 elements, 1024 blocks of 8
// items each (a power-of-two size splits evenly), 1024 float64 partials for one combining block.
constexpr int64_t kGridBlocks = 1024;
// A cols-kernel block walks at least this many rows (when there are enough for kGridBlocks
// blocks' worth anyway): its partials, 8 bytes per column, then cost at most 1/12 of its
// float32 traffic (8 rows x 12 bytes per column: x, grad_y, grad_x; 1/6 for 16-bit types).
constexpr int64_t kColsMinRows = 8;
// Rows of fewer bytes than one sweep of a block's 16-byte accesses use the groups kernel
// (outer == 1, at least kMinWeightRow elements).
constexpr int64_t kGroupsMaxRowBytes = static_cast<int64_t>(kThreads) * 16;
// A tensor of up to this many bytes (8192 float32, 16384 float16/bfloat16, 4096 float64
// elements) finishes its step gradient in the backward kernel: per-tensor, one work item
// (one block); per-channel in the cols kernel, one block down every column. One block loads
// about 16 KB per memory round trip, so its backward of 8192 float32 elements (64 KB of x and
// grad_y) takes 4 round trips, ~3 us, about what the second launch it saves costs (the
// combine kernel, its gap on the stream, and 2-4 us of host time per launch in eager mode);
// beyond it, several blocks and a combine are faster. Triton's single program stops at 4096
// elements (lsq_fast/_triton/tiles.py, SINGLE_PROGRAM_MAX). Estimates, not measurements: a
// GPU's timings should set it.
constexpr int64_t kWholeTensorBytes = 32768;

// Accesses per input a thread issues before it uses any (memory-level parallelism): 64 bytes
// per thread in flight for float32, in the forward (one input) and the backward (two), 32
// for 16-bit types. More would cost registers the IEEE division's slow path needs: at 64
// registers (kBlocksPerSm blocks resident) the kernels must not spill.
LSQ_HD constexpr int unroll_for(int vec, bool backward) {
  const int per_input = (backward ? 8 : 16) / (vec > 4 ? vec : 4);
  return per_input > 1 ? per_input : 1;
}

enum class KernelKind : int { kRows, kCols, kGroups };

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
  int64_t block_cols;  // columns per column block: tx * vec, or fewer to end at a channel's edge
  int64_t band_rows;  // (kThreads / tx) * unroll: each thread loads `unroll` rows of a band
  int64_t bands;
  // groups kernel: rows (= channels) are the groups, of `cols` elements; a group has `packs`
  // packs of `vec`, spread over `lanes` threads, `packs_per_lane` each; a work item (one warp's)
  // is `rounds` x (32 / lanes) consecutive groups, `items` of them.
  int lanes;
  int64_t packs;
  int64_t packs_per_lane;
  int64_t rounds;
  unsigned grid_x;
  unsigned grid_y;
  // Step-gradient partials, float64, laid out [partial_outer, channels, partial_inner]:
  // channel c sums [:, c, :]. `final`: the backward kernel has each channel's whole sum in
  // one block and writes grad_step itself (no partials, no second launch).
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
constexpr int64_t gcd(int64_t a, int64_t b) { return b == 0 ? a : gcd(b, a % b); }

// Kernels one call launches: the elementwise kernel, then, in a backward whose partials are not
// whole channels, the combine (lsq_sum_partials_kernel). The launcher asks this too.
constexpr int launches(const Plan& p, bool backward) { return backward && !p.final ? 2 : 1; }

LSQ_HD RowsItem rows_item(const Plan& p, int64_t item) {
  const int64_t row = p.per_row ? item / p.chunks_per_row : 0;
  const int64_t row_begin = row * p.cols;
  const int64_t begin = row_begin + (item - row * p.chunks_per_row) * p.chunk;
  const int64_t row_end = row_begin + p.cols;
  return RowsItem{begin, begin + p.chunk < row_end ? begin + p.chunk : row_end, p.per_row ? row % p.channels : 0};
}

// The cols kernel: the step of column `col`; the first of the `vec` columns thread `tx` of
// column block `block_y` owns, and whether it owns any (a block cut at a channel's edge leaves
// its last threads idle; the matrix's last block may end early); the row a thread at `ty` of a
// block loads `k`-th in band `band`.
LSQ_HD int64_t cols_channel(const Plan& p, int64_t col) { return col / p.inner; }
LSQ_HD int64_t cols_col(const Plan& p, int64_t block_y, int tx) {
  return block_y * p.block_cols + static_cast<int64_t>(tx) * p.vec;
}
LSQ_HD bool cols_active(const Plan& p, int64_t block_y, int tx) {
  return static_cast<int64_t>(tx) * p.vec < p.block_cols && cols_col(p, block_y, tx) < p.cols;
}
LSQ_HD int64_t cols_row(const Plan& p, int64_t band, int ty, int k) {
  return band * p.band_rows + ty + static_cast<int64_t>(k) * (kThreads / p.tx);
}
// A final cols plan with inner > 1: column block `block_y` finishes channels [first, end),
// those whose columns all lie in it.
LSQ_HD int64_t cols_first_channel(const Plan& p, int64_t block_y) { return block_y * p.block_cols / p.inner; }
LSQ_HD int64_t cols_end_channel(const Plan& p, int64_t block_y) {
  const int64_t end = (block_y + 1) * p.block_cols;
  return (end < p.cols ? end : p.cols) / p.inner;
}

// The groups kernel: where the t-th access of the thread at `lane` of its warp, in work item
// `item`, falls (t < rounds * packs_per_lane): its group, and its first element, when valid
// (a group past the tensor's last, or a pack past its group's end, is not). A group's accesses
// are those with t % packs_per_lane from 0 to packs_per_lane - 1 of one round: every lane of
// a warp reaches a group's last access at the same t, where the group's sum is reduced.
struct GroupsAccess {
  int64_t group;
  int64_t offset;
  bool valid;
};
LSQ_HD int groups_per_warp(const Plan& p) { return 32 / p.lanes; }
LSQ_HD GroupsAccess groups_access(const Plan& p, int64_t item, int lane, int64_t t) {
  const int64_t round = t / p.packs_per_lane;
  const int64_t pack = lane % p.lanes + (t - round * p.packs_per_lane) * p.lanes;
  const int64_t group = (item * p.rounds + round) * groups_per_warp(p) + lane / p.lanes;
  return GroupsAccess{group, group * p.cols + pack * p.vec, group < p.rows && pack < p.packs};
}
LSQ_HD bool groups_last_access(const Plan& p, int64_t t) { return t % p.packs_per_lane == p.packs_per_lane - 1; }

namespace plan_detail {

inline bool small_tensor(const Layout& l, int elem_size) { return l.numel() * elem_size <= kWholeTensorBytes; }

inline Plan rows_plan(const Layout& l, int elem_size, bool aligned, bool backward) {
  Plan p{};
  const int wide = 16 / elem_size;
  const bool one_step = l.channels == 1;
  p.kind = KernelKind::kRows;
  p.channels = l.channels;
  p.tx = 1;
  p.grid_y = 1;
  p.per_row = !one_step;
  p.rows = one_step ? 1 : l.outer * l.channels;
  p.cols = one_step ? l.numel() : l.inner;
  p.inner = 1;
  // Per-tensor tolerates a ragged end (a scalar tail); rows must each start aligned.
  p.vec = aligned && (one_step || p.cols % wide == 0) ? wide : 1;
  const int64_t pass = static_cast<int64_t>(kThreads) * p.vec;  // elements one sweep of a block covers
  const int64_t run = round_up(p.cols, pass);
  // One item per row where that row is a channel's whole sum: a weight's row, and a small
  // tensor's single row in the backward (the forward sums nothing, and keeps its chunks for
  // parallelism: one launch either way).
  const bool whole = p.per_row ? l.outer == 1 && p.cols <= kWholeRowMax : backward && small_tensor(l, elem_size);
  p.chunk = whole ? run : std::min(pass * unroll_for(p.vec, backward), run);
  p.chunks_per_row = ceil_div(p.cols, p.chunk);
  p.items = p.rows * p.chunks_per_row;
  p.grid_x = static_cast<unsigned>(std::min(p.items, kGridBlocks));
  if (p.per_row) {  // a partial per item: the grid does not change the sums, only the schedule
    p.partial_outer = l.outer;
    p.partial_inner = p.chunks_per_row;
    p.final = l.outer == 1 && p.chunks_per_row == 1;
  } else {  // a partial per block: each thread's float64 total runs over its block's items
    p.partial_outer = 1;
    p.partial_inner = p.grid_x;
    p.final = p.grid_x == 1;
  }
  return p;
}

inline Plan cols_plan(const Layout& l, int elem_size, bool aligned, bool backward) {
  Plan p{};
  p.kind = KernelKind::kCols;
  p.per_row = false;
  p.channels = l.channels;
  p.rows = l.outer;
  p.cols = l.channels * l.inner;
  p.inner = l.inner;
  const int cols_wide = std::min(16 / elem_size, kColsMaxVec);
  p.vec = aligned && p.cols % cols_wide == 0 ? cols_wide : 1;
  const int64_t col_vecs = p.cols / p.vec;
  p.tx = static_cast<int>(std::min<int64_t>(next_pow2(col_vecs), kThreads));
  p.block_cols = static_cast<int64_t>(p.tx) * p.vec;
  int64_t col_blocks = ceil_div(p.cols, p.block_cols);
  p.band_rows = static_cast<int64_t>(kThreads / p.tx) * unroll_for(p.vec, backward);
  p.bands = ceil_div(p.rows, p.band_rows);
  // A small tensor: one block down each column (a weight, one row, is one band anyway).
  const int64_t blocks_x =
      small_tensor(l, elem_size)
          ? 1
          : std::min({p.bands, ceil_div(p.rows, kColsMinRows), std::max<int64_t>(1, kGridBlocks / col_blocks)});
  p.grid_x = static_cast<unsigned>(blocks_x);
  // One block down each column has every row of it. Cut the column blocks at channel edges (a
  // multiple of lcm(inner, vec) columns, where that fits in tx * vec: a 3x3 depthwise weight
  // in float32 gets 28 channels, 1008 of 1024 columns, a block) and each block holds whole
  // channels, which it finishes: depthwise and short-row linear weights of any size, small
  // NCHW activations.
  if (p.grid_x == 1 && p.inner > 1 && col_blocks > 1) {
    const int64_t unit = p.inner / gcd(p.inner, p.vec) * p.vec;
    if (unit <= p.block_cols) {
      p.block_cols = p.block_cols / unit * unit;
      col_blocks = ceil_div(p.cols, p.block_cols);
    }
  }
  p.grid_y = col_blocks <= kMaxGridY ? static_cast<unsigned>(col_blocks) : 0;
  p.partial_outer = p.grid_x;
  p.partial_inner = l.inner;
  p.final = p.grid_x == 1 && (p.inner == 1 || col_blocks == 1 || p.block_cols % p.inner == 0);
  return p;
}

inline Plan groups_plan(const Layout& l, int elem_size, bool aligned, bool backward) {
  Plan p{};
  const int wide = 16 / elem_size;
  p.kind = KernelKind::kGroups;
  p.per_row = true;
  p.channels = l.channels;
  p.rows = l.channels;
  p.cols = l.inner;
  p.inner = l.inner;
  p.tx = 1;
  p.grid_y = 1;
  p.vec = aligned && p.cols % wide == 0 ? wide : 1;
  p.packs = p.cols / p.vec;
  p.lanes = static_cast<int>(std::min<int64_t>(next_pow2(p.packs), 32));
  p.packs_per_lane = ceil_div(p.packs, p.lanes);
  p.rounds = std::max<int64_t>(1, unroll_for(p.vec, backward) / p.packs_per_lane);
  p.items = ceil_div(p.rows, p.rounds * (32 / p.lanes));
  p.grid_x = static_cast<unsigned>(std::min(ceil_div(p.items, kThreads / 32), kGridBlocks));
  p.final = true;
  return p;
}

}  // namespace plan_detail

// layout: of a non-empty dense tensor; elem_size: bytes per element; aligned: every pointer
// the kernel touches is 16-byte aligned; backward: the plan of the backward kernel (its unroll
// differs from the forward's, never its kernel). No device input: the same plan, and the same
// step-gradient bits, on every GPU. Throws nothing: a plan that cannot launch (more than
// 65535 column blocks) has grid_y == 0, which the caller reports.
inline Plan make_plan(const Layout& l, int elem_size, bool aligned, bool backward) {
  if (l.channels == 1) return plan_detail::rows_plan(l, elem_size, aligned, backward);
  // Per-group steps and short weight rows: a few lanes per group, one launch.
  if (l.outer == 1 && l.inner >= kMinWeightRow && l.inner * elem_size < kGroupsMaxRowBytes)
    return plan_detail::groups_plan(l, elem_size, aligned, backward);
  // A weight (outer == 1) keeps rows down to a warp's width: one item per row is its channel's
  // whole sum, so the backward is one launch.
  if (l.inner >= kMinRowRun || (l.outer == 1 && l.inner >= kMinWeightRow)) {
    // A small activation whose channels span several runs (NCHW, N > 1) would need the
    // combine in the rows kernel; the cols kernel, one block down each column, finishes it
    // where a block can hold whole channels (its kind does not depend on `backward`).
    if (l.outer > 1 && plan_detail::small_tensor(l, elem_size)) {
      const Plan c = plan_detail::cols_plan(l, elem_size, aligned, backward);
      if (c.final) return c;
    }
    return plan_detail::rows_plan(l, elem_size, aligned, backward);
  }
  return plan_detail::cols_plan(l, elem_size, aligned, backward);
}

}  // namespace lsq_fast::cuda
