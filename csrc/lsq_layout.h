// The view of a tensor every backend's kernels take: torch-free, so that the CUDA kernels
// (compiled by nvcc without torch headers) and the CPU kernels share it.
#pragma once

#include <cmath>
#include <cstdint>

namespace lsq_fast {

// A dense tensor seen in memory order as [outer, channels, inner]: the element at flat
// offset i belongs to channel (i / inner) % channels. Per-tensor is channels == 1.
struct Layout {
  int64_t outer;
  int64_t channels;
  int64_t inner;
  int64_t numel() const { return outer * channels * inner; }
};

// Smallest step the kernels divide by: clamps a step that is zero or negative (checked
// away on CPU, but the raw op can be handed one) without a host sync. 2^-126, the smallest
// normal float32, so float32 and float64 agree on it. lsq_fast/_args.py holds the same value.
constexpr double kStepFloor = 1.1754943508222875e-38;

// The arctan soft round's slope scale c = k / (2 atan(k/2)) (docs/contract.md, section 4), in float64 on the
// host, for k > 0. Below k = 1e-8 it is 1 to float64 precision (the relative difference is
// k^2 / 12): taken as exactly 1 there, which also keeps a subnormal k, whose half rounds (to
// zero for the smallest), from giving a wrong c or an infinite one.
inline double soft_round_scale(double k) { return k < 1e-8 ? 1.0 : k / (2.0 * std::atan(k / 2.0)); }

}  // namespace lsq_fast
