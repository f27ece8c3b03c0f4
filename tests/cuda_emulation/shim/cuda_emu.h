// A CPU stand-in for the parts of the CUDA runtime and language the panther kernels use (only those:
// a kernel that starts using more fails to compile here until the shim learns it).
//
// The kernel sources are compiled as plain C++ after a small rewrite (emulation_build.py): `<<<>>>`
// launches become cuda_emu::launch(...)(...) and every `__shared__` array becomes a function-local
// static that registers itself, so the launcher can fill it with NaN before each block. Each CUDA
// thread of a block runs on its own host thread; blocks run one after another; __syncthreads is a
// real barrier that fails the launch when only part of the block reaches it (or when threads meet
// at different barriers). Failures surface as cudaErrorLaunchFailure with a readable message, the
// way a device-side fault would, so callers' error handling is exercised too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{0, 0, 0};
inline thread_local dim3 gridDim{0, 0, 0};

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorLaunchFailure = 719,
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;

struct cudaFuncAttributes {
  int ptxVersion;     // virtual architecture the kernel was compiled for (major * 10 + minor)
  int binaryVersion;  // architecture of the code that runs (the device's, after a PTX JIT)
  std::size_t sharedSizeBytes;
  int maxThreadsPerBlock;
};

// The architecture this translation unit's "device code" was compiled for: __CUDA_ARCH__ is set by
// the rewrite (e.g. 750 or 900); 0 means no device code, as in an nvcc host-only pass.
#ifdef __CUDA_ARCH__
#define CUDA_EMU_COMPILED_ARCH __CUDA_ARCH__
#else
#define CUDA_EMU_COMPILED_ARCH 0
#endif

namespace cuda_emu {

// The emulated device's compute capability (major * 10 + minor): $CUDA_EMU_CC, default 90 (an H100).
int device_compute_capability();

cudaError_t take_last_error();
const char* error_string(cudaError_t error);

// Runs body once per CUDA thread of every block (see the file comment). kernel identifies the
// kernel for its shared-memory registry; compiled_arch is its CUDA_EMU_COMPILED_ARCH.
void run_grid(const void* kernel, int compiled_arch, dim3 grid, dim3 block, void (*body)(void*), void* ctx);

void syncthreads(const char* file, int line);

// Fails the running launch with message and unwinds the calling CUDA thread (never returns).
[[noreturn]] void device_fail(const char* message);

// How many wmma::mma_sync calls have run (lets a test see which GEMM kernel a build chose).
unsigned long long tensor_core_mma_count();
void count_tensor_core_mma();

// Linear thread index within the block, and the lane within its warp of 32.
unsigned linear_thread_index();
inline unsigned lane_id() { return linear_thread_index() % 32; }

// Registers a __shared__ array of the running kernel: fills it with NaN (all-ones bytes, a NaN in
// every floating type) now and before every later block, and checks the 48 KiB static limit.
struct SharedRegion {
  SharedRegion(void* data, std::size_t bytes);
};

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  int compiled_arch;

  template <typename... A>
  void operator()(A&&... args) const {
    // Arguments are converted once (CUDA's parameter buffer) and copied by value into each thread.
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...>* params;
    } ctx{kernel, &params};
    run_grid(reinterpret_cast<const void*>(kernel), compiled_arch, grid, block,
             [](void* c) {
               auto* self = static_cast<Ctx*>(c);
               std::apply(self->kernel, *self->params);
             },
             &ctx);
  }
};

template <typename... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t dynamic_shared = 0,
                    cudaStream_t stream = nullptr) {
  (void)stream;
  if (dynamic_shared != 0) device_fail("dynamic shared memory is not emulated");
  return Launch<P...>{kernel, grid, block, CUDA_EMU_COMPILED_ARCH};
}

}  // namespace cuda_emu

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  cuda_emu::syncthreads(file, line);
}

inline cudaError_t cudaGetLastError() { return cuda_emu::take_last_error(); }
inline const char* cudaGetErrorString(cudaError_t error) { return cuda_emu::error_string(error); }

// As on a GPU: a kernel compiled for a newer architecture than the device's has no image for it;
// an older one is JIT-compiled from its PTX, so it runs at the device's binary version.
template <typename... P>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, void (*kernel)(P...)) {
  (void)kernel;
  const int ptx = CUDA_EMU_COMPILED_ARCH / 10, device = cuda_emu::device_compute_capability();
  if (ptx == 0 || ptx > device) return cudaErrorNoKernelImageForDevice;
  *attr = cudaFuncAttributes{ptx, device, 0, 1024};
  return cudaSuccess;
}
