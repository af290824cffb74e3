"""GPU-only checks of the CUDA kernels (skipped cleanly without a GPU, CuPy or the CUDA module).

The cuda backend as a whole is also compared with the float64 reference by tests/test_backends.py,
which parametrises over every available backend.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from plateaulab import protocol as P
from plateaulab.backends import available_backends

pytestmark = pytest.mark.gpu
if available_backends()["cuda"] != "available":
    pytest.skip(f"cuda backend unavailable: {available_backends()['cuda']}", allow_module_level=True)

import cupy as cp  # noqa: E402

from plateaulab import _cuda  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.integers(1, 6), st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_cuda_scorer_matches_numpy(rows, groups, C, seed):
    rng = np.random.default_rng(seed)
    logits = np.round(rng.normal(size=(rows, groups * C)) * 4).astype(np.float32) / 4
    bias = np.round(rng.normal(size=groups * C) * 4).astype(np.float32) / 4
    labels = rng.integers(0, C, rows).astype(np.int64)
    d_logits, d_bias, d_labels = cp.asarray(logits), cp.asarray(bias), cp.asarray(labels)
    correct, ties = cp.zeros(groups, cp.uint64), cp.zeros(groups, cp.uint64)
    _cuda.score_argmax(d_logits.data.ptr, rows, groups * C, d_bias.data.ptr, d_labels.data.ptr, groups, C,
                       P.TIE_RTOL, correct.data.ptr, ties.data.ptr, 0)
    z = (logits + bias).reshape(rows, groups, C).astype(np.float64)
    for g in range(groups):
        pred, tie = P.argmax_with_ties(z[:, g, :])
        assert int(correct[g]) == np.count_nonzero(pred == labels)
        assert int(ties[g]) == np.count_nonzero(tie)


def _ops():
    from plateaulab.backends import cuda

    return cuda.get_ops()


@pytest.mark.parametrize("B,n,D,C,l2s", [(3, 7, 30, 4, [1024.0]), (2, 100, 768, 100, [1024.0, 8.0]),
                                         (1, 150, 300, 37, [1.0]), (4, 1, 5, 3, [64.0])])
def test_small_ridge_kernel_matches_its_host_emulation_and_numpy(B, n, D, C, l2s):
    from plateaulab import _core

    from test_small_ridge import _numpy, _problem

    if n > _cuda.small_ridge_max_n():
        pytest.skip(f"n = {n} exceeds this device's shared memory")
    xs, labels = _problem(B, n, D, C, n)
    a, w, ok = _ops().small_ridge(cp.asarray(xs), cp.asarray(labels), C, l2s)
    a_emu, w_emu, info = _core.small_ridge_emulated(xs, labels, C, np.asarray(l2s))
    assert ok.all() and not info.any()
    np.testing.assert_allclose(cp.asnumpy(a), a_emu, rtol=1e-9, atol=1e-12 * np.abs(a_emu).max())
    np.testing.assert_allclose(cp.asnumpy(w), w_emu, rtol=1e-9, atol=1e-12 * np.abs(w_emu).max())
    a_ref, _ = _numpy(xs, labels, C, l2s)
    np.testing.assert_allclose(cp.asnumpy(a), a_ref, rtol=1e-7, atol=1e-9 * np.abs(a_ref).max())
    a2, w2, ok2 = _ops().small_ridge(cp.asarray(xs), cp.asarray(labels), C, l2s, want_w=False)
    assert w2 is None and ok2.all()
    np.testing.assert_array_equal(cp.asnumpy(a2), cp.asnumpy(a))


def test_small_ridge_kernel_flags_a_singular_problem():
    from test_small_ridge import _problem

    xs, labels = _problem(2, 6, 20, 3, 0)
    xs[1, 2] = xs[1, 1]
    _, _, ok = _ops().small_ridge(cp.asarray(xs), cp.asarray(labels), 3, [1e-14, 1024.0])
    assert ok.tolist() == [[True, True], [False, True]]


@pytest.mark.parametrize("shape,dtype", [((1000, 37), np.float16), ((5, 3), np.float32), ((0, 8), np.float16)])
def test_upload_through_pinned_buffers(tmp_path, monkeypatch, shape, dtype):
    ops = _ops()
    monkeypatch.setattr(ops, "pinned_chunk_bytes", 4096)          # many chunks, both buffers reused
    x = np.random.default_rng(0).normal(size=shape).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(cp.asnumpy(ops.upload(mm)), x)


def test_staged_splits_give_the_same_scores():
    from plateaulab.backends import cuda

    from test_backends import _block

    xtr, ytr, xte, yte, xv, yv = _block(7, 50, 20, 900, 1, np.float16, n_val=200)
    tasks = P.plan_tasks(ytr, 7, [1, 5, 20], [0, 1])
    plain = cuda.probe_block(xtr, ytr, xte, yte, tasks, [1024.0], 7, x_val=xv, y_val=yv)
    rows = np.unique(np.concatenate([t.indices for t in tasks]))
    s_tr, s_te, s_v = cuda.stage(xtr, rows, xte, xv)
    assert (s_tr.nonfinite, s_te.nonfinite, s_v.nonfinite) == (0, 0, 0)
    staged = cuda.probe_block(s_tr, ytr, s_te, yte, tasks, [1024.0], 7, x_val=s_v, y_val=yv)
    np.testing.assert_array_equal(staged.correct, plain.correct)
    np.testing.assert_array_equal(staged.val_correct, plain.val_correct)


def test_batched_cholesky_solve_matches_numpy():
    ops = _ops()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 60, 40))
    a = np.swapaxes(x, 1, 2) @ x + 5.0 * np.eye(40)
    rhs = rng.normal(size=(3, 40, 9))
    w, solved = ops.spd_solve(cp.asarray(a), cp.asarray(rhs))
    assert solved is None                      # judged by the engine's backward-error check
    np.testing.assert_allclose(cp.asnumpy(w), np.linalg.solve(a, rhs), rtol=1e-9)


def test_a_real_cusolver_cholesky_failure_is_caught_and_recomputed():
    """potrfBatched on an indefinite matrix fails silently (CuPy ignores its info array); the
    engine's backward-error check must catch it and redo that matrix alone by eigh."""
    from plateaulab.backends import _engine

    ops = _ops()
    gram = np.stack([np.diag([2.0, 3.0, 4.0]), np.diag([1.0, -1.0, 1.0])])
    rhs = np.ones((2, 3, 2))
    before = ops.solve_fallbacks
    coef, e, q = _engine._solve(ops, cp.asarray(gram), cp.asarray(rhs), np.array([1e-12]), need_eigh=False)
    assert ops.solve_fallbacks - before == 1
    np.testing.assert_allclose(cp.asnumpy(coef), np.linalg.solve(gram + 1e-12 * np.eye(3), rhs), rtol=1e-9)


