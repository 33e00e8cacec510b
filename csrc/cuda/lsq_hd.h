// LSQ_HD: functions the CUDA kernels call and host code (the binding, g++-built tests) calls
// too. Under nvcc they are __host__ __device__; under a host compiler, plain inline.
#pragma once

#if defined(__CUDACC__)
#define LSQ_HD __host__ __device__ __forceinline__
#else
#define LSQ_HD inline
#endif
