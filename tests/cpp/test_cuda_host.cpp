// Host test of the CUDA backend's shared pieces, built by g++ with no CUDA and no torch: the
// launch plan (csrc/cuda/lsq_plan.h: which kernel, pack width, grid, partials) with the index
// helpers the kernels use, and the per-element arithmetic (csrc/cuda/lsq_math.cuh) that the
// kernels compile for the device, the arctan soft-round backward (LG-LSQ) included. What the
// device build changes (intrinsics for division, multiply, rint and floor) is checked in CI on
// the PTX (tests/test_cuda_codegen.py) and on a GPU by the Python contract suite.
//
// Built and run by CMake (`make ctest`).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/lsq_math.cuh"
#include "cuda/lsq_plan.h"
#include "expect.h"

namespace {

using lsq_fast::Layout;
using namespace lsq_fast::cuda;

// The plan has no device input (no multiprocessor count, no architecture): whatever GPU or MIG
// slice runs it, the partition, and so the step gradient's float bits, are the same.
static_assert(std::is_same_v<decltype(&make_plan), Plan (*)(const Layout&, int, bool, bool)>,
              "make_plan(layout, elem_size, aligned, backward): a function of the tensor alone");

constexpr int kElemSizes[] = {2, 4, 8};

bool same_plan(const Plan& a, const Plan& b) {
  return a.kind == b.kind && a.vec == b.vec && a.per_row == b.per_row && a.rows == b.rows && a.cols == b.cols &&
         a.channels == b.channels && a.inner == b.inner && a.chunk == b.chunk &&
         a.chunks_per_row == b.chunks_per_row && a.items == b.items && a.tx == b.tx &&
         a.block_cols == b.block_cols && a.band_rows == b.band_rows && a.bands == b.bands &&
         a.grid_x == b.grid_x && a.grid_y == b.grid_y && a.partial_outer == b.partial_outer &&
         a.partial_inner == b.partial_inner && a.final == b.final;
}

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

// Every (row, column) of the cols kernel's matrix is loaded by exactly one (column block,
// thread, band, k), and column j's step is (j / inner): the channel of element r * cols + j.
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
  std::vector<int> cols_seen(p.cols, 0);
  bool packs_ok = p.block_cols % p.vec == 0 && p.block_cols <= static_cast<int64_t>(p.tx) * p.vec;
  for (int64_t by = 0; by < p.grid_y; ++by)
    for (int tx = 0; tx < p.tx; ++tx)
      if (cols_active(p, by, tx)) {
        const int64_t col = cols_col(p, by, tx);
        packs_ok &= col % p.vec == 0 && col + p.vec <= p.cols;
        for (int v = 0; v < p.vec; ++v) ++cols_seen[col + v];
      }
  for (int s : cols_seen) once &= s == 1;
  EXPECT(once);
  EXPECT(packs_ok);
  bool channels_ok = true;
  for (int64_t j = 0; j < p.cols; ++j) channels_ok &= cols_channel(p, j) == j / l.inner;
  EXPECT(channels_ok);
}

// Every element lies in exactly one groups-kernel access (item, lane, t), in its own group
// (element i of [1, groups, G] has step i / G), at a pack-aligned offset; each group's
// accesses are made by its lanes of one warp only, within one round.
void expect_groups_cover(const Layout& l, const Plan& p) {
  std::vector<int> seen(l.numel(), 0);
  bool groups_ok = p.lanes >= 1 && p.lanes <= 32 && 32 % p.lanes == 0 && p.packs * p.vec == p.cols;
  const int64_t accesses = p.rounds * p.packs_per_lane;
  for (int64_t item = 0; item < p.items; ++item)
    for (int lane = 0; lane < 32; ++lane)
      for (int64_t t = 0; t < accesses; ++t) {
        const GroupsAccess at = groups_access(p, item, lane, t);
        if (!at.valid) continue;
        groups_ok &= at.offset % p.vec == 0 && at.offset + p.vec <= l.numel();
        for (int v = 0; v < p.vec; ++v) {
          ++seen[at.offset + v];
          groups_ok &= (at.offset + v) / l.inner == at.group;
        }
      }
  bool once = true;
  for (int s : seen) once &= s == 1;
  EXPECT(once);
  EXPECT(groups_ok);
}

