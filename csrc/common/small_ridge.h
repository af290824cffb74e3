#pragma once
// One small dual ridge problem, start to finish, in the memory of one thread block:
//
//   K = X X^T + l2 I            (n x n, kept in shared memory)
//   K = L L^T                   (Cholesky, in place)
//   A = K^{-1} Y                (n x C; Y = 2 onehot(labels) - 1, built on the fly)
//   W = X^T A                   (D' x C, the probe's weights before folding)
//
// X is the task's standardised few-shot matrix with its bias column (n x D', row-major, float64).
// This is protocol case (B), n < D', for one l2 (see python/plateaulab/protocol.py).
//
// The code is written as barrier-separated phases, each a loop over work items strided by the
// thread count. Within a phase no item reads what another item of the same phase writes. So the
// same function runs as a CUDA thread block (tid = threadIdx.x, nthreads = blockDim.x, sync =
// __syncthreads) and, for testing without a GPU, as one host thread (tid = 0, nthreads = 1, sync =
// no-op) with identical results: plateaulab._core.small_ridge_emulated calls it that way.
//
// Precision: float64 throughout (Gram, factorisation, solves, W). Failure: a pivot that is not
// finite or not above n * eps * max(diag K) stops the factorisation; *info is set to the 1-based
// column and A, W are left unwritten (the caller recomputes that problem by float64 eigh).

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace plateaulab {

// The largest n whose n x n float64 matrix fits ``shared_bytes`` (the kernel's dynamic shared memory
// per block): the device's opt-in shared memory less the kernel's static shared variables. With the
// 227 KiB (232,448 bytes) of an H100 or H200 that is n = 170.
inline int small_ridge_max_n_for(int64_t shared_bytes) {
  if (shared_bytes < static_cast<int64_t>(sizeof(double))) return 0;
  int64_t n = static_cast<int64_t>(std::sqrt(static_cast<double>(shared_bytes) / sizeof(double)));
  while ((n + 1) * (n + 1) * static_cast<int64_t>(sizeof(double)) <= shared_bytes) ++n;  // sqrt rounding
  while (n > 0 && n * n * static_cast<int64_t>(sizeof(double)) > shared_bytes) --n;
  return static_cast<int>(n);
}

// Finite test that needs no <cmath> overload resolution on either side (inf - inf and nan - nan are
// nan). The project never compiles with fast-math, which could fold it away.
PL_HD inline bool small_ridge_finite(double x) { return x - x == 0.0; }

template <class Sync>
PL_HD inline void small_ridge_problem(const double* X, int n, int dp, const int64_t* labels, int C,
                                      double l2, double* K /* n*n scratch (shared memory) */,
                                      double* A /* n x C */, double* W /* dp x C, or null */,
                                      int* info /* shared; one int */, double* kmax /* shared */,
                                      int tid, int nthreads, Sync sync) {
  // Phase 1: lower triangle of K = X X^T + l2 I.
  for (int p = tid; p < n * n; p += nthreads) {
    const int i = p / n, k = p - (p / n) * n;
    if (k > i) continue;
    const double* xi = X + static_cast<int64_t>(i) * dp;
    const double* xk = X + static_cast<int64_t>(k) * dp;
    double s = 0.0;
    for (int d = 0; d < dp; ++d) s += xi[d] * xk[d];
    K[i * n + k] = s + (i == k ? l2 : 0.0);
  }
  if (tid == 0) *info = 0;
  sync();
  if (tid == 0) {
    double m = 0.0;
    for (int i = 0; i < n; ++i) m = fmax(m, K[i * n + i]);
    *kmax = m;
  }
  sync();
  const double tol = static_cast<double>(n) * DBL_EPSILON * (*kmax);

  // Phase 2: right-looking Cholesky, column by column.
  for (int k = 0; k < n; ++k) {
    if (tid == 0) {
      const double d = K[k * n + k];
      if (!(d > tol) || !small_ridge_finite(d)) {
        *info = k + 1;
      } else {
        K[k * n + k] = sqrt(d);
      }
    }
    sync();
    if (*info != 0) break;  // every thread reads the same value after the barrier
    const double piv = K[k * n + k];
    for (int i = k + 1 + tid; i < n; i += nthreads) K[i * n + k] /= piv;
    sync();
    const int m = n - k - 1;
    for (int p = tid; p < m * m; p += nthreads) {
      const int i = k + 1 + p / m, j = k + 1 + (p - (p / m) * m);
      if (j > i) continue;
      K[i * n + j] -= K[i * n + k] * K[j * n + k];
    }
    sync();
  }
  if (*info != 0) return;

  // Phase 3: A = L^-T L^-1 Y, one right-hand side per work item.
  for (int c = tid; c < C; c += nthreads) {
    for (int i = 0; i < n; ++i) {  // forward: L z = y
      double s = (labels[i] == c) ? 1.0 : -1.0;
      for (int k = 0; k < i; ++k) s -= K[i * n + k] * A[k * C + c];
      A[i * C + c] = s / K[i * n + i];
    }
    for (int i = n - 1; i >= 0; --i) {  // backward: L^T a = z
      double s = A[i * C + c];
      for (int k = i + 1; k < n; ++k) s -= K[k * n + i] * A[k * C + c];
      A[i * C + c] = s / K[i * n + i];
    }
  }
  sync();
  if (W == nullptr) return;  // the caller scores through the kernel form and needs A only

  // Phase 4: W = X^T A.
  for (int p = tid; p < dp * C; p += nthreads) {
    const int r = p / C, c = p - (p / C) * C;
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += X[static_cast<int64_t>(i) * dp + r] * A[i * C + c];
    W[p] = s;
  }
}

}  // namespace plateaulab
