"""The device contract (backends/base.Ops) and the engine's checks that do not depend on a device.

- Ops lists exactly what _engine.py uses of its ``ops``; NumpyOps and CupyOps satisfy it, checked
  on the classes (CupyOps needs no CuPy for that), and the check fails for any missing member.
- The shared ops object of a backend is made once, under a lock, whichever thread asks first.
- Every eigendecomposition is checked (cuSOLVER's convergence info is ignored by CuPy); a failed
  one is redone on the host.
- Staging that runs out of device memory leaves the splits on the host with their NaN/Inf counted,
  so a bad block is still refused.
"""

import ast
import inspect
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from plateaulab import protocol as P
from plateaulab.backends import _engine, base, cpu, cuda, get_backend
from plateaulab.backends.base import HostSplit, Ops, contract_violations
from plateaulab.backends.cpu import NumpyOps
from plateaulab.backends.cuda import CupyOps

from test_backends import _block

REF = get_backend("numpy")
MEMBERS = base.OPS_DATA + base.OPS_METHODS


def test_the_contract_lists_exactly_what_the_engine_uses():
    tree = ast.parse(Path(_engine.__file__).read_text())
    def is_ops(node):                                 # `ops` or `self.ops`
        return (isinstance(node, ast.Name) and node.id == "ops") or (
            isinstance(node, ast.Attribute) and node.attr == "ops" and isinstance(node.value, ast.Name))

    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and is_ops(n.value)}
    assert used == set(MEMBERS), (used - set(MEMBERS), set(MEMBERS) - used)
    # and it reaches nothing else by name (no getattr(ops, "...") around the contract)
    assert "getattr(ops" not in Path(_engine.__file__).read_text()


@pytest.mark.parametrize("cls", [NumpyOps, CupyOps])
def test_both_ops_classes_satisfy_the_contract(cls):
    assert contract_violations(cls) == []


def test_a_numpy_ops_instance_is_an_ops():
    assert isinstance(NumpyOps(), Ops)
    assert isinstance(cpu.get_ops(), Ops)


def _complete_class(drop=None, rename_param=None):
    """A class with every member of the contract (methods copied from Ops), less ``drop``."""
    body = {name: 0 for name in base.OPS_DATA}
    for name in base.OPS_METHODS:
        body[name] = vars(Ops)[name]
    if rename_param:
        def spd_solve(self, a, b):   # the contract says (a, rhs)
            pass
        body["spd_solve"] = spd_solve
    body.pop(drop, None)
    return type("Candidate", (), body)


def test_the_check_passes_a_complete_class():
    assert contract_violations(_complete_class()) == []


@pytest.mark.parametrize("member", MEMBERS)
def test_the_check_fails_for_any_missing_member(member):
    problems = contract_violations(_complete_class(drop=member))
    assert len(problems) == 1 and repr(member) in problems[0]


def test_the_check_reads_attributes_assigned_in_init_and_compares_parameter_names():
    body = {name: vars(Ops)[name] for name in base.OPS_METHODS}

    def __init__(self):
        self.xp, self.out_of_memory = np, MemoryError
        self.chunk_bytes = self.solve_max_l = 1
        self.solve_fallbacks = 0           # small_max_n is never set

    body["__init__"] = __init__
    assert contract_violations(type("NoSmall", (), body)) == ["NoSmall lacks the attribute 'small_max_n'"]
    problems = contract_violations(_complete_class(rename_param=True))
    assert len(problems) == 1 and "spd_solve" in problems[0]


def test_tuning_knobs_are_constructor_arguments():
    ops = NumpyOps(chunk_bytes=4096, solve_max_l=0, small_max_n=7)
    assert (ops.chunk_bytes, ops.solve_max_l, ops.small_max_n) == (4096, 0, 7)
    assert NumpyOps().small_max_n == 0
    knobs = {"chunk_bytes", "pinned_chunk_bytes", "solve_max_l", "small_max_n", "eigh_batched_max_n"}
    params = inspect.signature(CupyOps.__init__).parameters
    assert knobs <= set(params) and all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in knobs)
    for k in knobs:                                  # each is documented in the class docstring
        assert f"\n    {k} " in CupyOps.__doc__, k


