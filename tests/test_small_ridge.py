"""The small-system kernel (csrc/common/small_ridge.h): the CUDA small_ridge kernel's body, run here by
one host thread through plateaulab._core.small_ridge_emulated, against numpy float64. The same body
on the GPU is compared in tests/test_cuda.py."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from plateaulab import _core
from plateaulab import protocol as P


def _problem(B, n, D, C, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, n, D)) * rng.uniform(0.5, 2.0, size=D)
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + P.STD_EPS)
    xs = np.concatenate([x, np.full((B, n, 1), P.BIAS_CONSTANT)], axis=2)
    labels = rng.integers(0, C, size=(B, n)).astype(np.int64)
    return np.ascontiguousarray(xs), labels


def _numpy(xs, labels, C, l2s):
    B, n, dp = xs.shape
    A = np.empty((B, len(l2s), n, C))
    W = np.empty((B, len(l2s), dp, C))
    for b in range(B):
        Y = 2.0 * np.eye(C)[labels[b]] - 1.0
        K = xs[b] @ xs[b].T
        for j, l2 in enumerate(l2s):
            A[b, j] = np.linalg.solve(K + l2 * np.eye(n), Y)
            W[b, j] = xs[b].T @ A[b, j]
    return A, W


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(0, 30), st.integers(1, 9),
       st.lists(st.sampled_from([1024.0, 64.0, 1.0, 0.01]), min_size=1, max_size=3),
       st.integers(0, 2**31 - 1))
def test_small_ridge_matches_numpy(B, n, extra, C, l2s, seed):
    D = n + extra                      # n < D + 1: the dual system
    xs, labels = _problem(B, n, D, C, seed)
    A, W, info = _core.small_ridge_emulated(xs, labels, C, np.asarray(l2s))
    assert not info.any()
    A_ref, W_ref = _numpy(xs, labels, C, l2s)
    np.testing.assert_allclose(A, A_ref, rtol=1e-7, atol=1e-9 * np.abs(A_ref).max())
    np.testing.assert_allclose(W, W_ref, rtol=1e-7, atol=1e-9 * np.abs(W_ref).max())


def test_small_ridge_can_skip_w():
    xs, labels = _problem(2, 5, 12, 3, 1)
    a, w, info = _core.small_ridge_emulated(xs, labels, 3, np.array([8.0]))
    a2, w2, info2 = _core.small_ridge_emulated(xs, labels, 3, np.array([8.0]), want_w=False)
    np.testing.assert_array_equal(a2, a)
    assert not w2.any() and w.any() and not info2.any()


def test_small_ridge_reports_a_failed_factorisation():
    """A singular Gram matrix with a negligible l2 stops the factorisation at the first zero pivot
    (two identical rows: pivot 2 is zero); the caller recomputes that problem."""
    xs, labels = _problem(2, 6, 20, 3, 0)
    xs[1, 2] = xs[1, 1]
    A, W, info = _core.small_ridge_emulated(xs, labels, 3, np.array([1e-14, 1024.0]))
    assert info[0].tolist() == [0, 0]
    assert info[1, 0] == 3 and info[1, 1] == 0
    A_ref, _ = _numpy(xs[:1], labels[:1], 3, [1e-14])
    np.testing.assert_allclose(A[0, 0], A_ref[0, 0], rtol=1e-6)


def test_small_ridge_validates_shapes():
    xs, labels = _problem(1, 8, 4, 2, 0)              # n = 8 >= D + 1 = 5: primal, refused
    with pytest.raises(ValueError, match="dual system only"):
        _core.small_ridge_emulated(xs, labels, 2, np.array([1.0]))
    xs, labels = _problem(1, 4, 8, 2, 0)
    with pytest.raises(ValueError, match="labels must be batch x n"):
        _core.small_ridge_emulated(xs, labels[:, :3].copy(), 2, np.array([1.0]))


class EmulatedSmallOps:
    """The cpu engine's ops with the small-system path on (``small_max_n``), which NumpyOps runs
    through the kernel's host emulation: exercises the engine's use of the kernel (layouts, W taken
    from the kernel, fallback) without a GPU. Counts the calls and can flag problems as failed."""

    def __new__(cls, fail=()):
        from plateaulab.backends.cpu import NumpyOps

        ops = NumpyOps(small_max_n=10_000, solve_max_l=4)
        ops.calls = 0
        ops.want_w = []
        emulated = ops.small_ridge

        def small_ridge(xs, labels, C, l2s, want_w=True):
            ops.calls += 1
            ops.want_w.append(want_w)
            a, w, ok = emulated(xs, labels, C, l2s, want_w)
            for b, j in fail:
                if b < ok.shape[0]:
                    ok[b, j] = False
                    a[b, j] = np.nan                 # what a failed problem leaves: garbage
                    if w is not None:
                        w[b, j] = np.nan
            return a, w, ok

        ops.small_ridge = small_ridge
        return ops


@pytest.mark.parametrize("fail", [(), ((1, 0), (0, 1))])
def test_engine_with_the_small_kernel_matches_reference(fail):
    from plateaulab.backends import _engine, get_backend

    rng = np.random.default_rng(3)
    C, D = 6, 40
    means = rng.normal(size=(C, D))
    ytr = np.repeat(np.arange(C), 12)
    yte = rng.integers(0, C, 400)
    xtr = (means[ytr] + rng.normal(size=(len(ytr), D)) + 3).astype(np.float16)
    xte = (means[yte] + rng.normal(size=(400, D)) + 3).astype(np.float16)
    tasks = P.plan_tasks(ytr, C, [1, 3, 12], [0, 1, 2])       # n = 6, 18 (dual) and 72 (primal)
    l2s = [1024.0, 2.0]
    ops = EmulatedSmallOps(fail)
    before = ops.solve_fallbacks
    got = _engine.probe_block(ops, xtr, ytr, xte, yte, tasks, l2s, C)
    assert ops.calls == 2                                      # the two dual sizes, not the primal one
    # n = 6 scores through the kernel form (no W needed), n = 18 through W = xs^T A
    assert ops.want_w == [False, True]
    # (1, 0) and (0, 1) flag tasks 1 and 0 of each of the two dual batches: four tasks redone by eigh
    assert ops.solve_fallbacks - before == (4 if fail else 0)
    ref = get_backend("numpy").probe_block(xtr, ytr, xte, yte, tasks, l2s, C)
    diff = np.abs(got.correct - ref.correct)
    assert np.all(diff <= np.maximum(got.ties, ref.ties)), diff
