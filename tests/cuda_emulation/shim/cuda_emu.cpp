// The CUDA emulation's launcher, barrier and shared-memory registry (see cuda_emu.h).
#include "cuda_emu.h"

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace cuda_emu {
namespace {

constexpr std::size_t kStaticSharedLimit = 48 * 1024;

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::atoi(value) : fallback;
}


// Thrown by a CUDA thread's barrier or by device_fail once the launch has failed: it unwinds the
// thread's kernel body so the thread can leave the launch.
struct LaunchAborted {};

// The host threads (one per CUDA thread of a block, kept across launches: creating hundreds of
// threads per launch would dominate) and the state of the launch in flight. One mutex and one
// condition variable guard it all; launches are serialized by launch_mutex.
struct Emulator {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::thread> workers;
  bool shutdown = false;

  unsigned long launch_seq = 0;  // incremented to start each launch
  unsigned threads = 0;          // CUDA threads per block of that launch
  dim3 grid, block;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  const void* kernel = nullptr;
  unsigned long block_seq = 0;  // incremented to start each block; 0 before the first
  bool launch_done = false;
  unsigned left = 0;  // workers that have left the finished launch

  unsigned arrived = 0, exited = 0;  // of the block in flight, at its current barrier
  unsigned long generation = 0;
  const char* site_file = nullptr;
  int site_line = 0;
  bool failed = false;
  std::string message;

  // Caller holds mu.
  void fail(std::string why) {
    if (!failed) {
      failed = true;
      message = std::move(why);
    }
    cv.notify_all();
  }

  void worker(unsigned linear);

  ~Emulator() {
    {
      std::lock_guard<std::mutex> lock(mu);
      shutdown = true;
      cv.notify_all();
    }
    for (auto& t : workers) t.join();
  }
};

Emulator& emulator() {
  static Emulator e;
  return e;
}

std::mutex launch_mutex;  // launches run one at a time, like a single in-order stream
std::mutex shared_mutex;
std::map<const void*, std::vector<std::pair<void*, std::size_t>>> shared_regions;
std::atomic<unsigned long long> mma_count{0};

std::mutex error_mutex;
cudaError_t last_error = cudaSuccess;
std::string last_message;

void record_error(cudaError_t error, const std::string& message) {
  std::lock_guard<std::mutex> lock(error_mutex);
  if (last_error == cudaSuccess) last_error = error;
  last_message = message;
  std::fprintf(stderr, "cuda_emu: %s\n", message.c_str());
}

std::string site(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

std::string partial_barrier(const Emulator& e) {
  return "__syncthreads() at " + site(e.site_file, e.site_line) + " reached by " + std::to_string(e.arrived) +
         " of " + std::to_string(e.threads) + " threads of the block; the others returned";
}

bool valid_config(dim3 grid, dim3 block, std::string* why) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      threads > 1024) {
    *why = "invalid block (" + std::to_string(block.x) + ", " + std::to_string(block.y) + ", " +
           std::to_string(block.z) + ")";
    return false;
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    *why = "invalid grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
           std::to_string(grid.z) + ")";
    return false;
  }
  return true;
}

void fill_shared_with_nan(const void* kernel) {
  std::lock_guard<std::mutex> lock(shared_mutex);
  for (auto& [data, bytes] : shared_regions[kernel]) std::memset(data, 0xFF, bytes);
}

// Host thread `linear`: CUDA thread `linear` of every block of every launch that has that many.
void Emulator::worker(unsigned linear) {
  unsigned long seen_launch = 0;
  std::unique_lock<std::mutex> lock(mu);
  for (;;) {
    cv.wait(lock, [&] { return shutdown || (launch_seq != seen_launch && linear < threads && !launch_done); });
    if (shutdown) return;
    seen_launch = launch_seq;
    threadIdx = uint3{linear % block.x, (linear / block.x) % block.y, linear / (block.x * block.y)};
    blockDim = block;
    gridDim = grid;
    unsigned long seen_block = 0;
    for (;;) {
      cv.wait(lock, [&] { return launch_done || block_seq != seen_block; });
      if (launch_done) break;
      seen_block = block_seq;
      const unsigned long long b = block_seq - 1;
      blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                       static_cast<unsigned>(b / (1ull * grid.x * grid.y))};
      lock.unlock();
      try {
        body(ctx);
      } catch (const LaunchAborted&) {
      }
      lock.lock();
      ++exited;
      if (arrived > 0 && arrived + exited == threads) fail(partial_barrier(*this));
      cv.notify_all();
    }
    blockDim = dim3{0, 0, 0};
    ++left;
    cv.notify_all();
  }
}

}  // namespace

