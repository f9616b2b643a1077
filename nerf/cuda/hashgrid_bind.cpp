// torch binding of the fused hash-grid kernels (hashgrid_kernels.cu). Checks shapes, devices and
// dtypes, fills GridParams, launches on torch's current stream and turns a CUDA error into a Python
// exception. nerf/hashgrid_cuda.py compiles this with torch.utils.cpp_extension on first use.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "hashgrid.h"

namespace {

GridParams make_params(int64_t n_features, int64_t table_size, const std::vector<double>& scales,
                       const std::vector<int64_t>& res, const std::vector<int64_t>& sizes,
                       const std::vector<int64_t>& hashed) {
  const int64_t L = static_cast<int64_t>(scales.size());
  TORCH_CHECK(L >= 1 && L <= kMaxLevels, "hash grid: 1 to ", kMaxLevels, " levels supported, got ", L);
  TORCH_CHECK(static_cast<int64_t>(res.size()) == L && static_cast<int64_t>(sizes.size()) == L &&
                  static_cast<int64_t>(hashed.size()) == L, "hash grid: per-level lists differ in length");
  TORCH_CHECK(n_features == 1 || n_features == 2 || n_features == 4, "fused hash grid: F must be 1, 2 or 4, got ",
              n_features);
  GridParams p{};
  p.n_levels = static_cast<int>(L);
  p.n_features = static_cast<int>(n_features);
  p.table_size = static_cast<uint32_t>(table_size);
  for (int64_t l = 0; l < L; ++l) {
    p.scale[l] = static_cast<float>(scales[l]);
    p.res[l] = static_cast<uint32_t>(res[l]);
    p.size[l] = static_cast<uint32_t>(sizes[l]);
    p.hashed[l] = static_cast<uint32_t>(hashed[l]);
  }
  return p;
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& tables) {
  TORCH_CHECK(x.is_cuda() && tables.is_cuda(), "fused hash grid: x and tables must be CUDA tensors");
  TORCH_CHECK(x.device() == tables.device(), "fused hash grid: x and tables on different devices");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.size(1) == 3 && x.is_contiguous(),
              "fused hash grid: x must be a contiguous float32 [N, 3] tensor");
  TORCH_CHECK(x.size(0) < (int64_t(1) << 31), "fused hash grid: at most 2^31 - 1 points per call");
  TORCH_CHECK(tables.dim() == 3 && tables.is_contiguous() &&
                  (tables.scalar_type() == torch::kFloat32 || tables.scalar_type() == torch::kFloat16),
              "fused hash grid: tables must be a contiguous float32 or float16 [L, T, F] tensor");
}

torch::Tensor forward(torch::Tensor x, torch::Tensor tables, std::vector<double> scales, std::vector<int64_t> res,
                      std::vector<int64_t> sizes, std::vector<int64_t> hashed) {
  check_inputs(x, tables);
  const c10::cuda::CUDAGuard guard(x.device());
  const GridParams p = make_params(tables.size(2), tables.size(1), scales, res, sizes, hashed);
  TORCH_CHECK(tables.size(0) == p.n_levels, "fused hash grid: tables have ", tables.size(0), " levels, params ",
              p.n_levels);
  auto out = torch::empty({tables.size(0) * tables.size(2), x.size(0)}, x.options());
  const cudaError_t err = hashgrid_forward(x.data_ptr<float>(), static_cast<uint32_t>(x.size(0)), tables.data_ptr(),
                                           tables.scalar_type() == torch::kFloat16, p, out.data_ptr<float>(),
                                           c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "fused hash grid forward: ", cudaGetErrorString(err));
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor x, torch::Tensor tables, torch::Tensor grad_out,
                                    std::vector<double> scales, std::vector<int64_t> res, std::vector<int64_t> sizes,
                                    std::vector<int64_t> hashed, bool need_grad_x) {
  check_inputs(x, tables);
  const c10::cuda::CUDAGuard guard(x.device());
  const GridParams p = make_params(tables.size(2), tables.size(1), scales, res, sizes, hashed);
  const int64_t width = tables.size(0) * tables.size(2);
  TORCH_CHECK(grad_out.is_cuda() && grad_out.scalar_type() == torch::kFloat32 && grad_out.dim() == 2 &&
                  grad_out.size(0) == x.size(0) && grad_out.size(1) == width,
              "fused hash grid backward: grad_out must be float32 [N, L F] on the GPU");
  auto grad_tables = torch::zeros(tables.sizes(), x.options());
  auto grad_x = need_grad_x ? torch::zeros_like(x) : torch::Tensor();
  const cudaError_t err = hashgrid_backward(
      x.data_ptr<float>(), static_cast<uint32_t>(x.size(0)), tables.data_ptr(), tables.scalar_type() == torch::kFloat16,
      p, grad_out.data_ptr<float>(), grad_out.stride(0), grad_out.stride(1), grad_tables.data_ptr<float>(),
      need_grad_x ? grad_x.data_ptr<float>() : nullptr, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "fused hash grid backward: ", cudaGetErrorString(err));
  return {grad_tables, grad_x};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "hash-grid encoding: x [N, 3], tables [L, T, F] -> out [L F, N]");
  m.def("backward", &backward, "gradients of the encoding with respect to the tables (and x)");
}
