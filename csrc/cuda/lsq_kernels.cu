// LSQ on NVIDIA GPUs: a one-pass forward, and a one-pass backward that writes grad_x and
// reduces the step gradient; see lsq_plan.h for how a tensor is cut into work and
// lsq_math.cuh for the per-element arithmetic. No torch headers (lsq_cuda.h).
//
// Memory: 16-byte loads and stores (4 float32, 8 half/bfloat16, 2 float64) where every
// pointer is aligned and rows do not straddle a vector, else element by element; kUnroll
// accesses in flight per thread (unroll_for); 64-bit offsets throughout. Grids are sized from
// the shape alone (at most kGridBlocks blocks, lsq_plan.h) and blocks stride over the work, so
// a block's share, and hence the order the step gradient is summed in, is fixed by the shape:
// the same bits on every GPU model and MIG slice.
//
// The backward kernels come in two instantiations (kSoftRound): the straight-through round,
// and LG-LSQ's arctangent soft round (lsq_math.cuh, ArctanRound: the project's reading of the
// paper's abstract, not a transcription of it). A template flag rather than a runtime branch,
// so that the straight-through kernels compile exactly as without the soft round.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/lsq_cuda.h"
#include "cuda/lsq_math.cuh"

namespace lsq_fast::cuda {
namespace {

constexpr int kWarps = kThreads / 32;

// ---- element types -------------------------------------------------------------------------

template <typename T>
struct MathType {
  using type = float;  // float32 math for float32, float16 and bfloat16
};
template <>
struct MathType<double> {
  using type = double;
};
template <typename T>
using math_t = typename MathType<T>::type;

__device__ __forceinline__ float to_math(float v) { return v; }
__device__ __forceinline__ float to_math(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_math(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double to_math(double v) { return v; }

// Round to nearest even, as torch's .to(dtype).
template <typename T>
__device__ __forceinline__ T from_math(math_t<T> v);
template <>
__device__ __forceinline__ float from_math<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_math<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_math<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ double from_math<double>(double v) { return v; }

// VEC elements moved as one access (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}
template <typename T, int VEC>
__device__ __forceinline__ void store(T* p, const Pack<T, VEC>& pack) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = pack;
}

template <typename T>
struct Args {
  const T* x;
  const T* grad_y;  // backward only
  T* out;           // y (forward) or grad_x (backward)
  const math_t<T>* step;
  double* partials;  // backward, !plan.final
  math_t<T>* grad_step;
  double grad_scale;
  Quantizer<math_t<T>> q;
  ArctanRound<math_t<T>> soft;  // backward, kSoftRound only
};

// Packs per input a thread loads before it uses any: the plan's unroll_for, except in the
// float64 soft-round backward, whose second IEEE float64 division per element (the slope's)
// would spill at 64 registers with two packs in flight; it takes one at a time. The order of
// the elements, and of the sums, is the same either way.
template <typename T, int VEC, bool kBackward, bool kSoftRound>
constexpr int in_flight() {
  return kSoftRound && sizeof(math_t<T>) == 8 ? 1 : unroll_for(VEC, kBackward);
}

// One element: forward writes y, backward writes grad_x and adds grad_y * dy/ds to acc, with
// the soft round's slope (kSoftRound) or the straight-through one.
template <bool kBackward, bool kSoftRound, typename T, typename M>
__device__ __forceinline__ T element(const Args<T>& a, T x, T grad_y, M s, M& acc) {
  static_assert(kBackward || !kSoftRound, "the forward keeps the hard round");
  if constexpr (kBackward) {
    M grad_x;
    if constexpr (kSoftRound) acc += a.q.backward(to_math(x), to_math(grad_y), s, a.soft, grad_x);
    else acc += a.q.backward(to_math(x), to_math(grad_y), s, grad_x);
    return from_math<T>(grad_x);
  } else {
    return from_math<T>(a.q.forward(to_math(x), s));
  }
}

// Sum over the block, in a fixed tree (warp shuffles, then the warps' sums); the result is
// valid in thread 0. `scratch` holds kWarps values; safe to call again right after.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? scratch[lane] : A(0);
#pragma unroll
    for (int offset = kWarps / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  __syncthreads();
  return v;
}

// ---- rows kernel: per-tensor, and a step per row ---------------------------------------------

// Elements [begin, end) of one row, kUnroll packs per thread and input loaded before any is
// used (any kUnroll covers the row, thread t taking packs t, t + kThreads, ... in order).
// Returns this thread's float32 (float64) sum of grad_y * dy/ds over them.
template <typename T, int VEC, bool kBackward, bool kSoftRound>
__device__ __forceinline__ math_t<T> rows_sweep(const Args<T>& a, int64_t begin, int64_t end, math_t<T> s) {
  using M = math_t<T>;
  using P = Pack<T, VEC>;
  constexpr int kUnroll = in_flight<T, VEC, kBackward, kSoftRound>();
  constexpr int64_t kPass = static_cast<int64_t>(kThreads) * VEC;
  M acc = 0;
  for (int64_t base = begin + threadIdx.x * VEC; base < end; base += kPass * kUnroll) {
    P xs[kUnroll];
    P gs[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + k * kPass;
      if (i + VEC <= end) {
        xs[k] = load<T, VEC>(a.x + i);
        if constexpr (kBackward) gs[k] = load<T, VEC>(a.grad_y + i);
      }
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + k * kPass;
      if (i + VEC <= end) {
        P out;
#pragma unroll
        for (int v = 0; v < VEC; ++v)
          out.v[v] = element<kBackward, kSoftRound>(a, xs[k].v[v], kBackward ? gs[k].v[v] : T(), s, acc);
        store<T, VEC>(a.out + i, out);
      } else if (VEC > 1 && i < end) {  // per-tensor only: the last, partial pack
        for (int64_t j = i; j < end; ++j)
          a.out[j] = element<kBackward, kSoftRound>(a, a.x[j], kBackward ? a.grad_y[j] : T(), s, acc);
      }
    }
  }
  return acc;
}

template <typename T, int VEC, bool kBackward, bool kPerRow, bool kSoftRound>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) lsq_rows_kernel(Args<T> a, Plan p) {
  __shared__ double scratch[kWarps];
  double total = 0.0;  // one step for the whole tensor: this thread's share of the block's partial
  for (int64_t item = blockIdx.x; item < p.items; item += gridDim.x) {
    const RowsItem it = rows_item(p, item);
    const int64_t channel = it.channel;
    const math_t<T> sum = rows_sweep<T, VEC, kBackward, kSoftRound>(a, it.begin, it.end, clamp_step(a.step[channel]));
    if constexpr (kBackward && kPerRow) {  // uniform across the block: every thread takes this item
      const double item_sum = block_sum(static_cast<double>(sum), scratch);
      if (threadIdx.x == 0) {
        if (p.final) a.grad_step[channel] = scaled_step_grad(a.step[channel], item_sum, a.grad_scale);
        else a.partials[item] = item_sum;
      }
    } else {
      total += sum;
    }
  }
  if constexpr (kBackward && !kPerRow) {
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) {
      if (p.final) a.grad_step[0] = scaled_step_grad(a.step[0], total, a.grad_scale);
      else a.partials[blockIdx.x] = total;
    }
  }
}

// ---- cols kernel: short channel runs ---------------------------------------------------------

// Thread (tx, ty) of the block owns columns [col, col + VEC) of column block blockIdx.y for
// the whole launch and walks rows ty, ty + ty_count, ... of each band of rows it is given.
// Its float64 step-gradient totals live in shared memory: registers go to the loads in flight
// and the division. A final plan's block has every row of its columns: with a step per column
// (inner == 1) a column's total is its channel's; else the block holds whole channels
// (lsq_plan.h, cols_plan) and sums each one's columns in order.
template <typename T, int VEC, bool kBackward, bool kSoftRound>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) lsq_cols_kernel(Args<T> a, Plan p) {
  using M = math_t<T>;
  using P = Pack<T, VEC>;
  constexpr int kUnroll = unroll_for(VEC, kBackward);  // rows per band and thread: the plan's
  constexpr int kInFlight = in_flight<T, VEC, kBackward, kSoftRound>();  // divides kUnroll
  static_assert(kUnroll % kInFlight == 0);
  __shared__ double column_totals[kBackward ? kThreads * VEC : 1];  // [ty][tx][v]
  const int tx = threadIdx.x % p.tx;
  const int ty = threadIdx.x / p.tx;
  const int ty_count = kThreads / p.tx;
  const int64_t col = cols_col(p, blockIdx.y, tx);
  const bool active = cols_active(p, blockIdx.y, tx);  // pack-aligned: a pack is wholly in or out
  M s[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    s[v] = active ? clamp_step(a.step[cols_channel(p, col + v)]) : M(1);
    if constexpr (kBackward) column_totals[threadIdx.x * VEC + v] = 0.0;
  }
  for (int64_t band = blockIdx.x; band < p.bands; band += gridDim.x) {
#pragma unroll
    for (int k0 = 0; k0 < kUnroll; k0 += kInFlight) {  // one trip unless kInFlight < kUnroll
      P xs[kInFlight];
      P gs[kInFlight];
#pragma unroll
      for (int j = 0; j < kInFlight; ++j) {
        const int64_t r = cols_row(p, band, ty, k0 + j);
        if (active && r < p.rows) {
          xs[j] = load<T, VEC>(a.x + r * p.cols + col);
          if constexpr (kBackward) gs[j] = load<T, VEC>(a.grad_y + r * p.cols + col);
        }
      }
#pragma unroll
      for (int j = 0; j < kInFlight; ++j) {
        const int64_t r = cols_row(p, band, ty, k0 + j);
        if (active && r < p.rows) {
          P out;
#pragma unroll
          for (int v = 0; v < VEC; ++v) {
            M sum = 0;
            out.v[v] = element<kBackward, kSoftRound>(a, xs[j].v[v], kBackward ? gs[j].v[v] : T(), s[v], sum);
            if constexpr (kBackward) column_totals[threadIdx.x * VEC + v] += sum;
          }
          store<T, VEC>(a.out + r * p.cols + col, out);
        }
      }
    }
  }
  if constexpr (kBackward) {
    // Column sums over the block's rows: ty = 0 adds the ty_count values of its columns in order.
    __syncthreads();
    const bool channel_sums = p.final && p.inner > 1;  // uniform across the block
    if (ty == 0 && active) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        double t = 0.0;
        for (int y = 0; y < ty_count; ++y) t += column_totals[(y * p.tx + tx) * VEC + v];
        if (!p.final) a.partials[blockIdx.x * p.cols + col + v] = t;
        else if (!channel_sums) a.grad_step[col + v] = scaled_step_grad(a.step[col + v], t, a.grad_scale);
        else column_totals[tx * VEC + v] = t;  // its ty = 0 slot, which only this thread reads:
                                               // the block's column col + v - first column
      }
    }
    if (channel_sums) {
      // Each channel of the block: its inner columns' totals, in column order.
      __syncthreads();
      const int64_t first_col = cols_col(p, blockIdx.y, 0);
      const int64_t end = cols_end_channel(p, blockIdx.y);
      for (int64_t c = cols_first_channel(p, blockIdx.y) + threadIdx.x; c < end; c += kThreads) {
        double t = 0.0;
        for (int64_t j = c * p.inner; j < (c + 1) * p.inner; ++j) t += column_totals[j - first_col];
        a.grad_step[c] = scaled_step_grad(a.step[c], t, a.grad_scale);
      }
    }
  }
}

