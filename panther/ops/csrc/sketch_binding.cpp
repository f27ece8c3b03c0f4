// Torch-facing binding of the sketched-linear CUDA kernels: checks, dtype mapping, output allocation,
// the current CUDA stream, and the order of the GEMMs. Built only where a CUDA-enabled torch exists;
// the kernels themselves live in the .cu files and see nothing but raw pointers and strides.
// Only c10/cuda headers are used (not ATen/cuda), so no cuBLAS/cuSPARSE headers are needed.
// tests/cuda_emulation builds this same file against a CPU-only torch with PANTHER_CUDA_EMULATION,
// the kernels running on host threads: there host memory plays device memory, so CPU tensors are
// the ones the kernels accept.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <tuple>

#include "sketch_kernels.h"

namespace {

using panther::DType;
using panther::StridedMatrix;

DType to_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "panther sketched_linear: unsupported dtype ", t.scalar_type());
  }
}

#ifdef PANTHER_CUDA_EMULATION
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CPU;
#else
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CUDA;
#endif

StridedMatrix view(const at::Tensor& t) { return StridedMatrix{t.data_ptr(), t.stride(0), t.stride(1)}; }

// The transpose of a 2-D operand, without a copy.
StridedMatrix transposed(const at::Tensor& t) { return StridedMatrix{t.data_ptr(), t.stride(1), t.stride(0)}; }

void check(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, "panther sketched_linear: ", what, " failed: ", cudaGetErrorString(status));
}

// Every operand must live on x's device (a tensor on another GPU would hand the kernel a foreign
// pointer), x on a CUDA device, all with x's dtype and the given number of dimensions.
void check_operand(const at::Tensor& t, const at::Tensor& like, const char* name, int64_t dims = 2) {
  TORCH_CHECK(t.device() == like.device(), "panther sketched_linear: ", name, " is on ", t.device(), ", expected ",
              like.device());
  TORCH_CHECK(t.device().type() == kKernelDevice, "panther sketched_linear: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == dims, "panther sketched_linear: ", name, " must be ", dims, "-D, got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "panther sketched_linear: ", name, " has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
}

// y = scale * (x @ A) @ B + bias; also returns H = x @ A when save_hidden (else an empty tensor).
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                                           const c10::optional<at::Tensor>& bias, double scale, bool save_hidden) {
  check_operand(x, x, "x");
  check_operand(A, x, "A");
  check_operand(B, x, "B");
  const int64_t m = x.size(0), d_in = x.size(1), rank2 = A.size(1), d_out = B.size(1);
  TORCH_CHECK(A.size(0) == d_in && B.size(0) == rank2, "panther sketched_linear: shape mismatch x ", x.sizes(),
              ", A ", A.sizes(), ", B ", B.sizes());
  at::Tensor bias_c;
  if (bias.has_value()) {
    check_operand(*bias, x, "bias", 1);
    TORCH_CHECK(bias->numel() == d_out, "panther sketched_linear: bias has ", bias->numel(), " elements, expected ",
                d_out);
    bias_c = bias->contiguous();
  }
  const void* bias_ptr = bias.has_value() ? bias_c.data_ptr() : nullptr;
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const DType dtype = to_dtype(x);
  at::Tensor y = at::empty({m, d_out}, x.options());
  at::Tensor hidden = save_hidden ? at::empty({m, rank2}, x.options()) : at::empty({0}, x.options());
  if (rank2 <= panther::fused_forward_max_rank(dtype)) {
    check(panther::launch_fused_forward(dtype, m, d_in, rank2, d_out, view(x), view(A), view(B), bias_ptr, scale,
                                        y.data_ptr(), d_out, save_hidden ? hidden.data_ptr() : nullptr, rank2,
                                        stream),
          "fused forward");
    return {y, hidden};
  }
  at::Tensor h = save_hidden ? hidden : at::empty({m, rank2}, x.options());
  check(panther::launch_gemm(dtype, m, rank2, d_in, view(x), view(A), h.data_ptr(), rank2, 1.0, nullptr, stream),
        "x @ A");
  check(panther::launch_gemm(dtype, m, d_out, rank2, view(h), view(B), y.data_ptr(), d_out, scale, bias_ptr,
                             stream),
        "H @ B");
  return {y, hidden};
}

