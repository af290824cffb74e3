"""The fast probe engine, written once over an array module (numpy for `cpu`, CuPy for `cuda`).

Same maths as the reference, solved in float64: one eigendecomposition of the smaller Gram matrix
per task, shared by every l2 (tasks of equal size decomposed as one batch), or, when only a few l2
values are asked for, one direct solve per l2 (see ``_solve``; small dual systems on the GPU go to
a fused shared-memory kernel, ``_small_solve``). The scoring differs. Where the time goes is
the test GEMM: T tasks x L l2 x C classes logits for each of m test rows. Three things make it
cheap:

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
3. Arg-max, correct count and near-tie count are fused in a compiled kernel (csrc/cpu/score_cpu.cpp,
   csrc/cuda/score_cuda.cu) over each chunk of logits, so full logits (m x T x L x C) never exist.

An ``ops`` object supplies the array module and the few things that differ by device: moving
arrays, the fused scorer, the solvers and the tuning knobs. Its contract is ``base.Ops``, and this
file uses nothing else of it; ``cpu.NumpyOps`` and ``cuda.CupyOps`` implement it.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .. import protocol as P
from .base import BlockScores, HostSplit, StagedSplit, StagedTrain

# Few-shot features of the tasks decomposed together in one batch stay below this many bytes.
BATCH_BYTES = 256 << 20


class _Scorer:
    """Stacked primal weight groups plus kernel-form heads, scored chunk by chunk."""

    def __init__(self, ops, dim: int, num_classes: int, n_l2: int):
        self.ops, self.xp = ops, ops.xp
        self.dim, self.C, self.L = dim, num_classes, n_l2
        self.w_cols, self.w_bias, self.slots = [], [], []
        self.k_heads: list[dict] = []

    def add_primal(self, t: int, w_folded, bias) -> None:
        """Weights of every l2 of task t side by side: w_folded (D, L*C), bias (L*C)."""
        self.w_cols.append(w_folded.astype(np.float32))
        self.w_bias.append(bias.astype(np.float32))
        self.slots += [(t, j) for j in range(self.L)]

    def add_kernel(self, t: int, basis, offset, a_stack, bias) -> None:
        """logits of l2 j = (x_c basis + offset) a_stack[:, jC:(j+1)C] + bias[jC:(j+1)C]."""
        xp = self.xp
        self.k_heads.append({"t": t, "basis": basis.astype(np.float32), "offset": offset.astype(np.float32),
                             "a": xp.ascontiguousarray(a_stack.astype(np.float32)),
                             "bias": xp.ascontiguousarray(bias.astype(np.float32))})

    def finalize(self) -> None:
        xp = self.xp
        if self.w_cols:
            self.W = xp.ascontiguousarray(xp.concatenate(self.w_cols, axis=1))
            self.b = xp.ascontiguousarray(xp.concatenate(self.w_bias))
        else:
            self.W = xp.zeros((self.dim, 0), np.float32)
            self.b = xp.zeros(0, np.float32)
        self.w_cols = self.w_bias = None
        if self.k_heads:
            self.K_basis = xp.ascontiguousarray(xp.concatenate([h["basis"] for h in self.k_heads], axis=1))
            self.K_offset = xp.concatenate([h["offset"] for h in self.k_heads])
            lo = 0
            for h in self.k_heads:
                hi = lo + h["basis"].shape[1]
                h["cols"] = slice(lo, hi)
                h["basis"] = h["offset"] = None
                lo = hi

    def _chunk_rows(self) -> int:
        widths = [self.W.shape[1]] + [h["a"].shape[1] for h in self.k_heads]
        if self.k_heads:
            widths.append(self.K_basis.shape[1])
        return int(np.clip(self.ops.chunk_bytes // (4 * max(max(widths), 1)), 32, 1 << 16))

    def score(self, x, y, correct: np.ndarray, ties: np.ndarray, preds: np.ndarray | None = None) -> None:
        """Add the hits and near-ties of rows ``x`` (float32, centred, on the device) to correct/ties[t, l].
        With ``preds`` (T, L, rows), also write every row's predicted class there (a diagnostic: the
        logits of each chunk go through a separate arg-max)."""
        xp, ops, C = self.xp, self.ops, self.C
        g_counts = ops.counters(len(self.slots))
        k_counts = [ops.counters(self.L) for _ in self.k_heads]
        rows = self._chunk_rows()
        r0 = 0
        while r0 < x.shape[0]:
            try:
                xc, yc = x[r0:r0 + rows], y[r0:r0 + rows]
                if self.slots:
                    logits = xc @ self.W
                    ops.score_argmax(logits, self.b, yc, C, g_counts)
                    if preds is not None:
                        arg = ops.to_host(xp.argmax((logits + self.b).reshape(len(xc), -1, C), axis=2))
                        for g, (t, j) in enumerate(self.slots):
                            preds[t, j, r0:r0 + len(xc)] = arg[:, g]
                if self.k_heads:
                    kmat = xc @ self.K_basis
                    kmat += self.K_offset
                    for h, counts in zip(self.k_heads, k_counts):
                        logits = xp.ascontiguousarray(kmat[:, h["cols"]]) @ h["a"]
                        ops.score_argmax(logits, h["bias"], yc, C, counts)
                        if preds is not None:
                            arg = ops.to_host(xp.argmax((logits + h["bias"]).reshape(len(xc), -1, C), axis=2))
                            preds[h["t"], :, r0:r0 + len(xc)] = arg.T
            except ops.out_of_memory:
                if rows <= 32:
                    raise
                rows //= 2  # nothing of this chunk was counted yet: retry it smaller
                ops.release_memory()
                continue
            r0 += rows
        g_correct, g_ties = ops.to_host_counts(g_counts)
        for (t, j), c, tie in zip(self.slots, g_correct, g_ties):
            correct[t, j] += c
            ties[t, j] += tie
        for h, counts in zip(self.k_heads, k_counts):
            kc, kt = ops.to_host_counts(counts)
            correct[h["t"]] += kc
            ties[h["t"]] += kt


# With at most ``ops.solve_max_l`` l2 values (and no leave-one-out, which needs the
# eigenvectors), each l2 gets its own direct solve of (G + l2 I) w = r instead of sharing one
# eigendecomposition: Cholesky (cuda) costs s^3/3 flops and LU (cpu) 2 s^3/3, against roughly 4-9 s^3
# for a symmetric eigendecomposition with vectors, whose tridiagonal reduction is memory-bound
# besides. Where the break-even lies is a property of the device (NumpyOps and CupyOps each give
# theirs, with how it was found).
# A direct solve whose normwise backward error ||A w - r|| / (||A|| ||w|| + ||r||) exceeds this
# counts as failed (cuSOLVER's batched potrf does not raise) and that matrix is solved again
# through the float64 eigendecomposition. A successful solve sits near s * 1e-16.
SOLVE_BACKWARD_TOL = 1e-10


# An eigendecomposition whose check (``_eigh_residual``) exceeds this counts as failed and that matrix
# is decomposed again on the host by LAPACK. cuSOLVER reports a Jacobi solve that did not converge
# (syevjBatched) or a failed syevd only through an info array, which CuPy ignores by default; a
# backward-stable decomposition sits near s * 1e-16.
EIGH_RESIDUAL_TOL = 1e-10


def _eigh_residual(xp, a, e, q):
    """Per matrix of the batch a (B, s, s): ||A Q z - Q (e * z)|| / (||A|| ||z||) + ||Q^T Q z - z|| / ||z||
    for a fixed random z. Zero for an exact decomposition and O(1) or NaN for a failed one; it costs
    matrix-vector products only. Returns a device array (B,)."""
    s = a.shape[-1]
    z_host = np.random.default_rng(s).standard_normal(s)
    z = xp.asarray(z_host)
    mv = lambda m, v: (m @ v[:, :, None])[:, :, 0]                    # noqa: E731  batched matrix-vector
    v = q @ z                                                         # (B, s)
    resid = mv(a, v) - mv(q, e * z)
    orth = mv(xp.swapaxes(q, 1, 2), v) - z
    zn = float(np.linalg.norm(z_host))
    a_norm = xp.linalg.norm(a, axis=(1, 2)) + np.finfo(np.float64).tiny
    return xp.linalg.norm(resid, axis=1) / (a_norm * zn) + xp.linalg.norm(orth, axis=1) / zn


def _eigh(ops, a):
    """``ops.eigh`` of a matrix (s, s) or a batch (B, s, s), checked the way the direct solves are:
    one device sync for the whole batch; a matrix whose check fails (``EIGH_RESIDUAL_TOL``) is
    decomposed again on the host by LAPACK (which raises if that fails too) and counted in
    ``ops.solve_fallbacks``."""
    xp = ops.xp
    e, q = ops.eigh(a)
    a3, e3, q3 = (a[None], e[None], q[None]) if a.ndim == 2 else (a, e, q)   # views: e3, q3 write into e, q
    check = ops.to_host(_eigh_residual(xp, a3, e3, q3))
    bad = np.flatnonzero(~(check <= EIGH_RESIDUAL_TOL))              # NaN fails too
    for b in bad:
        e_b, q_b = np.linalg.eigh(ops.to_host(a3[int(b)]))
        e3[int(b)], q3[int(b)] = xp.asarray(e_b), xp.asarray(q_b)
    ops.solve_fallbacks += int(bad.size)
    return e, q


def _eigh_coef(xp, e, q, rhs, l2s):
    """(Q diag(1/(e + l2)) Q^T) rhs for every l2, side by side: (s, L*C) from one (s, s) eigh."""
    s, C = rhs.shape
    qr = q.T @ rhs                                                   # (s, C)
    f = 1.0 / (e[:, None] + xp.asarray(l2s)[None, :])                # (s, L)
    return q @ (f[:, :, None] * qr[:, None, :]).reshape(s, len(l2s) * C)


def _solve(ops, gram, rhs, l2s, need_eigh: bool):
    """Ridge coefficients (gram + l2 I)^{-1} rhs for every l2 and every matrix of the batch.

    gram: (B, s, s) float64, rhs: (B, s, C). Returns (coef, e, q): coef is (B, s, L*C) with the
    l2 values side by side; e, q are the batch's eigendecomposition when it was computed (always
    when ``need_eigh``), else None. One direct solve per l2 when few l2 values are asked for
    (above); a matrix whose solve fails is recomputed from its float64 eigendecomposition.
    """
    xp = ops.xp
    B, s, C = rhs.shape
    L = len(l2s)
    if need_eigh or L > ops.solve_max_l:
        e, q = _eigh(ops, gram)                                      # batched, float64
        coef = xp.stack([_eigh_coef(xp, e[b], q[b], rhs[b], l2s) for b in range(B)])
        return coef, e, q
    coef = xp.empty((B, s, L * C), dtype=xp.float64)
    ok = np.ones(B, dtype=bool)
    backward = xp.empty((L, B), dtype=xp.float64)
    idx = xp.arange(s)
    rhs_norm = xp.linalg.norm(rhs, axis=(1, 2))
    for j, l2 in enumerate(l2s):
        a = gram.copy()
        a[:, idx, idx] += l2
        w, solved = ops.spd_solve(a, rhs)
        if solved is not None:
            ok &= solved
        resid = xp.linalg.norm(a @ w - rhs, axis=(1, 2))
        backward[j] = resid / (xp.linalg.norm(a, axis=(1, 2)) * xp.linalg.norm(w, axis=(1, 2)) + rhs_norm)
        coef[:, :, j * C:(j + 1) * C] = w
    backward = ops.to_host(backward)                                 # one device sync for all l2
    ok &= np.all(np.isfinite(backward) & (backward <= SOLVE_BACKWARD_TOL), axis=0)
    for b in np.flatnonzero(~ok):
        e_b, q_b = _eigh(ops, gram[int(b)])
        coef[int(b)] = _eigh_coef(xp, e_b, q_b, rhs[int(b)], l2s)
    ops.solve_fallbacks += int(np.count_nonzero(~ok))
    return coef, None, None


def _small_solve(ops, xs, labels, C, l2s, want_w: bool):
    """The small-system kernel for a dual batch: (coef (B, n, L*C), w (B, D', L*C) or None).

    Without ``want_w`` (tasks scored through the kernel form) the kernel skips W = xs^T A. Problems
    whose Cholesky factorisation stops (info != 0) are solved again from the float64
    eigendecomposition of their Gram matrix, as in ``_solve``.
    """
    xp = ops.xp
    B, n, dp = xs.shape
    L = len(l2s)
    a, w, ok = ops.small_ridge(xs, labels, C, l2s, want_w)      # (B, L, n, C), (B, L, D', C), (B, L)
    coef = xp.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(B, n, L * C))
    w_all = xp.ascontiguousarray(w.transpose(0, 2, 1, 3).reshape(B, dp, L * C)) if want_w else None
    bad = np.flatnonzero(~ok.all(axis=1))
    for b in bad:
        b = int(b)
        e_b, q_b = _eigh(ops, xs[b] @ xs[b].T)
        yt = 2.0 * xp.eye(C, dtype=xp.float64)[labels[b]] - 1.0
        coef[b] = _eigh_coef(xp, e_b, q_b, yt, l2s)
        if want_w:
            w_all[b] = xs[b].T @ coef[b]
    ops.solve_fallbacks += int(bad.size)
    return coef, w_all


def _loo(xp, xs, yt, y, e, q, primal: bool, l2s) -> tuple[np.ndarray, np.ndarray]:
    """Exact leave-one-out accuracy and squared error for every l2 (see protocol.loo_scores)."""
    accs, mses = [], []
    p = xs @ q if primal else None
    for l2 in l2s:
        if primal:
            f = 1.0 / (e + l2)
            h = xp.einsum("ik,k,ik->i", p, f, p)
            fit = (p * f[None, :]) @ (q.T @ (xs.T @ yt))
        else:
            g = e / (e + l2)
            h = xp.einsum("ik,k,ik->i", q, g, q)
            fit = (q * g[None, :]) @ (q.T @ yt)
        resid = (yt - fit) / xp.maximum(1.0 - h, 1e-12)[:, None]
        accs.append(float(xp.mean(xp.argmax(yt - resid, axis=1) == y)))
        mses.append(float(xp.mean(resid ** 2)))
    return np.asarray(accs), np.asarray(mses)


def probe_block(ops, x_train, y_train, x_test, y_test, tasks, l2s, num_classes, *,
                x_val=None, y_val=None, loo=False, predictions=False) -> BlockScores:
    xp = ops.xp
    l2_host = np.asarray(l2s, dtype=np.float64)
    L, C = len(l2_host), num_classes
    if not isinstance(x_train, StagedTrain) or not isinstance(x_test, StagedSplit):
        rows = np.unique(np.concatenate([task.indices for task in tasks]))
        x_train, x_test, x_val = stage(ops, _raw(x_train), rows, _raw(x_test), _raw(x_val))
    xt, m0 = x_test.array, x_test.mean_ref
    xv = None if x_val is None else x_val.array
    D = xt.shape[1]
    out = BlockScores.empty(len(tasks), L, len(y_test), loo, 0 if y_val is None else len(y_val))
    scorer = _Scorer(ops, D, C, L)
    eye = xp.eye(C, dtype=np.float64)

    by_size = defaultdict(list)
    for t, task in enumerate(tasks):
        by_size[task.n_train].append(t)
    batches = []
    for n, tids in by_size.items():
        # At most BATCH_BYTES of few-shot features per batch (25-shot ImageNet is 150 MB per task).
        per = max(1, BATCH_BYTES // (n * (D + 1) * 8))
        batches += [(n, tids[i:i + per]) for i in range(0, len(tids), per)]
    for n, tids in batches:
        # One batch per training-set size: (B, n, D) rows gathered from the staged train rows on the
        # device, decomposed together. xs is built in place (centre, scale, bias column).
        rows = xp.asarray(np.stack([x_train.row_of[tasks[t].indices] for t in tids]))
        xs = xp.empty((len(tids), n, D + 1), dtype=np.float64)
        xs[:, :, :D] = x_train.array[rows]
        Y = xp.asarray(np.stack([y_train[tasks[t].indices] for t in tids]))
        body = xs[:, :, :D]
        mean = body.mean(axis=1, keepdims=True)
        body -= mean
        std = xp.sqrt(xp.einsum("bnd,bnd->bd", body, body)[:, None, :] / n) + P.STD_EPS  # population std
        body /= std
        xs[:, :, D] = P.BIAS_CONSTANT
        yt = 2.0 * eye[Y] - 1.0                                      # (B, n, C)
        del rows, body
        primal = n >= D + 1
        kernel_form = not primal and n * D + n * L * C < L * C * D   # (point 2)
        xsT = xp.swapaxes(xs, 1, 2)
        w_dual = None
        if not primal and not loo and L <= ops.solve_max_l and n <= ops.small_max_n:
            # Small dual systems: one fused kernel per (task, l2) in shared memory (Gram, Cholesky,
            # solve and W = xs^T A); a problem whose factorisation fails comes back flagged.
            coef, w_dual = _small_solve(ops, xs, Y, C, l2_host, want_w=not kernel_form)
            e = q = None
        else:
            gram = xsT @ xs if primal else xs @ xsT                  # (B, s, s), float64
            rhs = xsT @ yt if primal else yt                         # (B, s, C)
            coef, e, q = _solve(ops, gram, rhs, l2_host, need_eigh=loo)  # coef: (B, s, L*C)
            del gram
        for b, t in enumerate(tids):
            mean_t, std_t = mean[b, 0], std[b, 0]
            shift = (mean_t - m0) / std_t                             # (D,)
            if primal:
                w_all = coef[b]                                       # [W_1 | ... | W_L], (D', L*C)
                scorer.add_primal(t, w_all[:D] / std_t[:, None], P.BIAS_CONSTANT * w_all[D] - shift @ w_all[:D])
            else:
                a = coef[b]                                           # [A_1 | ... | A_L], (n, L*C)
                x_s = xs[b, :, :D]
                if kernel_form:
                    scorer.add_kernel(t, (x_s / std_t[None, :]).T, -(shift @ x_s.T), a,
                                      (P.BIAS_CONSTANT ** 2) * a.sum(axis=0))
                else:                                                  # W = xs^T A_l, folded
                    w_all = w_dual[b] if w_dual is not None else xs[b].T @ a   # (D', L*C)
                    scorer.add_primal(t, w_all[:D] / std_t[:, None], P.BIAS_CONSTANT * w_all[D] - shift @ w_all[:D])
            if loo:
                out.loo_acc[t], out.loo_mse[t] = _loo(xp, xs[b], yt[b], Y[b], e[b], q[b], primal, l2_host)
        del xs, xsT, coef, e, q, yt
    scorer.finalize()
    if predictions:
        out.predictions = np.zeros((len(tasks), L, len(y_test)), dtype=np.int32)
    scorer.score(xt, ops.labels(y_test), out.correct, out.ties, out.predictions)
    if xv is not None:
        scratch = np.zeros_like(out.val_correct)
        scorer.score(xv, ops.labels(y_val), out.val_correct, scratch)
    return out


def _raw(x):
    return x.array if isinstance(x, HostSplit) else x


def stage(ops, x_train, train_rows, x_test, x_val=None):
    """What ``probe_block`` needs of a block's features, done ahead of it: the train rows the tasks
    use (``train_rows``, sorted), read once and put on the device as stored; the test (and
    validation) split converted to float32 and centred on the test mean. NaN/Inf values are counted
    on the way (before centring). Returns (StagedTrain, StagedSplit, StagedSplit or None)."""
    if isinstance(x_train, StagedTrain):
        train = x_train
    else:
        rows = np.asarray(train_rows, dtype=np.int64)
        compact = ops.to_device(np.ascontiguousarray(x_train[rows]))
        row_of = np.full(x_train.shape[0], -1, dtype=np.int64)
        row_of[rows] = np.arange(rows.size)
        train = StagedTrain(compact, row_of, ops.count_nonfinite(compact))
    if isinstance(x_test, StagedSplit):
        return train, x_test, x_val
    xt = ops.to_f32(x_test)
    bad_t = ops.count_nonfinite(xt)
    m0 = xt.mean(axis=0, dtype=np.float64)
    if not bad_t:                   # a split with NaN/Inf is refused by the caller, not centred
        xt -= m0.astype(np.float32)
    val = None
    if x_val is not None:
        xv = ops.to_f32(x_val)
        bad_v = ops.count_nonfinite(xv)
        if not (bad_t or bad_v):
            xv -= m0.astype(np.float32)
        val = StagedSplit(xv, m0, bad_v)
    return train, StagedSplit(xt, m0, bad_t), val


def stage_or_defer(ops, x_train, train_rows, x_test, x_val=None):
    """``stage``, or, when the device runs out of memory while staging, the splits left on the host
    as ``HostSplit``s with their NaN/Inf counted there (the run loop's refusal of a bad block does
    not depend on where it was staged); ``probe_block`` then stages them itself."""
    try:
        return stage(ops, x_train, train_rows, x_test, x_val)
    except ops.out_of_memory:
        ops.release_memory()
    from ..store import count_nonfinite

    rows = np.asarray(train_rows, dtype=np.int64)
    train = x_train if isinstance(x_train, StagedTrain) else HostSplit(
        x_train, count_nonfinite(np.asarray(x_train)[rows]) if rows.size else count_nonfinite(np.asarray(x_train)))
    test = x_test if isinstance(x_test, StagedSplit) else HostSplit(x_test, count_nonfinite(np.asarray(x_test)))
    val = x_val if x_val is None or isinstance(x_val, StagedSplit) else HostSplit(
        x_val, count_nonfinite(np.asarray(x_val)))
    return train, test, val
