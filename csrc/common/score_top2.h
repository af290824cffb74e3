#pragma once
// The arg-max and near-tie rule of the fused scorers, written once: the CUDA kernel's lanes merge
// with it (csrc/cuda/score_cuda.cu), and plateaulab._core.score_argmax_emulated runs the same
// warp reduction on the host so that tests without a GPU check it against the CPU scorer
// (csrc/cpu/score_cpu.cpp). Semantics, shared with the CPU scorer:
//   - the predicted class is the first index of the largest logit (numpy's argmax on finite rows);
//   - NaN never wins and is never second (comparisons with NaN are false; fmaxf drops NaN);
//   - a row with no logit above -inf (all -inf, all NaN, or a mix) predicts class 0 and is no tie
//     (its gap, -inf - -inf, is NaN);
//   - a tie is a gap best - second <= rtol * max(1, |best|), counted only when C > 1.

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace plateaulab {

constexpr int kTop2None = 0x7fffffff;  // no index seen yet

struct Top2 {
  float best;
  float second;
  int arg;
};

PL_HD inline Top2 top2_empty() { return Top2{-INFINITY, -INFINITY, kTop2None}; }

// Merge a partial result (best ob at index oa, second os) into t: the larger best wins; on equal
// bests the smaller index does (the first maximum), except that -inf never becomes the arg-max
// (the CPU loop's `v > best` from -inf never takes it either). Merging one value v at index c is
// top2_merge(t, v, c, -INFINITY).
PL_HD inline void top2_merge(Top2& t, float ob, int oa, float os) {
  if (ob > t.best || (ob == t.best && oa < t.arg && ob > -INFINITY)) {
    t.second = fmaxf(t.best, os);
    t.best = ob;
    t.arg = oa;
  } else {
    t.second = fmaxf(t.second, ob);
  }
}

PL_HD inline int64_t top2_class(const Top2& t) { return t.arg == kTop2None ? 0 : t.arg; }

PL_HD inline bool top2_tie(const Top2& t, int64_t num_classes, double rtol) {
  const double gap = static_cast<double>(t.best) - static_cast<double>(t.second);
  return num_classes > 1 && gap <= rtol * fmax(1.0, fabs(static_cast<double>(t.best)));
}

}  // namespace plateaulab