// ---- groups kernel: per-group steps, short weight rows ----------------------------------------

// Each warp walks its work items; within one, the thread at `lane` makes accesses
// t = 0 .. rounds * packs_per_lane - 1 (lsq_plan.h, groups_access), kInFlight at a time, all
// loads of a batch before any use. Its float32 sum over a group's accesses is folded into
// float64 at the group's last access and reduced over the group's lanes by shuffles (width
// `lanes`: the groups of a warp never mix); the group's first lane writes grad_step. Every
// lane of the warp takes every trip of the loops (a group past the end is only masked), so
// the shuffles always see the full warp.
template <typename T, int VEC, bool kBackward, bool kSoftRound>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) lsq_groups_kernel(Args<T> a, Plan p) {
  using M = math_t<T>;
  using P = Pack<T, VEC>;
  constexpr int kInFlight = in_flight<T, VEC, kBackward, kSoftRound>();
  const int lane = threadIdx.x % 32;
  const int64_t accesses = p.rounds * p.packs_per_lane;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; item < p.items; item += warps) {
    M acc = 0;
    for (int64_t t0 = 0; t0 < accesses; t0 += kInFlight) {
      P xs[kInFlight];
      P gs[kInFlight];
      M s[kInFlight];
#pragma unroll
      for (int k = 0; k < kInFlight; ++k) {
        const GroupsAccess at = groups_access(p, item, lane, t0 + k);
        if (t0 + k < accesses && at.valid) {
          xs[k] = load<T, VEC>(a.x + at.offset);
          if constexpr (kBackward) gs[k] = load<T, VEC>(a.grad_y + at.offset);
          s[k] = clamp_step(a.step[at.group]);
        }
      }
#pragma unroll
      for (int k = 0; k < kInFlight; ++k) {
        const int64_t t = t0 + k;
        if (t >= accesses) break;  // uniform across the warp
        const GroupsAccess at = groups_access(p, item, lane, t);
        if (at.valid) {
          P out;
#pragma unroll
          for (int v = 0; v < VEC; ++v)
            out.v[v] = element<kBackward, kSoftRound>(a, xs[k].v[v], kBackward ? gs[k].v[v] : T(), s[k], acc);
          store<T, VEC>(a.out + at.offset, out);
        }
        if constexpr (kBackward) {
          if (groups_last_access(p, t)) {  // uniform across the warp
            double sum = static_cast<double>(acc);
            for (int offset = p.lanes / 2; offset > 0; offset /= 2)
              sum += __shfl_down_sync(0xffffffffu, sum, offset, p.lanes);
            if (lane % p.lanes == 0 && at.group < p.rows)
              a.grad_step[at.group] = scaled_step_grad(a.step[at.group], sum, a.grad_scale);
            acc = 0;
          }
        }
      }
    }
  }
}

