// Host-side launchers for the sketched-linear CUDA kernels.
//
// Plain C++ over raw pointers, sizes, element strides and a cudaStream_t, so the torch-facing
// binding stays thin and this header (and every .cu) needs only the CUDA toolkit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace panther {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// A read-only strided matrix operand: element (i, j) lives at data[i * row_stride + j * col_stride].
struct StridedMatrix {
  const void* data;
  int64_t row_stride;
  int64_t col_stride;
};

// C[i, j] = alpha * sum_p A[i, p] * B[p, j] + bias[j]   (C is m x n with row stride ldc, unit col stride;
// bias may be null).  Tensor cores (wmma) are used for fp16/bf16 when the code the device runs was
// compiled for sm_80+, a register-tiled SIMT kernel otherwise; the choice depends only on dtype, device
// and build, never on the call.
cudaError_t launch_gemm(DType dtype, int64_t m, int64_t n, int64_t k, StridedMatrix a, StridedMatrix b, void* c,
                        int64_t ldc, double alpha, const void* bias, cudaStream_t stream);

// Largest 2r the fused forward handles (its x·A row-block lives in shared memory).
int64_t fused_forward_max_rank(DType dtype);

// Rows of x per block of the fused forward: it launches ceil(m / this) blocks.
int64_t fused_forward_rows_per_block();

// y = scale * (x @ A) @ B + bias in one kernel: each block keeps its rows of x·A on chip and applies
// scale and bias in the epilogue. Writes x·A to `hidden` (m x rank2, row stride ldh) when non-null.
cudaError_t launch_fused_forward(DType dtype, int64_t m, int64_t d_in, int64_t rank2, int64_t d_out,
                                 StridedMatrix x, StridedMatrix a, StridedMatrix b, const void* bias, double scale,
                                 void* y, int64_t ldy, void* hidden, int64_t ldh, cudaStream_t stream);

// out[j] = sum_i g[i, j]  (the bias gradient).
cudaError_t launch_column_sum(DType dtype, int64_t m, int64_t n, StridedMatrix g, void* out, cudaStream_t stream);

}  // namespace panther
