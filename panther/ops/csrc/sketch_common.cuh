// Element-type plumbing shared by the sketched-linear kernels: accumulator type and conversions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "sketch_kernels.h"

namespace panther {

// fp16/bf16/fp32 accumulate in fp32; fp64 in fp64.
template <typename T> struct Accum { using type = float; };
template <> struct Accum<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Accum<T>::type to_acc(T v) { return v; }
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(typename Accum<T>::type v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> __device__ __forceinline__ typename Accum<T>::type load_acc(const T* base, int64_t index) {
  return to_acc<T>(base[index]);
}

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace panther
