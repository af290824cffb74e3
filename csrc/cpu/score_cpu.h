#pragma once
#include <cstdint>

namespace plateaulab {

// Fused arg-max scoring of a chunk of test rows against G stacked probes of C classes each.
//
//   logits  rows x (G*C), row-major with leading dimension ld (>= G*C); probe g owns columns
//           [g*C, (g+1)*C). The caller produced them with one GEMM against the stacked weights.
//   bias    G*C values added to every row before the arg-max (the folded standardisation).
//   labels  rows true classes in [0, C).
//
// For every probe g, adds to correct[g] the rows whose arg-max equals the label, and to ties[g]
// the rows whose two best logits differ by at most rtol * max(1, |best|). The arg-max takes the
// first maximum, as numpy does. Nothing is written back to logits.
void score_argmax_cpu(const float* logits, int64_t rows, int64_t ld, const float* bias,
                      const int64_t* labels, int64_t groups, int64_t num_classes, double rtol,
                      int64_t* correct, int64_t* ties);

}  // namespace plateaulab
