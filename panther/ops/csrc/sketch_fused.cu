// Fused sketched-linear forward: y = scale * (x @ A) @ B + bias in one kernel.
//
// For 2r <= 64 each block takes 32 rows of x, accumulates their rows of H = x @ A in shared memory
// (never touching global memory unless the caller wants H saved for the backward pass), then streams
// B through shared memory in 64-column tiles and writes y with scale and bias applied in registers.
// This removes the H round-trip and the separate scale/bias pass of the two-GEMM path.
#include "sketch_common.cuh"

namespace panther {
namespace {

template <typename T>
struct FusedParams {
  int64_t m, d_in, rank2, d_out;
  const T* x;
  int64_t x_rs, x_cs;
  const T* a;
  int64_t a_rs, a_cs;
  const T* b;
  int64_t b_rs, b_cs;
  const T* bias;
  double scale;
  T* y;
  int64_t ldy;
  T* hidden;
  int64_t ldh;
};

constexpr int kRows = 32, kChunkK = 32, kChunkN = 64, kThreads = 128;

// kRankPad: 2r rounded up to 16, 32 or 64 (padding columns of A / rows of B read as zero).
template <typename T, int kRankPad>
__global__ void __launch_bounds__(kThreads) fused_forward_kernel(FusedParams<T> p) {
  using AccT = typename Accum<T>::type;
  constexpr int kRankCols = kRankPad / 16;  // phase-1 columns per thread
  __shared__ AccT h_tile[kRows][kRankPad + 1];
  __shared__ AccT x_tile[kChunkK][kRows + 1];
  __shared__ AccT a_tile[kChunkK][kRankPad];
  __shared__ AccT b_tile[kRankPad][kChunkN];
  const int tid = threadIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kRows;

  // Phase 1: h_tile = x[m0:m0+32, :] @ A. Thread owns rows ty + 8i (i < 4), columns tx + 16j.
  {
    const int tx = tid % 16, ty = tid / 16;
    const bool x_k_fast = p.x_cs <= p.x_rs;
    AccT h[4][kRankCols] = {};
    for (int64_t k0 = 0; k0 < p.d_in; k0 += kChunkK) {
      for (int l = tid; l < kRows * kChunkK; l += kThreads) {
        const int kk = x_k_fast ? l % kChunkK : l / kRows;
        const int i = x_k_fast ? l / kChunkK : l % kRows;
        const int64_t gi = m0 + i, gk = k0 + kk;
        x_tile[kk][i] = (gi < p.m && gk < p.d_in) ? load_acc(p.x, gi * p.x_rs + gk * p.x_cs) : AccT(0);
      }
      for (int l = tid; l < kChunkK * kRankPad; l += kThreads) {
        const int kk = l / kRankPad, c = l % kRankPad;
        const int64_t gk = k0 + kk;
        a_tile[kk][c] = (gk < p.d_in && c < p.rank2) ? load_acc(p.a, gk * p.a_rs + c * p.a_cs) : AccT(0);
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kChunkK; ++kk) {
        AccT xv[4], av[kRankCols];
#pragma unroll
        for (int i = 0; i < 4; ++i) xv[i] = x_tile[kk][ty + 8 * i];
#pragma unroll
        for (int j = 0; j < kRankCols; ++j) av[j] = a_tile[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < kRankCols; ++j) h[i][j] += xv[i] * av[j];
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = ty + 8 * i;
#pragma unroll
      for (int j = 0; j < kRankCols; ++j) {
        const int col = tx + 16 * j;
        h_tile[row][col] = h[i][j];
        if (p.hidden != nullptr && m0 + row < p.m && col < p.rank2)
          p.hidden[(m0 + row) * p.ldh + col] = from_acc<T>(h[i][j]);
      }
    }
    __syncthreads();
  }

  // Phase 2: y tile = scale * h_tile @ B[:, n0:n0+64] + bias. Thread owns rows ty + 4i (i < 8),
  // columns tx + 32j (j < 2): a warp writes 32 consecutive outputs of a row (coalesced).
  const int tx = tid % 32, ty = tid / 32;
  const AccT scale = static_cast<AccT>(p.scale);
  for (int64_t n0 = 0; n0 < p.d_out; n0 += kChunkN) {
    for (int l = tid; l < kRankPad * kChunkN; l += kThreads) {
      const int kk = l / kChunkN, c = l % kChunkN;
      const int64_t gn = n0 + c;
      b_tile[kk][c] = (kk < p.rank2 && gn < p.d_out) ? load_acc(p.b, kk * p.b_rs + gn * p.b_cs) : AccT(0);
    }
    __syncthreads();
    AccT acc[8][2] = {};
#pragma unroll 16
    for (int kk = 0; kk < kRankPad; ++kk) {
      const AccT b0 = b_tile[kk][tx], b1 = b_tile[kk][tx + 32];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const AccT hv = h_tile[ty + 4 * i][kk];
        acc[i][0] += hv * b0;
        acc[i][1] += hv * b1;
      }
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t gn = n0 + tx + 32 * j;
      if (gn >= p.d_out) continue;
      const AccT bias = p.bias != nullptr ? to_acc<T>(p.bias[gn]) : AccT(0);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t gi = m0 + ty + 4 * i;
        if (gi < p.m) p.y[gi * p.ldy + gn] = from_acc<T>(scale * acc[i][j] + bias);
      }
    }
    __syncthreads();
  }
}

// fp64 keeps 2r <= 32 so its tiles fit the 48 KiB static shared-memory limit.
template <typename T> constexpr int kMaxRankPad = 64;
template <> constexpr int kMaxRankPad<double> = 32;

template <typename T>
cudaError_t fused_forward_typed(int64_t m, int64_t d_in, int64_t rank2, int64_t d_out, StridedMatrix x,
                                StridedMatrix a, StridedMatrix b, const void* bias, double scale, void* y,
                                int64_t ldy, void* hidden, int64_t ldh, cudaStream_t stream) {
  const FusedParams<T> p{m,      d_in,       rank2,       d_out,    static_cast<const T*>(x.data), x.row_stride,
                         x.col_stride, static_cast<const T*>(a.data), a.row_stride, a.col_stride,
                         static_cast<const T*>(b.data), b.row_stride, b.col_stride, static_cast<const T*>(bias),
                         scale,  static_cast<T*>(y), ldy, static_cast<T*>(hidden), ldh};
  if (m == 0) return cudaSuccess;
  const unsigned blocks = ceil_div(m, kRows);
  if (rank2 <= 16) {
    fused_forward_kernel<T, 16><<<blocks, kThreads, 0, stream>>>(p);
  } else if (rank2 <= 32) {
    fused_forward_kernel<T, 32><<<blocks, kThreads, 0, stream>>>(p);
  } else if constexpr (kMaxRankPad<T> >= 64) {
    if (rank2 > 64) return cudaErrorInvalidValue;
    fused_forward_kernel<T, 64><<<blocks, kThreads, 0, stream>>>(p);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

int64_t fused_forward_max_rank(DType dtype) { return dtype == DType::kFloat64 ? kMaxRankPad<double> : 64; }

int64_t fused_forward_rows_per_block() { return kRows; }

cudaError_t launch_fused_forward(DType dtype, int64_t m, int64_t d_in, int64_t rank2, int64_t d_out,
                                 StridedMatrix x, StridedMatrix a, StridedMatrix b, const void* bias, double scale,
                                 void* y, int64_t ldy, void* hidden, int64_t ldh, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return fused_forward_typed<float>(m, d_in, rank2, d_out, x, a, b, bias, scale, y, ldy, hidden, ldh, stream);
    case DType::kFloat64:
      return fused_forward_typed<double>(m, d_in, rank2, d_out, x, a, b, bias, scale, y, ldy, hidden, ldh, stream);
    case DType::kFloat16:
      return fused_forward_typed<__half>(m, d_in, rank2, d_out, x, a, b, bias, scale, y, ldy, hidden, ldh, stream);
    case DType::kBFloat16:
      return fused_forward_typed<__nv_bfloat16>(m, d_in, rank2, d_out, x, a, b, bias, scale, y, ldy, hidden, ldh,
                                                stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace panther
