// CUDA kernels of zest_edge._fused: one grid-stride kernel per step over the flat buffers (built with --fmad=false).
#include "fused_optim.h"

#include <cuda_runtime.h>

#include <algorithm>

namespace zest {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;  // grid-stride covers the rest

__global__ void sgd_kernel(float* __restrict__ param, const float* __restrict__ grad, int64_t n, SgdScalars s) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{blockDim.x} * gridDim.x)
    sgd_element(param[i], grad[i], s);
}

__global__ void sgd_momentum_kernel(float* __restrict__ param, const float* __restrict__ grad,
                                    float* __restrict__ buf, int64_t n, SgdScalars s) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{blockDim.x} * gridDim.x)
    sgd_momentum_element(param[i], grad[i], buf[i], s);
}

__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ exp_avg,
                             float* __restrict__ exp_avg_sq, int64_t n, AdamwScalars s) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{blockDim.x} * gridDim.x)
    adamw_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], s);
}

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

}  // namespace

cudaError_t launch_sgd(float* param, const float* grad, float* momentum_buf, int64_t n, SgdScalars s,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (momentum_buf) {
    sgd_momentum_kernel<<<blocks_for(n), kThreads, 0, stream>>>(param, grad, momentum_buf, n, s);
  } else {
    sgd_kernel<<<blocks_for(n), kThreads, 0, stream>>>(param, grad, n, s);
  }
  return cudaGetLastError();
}

cudaError_t launch_adamw(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                         AdamwScalars s, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  adamw_kernel<<<blocks_for(n), kThreads, 0, stream>>>(param, grad, exp_avg, exp_avg_sq, n, s);
  return cudaGetLastError();
}

}  // namespace zest