// ---- the partials' combine -------------------------------------------------------------------

// grad_step[c] = g * sum of partials[o, c, i] over o and i; block c takes channel c, in an
// order fixed by the plan.
template <typename M>
__global__ void __launch_bounds__(kThreads) lsq_sum_partials_kernel(const double* partials, const M* step,
                                                                     M* grad_step, double grad_scale,
                                                                     int64_t outer, int64_t channels,
                                                                     int64_t inner) {
  __shared__ double scratch[kWarps];
  const int64_t c = blockIdx.x;
  double t = 0.0;
  for (int64_t k = threadIdx.x; k < outer * inner; k += kThreads) {
    const int64_t o = k / inner;
    t += partials[(o * channels + c) * inner + (k - o * inner)];
  }
  t = block_sum(t, scratch);
  if (threadIdx.x == 0) grad_step[c] = scaled_step_grad(step[c], t, grad_scale);
}

// ---- launchers -------------------------------------------------------------------------------

template <typename T, bool kBackward, bool kSoftRound>
cudaError_t launch(const Plan& p, const Args<T>& a, cudaStream_t stream) {
  constexpr int kWide = 16 / sizeof(T);
  constexpr int kColsWide = kWide < kColsMaxVec ? kWide : kColsMaxVec;
  const dim3 grid(p.grid_x, p.grid_y);
  const bool wide = p.vec > 1;
  if (p.kind == KernelKind::kGroups) {
    if (wide) lsq_groups_kernel<T, kWide, kBackward, kSoftRound><<<grid, kThreads, 0, stream>>>(a, p);
    else lsq_groups_kernel<T, 1, kBackward, kSoftRound><<<grid, kThreads, 0, stream>>>(a, p);
  } else if (p.kind == KernelKind::kCols) {
    if (wide) lsq_cols_kernel<T, kColsWide, kBackward, kSoftRound><<<grid, kThreads, 0, stream>>>(a, p);
    else lsq_cols_kernel<T, 1, kBackward, kSoftRound><<<grid, kThreads, 0, stream>>>(a, p);
  } else if (p.per_row) {
    if (wide) lsq_rows_kernel<T, kWide, kBackward, true, kSoftRound><<<grid, kThreads, 0, stream>>>(a, p);
    else lsq_rows_kernel<T, 1, kBackward, true, kSoftRound><<<grid, kThreads, 0, stream>>>(a, p);
  } else {
    if (wide) lsq_rows_kernel<T, kWide, kBackward, false, kSoftRound><<<grid, kThreads, 0, stream>>>(a, p);
    else lsq_rows_kernel<T, 1, kBackward, false, kSoftRound><<<grid, kThreads, 0, stream>>>(a, p);
  }
  if (launches(p, kBackward) == 2) {
    lsq_sum_partials_kernel<math_t<T>><<<static_cast<unsigned>(p.channels), kThreads, 0, stream>>>(
        a.partials, a.step, a.grad_step, a.grad_scale, p.partial_outer, p.channels, p.partial_inner);
  }
  return cudaGetLastError();
}

