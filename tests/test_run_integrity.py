"""A run's results can only be consolidated from current parts, whoever writes them (shards, Dask
workers, leftover tasks of another config), and a run directory's own files fail with errors that name
them: the review's findings on shards, worker caches, manifests, parts, memory, locks and checksums."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from plateaulab import FeatureStore
from plateaulab.errors import RunError, StoreError
from plateaulab.run import load_run, probe_store

from conftest import make_store, crash_after

KW = dict(shots=[1, 2], seeds=1, l2=[1024.0], quiet=True, backend="numpy")


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    # ckpt-00 and ckpt-02 belong to shard 0 of 2, ckpt-01 to shard 1 (plateaulab._run.shard.shard_of).
    return make_store(tmp_path_factory.mktemp("integrity") / "store", n_checkpoints=3, n_layers=2, dim=8,
                      datasets={"toy": (3, 6, 40)})


@pytest.fixture
def store(tmp_path, base_store):
    shutil.copytree(base_store.path, tmp_path / "store")
    return FeatureStore.open(tmp_path / "store")


def _relabel(store, train=False):
    """Change the labels of dataset toy (its test labels, or its train labels too)."""
    ds = store.dataset("toy")
    y_test = ds.y_test.copy()
    y_test[:7] = (y_test[:7] + 1) % ds.num_classes
    y_train = ds.y_train[::-1].copy() if train else ds.y_train
    store.add_dataset("toy", y_train, y_test, num_classes=ds.num_classes, overwrite=True)


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _straight(store, tmp_path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return probe_store(store.path, tmp_path / "straight", **{**KW, **kw}).results()


class _Hung(BaseException):
    """Raised in a body that blocks (a BaseException, so no ``except OSError`` in the code swallows it)."""


@contextlib.contextmanager
def _no_hang(seconds=20):
    """Fail (instead of hanging the suite) if the body blocks, e.g. opening a FIFO: after ``seconds``
    the main thread is sent SIGALRM (to it, not to whichever thread the kernel picks), every second
    until the body ends, which breaks its blocking system call and raises _Hung."""
    def alarm(signum, frame):
        raise _Hung(f"blocked for over {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    main = threading.main_thread().ident
    done = threading.Event()

    def watchdog():
        if not done.wait(seconds):
            while not done.is_set():
                signal.pthread_kill(main, signal.SIGALRM)
                done.wait(1.0)

    dog = threading.Thread(target=watchdog, daemon=True)
    dog.start()
    try:
        yield
    finally:
        done.set()
        dog.join()
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- 1. shards consolidate current parts only

def test_a_shard_does_not_consolidate_parts_made_stale_by_relabelling(tmp_path, store):
    run = tmp_path / "run"
    probe_store(store.path, run, shard="0/2", **KW)
    assert not (run / "results.parquet").exists()          # shard 1 has not run yet
    _relabel(store)                                         # shard 0's parts are stale now
    with pytest.warns(UserWarning, match=r"not consolidated: 4 of its 6 blocks have no current part.*labels "
                                         r"changed.*rerun shard\(s\) 0/2"):
        probe_store(store.path, run, shard="1/2", **KW)
    assert not _manifest(run).get("complete")
    assert not (run / "results.parquet").exists()
    with pytest.raises(RunError, match="incomplete"):
        load_run(run)
    # Rerunning the shard that owns the stale parts recomputes them, and it consolidates.
    with pytest.warns(UserWarning, match="recomputing"):
        again = probe_store(store.path, run, shard="0/2", **KW)
    assert again.blocks_done_now == 4 and len(again.recomputed) == 4
    assert _manifest(run)["complete"] and _manifest(run)["consolidated"]["by"] == "shard 0/2, the last to finish"
    pd.testing.assert_frame_equal(load_run(run)[0], _straight(store, tmp_path))


def test_a_shard_with_work_to_do_marks_the_run_incomplete(tmp_path, monkeypatch, store):
    run = tmp_path / "run"
    probe_store(store.path, run, shard="0/2", **KW)
    probe_store(store.path, run, shard="1/2", **KW)
    assert _manifest(run)["complete"]
    _relabel(store)
    with pytest.warns(UserWarning, match="recomputing"), crash_after(monkeypatch, 1):
        probe_store(store.path, run, shard="0/2", **KW)
    # results.parquet holds the old labels' numbers: the manifest must not call the run complete.
    assert _manifest(run)["complete"] is False
    with pytest.raises(RunError, match="incomplete"):
        load_run(run)


# --------------------------------------------------------------------------- 2. Dask workers' contexts

def test_a_worker_rebuilds_its_context_when_the_labels_change(store, monkeypatch):
    pytest.importorskip("distributed")
    import collections

    from plateaulab._run import dask_tasks
    from plateaulab._run.plan import ProbeConfig

    monkeypatch.setattr(dask_tasks, "_CONTEXTS", collections.OrderedDict())
    cfg = ProbeConfig(store=str(store.path), shots=[1], seeds=[0], l2=[1.0]).normalised()

    def job():
        return {"cfg": cfg, "backend": "numpy", "verify": True, "prefetch": False,
                "labels_fp": {"toy": store.dataset("toy").fingerprint()}}

    first, _ = dask_tasks._worker_context(job(), "toy")
    again, setup = dask_tasks._worker_context(job(), "toy")
    assert again is first and setup == 0.0                   # built once while the labels stay
    _relabel(store, train=True)
    new, _ = dask_tasks._worker_context(job(), "toy")         # a later run on the same cluster
    assert new is not first
    np.testing.assert_array_equal(new.ds_cache["toy"].y_train, store.dataset("toy").y_train)
    assert new.labels_fp["toy"] == store.dataset("toy").fingerprint()
    # The cache is bounded: a long-lived cluster serving many runs keeps only the latest contexts.
    for seeds in range(1, 10):
        cfg = ProbeConfig(store=str(store.path), shots=[1], seeds=list(range(seeds)), l2=[1.0]).normalised()
        dask_tasks._worker_context(job(), "toy")
    assert len(dask_tasks._CONTEXTS) == dask_tasks.CONTEXTS_MAX


# --------------------------------------------------------------------------- 3. the run directory's JSON files

def _not_a_file(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()


@pytest.mark.parametrize("kind,words", [("fifo", "FIFO"), ("dir", "a directory")])
@pytest.mark.parametrize("shard", [None, "0/2"])
def test_a_manifest_that_is_not_a_regular_file_is_named(tmp_path, store, kind, words, shard):
    run = tmp_path / "run"
    _not_a_file(run / "manifest.json", kind)
    with _no_hang(), pytest.raises(RunError) as info:
        probe_store(store.path, run, shard=shard, **KW)
    msg = str(info.value)
    assert f"run directory {run}" in msg and str(run / "manifest.json") in msg and words in msg, msg
    assert "run_dir" in msg
    with _no_hang(), pytest.raises(RunError, match=f"{words}.*not a regular file"):
        load_run(run)


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_a_shard_record_that_is_not_a_regular_file_is_treated_as_absent(tmp_path, store, kind):
    from plateaulab._run.shard import read_record

    run = tmp_path / "run"
    _not_a_file(run / "shards" / "1-of-2" / "manifest.json", kind)
    with _no_hang():
        assert read_record(run, (1, 2)) is None
        probe_store(store.path, run, shard="0/2", **KW)      # reads every shard's record when it finishes
    assert not (run / "results.parquet").exists()


def test_an_oversized_manifest_is_refused_without_reading_it(tmp_path, store, monkeypatch):
    from plateaulab._run import runjson

    probe_store(store.path, tmp_path / "run", **KW)
    monkeypatch.setattr(runjson, "MAX_JSON_BYTES", 64)
    with pytest.raises(RunError, match=r"manifest.json is [\d,]+ bytes, more than"):
        probe_store(store.path, tmp_path / "run", **KW)


# --------------------------------------------------------------------------- 4. parts record their config

def _parts(run: Path) -> list[Path]:
    return sorted((run / "parts").rglob("*.parquet"))


def _source(part: Path) -> dict:
    import pyarrow.parquet as pq

    from plateaulab._run.parts import SOURCE_KEY

    return json.loads(pq.read_metadata(part).metadata[SOURCE_KEY])


def _strip_config(part: Path) -> None:
    """Rewrite ``part`` as plateaulab wrote parts before they recorded their config."""
    import pyarrow.parquet as pq

    from plateaulab._run.parts import SOURCE_KEY

    table = pq.read_table(part)
    meta = dict(table.schema.metadata)
    source = json.loads(meta[SOURCE_KEY])
    source.pop("config")
    meta[SOURCE_KEY] = json.dumps(source, sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(meta), part)


def test_each_part_records_the_config_hash_of_the_manifest(tmp_path, store):
    run = tmp_path / "run"
    probe_store(store.path, run, **KW)
    assert {_source(p)["config"] for p in _parts(run)} == {_manifest(run)["config_hash"]}


@pytest.mark.parametrize("legacy", [False, True])
def test_parts_of_another_config_are_recomputed_in_a_restarted_run(tmp_path, monkeypatch, store, legacy):
    """The directory's run (l2 = 1024) finished no block, so a new config (l2 = 8) starts it afresh;
    tasks of the old run still running (on a cluster) then write parts with as many rows as the new
    config's. They must be recomputed, not consolidated into the new run's table."""
    from plateaulab import run as loop

    old = tmp_path / "old"
    probe_store(store.path, old, **KW)
    if legacy:
        for p in _parts(old):
            _strip_config(p)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(old / "manifest.json", run / "manifest.json")
    real = loop.open_manifest

    def leftover_tasks_write_parts(run_dir, cfg, **kw):
        manifest = real(run_dir, cfg, **kw)
        shutil.copytree(old / "parts", run_dir / "parts", dirs_exist_ok=True)
        return manifest

    monkeypatch.setattr(loop, "open_manifest", leftover_tasks_write_parts)
    with pytest.warns(UserWarning, match="starting it afresh"):
        got = probe_store(store.path, run, **{**KW, "l2": [8.0]})
    why = "records no config" if legacy else "computed by another config"
    assert got.blocks_done_now == 6 and all(why in r["reason"] for r in got.recomputed), got.recomputed
    assert set(got.results()["l2"]) == {8.0}
    pd.testing.assert_frame_equal(got.results(), _straight(store, tmp_path, l2=[8.0]))


def test_parts_written_before_parts_recorded_their_config_still_resume(tmp_path, store):
    run = tmp_path / "run"
    full = probe_store(store.path, run, **KW).results()
    for p in _parts(run):
        _strip_config(p)
    (run / "results.parquet").unlink()
    again = probe_store(store.path, run, **KW)
    assert again.blocks_done_now == 0 and again.recomputed == []
    pd.testing.assert_frame_equal(again.results(), full)


# --------------------------------------------------------------------------- 5. memory estimate

def test_memory_estimate_counts_the_staged_features(monkeypatch):
    """Per block in flight: the test (and, selecting by val, the val) split as float32, the train rows
    the tasks use and the largest float64 few-shot batch, beside the weights and rows."""
    from plateaulab._run import plan
    from plateaulab.protocol import ProtocolError

    cfg = SimpleNamespace(seeds=list(range(10)), l2=[1.0, 2.0], shots=[1, 5], on_short="error", select="val")
    blocks = [SimpleNamespace(dataset="d", dim=768)]
    C, D, n_train, n_test, n_val = 100, 768, 5000, 20000, 3000
    datasets = {"d": (C, np.full(C, n_train // C), n_test, n_val)}
    indices = 8 * 10 * (1 + 5) * C
    weights = 2 * 10 * 2 * (4 * (D + 1) * C + 200)
    rows_used = min(n_train, 10 * (1 + 5) * C)
    batch = 10 * (5 * C) * (D + 1) * 8          # 10 tasks of 500 rows: 30.8 MB, under BATCH_BYTES
    staged = (n_test + n_val) * D * 4 + rows_used * D * 4 + batch
    need = indices + 2 * (weights + staged)
    monkeypatch.setattr(plan, "physical_memory", lambda: need)
    plan.check_resources(cfg, blocks, datasets)                      # exactly fits
    monkeypatch.setattr(plan, "physical_memory", lambda: need - 1)
    with pytest.raises(ProtocolError, match="staged features"):
        plan.check_resources(cfg, blocks, datasets)
    # Selecting by loo, the val split is not staged.
    monkeypatch.setattr(plan, "physical_memory", lambda: need - 2 * n_val * D * 4)
    plan.check_resources(SimpleNamespace(**{**vars(cfg), "select": "loo"}), blocks, datasets)
    # One task larger than BATCH_BYTES is a batch by itself.
    from plateaulab.backends._engine import BATCH_BYTES

    big = SimpleNamespace(seeds=[0, 1], l2=[1.0], shots=[100], on_short="error", select="fixed")
    per_task = 100 * 1000 * (4096 + 1) * 8
    assert per_task > BATCH_BYTES
    assert plan.staged_bytes(big, 4096, 1000, [100], 10 ** 6, 0, 0) == 2 * 100 * 1000 * 4096 * 4 + per_task


def test_the_run_gives_the_memory_estimate_the_splits_sizes(tmp_path, monkeypatch, store):
    from plateaulab import run as loop

    seen = {}
    real = loop.check_resources

    def spy(cfg, plan, datasets, processes=1):
        seen.update(datasets)
        return real(cfg, plan, datasets, processes=processes)

    monkeypatch.setattr(loop, "check_resources", spy)
    probe_store(store.path, tmp_path / "run", **KW)
    num_classes, counts, n_test, n_val = seen["toy"]
    assert (num_classes, n_test, n_val, int(counts.sum())) == (3, 40, 0, 18)


# --------------------------------------------------------------------------- 6. a shard's own lock

def test_a_shard_is_not_refused_while_another_process_probes_its_lock(tmp_path):
    from plateaulab._run.locks import release, try_lock
    from plateaulab._run.manifest import run_lock

    run = tmp_path / "run"
    lock = run / "shards" / "0-of-2" / ".lock"
    lock.parent.mkdir(parents=True)
    probe = try_lock(lock, exclusive=True, record=False)   # as locks.is_held does, for an instant
    timer = threading.Timer(0.3, release, [probe])
    timer.start()
    try:
        with run_lock(run, (0, 2)):
            pass
    finally:
        timer.cancel()
        timer.join()
        if not probe.closed:
            release(probe)


# --------------------------------------------------------------------------- 7. partial checksums

def test_a_split_without_a_checksum_makes_the_block_unverified(tmp_path, store):
    from plateaulab.store import verify_block

    path = store._block_dir("ckpt-00", "toy", "block0") / "block.json"
    info = json.loads(path.read_text())
    del info["xxh3_64"]["test"]                             # train is still checksummed
    path.write_text(json.dumps(info))
    assert verify_block(store.block("ckpt-00", "toy", "block0")) is False
    with pytest.warns(UserWarning, match="1 block.*for some or all of their splits"):
        probe_store(store.path, tmp_path / "run", **KW)
    assert _manifest(tmp_path / "run")["sessions"][-1]["unverified_blocks"] == 1
    # The splits that record a checksum are still checked.
    train = store._block_dir("ckpt-00", "toy", "block0") / "train.npy"
    data = bytearray(train.read_bytes())
    data[-1] ^= 0xFF
    train.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="train.npy fails its xxh3_64 check"):
        verify_block(store.block("ckpt-00", "toy", "block0"))


# --------------------------------------------------------------------------- 8. errors, not tracebacks

def _drop_column(part: Path, column: str) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(part)
    pq.write_table(table.drop_columns([column]).replace_schema_metadata(table.schema.metadata), part)


def test_a_part_lacking_a_column_is_recomputed(tmp_path, store):
    run = tmp_path / "run"
    full = probe_store(store.path, run, **KW).results()
    _drop_column(_parts(run)[2], "ties")
    with pytest.warns(UserWarning, match="lacks the column.*ties.*recomputing"):
        again = probe_store(store.path, run, **KW)
    assert again.blocks_done_now == 1
    pd.testing.assert_frame_equal(again.results(), full)


def test_consolidate_names_a_part_lacking_a_column(tmp_path, store):
    from plateaulab._run.parts import consolidate
    from plateaulab._run.plan import ProbeConfig, plan_blocks

    run = tmp_path / "run"
    probe_store(store.path, run, **KW)
    part = _parts(run)[0]
    _drop_column(part, "accuracy")
    plan = plan_blocks(store, ProbeConfig(store=str(store.path)).normalised())
    with pytest.raises(RunError, match=f"part {part} cannot be read .*lacks the column.*accuracy"):
        consolidate(run, plan)


def test_a_shards_directory_that_is_a_file_is_named(tmp_path, store):
    run = tmp_path / "run"
    run.mkdir()
    (run / "shards").write_text("not a directory")
    with pytest.raises(RunError, match=f"cannot create the shard directory {run / 'shards'}"):
        probe_store(store.path, run, shard="0/2", **KW)


def test_a_lock_that_fails_is_named(tmp_path, monkeypatch):
    import fcntl

    from plateaulab._run.locks import try_lock

    def broken(f, op):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(RunError, match=f"cannot lock {tmp_path / 'x.lock'} \\(Input/output error\\)"):
        try_lock(tmp_path / "x.lock")


def test_the_run_modules_have_no_unused_imports_or_options():
    pyflakes = pytest.importorskip("pyflakes.api")
    from pyflakes.reporter import Reporter
    import io

    import plateaulab
    from plateaulab._run.distributed import ClusterOptions

    root = Path(plateaulab.__file__).parent
    out = io.StringIO()
    for path in [root / "run.py", *sorted((root / "_run").glob("*.py"))]:
        lines = path.read_text().splitlines()
        report = io.StringIO()
        pyflakes.check(path.read_text(), str(path), Reporter(report, report))
        for line in report.getvalue().splitlines():
            if "imported but unused" in line:
                lineno = int(line.split(":")[1])
                if "noqa" not in lines[lineno - 1]:
                    out.write(line + "\n")
    assert out.getvalue() == ""
    assert not hasattr(ClusterOptions, "wanted")
