// CPU emulation of <cuda_fp16.h>: an IEEE binary16 storage type and its round-to-nearest-even
// conversions (via the compiler's _Float16). No arithmetic operators, so a kernel that computes in
// half precision instead of its fp32 accumulator fails to compile here.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_emu.h"

struct __half {
  std::uint16_t bits;
};

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, sizeof f);
  return static_cast<float>(f);
}

inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);
  __half h;
  std::memcpy(&h.bits, &f, sizeof f);
  return h;
}