// soft_round_k: the soft round's sharpness k (> 0), or 0 for the straight-through round.
template <typename T>
Args<T> make_args(const void* x, const void* grad_y, void* out, const void* step, double* partials,
                  void* grad_step, double grad_scale, double qmin, double qmax, double soft_round_k) {
  using M = math_t<T>;
  const ArctanRound<M> soft{static_cast<M>(soft_round_k),
                            static_cast<M>(soft_round_k > 0 ? soft_round_scale(soft_round_k) : 1.0)};
  return Args<T>{static_cast<const T*>(x),    static_cast<const T*>(grad_y),  static_cast<T*>(out),
                 static_cast<const M*>(step), partials,                       static_cast<M*>(grad_step),
                 grad_scale,                  {static_cast<M>(qmin), static_cast<M>(qmax)},
                 soft};
}

template <bool kBackward>
cudaError_t dispatch(DType dtype, const Plan& p, const void* x, const void* grad_y, void* out, const void* step,
                     double* partials, void* grad_step, double grad_scale, double qmin, double qmax,
                     double soft_round_k, cudaStream_t stream) {
  const auto run = [&](auto element_type) {
    using T = decltype(element_type);
    const Args<T> a = make_args<T>(x, grad_y, out, step, partials, grad_step, grad_scale, qmin, qmax, soft_round_k);
    if constexpr (kBackward) {
      if (soft_round_k > 0) return launch<T, true, true>(p, a, stream);
    }
    return launch<T, kBackward, false>(p, a, stream);
  };
  switch (dtype) {
    case DType::kFloat32: return run(float{});
    case DType::kFloat16: return run(__half{});
    case DType::kBFloat16: return run(__nv_bfloat16{});
    case DType::kFloat64: return run(double{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t lsq_forward(DType dtype, const Plan& plan, const void* x, const void* step, void* y, double qmin,
                        double qmax, cudaStream_t stream) {
  return dispatch<false>(dtype, plan, x, nullptr, y, step, nullptr, nullptr, 1.0, qmin, qmax, 0.0, stream);
}

cudaError_t lsq_backward(DType dtype, const Plan& plan, const void* grad_y, const void* x, const void* step,
                         void* grad_x, double* partials, void* grad_step, double grad_scale, double qmin,
                         double qmax, std::optional<double> soft_round_k, cudaStream_t stream) {
  if (soft_round_k && !(*soft_round_k > 0 && std::isfinite(*soft_round_k))) return cudaErrorInvalidValue;
  return dispatch<true>(dtype, plan, x, grad_y, grad_x, step, partials, grad_step, grad_scale, qmin, qmax,
                        soft_round_k.value_or(0.0), stream);
}

}  // namespace lsq_fast::cuda