int device_compute_capability() {
  static const int cc = env_int("CUDA_EMU_CC", 90);
  return cc;
}

cudaError_t take_last_error() {
  std::lock_guard<std::mutex> lock(error_mutex);
  const cudaError_t error = last_error;
  last_error = cudaSuccess;
  return error;
}

const char* error_string(cudaError_t error) {
  static thread_local std::string text;
  std::lock_guard<std::mutex> lock(error_mutex);
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorNoKernelImageForDevice: return "no kernel image is available for execution on the device";
    default: text = "emulated CUDA error: " + last_message; return text.c_str();
  }
}

void run_grid(const void* kernel, int compiled_arch, dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
  std::string why;
  if (!valid_config(grid, block, &why)) return record_error(cudaErrorInvalidConfiguration, why);
  if (compiled_arch == 0 || compiled_arch / 10 > device_compute_capability())
    return record_error(cudaErrorNoKernelImageForDevice,
                        "kernel compiled for arch " + std::to_string(compiled_arch) + ", device is " +
                            std::to_string(device_compute_capability()));
  std::lock_guard<std::mutex> serial(launch_mutex);
  Emulator& e = emulator();
  std::unique_lock<std::mutex> lock(e.mu);
  const unsigned threads = block.x * block.y * block.z;
  while (e.workers.size() < threads) {
    const unsigned linear = static_cast<unsigned>(e.workers.size());
    e.workers.emplace_back([&e, linear] { e.worker(linear); });
  }
  e.threads = threads;
  e.grid = grid;
  e.block = block;
  e.body = body;
  e.ctx = ctx;
  e.kernel = kernel;
  e.block_seq = 0;
  e.launch_done = false;
  e.left = 0;
  e.failed = false;
  e.message.clear();
  ++e.launch_seq;
  const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
  for (unsigned long long b = 0; b < blocks && !e.failed; ++b) {
    fill_shared_with_nan(kernel);  // no CUDA thread runs between blocks
    e.arrived = e.exited = 0;
    ++e.block_seq;
    e.cv.notify_all();
    e.cv.wait(lock, [&] { return e.exited == e.threads; });
  }
  e.launch_done = true;
  e.cv.notify_all();
  e.cv.wait(lock, [&] { return e.left == e.threads; });
  e.kernel = nullptr;
  if (e.failed) {
    lock.unlock();
    record_error(cudaErrorLaunchFailure, e.message);
  }
}

void syncthreads(const char* file, int line) {
  if (blockDim.x == 0) {
    std::fprintf(stderr, "cuda_emu: __syncthreads() at %s:%d outside a kernel\n", file, line);
    std::abort();
  }
  Emulator& e = emulator();
  std::unique_lock<std::mutex> lock(e.mu);
  if (e.failed) throw LaunchAborted{};
  if (e.arrived == 0) {
    e.site_file = file;
    e.site_line = line;
  } else if (e.site_line != line || std::strcmp(e.site_file, file) != 0) {
    e.fail("threads of one block wait at different barriers: " + site(e.site_file, e.site_line) + " and " +
           site(file, line));
    throw LaunchAborted{};
  }
  ++e.arrived;
  if (e.arrived + e.exited == e.threads) {
    if (e.exited > 0) {
      e.fail(partial_barrier(e));
      throw LaunchAborted{};
    }
    e.arrived = 0;
    ++e.generation;
    e.cv.notify_all();
    return;
  }
  const unsigned long generation = e.generation;
  e.cv.wait(lock, [&] { return e.generation != generation || e.failed; });
  if (e.generation == generation) throw LaunchAborted{};
}

void device_fail(const char* message) {
  if (blockDim.x == 0) {
    std::fprintf(stderr, "cuda_emu: %s (outside a kernel)\n", message);
    std::abort();
  }
  Emulator& e = emulator();
  std::lock_guard<std::mutex> lock(e.mu);
  e.fail(message);
  throw LaunchAborted{};
}

unsigned long long tensor_core_mma_count() { return mma_count.load(); }
void count_tensor_core_mma() { mma_count.fetch_add(1, std::memory_order_relaxed); }

unsigned linear_thread_index() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

SharedRegion::SharedRegion(void* data, std::size_t bytes) {
  std::size_t total = 0;
  {
    std::lock_guard<std::mutex> lock(shared_mutex);
    auto& regions = shared_regions[emulator().kernel];  // written before this block started
    regions.emplace_back(data, bytes);
    for (auto& region : regions) total += region.second;
    std::memset(data, 0xFF, bytes);
  }
  if (total > kStaticSharedLimit)
    device_fail(("static __shared__ memory of " + std::to_string(total) + " bytes exceeds 48 KiB").c_str());
}

}  // namespace cuda_emu
