// CPU emulation of <cuda_bf16.h>: bfloat16 storage (the top half of an fp32) with
// round-to-nearest-even conversion, NaN kept NaN. No arithmetic operators (see cuda_fp16.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuda_emu.h"

struct __nv_bfloat16 {
  std::uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const std::uint32_t wide = static_cast<std::uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  if (std::isnan(v)) return __nv_bfloat16{0x7FC0};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return __nv_bfloat16{static_cast<std::uint16_t>(u >> 16)};
}