// An integer stand-in for element i's grad_y * dy/ds: sums of them are exact, so any element
// lost, counted twice or given to the wrong channel shows.
int64_t term(int64_t i) { return (i * 2654435761LL) % 1009 + 1; }

// The backward's step-gradient sums as the kernels form them (lsq_kernels.cu: the rows
// kernel's blocks over items, the cols kernel's threads over bands and its epilogue, the
// combine over partials), on the plan and its index helpers. True when every channel gets its
// exact sum, written once, and every partial is written once and read by the combine.
bool emulated_sums_match(const Layout& l, const Plan& p) {
  std::vector<int64_t> grad(l.channels, 0);
  std::vector<int> grad_writes(l.channels, 0);
  std::vector<int64_t> partials(p.partials(), 0);
  std::vector<int> partial_writes(p.partials(), 0);
  bool ok = p.grid_x >= 1 && p.grid_y >= 1 && p.grid_x <= kGridBlocks;
  const auto put_grad = [&](int64_t c, int64_t v) {
    if (c < 0 || c >= l.channels) return void(ok = false);
    grad[c] = v;
    ++grad_writes[c];
  };
  const auto put_partial = [&](int64_t k, int64_t v) {
    if (k < 0 || k >= p.partials()) return void(ok = false);
    partials[k] = v;
    ++partial_writes[k];
  };
  if (p.kind == KernelKind::kGroups) {
    // Each warp's work items, each lane's sum over a group's accesses, the shuffle over the
    // group's lanes at its last access (any order sums integers exactly), the first lane's write.
    const int64_t warps = static_cast<int64_t>(p.grid_x) * (kThreads / 32);
    const int64_t accesses = p.rounds * p.packs_per_lane;
    for (int64_t w = 0; w < warps; ++w)
      for (int64_t item = w; item < p.items; item += warps) {
        std::vector<int64_t> acc(32, 0);
        for (int64_t t = 0; t < accesses; ++t) {
          for (int lane = 0; lane < 32; ++lane) {
            const GroupsAccess at = groups_access(p, item, lane, t);
            if (at.valid)
              for (int v = 0; v < p.vec; ++v) acc[lane] += term(at.offset + v);
          }
          if (!groups_last_access(p, t)) continue;
          for (int first = 0; first < 32; first += p.lanes) {
            int64_t sum = 0;
            for (int lane = first; lane < first + p.lanes; ++lane) sum += acc[lane], acc[lane] = 0;
            const GroupsAccess at = groups_access(p, item, first, t);
            if (at.group < p.rows) put_grad(at.group, sum);
            else ok &= sum == 0;
          }
        }
      }
  } else if (p.kind == KernelKind::kRows) {
    for (int64_t b = 0; b < p.grid_x; ++b) {
      int64_t total = 0;
      for (int64_t item = b; item < p.items; item += p.grid_x) {
        const RowsItem it = rows_item(p, item);
        int64_t sum = 0;
        for (int64_t i = it.begin; i < it.end; ++i) sum += term(i);
        if (!p.per_row) total += sum;
        else if (p.final) put_grad(it.channel, sum);
        else put_partial(item, sum);
      }
      if (!p.per_row) {
        if (p.final) put_grad(0, total);
        else put_partial(b, total);
      }
    }
  } else {
    const int ty_count = kThreads / p.tx;
    const int unroll = unroll_for(p.vec, true);
    std::vector<int64_t> totals(static_cast<size_t>(kThreads) * p.vec);  // shared memory, [ty][tx][v]
    std::vector<bool> written(totals.size());
    for (int64_t bx = 0; bx < p.grid_x; ++bx)
      for (int64_t by = 0; by < p.grid_y; ++by) {
        std::fill(totals.begin(), totals.end(), 0);
        std::fill(written.begin(), written.end(), false);
        for (int t = 0; t < kThreads; ++t) {
          const int tx = t % p.tx, ty = t / p.tx;
          if (!cols_active(p, by, tx)) continue;
          const int64_t col = cols_col(p, by, tx);
          for (int64_t band = bx; band < p.bands; band += p.grid_x)
            for (int k = 0; k < unroll; ++k) {
              const int64_t r = cols_row(p, band, ty, k);
              if (r < p.rows)
                for (int v = 0; v < p.vec; ++v) totals[t * p.vec + v] += term(r * p.cols + col + v);
            }
        }
        const bool channel_sums = p.final && p.inner > 1;
        std::vector<int64_t> column_sum(totals.size());
        for (int tx = 0; tx < p.tx; ++tx) {
          if (!cols_active(p, by, tx)) continue;
          const int64_t col = cols_col(p, by, tx);
          for (int v = 0; v < p.vec; ++v) {
            int64_t s = 0;
            for (int y = 0; y < ty_count; ++y) s += totals[(y * p.tx + tx) * p.vec + v];
            if (!p.final) put_partial(bx * p.cols + col + v, s);
            else if (!channel_sums) put_grad(col + v, s);
            else column_sum[tx * p.vec + v] = s, written[tx * p.vec + v] = true;
          }
        }
        if (channel_sums) {
          const int64_t first_col = cols_col(p, by, 0);
          for (int64_t c = cols_first_channel(p, by); c < cols_end_channel(p, by); ++c) {
            int64_t s = 0;
            for (int64_t j = c * p.inner; j < (c + 1) * p.inner; ++j) {
              const int64_t slot = j - first_col;
              if (slot < 0 || slot >= static_cast<int64_t>(totals.size()) || !written[slot]) ok = false;
              else s += column_sum[slot];
            }
            put_grad(c, s);
          }
        }
      }
  }
  if (launches(p, true) == 2) {  // lsq_sum_partials_kernel: channel c sums [:, c, :]
    for (int64_t c = 0; c < l.channels; ++c) {
      int64_t s = 0;
      for (int64_t o = 0; o < p.partial_outer; ++o)
        for (int64_t i = 0; i < p.partial_inner; ++i) s += partials[(o * l.channels + c) * p.partial_inner + i];
      put_grad(c, s);
    }
  }
  for (int w : partial_writes) ok &= w == 1;
  for (int64_t c = 0; c < l.channels; ++c) ok &= grad_writes[c] == 1;
  std::vector<int64_t> exact(l.channels, 0);
  for (int64_t i = 0; i < l.numel(); ++i) exact[l.channels == 1 ? 0 : (i / l.inner) % l.channels] += term(i);
  return ok && grad == exact;
}