def test_cuda_run_matches_cpu_run_and_refuses_nonfinite_features(tmp_path):
    """End to end through probe_store (reader thread, staging on the copy stream, pinned uploads):
    the cuda table equals the cpu table within counted ties; a NaN in the test split is refused
    with its count, found on the device."""
    from conftest import make_store

    from plateaulab.errors import StoreError
    from plateaulab.run import probe_store

    st = make_store(tmp_path / "s", n_checkpoints=2, n_layers=2)
    kw = dict(shots=[1, 3, 10], seeds=2, l2=[1024.0], quiet=True)
    a = probe_store(st.path, tmp_path / "cpu", backend="cpu", **kw).results()
    b = probe_store(st.path, tmp_path / "cuda", backend="cuda", **kw).results()
    assert len(a) == len(b)
    assert (np.abs(a["correct"] - b["correct"]) <= np.maximum(a["ties"], b["ties"])).all()
    bdir = st._block_dir("ckpt-01", "toy", "block1")
    x = np.load(bdir / "test.npy")
    x[5, 0] = np.nan
    np.save(bdir / "test.npy", x)
    with pytest.raises(StoreError, match="test features contain 1 NaN/Inf"):
        probe_store(st.path, tmp_path / "bad", backend="cuda", verify=False, **kw)


