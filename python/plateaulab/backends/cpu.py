"""The fast CPU backend.

Same decomposition as the reference (float64 eigh of the smaller Gram matrix, one per task, shared
by every l2), different scoring. Where the time goes is the test GEMM: T tasks x L l2 x C classes
logits for each of m test rows. Three things make it cheap:

1. Fold the standardisation into the weights. With x_c = x - m0 (m0: the test split's mean, removed
   once per block in float32 so that the folded terms below stay small and fp32 keeps its digits),
       x_std @ W[:D] + 100 W[D] = x_c @ (W[:D] / std) + [100 W[D] - ((mean - m0) / std) @ W[:D]],
   so the raw test features are converted to float32 once per block and every task and l2 is one
   column group of a single stacked weight matrix: one GEMM per chunk of test rows.
2. Dual tasks (n < D + 1) whose kernel form is cheaper score through it: W = xs^T A_l with
   A_l = Q diag(1/(e + l2)) Q^T Y, so logits = K A_l with K = x_std xs^T (m x n), computed once and
   shared by every l2. Per test row that costs n D + n L C instead of D L C multiply-adds. The bias
   column contributes the constant 100 * 100 to K; it is kept out of the fp32 product and added
   exactly as the per-class bias 1e4 * colsum(A_l).
3. Arg-max, correct count and near-tie count are fused in the compiled core
   (csrc/cpu/score_cpu.cpp) over each chunk of logits, so full logits (m x T x L x C) never exist.
"""

from __future__ import annotations

import numpy as np

from .. import protocol as P
from .base import BlockScores

name = "cpu"
# Logits of one chunk of test rows stay below this many bytes (the chunk's rows adapt to the width).
CHUNK_BYTES = 16 << 20


def _core():
    from .. import _core

    return _core


def is_available() -> bool:
    try:
        _core()
    except ImportError:
        return False
    return True


def unavailable_reason() -> str:
    try:
        _core()
    except ImportError as exc:
        return f"the compiled module plateaulab._core is missing ({exc}); reinstall with `pip install .`"
    return ""


def device() -> str:
    import os

    return f"cpu ({os.cpu_count()} logical cores, float32 scoring, float64 decomposition)"


