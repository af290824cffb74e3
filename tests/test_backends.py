"""Every available backend against the float64 numpy reference, on the same blocks.

Accuracies must agree except for test rows whose top-two logits are within the tie tolerance
(protocol.TIE_RTOL); those are counted by both and bound the allowed difference.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from plateaulab import protocol as P
from plateaulab.backends import BACKENDS, available_backends, get_backend
from plateaulab.errors import BackendUnavailable, ProtocolError

AVAILABLE = [b for b, why in available_backends().items() if why == "available" and b != "numpy"]
REF = get_backend("numpy")


def _block(C, D, per_class, n_test, seed, dtype, offset=4.0, n_val=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C, D)) * 0.6
    scales = rng.uniform(0.5, 3.0, size=D)  # unequal feature scales: standardisation matters
    y_train = np.repeat(np.arange(C), per_class)
    rng.shuffle(y_train)
    y_test = rng.integers(0, C, n_test)
    y_val = rng.integers(0, C, n_val) if n_val else None

    def feats(y):
        return ((means[y] + rng.normal(size=(len(y), D))) * scales + offset).astype(dtype)

    return feats(y_train), y_train, feats(y_test), y_test, (feats(y_val) if n_val else None), y_val


CASES = [
    # C, D, per_class, n_test, shots, l2s, dtype: covers primal stack, dual stack and kernel form
    (10, 64, 30, 600, [1, 5, 10], [1024.0], np.float16),
    (10, 64, 30, 600, [1, 2, 25], [1024.0, 64.0, 4.0, 0.5], np.float32),
    (3, 200, 40, 400, [1, 5, 40], [1024.0, 10.0], np.float16),
    (25, 16, 8, 500, [1, 8], [4096.0, 1024.0, 256.0], np.float32),
]


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_backend_matches_reference(backend, case):
    C, D, per_class, n_test, shots, l2s, dtype = CASES[case]
    xtr, ytr, xte, yte, _, _ = _block(C, D, per_class, n_test, case, dtype)
    tasks = P.plan_tasks(ytr, C, shots, [0, 1, 2])
    ref = REF.probe_block(xtr, ytr, xte, yte, tasks, l2s, C, loo=True)
    got = get_backend(backend).probe_block(xtr, ytr, xte, yte, tasks, l2s, C, loo=True)
    diff = np.abs(got.correct - ref.correct)
    assert np.all(diff <= np.maximum(ref.ties, got.ties)), (diff, ref.ties, got.ties)
    # Near-ties are rare and both sides see (almost) the same ones.
    assert np.abs(got.ties - ref.ties).sum() <= max(2, 0.01 * ref.ties.sum())
    np.testing.assert_allclose(got.loo_acc, ref.loo_acc)
    np.testing.assert_allclose(got.loo_mse, ref.loo_mse, rtol=1e-8)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_backend_scores_validation_split(backend):
    xtr, ytr, xte, yte, xv, yv = _block(6, 32, 20, 300, 11, np.float16, n_val=120)
    tasks = P.plan_tasks(ytr, 6, [1, 5, 10], [0, 1])
    l2s = [2048.0, 16.0]
    ref = REF.probe_block(xtr, ytr, xte, yte, tasks, l2s, 6, x_val=xv, y_val=yv)
    got = get_backend(backend).probe_block(xtr, ytr, xte, yte, tasks, l2s, 6, x_val=xv, y_val=yv)
    assert got.n_val == 120
    assert np.abs(got.val_correct - ref.val_correct).max() <= 1


def test_reference_accuracy_is_the_protocol_written_out():
    """The numpy backend against the protocol spelled out inline (big_vision's formulas)."""
    xtr, ytr, xte, yte, _, _ = _block(4, 12, 10, 200, 3, np.float32)
    tasks = P.plan_tasks(ytr, 4, [3], [1])
    got = REF.probe_block(xtr, ytr, xte, yte, tasks, [1024.0], 4)
    x = xtr[tasks[0].indices].astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-5
    pad = lambda a: np.hstack([(a - mean) / std, np.full((len(a), 1), 100.0)])  # noqa: E731
    X, Y = pad(x), 2.0 * np.eye(4)[ytr[tasks[0].indices]] - 1.0
    W = X.T @ np.linalg.solve(X @ X.T + 1024.0 * np.eye(len(X)), Y)
    acc = np.mean(np.argmax(pad(xte.astype(np.float64)) @ W, axis=1) == yte)
    assert got.correct[0, 0] == round(acc * len(yte))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 5), st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_compiled_scorer_matches_numpy(rows, groups, C, seed):
    from plateaulab import _core

    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, groups * C)).astype(np.float32)
    logits[:, ::3] = np.round(logits[:, ::3])  # exact ties: the first maximum wins, as in numpy
    logits = np.round(logits * 4) / 4
    bias = rng.normal(size=groups * C).astype(np.float32)
    bias = np.round(bias * 4) / 4
    labels = rng.integers(0, C, rows).astype(np.int64)
    correct = np.zeros(groups, np.int64)
    ties = np.zeros(groups, np.int64)
    _core.score_argmax(logits, bias, labels, C, P.TIE_RTOL, correct, ties)
    z = (logits + bias).reshape(rows, groups, C).astype(np.float64)
    for g in range(groups):
        pred, tie = P.argmax_with_ties(z[:, g, :])
        assert correct[g] == np.count_nonzero(pred == labels)
        assert ties[g] == np.count_nonzero(tie)


