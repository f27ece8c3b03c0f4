// Strided GEMM with a fused alpha/bias epilogue, and the column sum used for the bias gradient.
//
// Operands are read through arbitrary element strides, so transposed and non-contiguous views
// (x, grad_y, the halves of A/B/hidden) are consumed in place with no copies. Tiles are staged
// through shared memory with zero padding, so any m, n, k work (no multiple-of-16 requirement).
#include <mma.h>

#include <type_traits>

#include "sketch_common.cuh"

namespace panther {
namespace {

template <typename T>
struct GemmParams {
  int64_t m, n, k;
  const T* a;
  int64_t a_rs, a_cs;
  const T* b;
  int64_t b_rs, b_cs;
  T* c;
  int64_t ldc;
  const T* bias;
  double alpha;
};

// Register-tiled SIMT GEMM: 64x64 block tile, 256 threads, 4x4 outputs per thread.
constexpr int kSimtBM = 64, kSimtBN = 64, kSimtBK = 16, kSimtThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kSimtThreads) gemm_simt_kernel(GemmParams<T> p) {
  using AccT = typename Accum<T>::type;
  __shared__ AccT a_tile[kSimtBK][kSimtBM + 1];
  __shared__ AccT b_tile[kSimtBK][kSimtBN + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kSimtBM, n0 = static_cast<int64_t>(blockIdx.y) * kSimtBN;
  const bool a_k_fast = p.a_cs <= p.a_rs;  // walk memory in order for coalesced loads
  const bool b_n_fast = p.b_cs <= p.b_rs;
  AccT acc[4][4] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += kSimtBK) {
    for (int l = tid; l < kSimtBM * kSimtBK; l += kSimtThreads) {
      const int kk = a_k_fast ? l % kSimtBK : l / kSimtBM;
      const int i = a_k_fast ? l / kSimtBK : l % kSimtBM;
      const int64_t gi = m0 + i, gk = k0 + kk;
      a_tile[kk][i] = (gi < p.m && gk < p.k) ? load_acc(p.a, gi * p.a_rs + gk * p.a_cs) : AccT(0);
    }
    for (int l = tid; l < kSimtBK * kSimtBN; l += kSimtThreads) {
      const int j = b_n_fast ? l % kSimtBN : l / kSimtBK;
      const int kk = b_n_fast ? l / kSimtBN : l % kSimtBK;
      const int64_t gj = n0 + j, gk = k0 + kk;
      b_tile[kk][j] = (gj < p.n && gk < p.k) ? load_acc(p.b, gk * p.b_rs + gj * p.b_cs) : AccT(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSimtBK; ++kk) {
      AccT av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = a_tile[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = b_tile[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
  const AccT alpha = static_cast<AccT>(p.alpha);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gi = m0 + ty + 16 * i;
    if (gi >= p.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gj = n0 + tx + 16 * j;
      if (gj >= p.n) continue;
      AccT v = alpha * acc[i][j];
      if (p.bias != nullptr) v += to_acc<T>(p.bias[gj]);
      p.c[gi * p.ldc + gj] = from_acc<T>(v);
    }
  }
}

// Tensor-core GEMM (wmma 16x16x16, fp32 accumulate) for fp16/bf16: 64x64 block tile, 4 warps of 32x32.
// The body exists only in code compiled for sm_80+; gemm_typed never launches an empty one (see
// tensor_core_kernel_compiled).
constexpr int kMmaBM = 64, kMmaBN = 64, kMmaThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kMmaThreads) gemm_wmma_kernel(GemmParams<T> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  // The k-depth of a tile and padded shared rows (32-byte aligned, wmma's rule, and off the bank
  // period). Declared here, not at namespace scope, so an sm_75 build (no body) has no unused constants.
  constexpr int kMmaBK = 32, kMmaLdA = kMmaBK + 8, kMmaLdB = kMmaBN + 8, kMmaLdC = kMmaBN + 4;
  __shared__ __align__(32) T a_tile[kMmaBM * kMmaLdA];
  __shared__ __align__(32) T b_tile[kMmaBK * kMmaLdB];
  __shared__ __align__(32) float c_tile[kMmaBM * kMmaLdC];
  const int tid = threadIdx.x, warp = tid / 32, warp_m = warp / 2, warp_n = warp % 2;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kMmaBM, n0 = static_cast<int64_t>(blockIdx.y) * kMmaBN;
  const bool a_k_fast = p.a_cs <= p.a_rs;
  const bool b_n_fast = p.b_cs <= p.b_rs;
  const T zero = from_acc<T>(0.0f);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  for (int64_t k0 = 0; k0 < p.k; k0 += kMmaBK) {
    for (int l = tid; l < kMmaBM * kMmaBK; l += kMmaThreads) {
      const int kk = a_k_fast ? l % kMmaBK : l / kMmaBM;
      const int i = a_k_fast ? l / kMmaBK : l % kMmaBM;
      const int64_t gi = m0 + i, gk = k0 + kk;
      a_tile[i * kMmaLdA + kk] = (gi < p.m && gk < p.k) ? p.a[gi * p.a_rs + gk * p.a_cs] : zero;
    }
    for (int l = tid; l < kMmaBK * kMmaBN; l += kMmaThreads) {
      const int j = b_n_fast ? l % kMmaBN : l / kMmaBK;
      const int kk = b_n_fast ? l / kMmaBN : l % kMmaBK;
      const int64_t gj = n0 + j, gk = k0 + kk;
      b_tile[kk * kMmaLdB + j] = (gj < p.n && gk < p.k) ? p.b[gk * p.b_rs + gj * p.b_cs] : zero;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kMmaBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b_frag[2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(a_frag[i], a_tile + (warp_m * 32 + i * 16) * kMmaLdA + kk, kMmaLdA);
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::load_matrix_sync(b_frag[j], b_tile + kk * kMmaLdB + warp_n * 32 + j * 16, kMmaLdB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(c_tile + (warp_m * 32 + i * 16) * kMmaLdC + warp_n * 32 + j * 16, acc[i][j], kMmaLdC,
                              wmma::mem_row_major);
  __syncthreads();
  const float alpha = static_cast<float>(p.alpha);
  for (int l = tid; l < kMmaBM * kMmaBN; l += kMmaThreads) {
    const int i = l / kMmaBN, j = l % kMmaBN;
    const int64_t gi = m0 + i, gj = n0 + j;
    if (gi >= p.m || gj >= p.n) continue;
    float v = alpha * c_tile[i * kMmaLdC + j];
    if (p.bias != nullptr) v += to_acc<T>(p.bias[gj]);
    p.c[gi * p.ldc + gj] = from_acc<T>(v);
  }
#endif
}

template <typename T>
constexpr bool kHasTensorCoreKernel = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// Whether the tensor-core kernel that would run on the current device has a body. That depends on
// what was compiled, not on the device: a build whose newest code is older PTX (say
// TORCH_CUDA_ARCH_LIST=7.5+PTX) JIT-compiles that PTX on an H100, and there the kernel is empty.
// ptxVersion is the virtual architecture of the code the device runs.
template <typename T>
bool tensor_core_kernel_compiled() {
  cudaFuncAttributes attr;
  if (cudaFuncGetAttributes(&attr, gemm_wmma_kernel<T>) != cudaSuccess) {
    (void)cudaGetLastError();  // no image for this device: not an error of the GEMM itself
    return false;
  }
  return attr.ptxVersion >= 80;
}

template <typename T>
cudaError_t gemm_typed(int64_t m, int64_t n, int64_t k, StridedMatrix a, StridedMatrix b, void* c, int64_t ldc,
                       double alpha, const void* bias, cudaStream_t stream) {
  const GemmParams<T> p{m,   n, k, static_cast<const T*>(a.data), a.row_stride, a.col_stride,
                        static_cast<const T*>(b.data), b.row_stride, b.col_stride, static_cast<T*>(c),
                        ldc, static_cast<const T*>(bias), alpha};
  if (m == 0 || n == 0) return cudaSuccess;
  if constexpr (kHasTensorCoreKernel<T>) {
    if (tensor_core_kernel_compiled<T>()) {
      gemm_wmma_kernel<T><<<dim3(ceil_div(m, kMmaBM), ceil_div(n, kMmaBN)), kMmaThreads, 0, stream>>>(p);
      return cudaGetLastError();
    }
  }
  gemm_simt_kernel<T><<<dim3(ceil_div(m, kSimtBM), ceil_div(n, kSimtBN)), kSimtThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// One block per 32 columns; 8 row-groups per block reduce through shared memory.
constexpr int kSumCols = 32, kSumRows = 8;

template <typename T>
__global__ void __launch_bounds__(kSumCols* kSumRows)
    column_sum_kernel(int64_t m, int64_t n, const T* g, int64_t rs, int64_t cs, T* out) {
  using AccT = typename Accum<T>::type;
  __shared__ AccT partial[kSumRows][kSumCols];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kSumCols + threadIdx.x;
  AccT sum = 0;
  if (j < n)
    for (int64_t i = threadIdx.y; i < m; i += kSumRows) sum += load_acc(g, i * rs + j * cs);
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || j >= n) return;
#pragma unroll
  for (int r = 1; r < kSumRows; ++r) sum += partial[r][threadIdx.x];
  out[j] = from_acc<T>(sum);
}

template <typename T>
cudaError_t column_sum_typed(int64_t m, int64_t n, StridedMatrix g, void* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  column_sum_kernel<T><<<ceil_div(n, kSumCols), dim3(kSumCols, kSumRows), 0, stream>>>(
      m, n, static_cast<const T*>(g.data), g.row_stride, g.col_stride, static_cast<T*>(out));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_gemm(DType dtype, int64_t m, int64_t n, int64_t k, StridedMatrix a, StridedMatrix b, void* c,
                        int64_t ldc, double alpha, const void* bias, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return gemm_typed<float>(m, n, k, a, b, c, ldc, alpha, bias, stream);
    case DType::kFloat64:
      return gemm_typed<double>(m, n, k, a, b, c, ldc, alpha, bias, stream);
    case DType::kFloat16:
      return gemm_typed<__half>(m, n, k, a, b, c, ldc, alpha, bias, stream);
    case DType::kBFloat16:
      return gemm_typed<__nv_bfloat16>(m, n, k, a, b, c, ldc, alpha, bias, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_column_sum(DType dtype, int64_t m, int64_t n, StridedMatrix g, void* out, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return column_sum_typed<float>(m, n, g, out, stream);
    case DType::kFloat64:
      return column_sum_typed<double>(m, n, g, out, stream);
    case DType::kFloat16:
      return column_sum_typed<__half>(m, n, g, out, stream);
    case DType::kBFloat16:
      return column_sum_typed<__nv_bfloat16>(m, n, g, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace panther
