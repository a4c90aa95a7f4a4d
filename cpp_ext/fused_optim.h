// Per-element SGD / AdamW maths shared by the CPU (fused_optim.cpp) and CUDA (fused_optim_cuda.cu) kernels.
// Every operation is a single IEEE-rounded fp32 op in a fixed order (no FMA: built with -ffp-contract=off /
// --fmad=false), so zest_edge/fused.py's torch-op fallback reproduces the kernels bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef ZEST_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifdef __CUDACC__
#define ZEST_HOST_DEVICE __host__ __device__
#else
#define ZEST_HOST_DEVICE
#endif

namespace zest {

// Step scalars, computed once per step in double (as torch.optim does) and rounded to fp32.
struct SgdScalars {
  float lr, momentum, one_minus_dampening, weight_decay;
  bool has_weight_decay, nesterov, first_step;
};

struct AdamwScalars {
  float decay, beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, step_size, eps;
};

inline AdamwScalars adamw_scalars(int64_t step, double lr, double beta1, double beta2, double eps,
                                  double weight_decay) {
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return {static_cast<float>(1.0 - lr * weight_decay), static_cast<float>(beta1), static_cast<float>(1.0 - beta1),
          static_cast<float>(beta2), static_cast<float>(1.0 - beta2),
          static_cast<float>(std::sqrt(bias_correction2)), static_cast<float>(lr / bias_correction1),
          static_cast<float>(eps)};
}

// SGD without momentum: p -= lr * (g + wd * p).
ZEST_HOST_DEVICE inline void sgd_element(float& param, float grad, const SgdScalars& s) {
  const float direction = s.has_weight_decay ? grad + param * s.weight_decay : grad;
  param = param - direction * s.lr;
}

// SGD with momentum: buf = g on the first step, else momentum * buf + (1 - dampening) * g; Nesterov optional.
ZEST_HOST_DEVICE inline void sgd_momentum_element(float& param, float grad, float& buf, const SgdScalars& s) {
  const float decayed = s.has_weight_decay ? grad + param * s.weight_decay : grad;
  const float new_buf = s.first_step ? decayed : buf * s.momentum + decayed * s.one_minus_dampening;
  buf = new_buf;
  const float direction = s.nesterov ? decayed + new_buf * s.momentum : new_buf;
  param = param - direction * s.lr;
}

// AdamW: p *= 1 - lr*wd; m, v moving averages; p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
ZEST_HOST_DEVICE inline void adamw_element(float& param, float grad, float& exp_avg, float& exp_avg_sq,
                                          const AdamwScalars& s) {
  const float m = exp_avg * s.beta1 + grad * s.one_minus_beta1;
  const float v = exp_avg_sq * s.beta2 + grad * s.one_minus_beta2 * grad;
  const float denom = sqrtf(v) / s.bias_correction2_sqrt + s.eps;
  exp_avg = m;
  exp_avg_sq = v;
  param = param * s.decay - m * s.step_size / denom;
}

#ifdef ZEST_WITH_CUDA
// One grid-stride kernel over n elements on `stream` (fused_optim_cuda.cu); returns the launch status.
// A null momentum_buf means SGD without momentum.
cudaError_t launch_sgd(float* param, const float* grad, float* momentum_buf, int64_t n, SgdScalars s,
                       cudaStream_t stream);
cudaError_t launch_adamw(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                         AdamwScalars s, cudaStream_t stream);
#endif

}  // namespace zest