def test_compiled_scorer_validates_arguments():
    from plateaulab import _core

    with pytest.raises(ValueError, match="multiple of num_classes"):
        _core.score_argmax(np.zeros((2, 5), np.float32), np.zeros(5, np.float32), np.zeros(2, np.int64), 2,
                           1e-4, np.zeros(2, np.int64), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="label out of range"):
        _core.score_argmax(np.zeros((2, 4), np.float32), np.zeros(4, np.float32), np.array([0, 9]), 2,
                           1e-4, np.zeros(2, np.int64), np.zeros(2, np.int64))


def test_registry():
    assert set(BACKENDS) == {"numpy", "cpu", "cuda"}
    with pytest.raises(ProtocolError, match="unknown backend"):
        get_backend("tpu")
    assert get_backend("auto").name in ("cpu", "cuda")


def test_cuda_backend_explains_why_it_is_unavailable():
    why = available_backends()["cuda"]
    if why == "available":
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailable, match="cuda"):
        get_backend("cuda")
    assert len(why) > 10


def test_import_plateaulab_does_not_import_cupy_or_torch():
    import subprocess
    import sys

    code = ("import sys, plateaulab, plateaulab.run, plateaulab.backends, plateaulab.backends.cuda; "
            "assert 'cupy' not in sys.modules and 'torch' not in sys.modules, "
            "[m for m in sys.modules if m.startswith(('cupy', 'torch'))]")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_small_batches_and_chunks_give_the_same_scores(backend, monkeypatch):
    """Splitting the decompositions into one task per batch and the test split into 32-row chunks
    changes nothing."""
    from plateaulab.backends import _engine

    xtr, ytr, xte, yte, _, _ = _block(6, 40, 30, 700, 5, np.float16)
    tasks = P.plan_tasks(ytr, 6, [1, 5, 30], [0, 1, 2])
    be = get_backend(backend)
    whole = be.probe_block(xtr, ytr, xte, yte, tasks, [1024.0, 4.0], 6, loo=True)
    monkeypatch.setattr(_engine, "BATCH_BYTES", 1)
    monkeypatch.setattr(be.get_ops(), "chunk_bytes", 1)          # a public knob of the instance in use
    split = be.probe_block(xtr, ytr, xte, yte, tasks, [1024.0, 4.0], 6, loo=True)
    np.testing.assert_array_equal(split.correct, whole.correct)
    np.testing.assert_array_equal(split.ties, whole.ties)
    np.testing.assert_allclose(split.loo_mse, whole.loo_mse, rtol=1e-12)


