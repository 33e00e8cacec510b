// The CUDA kernels' interface: raw pointers, a plan (lsq_plan.h) and a stream. Free of torch
// headers, so nvcc compiles the kernels on a machine whose torch has no CUDA (CI checks
// their registers and spills that way); lsq_cuda_ops.cpp binds them to the lsq_fast ops.
#pragma once

#include <cuda_runtime_api.h>

#include <optional>

#include "cuda/lsq_plan.h"

namespace lsq_fast::cuda {

// The element type of x, y, grad_y and grad_x. Math is float32, float64 for kFloat64, whose
// step and grad_step are float64 too (float32 otherwise).
enum class DType : int { kFloat32, kFloat16, kBFloat16, kFloat64 };

constexpr int element_size(DType t) { return t == DType::kFloat64 ? 8 : t == DType::kFloat32 ? 4 : 2; }

// y = quantize(x); x and y dense, one layout, `plan` from make_plan. Enqueued on `stream`;
// returns the launch's error (no synchronization).
cudaError_t lsq_forward(DType dtype, const Plan& plan, const void* x, const void* step, void* y, double qmin,
                        double qmax, cudaStream_t stream);

// grad_x, and grad_step = grad_scale * (per-channel sum of grad_y * dy/ds). `partials`:
// plan.partials() float64 scratch values (null when zero). `soft_round_k`: none for the
// straight-through round, else the sharpness k (positive, finite; cudaErrorInvalidValue
// otherwise) of LG-LSQ's arctangent soft round, whose slope replaces round's in dy/dx and
// dy/ds (lsq_math.cuh, ArctanRound).
cudaError_t lsq_backward(DType dtype, const Plan& plan, const void* grad_y, const void* x, const void* step,
                         void* grad_x, double* partials, void* grad_step, double grad_scale, double qmin,
                         double qmax, std::optional<double> soft_round_k, cudaStream_t stream);

}  // namespace lsq_fast::cuda
