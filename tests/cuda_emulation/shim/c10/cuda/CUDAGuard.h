// CPU emulation of c10::cuda::CUDAGuard for the emulated binding: host memory is the "device", so
// the guard only checks that it is handed the device type the kernels accept.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

namespace c10 {
namespace cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "emulated CUDAGuard: expected a CPU (emulated device) tensor, got ", device);
  }
};

}  // namespace cuda
}  // namespace c10