// Gradients of the learnable parts only: x, S1 (= A[:, :r]), S2 (= B[r:]) and bias. Unrequested ones
// come back as empty tensors, each its own (torch.library rejects outputs that share storage).
// gS1 is (d_in, r) and gS2 is (r, d_out), both already scaled.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                                    const at::Tensor& hidden, const at::Tensor& A,
                                                                    const at::Tensor& B, double scale, int64_t rank,
                                                                    bool need_x, bool need_s1, bool need_s2,
                                                                    bool need_bias) {
  check_operand(grad_y, x, "grad_y");
  check_operand(x, x, "x");
  check_operand(A, x, "A");
  check_operand(B, x, "B");
  const int64_t m = x.size(0), d_in = x.size(1), rank2 = A.size(1), d_out = B.size(1);
  TORCH_CHECK(rank2 == 2 * rank && grad_y.size(0) == m && grad_y.size(1) == d_out,
              "panther sketched_linear backward: shape mismatch");
  if (need_s2) {
    check_operand(hidden, x, "hidden");
    TORCH_CHECK(hidden.size(0) == m && hidden.size(1) == rank2,
                "panther sketched_linear backward: S2's gradient needs the saved hidden (x @ A)");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const DType dtype = to_dtype(x);
  const auto empty = [&] { return at::empty({0}, x.options()); };
  at::Tensor grad_x = empty(), grad_s1 = empty(), grad_s2 = empty(), grad_bias = empty();
  if (need_x || need_s1) {
    // gH = scale * gY @ B^T (only its first r columns when x's gradient is not wanted).
    const int64_t cols = need_x ? rank2 : rank;
    at::Tensor grad_h = at::empty({m, cols}, x.options());
    check(panther::launch_gemm(dtype, m, cols, d_out, view(grad_y), transposed(B), grad_h.data_ptr(), cols, scale,
                               nullptr, stream),
          "grad_y @ B^T");
    if (need_x) {
      grad_x = at::empty({m, d_in}, x.options());
      check(panther::launch_gemm(dtype, m, d_in, rank2, view(grad_h), transposed(A), grad_x.data_ptr(), d_in, 1.0,
                                 nullptr, stream),
            "grad_h @ A^T");
    }
    if (need_s1) {
      grad_s1 = at::empty({d_in, rank}, x.options());
      check(panther::launch_gemm(dtype, d_in, rank, m, transposed(x), view(grad_h), grad_s1.data_ptr(), rank, 1.0,
                                 nullptr, stream),
            "x^T @ grad_h");
    }
  }
  if (need_s2) {
    grad_s2 = at::empty({rank, d_out}, x.options());
    const at::Tensor hidden_u2 = hidden.narrow(1, rank, rank);
    check(panther::launch_gemm(dtype, rank, d_out, m, transposed(hidden_u2), view(grad_y), grad_s2.data_ptr(), d_out,
                               scale, nullptr, stream),
          "hidden^T @ grad_y");
  }
  if (need_bias) {
    grad_bias = at::empty({d_out}, x.options());
    check(panther::launch_column_sum(dtype, m, d_out, view(grad_y), grad_bias.data_ptr(), stream), "bias sum");
  }
  return {grad_x, grad_s1, grad_s2, grad_bias};
}

// (largest 2r, rows per block) of the fused forward for x's dtype: the inputs of the dispatch rule
// in panther/ops/_dispatch.py.
std::tuple<int64_t, int64_t> fused_forward_limits(const at::Tensor& x) {
  const DType dtype = to_dtype(x);
  return {panther::fused_forward_max_rank(dtype), panther::fused_forward_rows_per_block()};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CUDA kernels for panther's sketched linear op (y = scale * (x @ A) @ B + bias)";
  m.def("forward", &forward, "fused sketched-linear forward", py::arg("x"), py::arg("A"), py::arg("B"),
        py::arg("bias"), py::arg("scale"), py::arg("save_hidden"));
  m.def("backward", &backward, "sketched-linear backward (learnable parts only)", py::arg("grad_y"), py::arg("x"),
        py::arg("hidden"), py::arg("A"), py::arg("B"), py::arg("scale"), py::arg("rank"), py::arg("need_x"),
        py::arg("need_s1"), py::arg("need_s2"), py::arg("need_bias"));
  m.def("fused_forward_limits", &fused_forward_limits, "(largest 2r, rows per block) of the fused forward",
        py::arg("x"));
}
