#include "cuda/score_cuda.h"

#include <cuda_runtime.h>

#include <cmath>

#include "common/score_top2.h"

namespace plateaulab {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

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
    Top2 t = top2_empty();  // the rule, and the start the CPU scorer shares: csrc/common/score_top2.h
    for (int64_t c = lane; c < num_classes; c += kWarp) top2_merge(t, z[c] + b[c], static_cast<int>(c), -INFINITY);
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float ob = __shfl_down_sync(0xffffffffu, t.best, offset);
      const int oa = __shfl_down_sync(0xffffffffu, t.arg, offset);
      const float os = __shfl_down_sync(0xffffffffu, t.second, offset);
      top2_merge(t, ob, oa, os);
    }
    if (lane == 0) {
      if (top2_class(t) == labels[r]) atomicAdd(correct + g, 1ULL);
      if (top2_tie(t, num_classes, rtol)) atomicAdd(ties + g, 1ULL);
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
  (void)cudaGetLastError();  // clear a stale error, so the check below reports this launch's
  score_argmax_kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * kWarp, 0,
                        static_cast<cudaStream_t>(stream)>>>(logits, rows, ld, bias, labels, groups,
                                                             num_classes, rtol, correct, ties);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace plateaulab
