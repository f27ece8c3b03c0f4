// CPU emulation of c10::cuda::getCurrentCUDAStream: launches run synchronously, so there is one
// (null) stream.
#pragma once

#include <c10/core/Device.h>

#include "cuda_runtime.h"

namespace c10 {
namespace cuda {

struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return CUDAStream{}; }

}  // namespace cuda
}  // namespace c10