void test_plans() {
  // A weight, per channel on axis 0: whole rows, one launch (final), 16-byte packs.
  const Layout weight{1, 512, 2304};
  const Plan w = make_plan(weight, 4, true, true);
  EXPECT(w.kind == KernelKind::kRows && w.per_row && w.vec == 4);
  EXPECT(w.final && w.partials() == 0 && w.chunks_per_row == 1 && w.items == 512 && w.grid_x == 512);
  expect_rows_cover(weight, w);

  // A weight too long for one item is split, and its partials combined.
  const Layout wide_weight{1, 8, 40000};
  const Plan ww = make_plan(wide_weight, 4, true, true);
  EXPECT(!ww.final && ww.chunks_per_row > 1 && ww.partials() == 8 * ww.chunks_per_row);
  expect_rows_cover(wide_weight, ww);

  // Per-tensor, large: kGridBlocks blocks (not a multiple of the device's SMs), one partial
  // each. 2^24 float32 elements: 8192 items of 2048, 8 per block.
  const Layout big{1, 1, (int64_t{1} << 24) + 3};
  const Plan t = make_plan(big, 4, true, true);
  EXPECT(t.kind == KernelKind::kRows && !t.per_row && t.vec == 4 && t.chunk == 2048 && t.items == 8193);
  EXPECT(t.grid_x == kGridBlocks && !t.final && t.partials() == kGridBlocks && launches(t, true) == 2);
  // Per-tensor, small: one block, which writes grad_step itself.
  const Plan small = make_plan(Layout{1, 1, 1000}, 2, true, true);
  EXPECT(small.grid_x == 1 && small.items == 1 && small.final && small.vec == 8);
  expect_rows_cover(Layout{1, 1, 1000}, small);
  // Unaligned pointers: element by element.
  EXPECT(make_plan(Layout{1, 1, 1000}, 4, false, true).vec == 1);

  // NCHW activation on axis 1: a row per (image, channel), cut into chunks of 2048 (256
  // threads x 4 floats x 2 packs in flight), partials [N, C, chunks].
  const Layout nchw{8, 64, 3136};
  const Plan a = make_plan(nchw, 4, true, true);
  EXPECT(a.kind == KernelKind::kRows && a.per_row && a.vec == 4 && a.chunk == 2048 && a.chunks_per_row == 2);
  EXPECT(!a.final && a.partial_outer == 8 && a.partial_inner == 2 && a.partials() == 8 * 64 * 2);
  EXPECT(a.grid_x == kGridBlocks);  // 1024 items
  expect_rows_cover(nchw, a);
  // Rows that straddle a 16-byte pack (7x7 maps in bfloat16: 49 elements; runs of 513):
  // element by element.
  const Plan odd = make_plan(Layout{1, 32, 49}, 2, true, true);
  EXPECT(odd.vec == 1 && odd.kind == KernelKind::kGroups);
  expect_groups_cover(Layout{1, 32, 49}, odd);
  const Plan odd_rows = make_plan(Layout{2, 8, 513}, 2, true, true);
  EXPECT(odd_rows.vec == 1 && odd_rows.kind == KernelKind::kRows);
  expect_rows_cover(Layout{2, 8, 513}, odd_rows);

  // channels_last activation on axis 1 (memory [N*H*W, C]): the cols kernel. 25088 rows in
  // bands of 32: 784 blocks, a band each.
  const Layout nhwc{8 * 56 * 56, 64, 1};
  const Plan c = make_plan(nhwc, 4, true, true);
  EXPECT(c.kind == KernelKind::kCols && c.vec == 4 && c.tx == 16 && c.grid_y == 1 && c.block_cols == 64);
  EXPECT(c.band_rows == 32 && c.grid_x == 784 && !c.final && c.partials() == 784 * 64);
  expect_cols_cover(nhwc, c, true);
  // 16-bit packs in the cols kernel hold 4 elements, not 8.
  EXPECT(make_plan(nhwc, 2, true, true).vec == kColsMaxVec);
  // Wide rows, few per band (1024 channels: 2 rows a band): at least kColsMinRows rows a block,
  // so the partials (8 bytes a column per block) stay a small part of the traffic.
  const Plan wide_c = make_plan(Layout{4096, 1024, 1}, 4, true, true);
  EXPECT(wide_c.band_rows == 2 && wide_c.grid_x == 4096 / kColsMinRows);
  // Few rows: one band, one block per column block, grad_step written directly.
  const Layout linear{4, 300, 1};
  const Plan lin = make_plan(linear, 4, true, true);
  EXPECT(lin.kind == KernelKind::kCols && lin.grid_x == 1 && lin.final);
  expect_cols_cover(linear, lin, true);
  // One step per element of a vector (a bias-like tensor, axis 0): the cols kernel, one launch.
  const Plan vec_steps = make_plan(Layout{1, 100000, 1}, 4, true, true);
  EXPECT(vec_steps.kind == KernelKind::kCols && vec_steps.final && vec_steps.grid_y == 98);
  expect_cols_cover(Layout{1, 100000, 1}, vec_steps, true);
  // Short channel runs (inner > 1) go through the cols kernel, combined over inner.
  const Layout short_runs{4096, 10, 6};
  const Plan sr = make_plan(short_runs, 4, true, false);
  EXPECT(sr.kind == KernelKind::kCols && !sr.final && sr.partial_inner == 6 && sr.grid_x == 64);
  expect_cols_cover(short_runs, sr, false);
  // A 3x3 depthwise weight (512 channels, rows of 9): one row, so one band; column blocks of
  // 28 whole channels (1008 columns of 1024), each finished by its block: one launch.
  const Layout depthwise{1, 512, 9};
  const Plan dw = make_plan(depthwise, 4, true, true);
  EXPECT(dw.kind == KernelKind::kCols && dw.grid_x == 1 && dw.block_cols == 1008 && dw.grid_y == 5 && dw.final);
  expect_cols_cover(depthwise, dw, true);

  // Per-group steps ([numel / G, G] rows, outer == 1): the groups kernel, one launch.
  // Groups of 128 float32: a warp per group (32 lanes of one 16-byte pack), 2 groups per
  // item in the backward (two packs in flight), 4 in the forward; a 4096x4096 weight's
  // 131072 groups fill kGridBlocks blocks.
  const Layout g128{1, 131072, 128};
  const Plan gb = make_plan(g128, 4, true, true);
  EXPECT(gb.kind == KernelKind::kGroups && gb.vec == 4 && gb.lanes == 32 && gb.packs_per_lane == 1);
  EXPECT(gb.rounds == 2 && gb.items == 65536 && gb.grid_x == kGridBlocks && gb.final && launches(gb, true) == 1);
  EXPECT(make_plan(g128, 4, true, false).rounds == 4);
  // Groups of 32 bfloat16: 4 lanes of 8 elements, 8 groups to a warp.
  const Plan g32 = make_plan(Layout{1, 4096, 32}, 2, true, true);
  EXPECT(g32.kind == KernelKind::kGroups && g32.vec == 8 && g32.lanes == 4 && g32.rounds == 1 && g32.items == 512);
  // Groups of 256 float32: 2 packs per lane; unaligned: 1 element a pack, 4 packs per lane.
  EXPECT(make_plan(Layout{1, 64, 256}, 4, true, true).packs_per_lane == 2);
  const Plan gu = make_plan(Layout{1, 64, 128}, 4, false, true);
  EXPECT(gu.vec == 1 && gu.lanes == 32 && gu.packs_per_lane == 4 && gu.rounds == 1);
  // Groups of 48 (not a power of two): 12 packs on 16 lanes, 4 of them idle.
  const Plan g48 = make_plan(Layout{1, 1000, 48}, 4, true, true);
  EXPECT(g48.lanes == 16 && g48.packs == 12);
  for (const Layout& l : {g128, Layout{1, 4096, 32}, Layout{1, 64, 256}, Layout{1, 64, 128}, Layout{1, 1000, 48}})
    for (int elem : kElemSizes)
      for (bool aligned : {true, false})
        for (bool backward : {true, false}) {
          const Plan p = make_plan(l, elem, aligned, backward);
          if (l.inner * elem < kGroupsMaxRowBytes) EXPECT(p.kind == KernelKind::kGroups);
          if (p.kind == KernelKind::kGroups) expect_groups_cover(l, p);
          EXPECT(emulated_sums_match(l, p));
        }
  // A whole row of 1024 float32 (4 KB) is the rows kernel's, as before.
  EXPECT(make_plan(Layout{1, 64, 1024}, 4, true, true).kind == KernelKind::kRows);

  // Random layouts: every element covered once, with its channel.
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 200; ++trial) {
    const Layout l{1 + static_cast<int64_t>(rng() % 9), 1 + static_cast<int64_t>(rng() % 40),
                   1 + static_cast<int64_t>(rng() % 1500)};
    const int elem = kElemSizes[trial % 3];
    const bool backward = trial % 2 == 0;
    const Plan p = make_plan(l, elem, trial % 5 != 0, backward);
    EXPECT(p.grid_x >= 1 && p.grid_y >= 1);
    if (p.kind == KernelKind::kRows) expect_rows_cover(l, p);
    else if (p.kind == KernelKind::kGroups) expect_groups_cover(l, p);
    else expect_cols_cover(l, p, backward);
  }
}

