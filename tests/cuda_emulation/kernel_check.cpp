// Runs every panther kernel launcher under the CUDA emulation and compares each output element
// with a float64 reference, for fp32/fp16/bf16/fp64 over the odd shapes, strides and layouts that
// break tiled kernels: empty and single rows, 31-33 and 65 rows, ranks around 16/32/64, sizes that
// are not multiples of 4/8/16, transposed and padded operands, padded output rows.
//
// Inputs outside each operand's view are NaN, outputs start as NaN and sit between guard bytes, so
// a read outside the view, an unwritten element and a write outside the view all fail the check.
// Error bounds are the classic dot-product bound: |got - ref| <= c * (terms * u_acc + u_out) * sum|a*b|.
//
//   kernel_check [--quick] [--only gemm|fused|sum] [--tensor-cores yes|no]
// (device from CUDA_EMU_CC, default 90; --tensor-cores asserts whether the wmma GEMM ran)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "sketch_kernels.h"

namespace {

using panther::DType;
using panther::StridedMatrix;

double to_double(float v) { return v; }
double to_double(double v) { return v; }
double to_double(__half v) { return __half2float(v); }
double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> T from_double(double v);
template <> float from_double<float>(double v) { return static_cast<float>(v); }
template <> double from_double<double>(double v) { return v; }
template <> __half from_double<__half>(double v) { return __float2half_rn(static_cast<float>(v)); }
template <> __nv_bfloat16 from_double<__nv_bfloat16>(double v) { return __float2bfloat16_rn(static_cast<float>(v)); }

// dtype tag, unit roundoff of the stored type, and of the accumulator the kernels use.
template <typename T> struct Traits;
template <> struct Traits<float> {
  static constexpr DType dtype = DType::kFloat32;
  static constexpr double u_out = 0x1p-24, u_acc = 0x1p-24;
  static constexpr const char* name = "fp32";
};
template <> struct Traits<double> {
  static constexpr DType dtype = DType::kFloat64;
  static constexpr double u_out = 0x1p-53, u_acc = 0x1p-53;
  static constexpr const char* name = "fp64";
};
template <> struct Traits<__half> {
  static constexpr DType dtype = DType::kFloat16;
  static constexpr double u_out = 0x1p-11, u_acc = 0x1p-24;
  static constexpr const char* name = "fp16";
};
template <> struct Traits<__nv_bfloat16> {
  static constexpr DType dtype = DType::kBFloat16;
  static constexpr double u_out = 0x1p-8, u_acc = 0x1p-24;
  static constexpr const char* name = "bf16";
};

enum class Layout { kRowMajor, kTransposed, kPaddedRows, kPaddedTransposed };
const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kRowMajor: return "row";
    case Layout::kTransposed: return "T";
    case Layout::kPaddedRows: return "row+pad";
    case Layout::kPaddedTransposed: return "T+pad";
  }
  return "?";
}
Layout layout_at(int i) { return static_cast<Layout>(i % 4); }

template <typename T> T nan_value() {
  T v;
  std::memset(&v, 0xFF, sizeof v);
  return v;
}

std::mt19937_64 rng(12345);

// A read-only operand in one of the layouts; elements outside the view are NaN.
template <typename T> struct Operand {
  int64_t rows, cols, rs, cs;
  std::vector<T> storage;
  std::vector<double> value;  // row-major exact values (the dtype-rounded inputs)

  Operand(int64_t r, int64_t c, Layout layout) : rows(r), cols(c) {
    switch (layout) {
      case Layout::kRowMajor: rs = c, cs = 1; break;
      case Layout::kTransposed: rs = 1, cs = r; break;
      case Layout::kPaddedRows: rs = c + 3, cs = 1; break;
      case Layout::kPaddedTransposed: rs = 1, cs = r + 5; break;
    }
    const int64_t span = (r > 0 && c > 0) ? (r - 1) * rs + (c - 1) * cs + 1 : 1;
    storage.assign(span + 7, nan_value<T>());
    value.resize(r * c);
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) {
        const T v = from_double<T>(dist(rng));
        storage[i * rs + j * cs] = v;
        value[i * c + j] = to_double(v);
      }
  }
  double at(int64_t i, int64_t j) const { return value[i * cols + j]; }
  StridedMatrix view() const { return StridedMatrix{storage.data(), rs, cs}; }
};

// An output matrix with row stride ld, NaN inside the view and guard bytes everywhere else (two
// rows' worth before and after, so a store one row out of bounds lands in a guard).
template <typename T> struct Output {
  static constexpr unsigned char kSentinel = 0x5A;
  int64_t rows, cols, ld, guard;
  std::vector<T> storage;

  Output(int64_t r, int64_t c, int64_t pad) : rows(r), cols(c), ld(c + pad), guard(2 * (c + pad) + 32) {
    storage.resize(2 * guard + r * ld);
    std::memset(storage.data(), kSentinel, storage.size() * sizeof(T));
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) storage[guard + i * ld + j] = nan_value<T>();
  }
  T* data() { return storage.data() + guard; }
  double at(int64_t i, int64_t j) const { return to_double(storage[guard + i * ld + j]); }
  bool in_view(int64_t e) const {
    const int64_t off = e - guard;
    return off >= 0 && off < rows * ld && off % ld < cols;
  }
  // Whether every byte outside the view still holds the sentinel.
  bool guards_intact() const {
    const auto* bytes = reinterpret_cast<const unsigned char*>(storage.data());
    for (int64_t e = 0; e < static_cast<int64_t>(storage.size()); ++e) {
      if (in_view(e)) continue;
      for (size_t b = 0; b < sizeof(T); ++b)
        if (bytes[e * sizeof(T) + b] != kSentinel) return false;
    }
    return true;
  }
};

