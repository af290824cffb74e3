#include "cpu/score_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace plateaulab {

// Single-threaded on purpose: it runs between BLAS calls, whose worker threads keep spinning on
// the other cores for a while after each GEMM; an OpenMP team here measured 20-50x slower than one
// thread (26 ns vs 0.9 ns per logit on the 2-core development machine). It is memory-bound and
// costs a few percent of the GEMM that produced its input.
void score_argmax_cpu(const float* logits, int64_t rows, int64_t ld, const float* bias,
                      const int64_t* labels, int64_t groups, int64_t num_classes, double rtol,
                      int64_t* correct, int64_t* ties) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * ld;
    const int64_t label = labels[r];
    for (int64_t g = 0; g < groups; ++g) {
      const float* z = row + g * num_classes;
      const float* b = bias + g * num_classes;
      float best = -std::numeric_limits<float>::infinity();
      float second = -std::numeric_limits<float>::infinity();
      int64_t arg = 0;
      for (int64_t c = 0; c < num_classes; ++c) {
        const float v = z[c] + b[c];
        if (v > best) {
          second = best;
          best = v;
          arg = c;
        } else if (v > second) {
          second = v;
        }
      }
      correct[g] += (arg == label);
      const double gap = static_cast<double>(best) - static_cast<double>(second);
      ties[g] += (num_classes > 1 && gap <= rtol * std::max(1.0, std::fabs(static_cast<double>(best))));
    }
  }
}

}  // namespace plateaulab
