"""--shard K/N without Dask (issue 13): shards started together into one run directory, each under
its own lock and record; the consolidated table is the plain run's; missing shards are named."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from plateaulab.cli import main as cli
from plateaulab.errors import RunError
from plateaulab.run import probe_store
from plateaulab._run.manifest import run_lock
from plateaulab._run.shard import parse_shard, shard_of

from conftest import make_store

KEY = ["checkpoint", "layer", "dataset", "shots", "seed", "l2"]
KW = dict(backend="numpy", shots=[1, 5], seeds=2, l2=[1024.0, 8.0], quiet=True)
OPTS = ["--backend", "numpy", "--shots", "1,5", "--seeds", "2", "--l2", "1024,8", "--quiet"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # ckpt-00..05 split 3/3 between two shards (shard_of: 0, 1, 0, 1, 0, 1).
    return make_store(tmp_path_factory.mktemp("shards") / "store", n_checkpoints=6, n_layers=3, dim=32,
                      datasets={"toy": (8, 20, 2000), "other": (4, 10, 500)})


@pytest.fixture(scope="module")
def plain(store, tmp_path_factory):
    return probe_store(store.path, tmp_path_factory.mktemp("plain") / "run", **KW).results()


def test_two_shards_started_together_then_consolidated(tmp_path, store, plain):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "plateaulab", "probe", str(store.path), "-o", str(run), *OPTS]
    procs = [subprocess.Popen(cmd + ["--shard", f"{k}/2"], start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    records = {k: json.loads((run / "shards" / f"{k}-of-2" / "manifest.json").read_text()) for k in range(2)}
    for k, rec in records.items():
        (session,) = rec["sessions"]
        assert rec["shard"] == f"{k}/2" and session["status"] == "complete"
        assert session["blocks"] == session["shard_blocks"] == 18   # 3 checkpoints x 3 layers x 2 datasets
    # The last shard to finish consolidated; a run without --shard consolidates again, probing nothing.
    first = json.loads((run / "manifest.json").read_text())
    assert first["complete"] and first["consolidated"]["by"].startswith("shard ")
    pd.testing.assert_frame_equal(pd.read_parquet(run / "results.parquet"), plain)
    assert cli(["probe", str(store.path), "-o", str(run), *OPTS]) == 0
    got = pd.read_parquet(run / "results.parquet")
    assert not got.duplicated(KEY).any()
    pd.testing.assert_frame_equal(got, plain)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["complete"] and set(manifest["shards"]) == {"0/2", "1/2"}
    assert manifest["sessions"][-1]["blocks"] == 0
    # Each checkpoint's parts were written by the shard its name hashes to.
    for k, rec in records.items():
        assert rec["sessions"][0]["shard_blocks"] == sum(
            1 for ck in got["checkpoint"].unique() if shard_of(ck, 2) == k) * 3 * 2


def test_missing_shard_is_named_and_nothing_is_probed(tmp_path, store, plain, capsys):
    run = tmp_path / "run"
    probe_store(store.path, run, shard="1/2", **KW)
    stamps = {p: p.stat().st_mtime_ns for p in (run / "parts").rglob("*.parquet")}
    code = cli(["probe", str(store.path), "-o", str(run), *OPTS])
    err = capsys.readouterr().err
    assert code == 2
    assert "written by shards (1/2)" in err and "18 of its 36 blocks have no current part" in err, err
    assert "shard 0/2: 18 block(s) missing, e.g. checkpoint 'ckpt-00'" in err and "it has not run" in err, err
    assert "--shard 0/1" in err
    assert {p: p.stat().st_mtime_ns for p in (run / "parts").rglob("*.parquet")} == stamps
    assert not (run / "results.parquet").exists()
    # --shard 0/1 is every block: it computes what is missing, and consolidates.
    done = probe_store(store.path, run, shard="0/1", **KW)
    assert done.blocks_done_now == 18
    pd.testing.assert_frame_equal(done.results(), plain)


def test_a_shard_that_owns_no_checkpoint_plans_nothing_and_records_it(tmp_path, store):
    # A shard of 8 that none of the 6 checkpoints hashes to.
    owners = {shard_of(f"ckpt-{k:02d}", 8) for k in range(6)}
    empty = min(set(range(8)) - owners)
    run = probe_store(store.path, tmp_path / "run", shard=f"{empty}/8", **KW)
    assert run.blocks_done_now == 0 and run.blocks_total == 0
    rec = json.loads((tmp_path / "run" / "shards" / f"{empty}-of-8" / "manifest.json").read_text())
    assert rec["sessions"][-1]["status"] == "complete" and rec["sessions"][-1]["shard_blocks"] == 0
    assert not (tmp_path / "run" / "results.parquet").exists()


def test_a_failed_shard_is_reported_with_its_error(tmp_path, capsys):
    st = make_store(tmp_path / "s", n_checkpoints=2, n_layers=1)
    bad = st._block_dir("ckpt-01", "toy", "block0") / "train.npy"   # ckpt-01 is shard 1 of 2
    bad.write_bytes(bad.read_bytes()[:200])
    args = ["probe", str(st.path), "-o", str(tmp_path / "run"), "--shots", "1", "--seeds", "1", "--quiet"]
    assert cli(args + ["--shard", "0/2"]) == 0
    assert cli(args + ["--shard", "1/2"]) == 2
    capsys.readouterr()
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "shard 1/2: 1 block(s) missing" in err and "ended 'failed'" in err and "train.npy" in err, err


def test_locks_between_shards_and_plain_runs(tmp_path, store):
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run, (0, 2)):
        with pytest.raises(RunError, match="shard 0/2 of run directory .* is already running"):
            with run_lock(run, (0, 2)):
                pass
        with run_lock(run, (1, 2)):           # another shard runs beside it
            with pytest.raises(RunError, match=r"is being written by shard 0/2 \(pid \d+ .*\), shard 1/2"):
                probe_store(store.path, run, **KW)
            with pytest.raises(RunError, match=r"must split the run the same way \(N = 2, not 3\)"):
                probe_store(store.path, run, shard="0/3", **KW)
    with run_lock(run):
        with pytest.raises(RunError, match="in use by a run without shards"):
            probe_store(store.path, run, shard="0/2", **KW)


def test_shard_assignment_is_stable_and_total():
    names = [f"ckpt-{k:02d}" for k in range(40)] + ["ViT-B-32/laion2b", "ü"]
    for n in (1, 2, 3, 7):
        owners = [shard_of(ck, n) for ck in names]
        assert all(0 <= o < n for o in owners)
    # Pinned: changing the hash would move checkpoints between the jobs of a running array.
    assert [shard_of(f"ckpt-{k:02d}", 2) for k in range(12)] == [0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 0, 0]
    assert shard_of("ViT-B-32/laion2b", 8) == shard_of("ViT-B-32/laion2b", 8)
    code = "from plateaulab._run.shard import shard_of; print([shard_of(f'c{k}', 5) for k in range(50)])"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outs) == 1 and outs.pop().strip() == str([shard_of(f"c{k}", 5) for k in range(50)])
    assert parse_shard("3/8") == (3, 8) and parse_shard((0, 1)) == (0, 1)
    for bad in ("8/8", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(RunError, match="shard must"):
            parse_shard(bad)


def test_plain_runs_do_not_import_dask(tmp_path, small_store):
    code = ("import sys; from plateaulab.cli import main; import plateaulab\n"
            f"assert main(['probe', {str(small_store.path)!r}, '-o', {str(tmp_path / 'r')!r}, '--shots', '1', "
            "'--seeds', '1', '--quiet', '--shard', '0/1']) == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- extraction

TESTS = os.path.dirname(os.path.abspath(__file__))


def make_checkpoints(tmp_path, n=4):
    """n checkpoint files of the tests' small CNN (ck0.. ck{n-1}; ck0, ck2 are shard 0 of 2, ck1, ck3
    shard 1) and two .npz datasets; the command-line arguments that extract them."""
    torch = pytest.importorskip("torch")
    import numpy as np

    sys.path.insert(0, TESTS)
    import test_extract_models as M

    d = tmp_path / "runs"
    d.mkdir()
    for s in range(n):
        torch.save(M.trained_like_cnn(s).state_dict(), d / f"ck{s}.pt")
    x, y = M.images(36, seed=5), np.arange(36) % 3
    np.savez(tmp_path / "tr.npz", x=x[:24], y=y[:24])
    np.savez(tmp_path / "te.npz", x=x[24:], y=y[24:])
    return d, ["--arch", "test_extract_models:small_cnn", "--no-progress", "--batch-size", "8", "--dataset", "toy",
               "--train", str(tmp_path / "tr.npz"), "--test", str(tmp_path / "te.npz")]


def extract_env():
    # The workers and children import the tests' model module by name; one intra-op thread each.
    return {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def same_stores(a, b):
    import numpy as np

    from plateaulab import FeatureStore

    a, b = FeatureStore.open(a), FeatureStore.open(b)
    assert sorted(a.iter_blocks()) == sorted(b.iter_blocks()) and list(b.iter_blocks())
    for ck, ds, layer in b.iter_blocks():
        for s in ("train", "test"):
            np.testing.assert_array_equal(getattr(a.block(ck, ds, layer), s), getattr(b.block(ck, ds, layer), s))
    for ck in b.checkpoints():
        assert a.checkpoint_meta(ck) == b.checkpoint_meta(ck)
    assert a.check(deep=True) == []


def test_extraction_shards_started_together_fill_one_store(tmp_path):
    d, args = make_checkpoints(tmp_path)
    base = [sys.executable, "-m", "plateaulab", "extract"]
    plain = subprocess.run(base + [str(tmp_path / "plain"), str(d / "ck*"), *args], env=extract_env(),
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr[-2000:]
    procs = [subprocess.Popen(base + [str(tmp_path / "st"), str(d / "ck*"), *args, "--shard", f"{k}/2"],
                              env=extract_env(), start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    for k, (out, _) in enumerate(outs):   # ck0, ck2 are shard 0 of 2; ck1, ck3 shard 1
        assert out.startswith(f"shard {k}/2: extracted 2 (checkpoint, dataset) pairs of 4 layers into"), out
    same_stores(tmp_path / "st", tmp_path / "plain")


def test_a_file_system_without_flock_is_named(tmp_path, monkeypatch, store):
    import errno
    import fcntl

    def no_flock(f, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(RunError, match=r"does not support flock .*Lustre: mount with -o flock"):
        probe_store(store.path, tmp_path / "run", shard="0/2", **KW)
