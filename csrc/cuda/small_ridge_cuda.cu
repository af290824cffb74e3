#include "cuda/small_ridge_cuda.h"

#include <cuda_runtime.h>

#include <cmath>

#include "common/small_ridge.h"

namespace plateaulab {
namespace {

constexpr int kThreads = 256;

struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};

// (kThreads, 1): one block per SM is all the shared memory of a large problem allows, and without
// the second bound nvcc caps the kernel at 32 registers per thread to fit 8 blocks, and spills.
__global__ void __launch_bounds__(kThreads, 1)
small_ridge_kernel(const double* __restrict__ xs, int n, int dp, const int64_t* __restrict__ labels, int C,
                   const double* __restrict__ l2, int n_l2, double* __restrict__ a_out,
                   double* __restrict__ w_out, int* __restrict__ info) {
  extern __shared__ double K[];  // n * n
  __shared__ int s_info;
  __shared__ double s_kmax;
  const int64_t problem = blockIdx.x;  // = b * n_l2 + j
  const int64_t b = problem / n_l2;
  const int j = static_cast<int>(problem - b * n_l2);
  const double* X = xs + b * n * static_cast<int64_t>(dp);
  double* A = a_out + problem * n * static_cast<int64_t>(C);
  double* W = w_out ? w_out + problem * dp * static_cast<int64_t>(C) : nullptr;
  small_ridge_problem(X, n, dp, labels + b * n, C, l2[j], K, A, W, &s_info, &s_kmax, threadIdx.x,
                      blockDim.x, BlockSync{});
  if (threadIdx.x == 0) info[problem] = s_info;
}

}  // namespace

int small_ridge_max_n() {
  int dev = 0, smem = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 0;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, small_ridge_kernel) != cudaSuccess) return 0;
  // The opt-in shared memory less the kernel's static shared variables holds the n x n doubles.
  return small_ridge_max_n_for(static_cast<int64_t>(smem) - static_cast<int64_t>(attr.sharedSizeBytes));
}

int small_ridge_cuda(const double* xs, int64_t batch, int n, int dp, const int64_t* labels, int C,
                     const double* l2, int n_l2, double* a_out, double* w_out, int* info, void* stream) {
  const int64_t problems = batch * n_l2;
  if (problems == 0 || n == 0) return 0;
  (void)cudaGetLastError();  // clear a stale error, so the checks below report this launch's
  const size_t smem = static_cast<size_t>(n) * n * sizeof(double);
  cudaError_t err = cudaFuncSetAttribute(small_ridge_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return static_cast<int>(err);
  small_ridge_kernel<<<static_cast<unsigned>(problems), kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
      xs, n, dp, labels, C, l2, n_l2, a_out, w_out, info);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace plateaulab
