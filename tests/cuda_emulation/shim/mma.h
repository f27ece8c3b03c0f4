// CPU emulation of <mma.h> (nvcuda::wmma, 16x16x16 only) by its meaning: every thread of the warp
// holds the whole tile in its fragment, mma_sync accumulates in fp32, and lane 0 alone stores (the
// other lanes hold identical values, and CUDA gives no ordering for the store before a barrier).
// The documented rules are asserted: 256-bit aligned pointers, and a leading dimension that is a
// multiple of 16 bytes (8 half/bfloat16 elements, 4 floats).
#pragma once

#include <cstdint>

#include "cuda_bf16.h"
#include "cuda_emu.h"
#include "cuda_fp16.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
void check_operand(const T* ptr, unsigned ldm, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(ptr) % 32 != 0) cuda_emu::device_fail(what);
  if ((ldm * sizeof(T)) % 16 != 0) cuda_emu::device_fail(what);
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "only the 16x16x16 wmma shape is emulated");
  static constexpr int kRows = 16, kCols = 16;
  static constexpr int num_elements = kRows * kCols;
  T x[kRows * kCols];
};

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& frag, float value) {
  for (auto& v : frag.x) v = value;
}

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& frag, const T* ptr, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load needs a layout_t");
  detail::check_operand(ptr, ldm,
                        "wmma::load_matrix_sync: pointer not 256-bit aligned or ldm not a multiple of 16 bytes");
  constexpr bool row = std::is_same_v<Layout, row_major>;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) frag.x[i * 16 + j] = row ? ptr[i * ldm + j] : ptr[j * ldm + i];
}

template <typename Ta, typename Tb, typename La, typename Lb>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, Ta, La>& a,
              const fragment<matrix_b, 16, 16, 16, Tb, Lb>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  static_assert(std::is_same_v<Ta, Tb>, "wmma operands must share their element type");
  cuda_emu::count_tensor_core_mma();
  float out[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float acc = c.x[i * 16 + j];
      for (int p = 0; p < 16; ++p) acc += detail::to_float(a.x[i * 16 + p]) * detail::to_float(b.x[p * 16 + j]);
      out[i * 16 + j] = acc;
    }
  for (int e = 0; e < 256; ++e) d.x[e] = out[e];
}

inline void store_matrix_sync(float* ptr, const fragment<accumulator, 16, 16, 16, float>& frag, unsigned ldm,
                              layout_t layout) {
  detail::check_operand(ptr, ldm,
                        "wmma::store_matrix_sync: pointer not 256-bit aligned or ldm not a multiple of 16 bytes");
  if (cuda_emu::lane_id() != 0) return;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float& dst = layout == mem_row_major ? ptr[i * ldm + j] : ptr[j * ldm + i];
      dst = frag.x[i * 16 + j];
    }
}

}  // namespace wmma
}  // namespace nvcuda
