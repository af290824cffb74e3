#include "cpu/score_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace plateaulab {

void score_argmax_cpu(const float* logits, int64_t rows, int64_t ld, const float* bias,
                      const int64_t* labels, int64_t groups, int64_t num_classes, double rtol,
                      int64_t* correct, int64_t* ties) {
  int nthreads = 1;
#ifdef _OPENMP
  nthreads = omp_get_max_threads();
#endif
  // Per-thread counters, summed at the end: no atomics in the hot loop.
  std::vector<int64_t> acc(static_cast<size_t>(nthreads) * groups * 2, 0);

#pragma omp parallel num_threads(nthreads)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    int64_t* my_correct = acc.data() + static_cast<size_t>(tid) * groups * 2;
    int64_t* my_ties = my_correct + groups;
#pragma omp for schedule(static)
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
        my_correct[g] += (arg == label);
        const double gap = static_cast<double>(best) - static_cast<double>(second);
        my_ties[g] += (num_classes > 1 && gap <= rtol * std::max(1.0, std::fabs(static_cast<double>(best))));
      }
    }
  }
  for (int t = 0; t < nthreads; ++t) {
    const int64_t* c = acc.data() + static_cast<size_t>(t) * groups * 2;
    for (int64_t g = 0; g < groups; ++g) {
      correct[g] += c[g];
      ties[g] += c[groups + g];
    }
  }
}

}  // namespace plateaulab
