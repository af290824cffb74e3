#pragma once
#include <cstdint>

namespace plateaulab {

// Device version of score_argmax_cpu (csrc/cpu/score_cpu.h): fused arg-max, correct count and
// near-tie count over a chunk of stacked logits already in device memory. One warp per
// (row, probe) pair: lanes stride over the classes, then a shuffle reduction picks the best and
// second-best logit; lane 0 adds the row's hit and near-tie atomically to correct[g] / ties[g]. Logits are read once and never written back.
// All pointers are device pointers; `stream` is a cudaStream_t (0 = default stream).
// Returns a cudaError_t value (0 on success).
int score_argmax_cuda(const float* logits, int64_t rows, int64_t ld, const float* bias,
                      const int64_t* labels, int64_t groups, int64_t num_classes, double rtol,
                      unsigned long long* correct, unsigned long long* ties, void* stream);

}  // namespace plateaulab