int failures = 0, checks = 0;

void fail(const std::string& what) {
  if (++failures <= 20) std::printf("FAIL %s\n", what.c_str());
}

template <typename T>
void compare(const std::string& what, const Output<T>& out, const std::vector<double>& ref,
             const std::vector<double>& absref, double factor) {
  ++checks;
  if (!out.guards_intact()) return fail(what + ": wrote outside its output view");
  for (int64_t i = 0; i < out.rows; ++i)
    for (int64_t j = 0; j < out.cols; ++j) {
      const double got = out.at(i, j), want = ref[i * out.cols + j];
      const double tol = 2.0 * factor * absref[i * out.cols + j];
      if (!(std::fabs(got - want) <= tol))
        return fail(what + ": element (" + std::to_string(i) + ", " + std::to_string(j) + ") = " +
                    std::to_string(got) + ", want " + std::to_string(want) + " +- " + std::to_string(tol));
    }
}

void expect_status(const std::string& what, cudaError_t got, cudaError_t want) {
  ++checks;
  if (got != want)
    fail(what + ": returned " + std::string(cudaGetErrorString(got)) + ", want " + cudaGetErrorString(want));
}

struct GemmCase {
  int64_t m, n, k;
};
struct FusedCase {
  int64_t m, d_in, rank2, d_out;
};
struct SumCase {
  int64_t m, n;
};

const std::vector<GemmCase> kGemm = {{1, 1, 1},    {31, 15, 7},  {32, 16, 13}, {33, 17, 37}, {65, 63, 70},
                                     {33, 64, 13}, {65, 65, 37}, {31, 65, 70}, {64, 64, 32}, {0, 17, 5},
                                     {17, 0, 5},   {5, 9, 0}};
const std::vector<FusedCase> kFused = {{1, 7, 1, 5},     {31, 13, 15, 29}, {32, 37, 16, 63}, {33, 70, 17, 65},
                                       {65, 13, 31, 131}, {33, 37, 32, 64}, {1, 70, 33, 29},  {65, 37, 63, 65},
                                       {31, 7, 64, 1},    {0, 13, 16, 29},  {33, 37, 65, 5}};
const std::vector<SumCase> kSum = {{0, 5}, {1, 1}, {31, 33}, {32, 32}, {65, 17}, {33, 65}};

template <typename T> void check_gemm(const GemmCase& c, int index) {
  const Layout la = layout_at(index), lb = layout_at(index + 1);
  const bool with_bias = index % 2 == 0;
  const double alpha = index % 3 == 0 ? 1.0 : 0.37;
  const Operand<T> a(c.m, c.k, la), b(c.k, c.n, lb), bias(1, c.n, Layout::kRowMajor);
  Output<T> out(c.m, c.n, index % 2 == 0 ? 0 : 3);
  const cudaError_t status = panther::launch_gemm(Traits<T>::dtype, c.m, c.n, c.k, a.view(), b.view(), out.data(),
                                                  out.ld, alpha, with_bias ? bias.storage.data() : nullptr, nullptr);
  const std::string what = std::string("gemm ") + Traits<T>::name + " m=" + std::to_string(c.m) + " n=" +
                           std::to_string(c.n) + " k=" + std::to_string(c.k) + " A " + layout_name(la) + " B " +
                           layout_name(lb) + (with_bias ? " bias" : "");
  expect_status(what, status, cudaSuccess);
  std::vector<double> ref(c.m * c.n), absref(c.m * c.n);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      double s = 0, sa = 0;
      for (int64_t p = 0; p < c.k; ++p) s += a.at(i, p) * b.at(p, j), sa += std::fabs(a.at(i, p) * b.at(p, j));
      const double bj = with_bias ? bias.at(0, j) : 0.0;
      ref[i * c.n + j] = alpha * s + bj;
      absref[i * c.n + j] = std::fabs(alpha) * sa + std::fabs(bj);
    }
  compare(what, out, ref, absref, (c.k + 2) * Traits<T>::u_acc + Traits<T>::u_out);
}

