#include "cuda/score_cuda.h"

#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>

namespace plateaulab {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

// Keep the larger (value, index) pair; on equal values the smaller index wins, as numpy's argmax.
__device__ __forceinline__ void merge_top2(float& best, int& arg, float& second, float ob, int oa, float os) {
  if (ob > best || (ob == best && oa < arg)) {
    second = fmaxf(best, os);
    best = ob;
    arg = oa;
  } else {
    second = fmaxf(second, ob);
  }
}

__global__ void score_argmax_kernel(const float* __restrict__ logits, int64_t rows, int64_t ld,
                                    const float* __restrict__ bias, const int64_t* __restrict__ labels,
                                    int64_t groups, int64_t num_classes, double rtol,
                                    unsigned long long* __restrict__ correct,
                                    unsigned long long* __restrict__ ties) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int64_t pairs = rows * groups;
  const int64_t warp_global = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;

  for (int64_t p = warp_global; p < pairs; p += warp_stride) {
    const int64_t r = p / groups;
    const int64_t g = p - r * groups;
    const float* z = logits + r * ld + g * num_classes;
    const float* b = bias + g * num_classes;
    float best = -FLT_MAX, second = -FLT_MAX;
    int arg = 0x7fffffff;
    for (int64_t c = lane; c < num_classes; c += kWarp) {
      const float v = z[c] + b[c];
      merge_top2(best, arg, second, v, static_cast<int>(c), -FLT_MAX);
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float ob = __shfl_down_sync(0xffffffffu, best, offset);
      const int oa = __shfl_down_sync(0xffffffffu, arg, offset);
      const float os = __shfl_down_sync(0xffffffffu, second, offset);
      merge_top2(best, arg, second, ob, oa, os);
    }
    if (lane == 0) {
      if (arg == labels[r]) atomicAdd(correct + g, 1ULL);
      const double gap = static_cast<double>(best) - static_cast<double>(second);
      if (num_classes > 1 && gap <= rtol * fmax(1.0, fabs(static_cast<double>(best)))) atomicAdd(ties + g, 1ULL);
    }
  }
}

}  // namespace

int score_argmax_cuda(const float* logits, int64_t rows, int64_t ld, const float* bias,
                      const int64_t* labels, int64_t groups, int64_t num_classes, double rtol,
                      unsigned long long* correct, unsigned long long* ties, void* stream) {
  const int64_t pairs = rows * groups;
  if (pairs == 0) return 0;
  int64_t blocks = (pairs + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 65535LL * 8) blocks = 65535LL * 8;  // grid-stride loop covers the rest
  score_argmax_kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * kWarp, 0,
                        static_cast<cudaStream_t>(stream)>>>(logits, rows, ld, bias, labels, groups,
                                                             num_classes, rtol, correct, ties);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace plateaulab