// A tensor's memory layout as lsq_host.cpp's memory_layout gives it: a contiguous tensor of
// `shape` quantized on `axis` (-1: per-tensor), or channels_last (4-D, axis 1).
Layout layout_of(std::vector<int64_t> shape, int axis, bool channels_last = false) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (axis < 0 || shape[axis] == 1) return Layout{1, 1, n};
  const int64_t c = shape[axis];
  if (channels_last) return Layout{n / c, c, 1};  // NHWC in memory: the channel is the fastest axis
  int64_t inner = 1;
  for (size_t d = axis + 1; d < shape.size(); ++d) inner *= shape[d];
  return Layout{n / (c * inner), c, inner};
}

struct Case {
  const char* name;
  Layout layout;
};

// One launch each way, whatever the element type and alignment, and every step-gradient sum
// right: small tensors (per-tensor, per-channel activations) and weights of any size whose
// rows fit one block.
void test_small_tensors_launch_once() {
  const Case weights[] = {
      {"conv 3x3 64->64", layout_of({64, 64, 3, 3}, 0)},     // rows of 576: groups kernel (rows kernel in float64)
      {"stem 7x7 3->64", layout_of({64, 3, 7, 7}, 0)},       // rows of 147, element by element
      {"conv 3x3 512->512", layout_of({512, 512, 3, 3}, 0)},  // 2.4M elements, rows of 4608
      {"linear 4096x16384", Layout{1, 64, 16384}},            // kWholeRowMax (64 of its 4096 rows)
      {"depthwise 3x3 x32", layout_of({32, 1, 3, 3}, 0)},     // rows of 9: the cols kernel, one block
      {"depthwise 3x3 x512", layout_of({512, 1, 3, 3}, 0)},   // column blocks cut at channel edges
      {"depthwise 5x5 x960", layout_of({960, 1, 5, 5}, 0)},
      {"linear 64x16", layout_of({64, 16}, 0)},
      {"linear 10x3", layout_of({10, 3}, 0)},
      {"linear 1000x31", layout_of({1000, 31}, 0)},
      {"bias-like 100000", layout_of({100000}, 0)},
  };
  for (const Case& c : weights)
    for (int elem : kElemSizes)
      for (bool aligned : {true, false}) {
        const Plan fwd = make_plan(c.layout, elem, aligned, false);
        const Plan bwd = make_plan(c.layout, elem, aligned, true);
        const bool once = launches(fwd, false) == 1 && launches(bwd, true) == 1 && bwd.partials() == 0;
        EXPECT(once && fwd.kind == bwd.kind && emulated_sums_match(c.layout, bwd));
        if (!once) std::printf("    weight %s, %d-byte elements, aligned %d\n", c.name, elem, aligned);
      }

  // Small tensors: up to kWholeTensorBytes. Per-tensor is one work item (one block) in the backward.
  const Case small[] = {
      {"per-tensor 1", Layout{1, 1, 1}},
      {"per-tensor 7", Layout{1, 1, 7}},
      {"per-tensor 1000", Layout{1, 1, 1000}},
      {"per-tensor (1, 4096)", layout_of({1, 4096}, -1)},
      {"per-tensor 4097", Layout{1, 1, 4097}},
      {"per-tensor (4, 16, 10, 10)", layout_of({4, 16, 10, 10}, -1)},
      {"per-tensor 4096 float64 / 8192 float32 / 16384 16-bit", Layout{1, 1, 4096}},
      {"channels_last (4, 16, 8, 8), axis 1", layout_of({4, 16, 8, 8}, 1, true)},
      {"channels_last (2, 32, 4, 4), axis 1", layout_of({2, 32, 4, 4}, 1, true)},
      {"last axis (8, 100)", layout_of({8, 100}, 1)},
      {"last axis (64, 64)", layout_of({64, 64}, 1)},
      {"NCHW (2, 16, 8, 8), axis 1", layout_of({2, 16, 8, 8}, 1)},
      {"NCHW (4, 8, 7, 7), axis 1", layout_of({4, 8, 7, 7}, 1)},
      {"NCHW (2, 4, 16, 32), axis 1", layout_of({2, 4, 16, 32}, 1)},  // runs of 512: the cols kernel
      {"NCHW (2, 2, 28, 28), axis 1", layout_of({2, 2, 28, 28}, 1)},
  };
  for (const Case& c : small)
    for (int elem : kElemSizes) {
      const int64_t max_elems = kWholeTensorBytes / elem;  // the per-tensor case sized to the limit
      const Layout l = std::string(c.name).rfind("per-tensor 4096 ", 0) == 0 ? Layout{1, 1, max_elems} : c.layout;
      if (l.numel() * elem > kWholeTensorBytes) continue;
      for (bool aligned : {true, false}) {
        const Plan fwd = make_plan(l, elem, aligned, false);
        const Plan bwd = make_plan(l, elem, aligned, true);
        bool once = launches(fwd, false) == 1 && launches(bwd, true) == 1 && bwd.partials() == 0;
        if (l.channels == 1) once &= bwd.items == 1 && bwd.grid_x == 1;
        // A small NCHW activation with long runs goes to the cols kernel only where one block's
        // columns (256 threads x vec) hold a whole channel: unaligned (vec 1, 256 columns) or
        // float64 (vec 2, 512) runs of 784 do not, and keep the rows kernel and the combine.
        const int vec = aligned ? std::min(16 / elem, kColsMaxVec) : 1;
        const bool expected =
            l.channels == 1 || l.inner < kMinRowRun || l.outer == 1 || l.inner <= int64_t{kThreads} * vec;
        EXPECT(once == expected && fwd.kind == bwd.kind && emulated_sums_match(l, bwd));
        if (once != expected) std::printf("    small %s, %d-byte elements, aligned %d\n", c.name, elem, aligned);
      }
    }
  // Just past the limit, per-tensor: several blocks and the combine.
  for (int elem : kElemSizes) {
    const Plan past = make_plan(Layout{1, 1, kWholeTensorBytes / elem + 1}, elem, true, true);
    EXPECT(launches(past, true) == 2 && past.grid_x > 1);
  }
}