@pytest.mark.parametrize("C", [1, 33, 100])
def test_cuda_scorer_agrees_with_the_cpu_scorer_on_nan_and_minus_inf_rows(C):
    """Rows of all NaN, all -inf, NaN mixed with finite values: the kernel counts what the CPU
    scorer counts (csrc/common/score_top2.h: no finite logit -> class 0, no tie)."""
    from plateaulab import _core

    rng = np.random.default_rng(C)
    logits = rng.normal(size=(40, 2 * C)).astype(np.float32)
    logits[0:5] = np.nan
    logits[5:10] = -np.inf
    logits[10:20, ::3] = np.nan
    logits[20:25, :C] = -np.inf
    bias = np.zeros(2 * C, np.float32)
    labels = rng.integers(0, C, 40).astype(np.int64)
    labels[[0, 5, 7]] = 0
    c_cpu, t_cpu = np.zeros(2, np.int64), np.zeros(2, np.int64)
    _core.score_argmax(logits, bias, labels, C, P.TIE_RTOL, c_cpu, t_cpu)
    correct, ties = cp.zeros(2, cp.uint64), cp.zeros(2, cp.uint64)
    d = [cp.asarray(a) for a in (logits, bias, labels)]
    _cuda.score_argmax(d[0].data.ptr, 40, 2 * C, d[1].data.ptr, d[2].data.ptr, 2, C, P.TIE_RTOL,
                       correct.data.ptr, ties.data.ptr, 0)
    np.testing.assert_array_equal(cp.asnumpy(correct).astype(np.int64), c_cpu)
    np.testing.assert_array_equal(cp.asnumpy(ties).astype(np.int64), t_cpu)


def test_small_ridge_at_the_device_bound_and_refused_past_it():
    from plateaulab import _core

    from test_small_ridge import _numpy, _problem

    limit = _cuda.small_ridge_max_n()
    assert _ops().small_max_n == limit > 0                     # derived from the device, not hard-coded
    xs, labels = _problem(2, limit, limit + 40, 33, 5)
    a, _, ok = _ops().small_ridge(cp.asarray(xs), cp.asarray(labels), 33, [1024.0])
    assert ok.all()
    a_ref, _ = _numpy(xs, labels, 33, [1024.0])
    np.testing.assert_allclose(cp.asnumpy(a), a_ref, rtol=1e-7, atol=1e-9 * np.abs(a_ref).max())
    xs, labels = _problem(1, limit + 1, limit + 40, 3, 5)
    with pytest.raises(ValueError, match="does not fit shared memory"):
        _ops().small_ridge(cp.asarray(xs), cp.asarray(labels), 3, [1024.0])
    assert _core.small_ridge_max_n_for(232448 - 16) == 170      # the arithmetic the device used


def test_cupy_ops_instance_satisfies_the_contract():
    from plateaulab.backends.base import Ops

    assert isinstance(_ops(), Ops)


@pytest.mark.parametrize("cut", [0, 10_000])
def test_batched_and_looped_eigh_both_pass_the_engine_check(cut, monkeypatch):
    from plateaulab.backends import _engine

    ops = _ops()
    monkeypatch.setattr(ops, "eigh_batched_max_n", cut)          # 0: loop (syevd); 10,000: syevjBatched
    x = np.random.default_rng(2).normal(size=(3, 100, 120))
    a = x @ np.swapaxes(x, 1, 2)
    before = ops.solve_fallbacks
    e, q = _engine._eigh(ops, cp.asarray(a))
    assert ops.solve_fallbacks == before
    np.testing.assert_allclose(cp.asnumpy(e), np.linalg.eigh(a)[0], rtol=1e-9, atol=1e-9)


def test_cuda_stage_out_of_memory_leaves_host_splits_with_their_counts(monkeypatch):
    from plateaulab.backends import cuda
    from plateaulab.backends.base import HostSplit

    from test_backends import _block

    ops = _ops()
    xtr, ytr, xte, yte, _, _ = _block(5, 30, 10, 200, 3, np.float16)
    xte[4, 2] = np.nan

    def no_room(x):
        raise ops.out_of_memory(0, 0)

    monkeypatch.setattr(ops, "to_f32", no_room)
    tr, te, _ = cuda.stage(xtr, np.arange(len(ytr)), xte)
    assert isinstance(te, HostSplit) and te.nonfinite == 1 and isinstance(tr, HostSplit)