def test_shared_ops_is_made_once_under_a_lock():
    made = []

    def make():
        made.append(1)
        time.sleep(0.05)                             # a slow constructor: the threads overlap in it
        return object()

    shared = base.SharedOps(make)
    got = []
    threads = [threading.Thread(target=lambda: got.append(shared.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len({id(g) for g in got}) == 1
    assert cpu.get_ops() is cpu.get_ops()


def test_backend_modules_expose_get_ops():
    assert callable(cpu.get_ops) and callable(cuda.get_ops)
    assert not hasattr(cpu, "_get_ops") and not hasattr(cuda, "_get_ops")


# --------------------------------------------------------------------------- eigendecompositions

def _spd(rng, B, s):
    x = rng.normal(size=(B, s, s + 5))
    return x @ np.swapaxes(x, 1, 2) + np.eye(s)


class _CorruptEigh(NumpyOps):
    """numpy's eigh, with matrices ``bad`` of each batch spoiled the ways a solver that did not
    converge leaves them: NaN, or finite but wrong."""

    def __init__(self, bad=(), how="nan"):
        super().__init__()
        self.bad, self.how = bad, how

    def eigh(self, a):
        e, q = np.linalg.eigh(a)
        for b in self.bad:
            if a.ndim == 3 and b < a.shape[0]:
                if self.how == "nan":
                    q[b, 0, 0] = np.nan
                else:
                    e[b] *= 1.01                       # eigenvalues off by 1 %
        return e, q


@pytest.mark.parametrize("how", ["nan", "finite"])
def test_a_failed_eigendecomposition_is_redone_on_the_host(how):
    a = _spd(np.random.default_rng(0), 4, 30)
    ops = _CorruptEigh(bad=(1, 3), how=how)
    e, q = _engine._eigh(ops, a)
    assert ops.solve_fallbacks == 2
    e_ref, q_ref = np.linalg.eigh(a)
    np.testing.assert_allclose(e, e_ref, rtol=1e-12)
    np.testing.assert_allclose(q @ (e[:, :, None] * np.swapaxes(q, 1, 2)), a, rtol=1e-10)


def test_a_good_eigendecomposition_passes_the_check():
    rng = np.random.default_rng(1)
    for a in (_spd(rng, 3, 50), _spd(rng, 1, 200)[0]):   # a batch and a single matrix
        ops = NumpyOps()
        e, q = _engine._eigh(ops, a)
        assert ops.solve_fallbacks == 0 and e.shape == a.shape[:-1]
    # the check's own scale: a backward-stable decomposition is far below the tolerance
    a = _spd(rng, 2, 300)
    e, q = np.linalg.eigh(a)
    assert _engine._eigh_residual(np, a, e, q).max() < 1e-3 * _engine.EIGH_RESIDUAL_TOL


def test_probe_block_survives_a_failed_eigendecomposition():
    xtr, ytr, xte, yte, _, _ = _block(6, 40, 30, 400, 13, np.float32)
    tasks = P.plan_tasks(ytr, 6, [1, 5, 30], [0, 1, 2])
    l2s = [1024.0, 64.0, 4.0, 1.0]                         # more than solve_max_l: the eigh path
    ref = REF.probe_block(xtr, ytr, xte, yte, tasks, l2s, 6, loo=True)
    ops = _CorruptEigh(bad=(1,))
    got = _engine.probe_block(ops, xtr, ytr, xte, yte, tasks, l2s, 6, loo=True)
    assert ops.solve_fallbacks == 3                        # matrix 1 of each of the 3 size batches
    assert np.all(np.abs(got.correct - ref.correct) <= np.maximum(got.ties, ref.ties))
    np.testing.assert_allclose(got.loo_mse, ref.loo_mse, rtol=1e-8)


# --------------------------------------------------------------------------- staging out of memory

class _NoRoom(NumpyOps):
    """Runs out of (device) memory whenever a split is converted: stage cannot complete."""

    def to_f32(self, x):
        raise self.out_of_memory("no room")


def test_staging_out_of_memory_keeps_the_nonfinite_counts():
    xtr, ytr, xte, yte, xv, yv = _block(5, 24, 12, 300, 9, np.float32, n_val=50)
    tasks = P.plan_tasks(ytr, 5, [1, 4], [0, 1])
    rows = np.unique(np.concatenate([t.indices for t in tasks]))
    unused = np.setdiff1d(np.arange(len(ytr)), rows)
    xtr[rows[0], 3] = np.nan
    xtr[unused[0], 2] = np.inf                              # never read: not counted
    xte[7, 1] = np.inf
    xte[8, 1] = np.nan
    xv[0, 0] = np.nan
    train, test, val = _engine.stage_or_defer(_NoRoom(), xtr, rows, xte, xv)
    assert all(isinstance(s, HostSplit) for s in (train, test, val))
    assert (train.nonfinite, test.nonfinite, val.nonfinite) == (1, 2, 1)


def test_probe_block_stages_host_splits_itself():
    xtr, ytr, xte, yte, _, _ = _block(5, 24, 12, 300, 9, np.float16)
    tasks = P.plan_tasks(ytr, 5, [1, 4], [0, 1])
    rows = np.unique(np.concatenate([t.indices for t in tasks]))
    deferred = _engine.stage_or_defer(_NoRoom(), xtr, rows, xte)
    plain = _engine.probe_block(NumpyOps(), xtr, ytr, xte, yte, tasks, [1024.0], 5)
    got = _engine.probe_block(NumpyOps(), deferred[0], ytr, deferred[1], yte, tasks, [1024.0], 5)
    np.testing.assert_array_equal(got.correct, plain.correct)


def test_a_run_whose_staging_runs_out_of_memory_still_refuses_nonfinite_features(tmp_path, monkeypatch):
    """End to end through probe_store: staging in the reader thread runs out of memory on every
    block (probe_block's own staging, in the main thread, succeeds). The results equal a normal
    run's, and a NaN in a test split is still refused, with its count."""
    from conftest import make_store

    from plateaulab.errors import StoreError
    from plateaulab.run import probe_store

    st = make_store(tmp_path / "s", n_checkpoints=2, n_layers=2)
    kw = dict(shots=[1, 3], seeds=2, l2=[1024.0], quiet=True, backend="cpu")
    normal = probe_store(st.path, tmp_path / "normal", **kw).results()

    real_stage, real_probe = _engine.stage, cpu.probe_block
    arrived = []

    def stage_short_of_memory_when_reading_ahead(ops, *a):
        if threading.current_thread() is not threading.main_thread():
            raise ops.out_of_memory("no room while reading ahead")
        return real_stage(ops, *a)

    def probe_block(x_train, y_train, x_test, *a, **k):
        arrived.append(isinstance(x_test, HostSplit) and isinstance(x_train, HostSplit))
        return real_probe(x_train, y_train, x_test, *a, **k)

    monkeypatch.setattr(_engine, "stage", stage_short_of_memory_when_reading_ahead)
    monkeypatch.setattr(cpu, "probe_block", probe_block)
    deferred = probe_store(st.path, tmp_path / "deferred", **kw).results()
    assert arrived and all(arrived)                     # every block took the fallback
    assert (deferred["correct"].to_numpy() == normal["correct"].to_numpy()).all()
    bdir = st._block_dir("ckpt-01", "toy", "block1")
    x = np.load(bdir / "test.npy")
    x[5, 0] = np.nan
    np.save(bdir / "test.npy", x)
    with pytest.raises(StoreError, match="test features contain 1 NaN/Inf"):
        probe_store(st.path, tmp_path / "bad", verify=False, **kw)      # the block's checksum no longer holds