def _assert_matches(got, ref):
    diff = np.abs(got.correct - ref.correct)
    assert np.all(diff <= np.maximum(ref.ties, got.ties)), (diff, ref.ties, got.ties)


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_direct_and_eigh_paths_match_reference(backend, case, monkeypatch):
    """Without leave-one-out, few l2 values are solved directly (one solve per l2) and many by one eigh;
    both paths (forced here for every case) agree with the reference."""
    from plateaulab.backends import _engine

    C, D, per_class, n_test, shots, l2s, dtype = CASES[case]
    xtr, ytr, xte, yte, _, _ = _block(C, D, per_class, n_test, case + 20, dtype)
    tasks = P.plan_tasks(ytr, C, shots, [0, 1, 2])
    ref = REF.probe_block(xtr, ytr, xte, yte, tasks, l2s, C)
    be = get_backend(backend)
    calls = []
    for max_l, expect_chol in ((len(l2s), True), (0, False)):
        monkeypatch.setattr(be.get_ops(), "solve_max_l", max_l)
        calls.clear()
        original = _engine._eigh_coef
        monkeypatch.setattr(_engine, "_eigh_coef", lambda *a: calls.append(1) or original(*a))
        got = be.probe_block(xtr, ytr, xte, yte, tasks, l2s, C)
        monkeypatch.setattr(_engine, "_eigh_coef", original)
        assert (len(calls) == 0) == expect_chol
        _assert_matches(got, ref)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_failed_direct_solve_is_recomputed_by_eigh(backend, monkeypatch):
    """A matrix whose direct solve comes back wrong (as cuSOLVER's batched potrf does on failure:
    no exception, a partial factor) is caught by the backward-error check and solved again. The
    small-system kernel is off (small_max_n = 0), so the dual batch (n = 16) goes through spd_solve
    as well as the primal one (n = 160)."""
    xtr, ytr, xte, yte, _, _ = _block(8, 48, 20, 500, 7, np.float32)
    tasks = P.plan_tasks(ytr, 8, [2, 20], [0, 1, 2])
    ref = REF.probe_block(xtr, ytr, xte, yte, tasks, [64.0], 8)
    be = get_backend(backend)
    ops = be.get_ops()
    monkeypatch.setattr(ops, "solve_max_l", 1)
    monkeypatch.setattr(ops, "small_max_n", 0)
    original = ops.spd_solve

    def corrupt_second(a, rhs):
        w, solved = original(a, rhs)
        if a.shape[0] > 1:
            w[1] *= 1.5                       # wrong but finite: only the residual shows it
        return w, solved

    monkeypatch.setattr(ops, "spd_solve", corrupt_second)
    before = ops.solve_fallbacks
    got = be.probe_block(xtr, ytr, xte, yte, tasks, [64.0], 8)
    assert ops.solve_fallbacks - before == 2   # one per training-set size (3 seeds each)
    _assert_matches(got, ref)


def test_numpy_ops_direct_solve_flags_a_singular_matrix():
    from plateaulab.backends.cpu import NumpyOps

    ops = NumpyOps()
    a = np.stack([np.eye(3) * 2.0, np.diag([1.0, 0.0, 1.0]), np.diag([1.0, -1.0, 1.0])])
    rhs = np.ones((3, 3, 2))
    w, solved = ops.spd_solve(a, rhs)
    assert solved.tolist() == [True, False, True]
    np.testing.assert_allclose(w[0], 0.5)
    np.testing.assert_allclose(w[2][:, 0], [1.0, -1.0, 1.0])


@pytest.mark.parametrize("backend", AVAILABLE)
def test_predictions_agree_with_the_reference_on_999_per_mille_of_test_rows(backend):
    """Per test row, not only per count: over every case of this file (primal, dual, kernel-form and
    Cholesky paths, fp16 and fp32 features), at least 99.9 % of (probe, row) predictions equal the
    float64 reference's, and each probe's predictions reproduce its correct count."""
    agree = total = 0
    for case, (C, D, per_class, n_test, shots, l2s, dtype) in enumerate(CASES):
        xtr, ytr, xte, yte, _, _ = _block(C, D, per_class, n_test, case + 40, dtype)
        tasks = P.plan_tasks(ytr, C, shots, [0, 1, 2])
        for select_loo in (False, True):
            ref = REF.probe_block(xtr, ytr, xte, yte, tasks, l2s, C, loo=select_loo, predictions=True)
            got = get_backend(backend).probe_block(xtr, ytr, xte, yte, tasks, l2s, C, loo=select_loo,
                                                   predictions=True)
            np.testing.assert_array_equal((got.predictions == yte).sum(axis=2), got.correct)
            np.testing.assert_array_equal((ref.predictions == yte).sum(axis=2), ref.correct)
            agree += int(np.count_nonzero(got.predictions == ref.predictions))
            total += got.predictions.size
    assert agree >= 0.999 * total, f"{total - agree} of {total} predictions differ"


def test_partly_staged_block_is_completed_by_probe_block():
    """probe_block stages whatever part of a block arrives raw (here: staged test split, raw train)."""
    from plateaulab.backends import _engine

    xtr, ytr, xte, yte, _, _ = _block(5, 24, 12, 300, 9, np.float16)
    tasks = P.plan_tasks(ytr, 5, [1, 4], [0, 1])
    be = get_backend("cpu")
    whole = be.probe_block(xtr, ytr, xte, yte, tasks, [1024.0], 5)
    rows = np.unique(np.concatenate([t.indices for t in tasks]))
    _, s_test, _ = _engine.stage(be.get_ops(), xtr, rows, xte)
    part = be.probe_block(xtr, ytr, s_test, yte, tasks, [1024.0], 5)
    np.testing.assert_array_equal(part.correct, whole.correct)
