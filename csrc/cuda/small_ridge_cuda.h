#pragma once
#include <cstdint>

namespace plateaulab {

// Batched small dual ridge solves, one thread block per (task, l2) problem; the algorithm is
// csrc/common/small_ridge.h (Gram matrix in shared memory, Cholesky, solve, W = X^T A, float64).
//
//   xs      B x n x dp   standardised few-shot features with bias column, row-major, float64
//   labels  B x n        classes in [0, C)
//   l2      L            ridge strengths
//   a_out   B x L x n x C     dual coefficients A = (X X^T + l2 I)^{-1} Y
//   w_out   B x L x dp x C    weights W = X^T A, or null to skip them (kernel-form scoring)
//   info    B x L        0, or the 1-based column where the factorisation stopped (then a_out and
//                        w_out of that problem are not written)
// Needs n * n * 8 bytes of shared memory per block: small_ridge_max_n() gives the largest n the
// current device allows. All pointers are device pointers; returns a cudaError_t value.
int small_ridge_cuda(const double* xs, int64_t batch, int n, int dp, const int64_t* labels, int C,
                     const double* l2, int n_l2, double* a_out, double* w_out, int* info, void* stream);

// Largest n whose n x n float64 matrix fits the current device's opt-in shared memory per block.
int small_ridge_max_n();

}  // namespace plateaulab