// tests/test_gpu.py's test_small_tensors_launch_one_kernel_each_way counts the kernels a forward
// and a backward launch on the device, 2 for every case it lists: these are its cases, with the
// layouts the binding computes for them (float32 unless named, pointers from the caching
// allocator: 16-byte aligned).
void test_gpu_launch_counts_match_the_plan() {
  struct GpuCase {
    const char* name;
    Layout layout;
    int elem;
  };
  const GpuCase cases[] = {
      {"(64, 64, 3, 3) axis 0", layout_of({64, 64, 3, 3}, 0), 4},
      {"(64, 3, 7, 7) axis 0", layout_of({64, 3, 7, 7}, 0), 4},
      {"(32, 1, 3, 3) axis 0", layout_of({32, 1, 3, 3}, 0), 4},
      {"(512, 1, 3, 3) axis 0", layout_of({512, 1, 3, 3}, 0), 4},
      {"(64, 16) axis 0", layout_of({64, 16}, 0), 4},
      {"(1, 4096) per-tensor", layout_of({1, 4096}, -1), 4},
      {"(1, 4096) per-tensor bfloat16", layout_of({1, 4096}, -1), 2},
      {"(4, 16, 10, 10) per-tensor", layout_of({4, 16, 10, 10}, -1), 4},
      {"(4, 16, 8, 8) channels_last axis 1", layout_of({4, 16, 8, 8}, 1, true), 4},
  };
  for (const GpuCase& c : cases) {
    const int total = launches(make_plan(c.layout, c.elem, true, false), false) +
                      launches(make_plan(c.layout, c.elem, true, true), true);
    EXPECT(total == 2);
    if (total != 2) std::printf("    test_gpu case %s: %d launches\n", c.name, total);
  }
}