template <typename T> void check_fused(const FusedCase& c, int index) {
  const Layout lx = layout_at(index), la = layout_at(index + 1), lb = layout_at(index + 2);
  const bool with_bias = index % 2 == 1, with_hidden = index % 3 != 2;
  const double scale = 1.0 / (index + 2);
  const Operand<T> x(c.m, c.d_in, lx), a(c.d_in, c.rank2, la), b(c.rank2, c.d_out, lb);
  const Operand<T> bias(1, c.d_out, Layout::kRowMajor);
  Output<T> y(c.m, c.d_out, index % 2 == 0 ? 0 : 5), hidden(c.m, c.rank2, index % 2 == 0 ? 2 : 0);
  const std::string what = std::string("fused ") + Traits<T>::name + " m=" + std::to_string(c.m) + " d_in=" +
                           std::to_string(c.d_in) + " 2r=" + std::to_string(c.rank2) + " d_out=" +
                           std::to_string(c.d_out) + " x " + layout_name(lx) + " A " + layout_name(la) + " B " +
                           layout_name(lb) + (with_bias ? " bias" : "") + (with_hidden ? " hidden" : "");
  const cudaError_t status = panther::launch_fused_forward(
      Traits<T>::dtype, c.m, c.d_in, c.rank2, c.d_out, x.view(), a.view(), b.view(),
      with_bias ? bias.storage.data() : nullptr, scale, y.data(), y.ld, with_hidden ? hidden.data() : nullptr,
      hidden.ld, nullptr);
  if (c.rank2 > panther::fused_forward_max_rank(Traits<T>::dtype)) {
    expect_status(what + " (rank above the fused limit)", status, cudaErrorInvalidValue);
    return;
  }
  expect_status(what, status, cudaSuccess);
  std::vector<double> h(c.m * c.rank2), habs(c.m * c.rank2), ref(c.m * c.d_out), absref(c.m * c.d_out);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t p = 0; p < c.rank2; ++p) {
      double s = 0, sa = 0;
      for (int64_t q = 0; q < c.d_in; ++q) s += x.at(i, q) * a.at(q, p), sa += std::fabs(x.at(i, q) * a.at(q, p));
      h[i * c.rank2 + p] = s, habs[i * c.rank2 + p] = sa;
    }
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.d_out; ++j) {
      double s = 0, sa = 0;
      for (int64_t p = 0; p < c.rank2; ++p) {
        s += h[i * c.rank2 + p] * b.at(p, j);
        sa += habs[i * c.rank2 + p] * std::fabs(b.at(p, j));
      }
      const double bj = with_bias ? bias.at(0, j) : 0.0;
      ref[i * c.d_out + j] = scale * s + bj;
      absref[i * c.d_out + j] = scale * sa + std::fabs(bj);
    }
  compare(what, y, ref, absref, (c.d_in + c.rank2 + 4) * Traits<T>::u_acc + Traits<T>::u_out);
  if (with_hidden) compare(what + " [hidden]", hidden, h, habs, (c.d_in + 2) * Traits<T>::u_acc + Traits<T>::u_out);
}

template <typename T> void check_sum(const SumCase& c, int index) {
  const Layout lg = layout_at(index);
  const Operand<T> g(c.m, c.n, lg);
  Output<T> out(1, c.n, 0);
  const std::string what = std::string("column_sum ") + Traits<T>::name + " m=" + std::to_string(c.m) + " n=" +
                           std::to_string(c.n) + " g " + layout_name(lg);
  expect_status(what, panther::launch_column_sum(Traits<T>::dtype, c.m, c.n, g.view(), out.data(), nullptr),
                cudaSuccess);
  std::vector<double> ref(c.n, 0.0), absref(c.n, 0.0);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) ref[j] += g.at(i, j), absref[j] += std::fabs(g.at(i, j));
  compare(what, out, ref, absref, (c.m + 2) * Traits<T>::u_acc + Traits<T>::u_out);
}

template <typename T> void check_dtype(const std::string& only, bool quick) {
  const size_t stride = quick ? 3 : 1;  // --quick: every third case
  if (only.empty() || only == "gemm")
    for (size_t i = 0; i < kGemm.size(); i += stride) check_gemm<T>(kGemm[i], static_cast<int>(i));
  if (only.empty() || only == "fused")
    for (size_t i = 0; i < kFused.size(); i += stride) check_fused<T>(kFused[i], static_cast<int>(i));
  if (only.empty() || only == "sum")
    for (size_t i = 0; i < kSum.size(); i += stride) check_sum<T>(kSum[i], static_cast<int>(i));
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string only, tensor_cores;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else if (arg == "--tensor-cores" && i + 1 < argc) {
      tensor_cores = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--only gemm|fused|sum] [--tensor-cores yes|no]\n", argv[0]);
      return 2;
    }
  }
  check_dtype<float>(only, quick);
  check_dtype<__half>(only, quick);
  check_dtype<__nv_bfloat16>(only, quick);
  if (!quick) check_dtype<double>(only, quick);
  const unsigned long long mma = cuda_emu::tensor_core_mma_count();
  std::printf("tensor-core mma_sync calls: %llu\n", mma);
  if (!tensor_cores.empty()) {
    ++checks;
    if ((tensor_cores == "yes") != (mma > 0)) fail("tensor cores expected: " + tensor_cores);
  }
  std::printf("%s: %d checks, %d failures (device compute capability %d)\n", failures ? "FAILED" : "OK", checks,
              failures, cuda_emu::device_compute_capability());
  return failures ? 1 : 0;
}
