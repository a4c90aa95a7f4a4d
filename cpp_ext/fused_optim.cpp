// zest_edge._fused: fused SGD / AdamW steps over flat contiguous fp32 buffers (CPU here, CUDA in fused_optim_cuda.cu).
#include "fused_optim.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with at::Tensor casters; lighter than torch/extension.h

#include <optional>

#ifdef ZEST_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace zest {
namespace {

// Elements per parallel task: big enough to amortise the OpenMP fork, small enough to split a layer across cores.
constexpr int64_t kGrainSize = 32768;

// Portable binary, yet wide vectors: x86-64 Linux builds get AVX-512 / AVX2 clones picked at load time.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define ZEST_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ZEST_VECTOR_CLONES
#endif

ZEST_VECTOR_CLONES void sgd_chunk(float* __restrict__ param, const float* __restrict__ grad, int64_t n,
                                  SgdScalars s) {
  for (int64_t i = 0; i < n; ++i) sgd_element(param[i], grad[i], s);
}

ZEST_VECTOR_CLONES void sgd_momentum_chunk(float* __restrict__ param, const float* __restrict__ grad,
                                           float* __restrict__ buf, int64_t n, SgdScalars s) {
  for (int64_t i = 0; i < n; ++i) sgd_momentum_element(param[i], grad[i], buf[i], s);
}

ZEST_VECTOR_CLONES void adamw_chunk(float* __restrict__ param, const float* __restrict__ grad,
                                    float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq, int64_t n,
                                    AdamwScalars s) {
  for (int64_t i = 0; i < n; ++i) adamw_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], s);
}

// Each buffer must be contiguous float32 with param's device and size.
void check_buffer(const at::Tensor& buffer, const at::Tensor& param) {
  TORCH_CHECK(buffer.scalar_type() == at::kFloat && buffer.is_contiguous(),
              "fused step: buffers must be contiguous float32");
  TORCH_CHECK(buffer.device() == param.device() && buffer.numel() == param.numel(),
              "fused step: buffers must match param's device and size");
}

void sgd_step(const at::Tensor& param, const at::Tensor& grad, const std::optional<at::Tensor>& momentum_buf, double lr,
              double momentum, double dampening, double weight_decay, bool nesterov, bool first_step) {
  TORCH_CHECK(momentum == 0.0 || momentum_buf.has_value(), "sgd_step: momentum != 0 needs a momentum_buf");
  const at::Tensor* buf = momentum != 0.0 ? &momentum_buf.value() : nullptr;
  for (const at::Tensor* t : {&param, &grad, buf}) if (t) check_buffer(*t, param);
  const SgdScalars s{static_cast<float>(lr), static_cast<float>(momentum), static_cast<float>(1.0 - dampening),
                     static_cast<float>(weight_decay), weight_decay != 0.0, nesterov, first_step};
  float* p = param.data_ptr<float>();
  const float* g = grad.const_data_ptr<float>();
  float* b = buf ? buf->data_ptr<float>() : nullptr;
  if (param.is_cuda()) {
#ifdef ZEST_WITH_CUDA
    const c10::cuda::CUDAGuard device_guard(param.device());
    C10_CUDA_CHECK(launch_sgd(p, g, b, param.numel(), s, c10::cuda::getCurrentCUDAStream()));
    return;
#else
    TORCH_CHECK(false, "zest_edge._fused was built without CUDA kernels");
#endif
  }
  at::parallel_for(0, param.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
    if (b) sgd_momentum_chunk(p + begin, g + begin, b + begin, end - begin, s);
    else sgd_chunk(p + begin, g + begin, end - begin, s);
  });
}

void adamw_step(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                const at::Tensor& exp_avg_sq, int64_t step, double lr, double beta1, double beta2, double eps,
                double weight_decay) {
  TORCH_CHECK(step >= 1, "adamw_step: step counts from 1, got ", step);
  for (const at::Tensor* t : {&param, &grad, &exp_avg, &exp_avg_sq}) check_buffer(*t, param);
  const AdamwScalars s = adamw_scalars(step, lr, beta1, beta2, eps, weight_decay);
  float* p = param.data_ptr<float>();
  const float* g = grad.const_data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  if (param.is_cuda()) {
#ifdef ZEST_WITH_CUDA
    const c10::cuda::CUDAGuard device_guard(param.device());
    C10_CUDA_CHECK(launch_adamw(p, g, m, v, param.numel(), s, c10::cuda::getCurrentCUDAStream()));
    return;
#else
    TORCH_CHECK(false, "zest_edge._fused was built without CUDA kernels");
#endif
  }
  at::parallel_for(0, param.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
    adamw_chunk(p + begin, g + begin, m + begin, v + begin, end - begin, s);
  });
}

}  // namespace
}  // namespace zest

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "Fused SGD / AdamW steps over flat contiguous float32 buffers, updated in place.";
  m.def("sgd_step", &zest::sgd_step, "torch.optim.SGD step", py::arg("param"), py::arg("grad"),
        py::arg("momentum_buf"), py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"),
        py::arg("nesterov"), py::arg("first_step"));
  m.def("adamw_step", &zest::adamw_step, "torch.optim.AdamW step (step counts from 1)", py::arg("param"),
        py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("step"), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"));
#ifdef ZEST_WITH_CUDA
  m.attr("cuda_kernels") = true;
#else
  m.attr("cuda_kernels") = false;
#endif
}