// Shape alone decides the plan: the same plan on every call, in any order, and for large
// tensors a grid that fills an H200 (528 resident blocks) with a number fixed in advance.
void test_plan_is_device_free_and_deterministic() {
  std::mt19937 rng(99);
  std::vector<Layout> layouts;
  for (int i = 0; i < 300; ++i)
    layouts.push_back(Layout{1 + static_cast<int64_t>(rng() % 3000), 1 + static_cast<int64_t>(rng() % 300),
                             1 + static_cast<int64_t>(rng() % 5000)});
  std::vector<Plan> first;
  for (const Layout& l : layouts) first.push_back(make_plan(l, 4, true, true));
  bool same = true;
  for (size_t k = layouts.size(); k-- > 0;) {  // again, in reverse order, interleaved with others
    (void)make_plan(layouts[(k * 7) % layouts.size()], 2, false, false);
    same &= same_plan(first[k], make_plan(layouts[k], 4, true, true));
  }
  EXPECT(same);

  // Large tensors: grids fixed by the shape, enough blocks for 132 SMs x 4, partials bounded.
  const Layout per_tensor_16m{1, 1, int64_t{1} << 24};
  const Plan p16 = make_plan(per_tensor_16m, 4, true, true);
  EXPECT(p16.items == 8192 && p16.grid_x == 1024 && p16.items % p16.grid_x == 0 && p16.partials() == 1024);
  const Plan f16 = make_plan(per_tensor_16m, 4, true, false);  // forward: 4096 items of 4096
  EXPECT(f16.items == 4096 && f16.grid_x == 1024);
  const Plan huge = make_plan(Layout{1, 1, (int64_t{1} << 31) + 1000}, 2, true, true);  // test_gpu's 2^31 + 1000
  EXPECT(huge.grid_x == kGridBlocks && huge.partials() == kGridBlocks && huge.items == (int64_t{1} << 20) + 1);
  for (const Layout& l : {per_tensor_16m, Layout{8, 64, 3136}, Layout{32, 256, 3136}, Layout{8 * 56 * 56, 64, 1},
                          Layout{32 * 28 * 28, 256, 1}, Layout{8 * 14 * 14, 1024, 1}})
    for (int elem : kElemSizes) {
      const Plan p = make_plan(l, elem, true, true);
      const int64_t blocks = static_cast<int64_t>(p.grid_x) * p.grid_y;
      EXPECT(blocks >= 132 && blocks <= kGridBlocks && emulated_sums_match(l, p));
      if (l.numel() >= (int64_t{1} << 24)) EXPECT(blocks >= 528);
    }
}

// The step-gradient sums as the kernels form them, on random layouts of every kind: every
// channel's exact sum, written once, in one launch or through the partials.
void test_emulated_step_sums() {
  std::mt19937 rng(4321);
  int finals = 0, combined = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t outer = trial % 4 == 0 ? 1 : 1 + static_cast<int64_t>(rng() % (trial % 3 == 0 ? 600 : 12));
    const Layout l{outer, 1 + static_cast<int64_t>(rng() % 70), 1 + static_cast<int64_t>(rng() % (trial % 2 ? 40 : 1300))};
    const int elem = kElemSizes[rng() % 3];
    const Plan p = make_plan(l, elem, rng() % 4 != 0, true);
    EXPECT(emulated_sums_match(l, p));
    (p.final ? finals : combined) += 1;
  }
  EXPECT(finals > 50 && combined > 50);  // both paths exercised
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

// LG-LSQ's arctangent soft round in the backward (docs/contract.md, section 4; the project's reading of the
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
  test_small_tensors_launch_once();
  test_gpu_launch_counts_match_the_plan();
  test_plan_is_device_free_and_deterministic();
  test_emulated_step_sums();
  test_element_math();
  test_soft_round_math();
  return lsq_fast_test::expect_summary();
}