class _Scorer:
    """Stacked primal weight groups plus kernel-form heads, scored chunk by chunk."""

    def __init__(self, dim: int, num_classes: int):
        self.dim, self.C = dim, num_classes
        self.w_cols: list[np.ndarray] = []     # (D, C) float32 per primal group
        self.w_bias: list[np.ndarray] = []     # (C,) float32
        self.slots: list[tuple[int, int]] = []  # (task, l2 index) per primal group
        self.k_heads: list[dict] = []

    def add_primal(self, t: int, j: int, w_folded: np.ndarray, bias: np.ndarray) -> None:
        self.w_cols.append(w_folded.astype(np.float32))
        self.w_bias.append(bias.astype(np.float32))
        self.slots.append((t, j))

    def add_kernel(self, t: int, basis: np.ndarray, offset: np.ndarray, a_stack: np.ndarray,
                   bias: np.ndarray) -> None:
        """basis (D, n), offset (n,), a_stack (n, L*C), bias (L*C,): logits = (x_c basis + offset) a_stack + bias."""
        self.k_heads.append({"t": t, "basis": basis.astype(np.float32), "offset": offset.astype(np.float32),
                             "a": np.ascontiguousarray(a_stack, dtype=np.float32),
                             "bias": np.ascontiguousarray(bias, dtype=np.float32)})

    def finalize(self) -> None:
        if self.w_cols:
            self.W = np.ascontiguousarray(np.concatenate(self.w_cols, axis=1))
            self.b = np.ascontiguousarray(np.concatenate(self.w_bias))
        else:
            self.W = np.zeros((self.dim, 0), np.float32)
            self.b = np.zeros(0, np.float32)
        if self.k_heads:
            self.K_basis = np.ascontiguousarray(np.concatenate([h["basis"] for h in self.k_heads], axis=1))
            self.K_offset = np.concatenate([h["offset"] for h in self.k_heads])
            bounds = np.cumsum([0] + [h["basis"].shape[1] for h in self.k_heads])
            for h, lo, hi in zip(self.k_heads, bounds[:-1], bounds[1:]):
                h["cols"] = slice(int(lo), int(hi))

    def score(self, x: np.ndarray, y: np.ndarray, n_l2: int, correct: np.ndarray, ties: np.ndarray) -> None:
        """Add the hits and near-ties of rows ``x`` (float32, centred) to correct/ties[t, l]."""
        core = _core()
        C = self.C
        widths = [self.W.shape[1]] + [h["a"].shape[1] for h in self.k_heads]
        if self.k_heads:
            widths.append(self.K_basis.shape[1])
        rows = int(np.clip(CHUNK_BYTES // (4 * max(max(widths), 1)), 32, 8192))
        g_correct = np.zeros(len(self.slots), np.int64)
        g_ties = np.zeros(len(self.slots), np.int64)
        k_counts = [(np.zeros(n_l2, np.int64), np.zeros(n_l2, np.int64)) for _ in self.k_heads]
        buf = np.empty((rows, self.W.shape[1]), np.float32)
        for r0 in range(0, x.shape[0], rows):
            xc = x[r0:r0 + rows]
            yc = y[r0:r0 + rows]
            if self.slots:
                logits = np.matmul(xc, self.W, out=buf[: xc.shape[0]])
                core.score_argmax(logits, self.b, yc, C, P.TIE_RTOL, g_correct, g_ties)
            if self.k_heads:
                kmat = xc @ self.K_basis
                kmat += self.K_offset
                for h, (kc, kt) in zip(self.k_heads, k_counts):
                    logits = np.ascontiguousarray(kmat[:, h["cols"]]) @ h["a"]
                    core.score_argmax(logits, h["bias"], yc, C, P.TIE_RTOL, kc, kt)
        for (t, j), c, tie in zip(self.slots, g_correct, g_ties):
            correct[t, j] += c
            ties[t, j] += tie
        for h, (kc, kt) in zip(self.k_heads, k_counts):
            correct[h["t"]] += kc
            ties[h["t"]] += kt


def _centred_f32(x, m0=None):
    xf = np.array(x, dtype=np.float32, copy=True, order="C")
    if m0 is None:
        m0 = xf.mean(axis=0, dtype=np.float64)
    xf -= m0.astype(np.float32)
    return xf, m0


def probe_block(x_train, y_train, x_test, y_test, tasks, l2s, num_classes, *,
                x_val=None, y_val=None, loo=False) -> BlockScores:
    l2s = np.asarray(l2s, dtype=np.float64)
    L, C = len(l2s), num_classes
    xt, m0 = _centred_f32(x_test)
    xv = None if x_val is None else _centred_f32(x_val, m0)[0]
    D = xt.shape[1]
    out = BlockScores.empty(len(tasks), L, len(y_test), loo, 0 if y_val is None else len(y_val))
    scorer = _Scorer(D, C)
    for t, task in enumerate(tasks):
        x = np.asarray(x_train[task.indices], dtype=np.float64)
        y = y_train[task.indices]
        cache = P.precompute_cache(x, y, C)
        mean, std = cache["mean"][0], cache["std"][0]
        shift = (mean - m0) / std                               # (D,)
        n = x.shape[0]
        if not cache["primal"] and n * D + n * L * C < L * C * D:
            # Kernel form (point 2): A_l = Q diag(1/(e + l2)) rhs, stacked over l2.
            q, e, rhs = cache["q"], cache["eigs"], cache["rhs"]
            a = np.concatenate([(q * (1.0 / (e + l2))[None, :]) @ rhs for l2 in l2s], axis=1)  # (n, L*C)
            xs = cache["xs"][:, :D]
            basis = (xs / std[None, :]).T                        # (D, n)
            offset = -(shift @ xs.T)                             # (n,)
            bias = (P.BIAS_CONSTANT ** 2) * a.sum(axis=0)        # bias column: 100 * 100 per point
            scorer.add_kernel(t, basis, offset, a, bias)
        else:
            for j, l2 in enumerate(l2s):
                w = P.ridge_weights(cache, l2)                   # (D + 1, C) float64
                wf = w[:D] / std[:, None]
                bias = P.BIAS_CONSTANT * w[D] - shift @ w[:D]
                scorer.add_primal(t, j, wf, bias)
        if loo:
            for j, l2 in enumerate(l2s):
                out.loo_acc[t, j], out.loo_mse[t, j] = P.loo_scores(cache, y, l2)
    scorer.finalize()
    scorer.score(xt, np.ascontiguousarray(y_test, dtype=np.int64), L, out.correct, out.ties)
    if xv is not None:
        scratch = np.zeros_like(out.val_correct)
        scorer.score(xv, np.ascontiguousarray(y_val, dtype=np.int64), L, out.val_correct, scratch)
    return out
