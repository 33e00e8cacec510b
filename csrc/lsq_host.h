// Host-side helpers every backend's op implementation shares: argument checks that name
// the problem, the dense memory view of x, and the default gradient scale.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "cpu/lsq_kernels.h"

namespace lsq_fast {

// Checks dtypes, devices, the integer range and step's size against x; returns the channel
// axis wrapped into [0, x.dim()) (nullopt for per-tensor).
std::optional<int64_t> check_lsq_args(const at::Tensor& x, const at::Tensor& step, int64_t qmin,
                                      int64_t qmax, std::optional<int64_t> channel_axis);

// LSQ+'s offset must match step: same sizes, dtype and device.
void check_offset(const at::Tensor& offset, const at::Tensor& step);

// QIL: x a float tensor, levels >= 1, center/distance (and gamma, weights only) one-element
// float32 tensors (float64 with float64 x) on x's device.
void check_qil_args(const at::Tensor& x, const at::Tensor& center, const at::Tensor& distance,
                    const std::optional<at::Tensor>& gamma, int64_t levels, bool weight);

// soft_round_scale(k) (lsq_layout.h) of a k checked to be positive and finite; nullopt (the
// straight-through round) gives 0.
double checked_soft_round_scale(std::optional<double> k);

// grad_y must match x: same sizes, dtype and device.
void check_grad_like(const at::Tensor& grad_y, const at::Tensor& x);

// x itself when it is non-overlapping and dense (contiguous, channels_last, any permutation),
// else a contiguous copy. Outputs made with at::empty_like share its layout.
at::Tensor dense(const at::Tensor& x);

// grad_y laid out exactly like `like` (a copy only when the layouts differ, e.g. an expanded
// gradient from .sum().backward()).
at::Tensor same_layout(const at::Tensor& grad_y, const at::Tensor& like);

// The [outer, channels, inner] memory-order view of a dense tensor (see Layout in lsq_layout.h).
Layout memory_layout(const at::Tensor& dense_x, std::optional<int64_t> channel_axis);

// The gradient scale the backward applies: the caller's, else the contract's g = 1 / sqrt(N * qmax)
// with N = numel / steps, the elements per step (lsq_fast.default_grad_scale); an empty
// tensor has no gradient to scale, so N = 0 counts as 1.
double grad_scale_or_default(std::optional<double> grad_scale, int64_t numel, int64_t steps, int64_t qmax);

// The step in the kernels' math type: float64 for float64 x, else float32; contiguous.
at::Tensor step_for_math(const at::Tensor& step, const at::Tensor& x);

}  // namespace lsq_fast
