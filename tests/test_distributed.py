"""Probe runs on Dask (issue 13): a local cluster, an existing scheduler with a worker killed mid-run,
a client killed and restarted. Every process a test starts runs in its own process group, is bounded
in time and is killed (the whole group) when the test ends, however it ends."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from plateaulab.run import probe_store

from conftest import make_store

pytest.importorskip("distributed")

KEY = ["checkpoint", "layer", "dataset", "shots", "seed", "l2"]
OPTS = ["--backend", "numpy", "--shots", "1,5,25", "--seeds", "3", "--l2", "1024,64,4", "--quiet"]
KW = dict(backend="numpy", shots=[1, 5, 25], seeds=3, l2=[1024.0, 64.0, 4.0], quiet=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # 12 checkpoints x 3 layers: about 0.1 s a block with the numpy backend, long enough to kill a
    # process while blocks are in flight, short enough that a whole run takes a few seconds.
    return make_store(tmp_path_factory.mktemp("dist") / "store", n_checkpoints=12, n_layers=3, dim=48,
                      datasets={"toy": (10, 30, 3000)})


@pytest.fixture(scope="module")
def plain(store, tmp_path_factory):
    return probe_store(store.path, tmp_path_factory.mktemp("plain") / "run", **KW).results()


@contextlib.contextmanager
def processes():
    """Start processes in their own process groups; on exit, kill -9 every group still alive."""
    started = []

    def start(cmd, **kw):
        kw = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, **kw}
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def n_parts(run: Path) -> int:
    parts = run / "parts"
    return len(list(parts.rglob("*.parquet"))) if parts.exists() else 0


def group_pids(pgid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout
    return {int(v) for v in out.split()}


def probe_cmd(store, run, *extra):
    return [sys.executable, "-m", "plateaulab", "probe", str(store.path), "-o", str(run), *OPTS, *extra]


def finish(p, timeout):
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{p.args} did not finish in {timeout} s") from None
    assert p.returncode == 0, err.decode()[-3000:]


def test_local_workers_give_the_plain_table(tmp_path, store, plain):
    """--workers 2: a local cluster of two processes; the same rows with the same values as a plain run."""
    run = tmp_path / "run"
    with processes() as start:
        finish(start(probe_cmd(store, run, "--workers", "2")), timeout=120)
    got = pd.read_parquet(run / "results.parquet")
    assert not got.duplicated(KEY).any()
    pd.testing.assert_frame_equal(got, plain)
    session = json.loads((run / "manifest.json").read_text())["sessions"][-1]
    assert session["engine"] == "dask" and session["status"] == "complete" and session["blocks"] == 36
    assert len(session["workers"]) == 2 and all(w["blas_threads"] in (None, [1]) for w in session["workers"].values())
    assert len(session["blocks_per_worker"]) == 2   # both workers probed


def test_worker_killed_mid_run_on_an_existing_cluster(tmp_path, store, plain):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1; one worker's process group is
    kill -9'd while the run is under way: the scheduler gives its unit to the other worker, which
    skips the blocks already written, and the table is the plain run's, with no duplicate."""
    from distributed import Client

    run = tmp_path / "run"
    sched_file = tmp_path / "scheduler.json"
    with processes() as start:
        start([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
               "--scheduler-file", str(sched_file)])
        wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 60, "the scheduler")
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        workers = [start([sys.executable, "-m", "dask", "worker", address, "--nworkers", "1", "--nthreads", "1",
                          "--no-dashboard", "--name", f"w{i}"]) for i in range(2)]
        with Client(address, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        client = start(probe_cmd(store, run, "--scheduler", address))
        # Six parts: both workers have written some (they share the units from the start).
        wait_for(lambda: n_parts(run) >= 6 or client.poll() is not None, 90, "six parts")
        assert client.poll() is None, "the run finished before a worker could be killed; make the store bigger"
        victim = workers[0]
        victim_pids = group_pids(victim.pid)
        os.killpg(victim.pid, signal.SIGKILL)
        killed_at = n_parts(run)
        finish(client, timeout=120)
    assert killed_at < 36
    got = pd.read_parquet(run / "results.parquet")
    assert not got.duplicated(KEY).any()
    pd.testing.assert_frame_equal(got, plain)
    session = json.loads((run / "manifest.json").read_text())["sessions"][-1]
    assert session["status"] == "complete" and session["workers_at_end"] == 1
    dead = [a for a, w in session["workers"].items() if w["pid"] in victim_pids]
    assert len(dead) == 1, (session["workers"], victim_pids)
    # The killed worker had written blocks before it died; they were kept, not probed again.
    assert session["blocks_per_worker"].get(dead[0], 0) >= 1, session["blocks_per_worker"]
    assert sum(session["blocks_per_worker"].values()) <= 36


def test_killed_client_resumes_like_a_plain_run(tmp_path, store, plain):
    """kill -9 of the client's process group (its local cluster with it); the same command resumes,
    probing only the blocks without a part, and gives the plain table."""
    run = tmp_path / "run"
    cmd = probe_cmd(store, run, "--workers", "2")
    with processes() as start:
        p = start(cmd)
        wait_for(lambda: n_parts(run) >= 4 or p.poll() is not None, 90, "four parts")
        assert p.poll() is None, "the run finished before it could be killed; make the store bigger"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        wait_for(lambda: not group_pids(p.pid), 30, "the killed client's workers to end")
        done = n_parts(run)
        assert not (run / "results.parquet").exists() and 4 <= done < 36
        finish(start(cmd), timeout=120)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["complete"] and manifest["sessions"][-1]["blocks"] == 36 - done
    got = pd.read_parquet(run / "results.parquet")
    assert not got.duplicated(KEY).any()
    pd.testing.assert_frame_equal(got, plain)


def test_one_worker_per_gpu_without_dask_cuda(tmp_path):
    """The fallback for --backend cuda without dask-cuda: one worker process per CUDA_VISIBLE_DEVICES
    entry, each seeing only its device, single-threaded. Checked on the CPU with two made-up devices
    (no GPU is touched: the task only reads its environment)."""
    script = ("import json, os, sys\n"
              "from distributed import Client\n"
              "from plateaulab._run.distributed import gpu_spec_cluster\n"
              "if __name__ == '__main__':\n"
              "    with gpu_spec_cluster(['3', '5']) as cl, Client(cl) as c:\n"
              "        c.wait_for_workers(2, timeout=60)\n"
              "        env = c.run(lambda: (os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('OPENBLAS_NUM_THREADS')))\n"
              "        print(json.dumps(sorted(env.values())))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         start_new_session=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [["3", "1"], ["5", "1"]]


def test_cluster_options_are_refused_before_the_run_directory_is_touched(tmp_path, capsys, small_store):
    from plateaulab.cli import main as cli

    for args, words in ((["--workers", "0"], "--workers must be a positive number"),
                        (["--workers", "two"], "--workers must be a positive number"),
                        (["--scheduler-file", str(tmp_path / "nope.json")], "--scheduler-file"),
                        (["--shard", "2/2"], "--shard must look like K/N")):
        code = cli(["probe", str(small_store.path), "-o", str(tmp_path / "run"), "--quiet", *args])
        err = capsys.readouterr().err
        assert code == 2 and words in err, (args, err)
        assert not (tmp_path / "run").exists()


EXTRACT_CHILD = r"""
import sys
from plateaulab.extract import DatasetInputs, extract_checkpoints
runs, out, tr, te, workers = sys.argv[1:6]
import test_extract_models as M
inputs = {"toy": DatasetInputs(tr, te), "again": DatasetInputs(tr, te)}
if __name__ == "__main__":
    rep = extract_checkpoints(runs + "/ck*", out, architecture="test_extract_models:small_cnn", datasets=inputs,
                              batch_size=8, progress=False, allow_import=True,
                              workers=None if workers == "0" else int(workers))
    print(sorted((p.checkpoint, p.dataset, p.status) for p in rep.pairs))
"""


def test_extraction_on_local_workers_equals_a_plain_one(tmp_path):
    """extract_checkpoints(workers=2): one task per (checkpoint, dataset) pair, two datasets, so two
    workers write blocks (and the metadata) of one checkpoint at once; the store equals a plain one's."""
    from test_shards import extract_env, make_checkpoints, same_stores

    d, _ = make_checkpoints(tmp_path)
    outs = {}
    with processes() as start:
        for name, workers in (("plain", "0"), ("st", "2")):
            p = start([sys.executable, "-c", EXTRACT_CHILD, str(d), str(tmp_path / name), str(tmp_path / "tr.npz"),
                       str(tmp_path / "te.npz"), workers], env=extract_env(), stdout=subprocess.PIPE)
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err.decode()[-3000:]
            outs[name] = out.decode().strip().splitlines()[-1]
    assert outs["st"] == outs["plain"] and outs["st"].count("'extracted'") == 8
    same_stores(tmp_path / "st", tmp_path / "plain")


def test_a_bad_block_stops_a_dask_run_with_a_clear_error(tmp_path):
    """A block that fails on a worker stops the run like a plain run: exit 2, one line naming the
    block and the file, no traceback; the parts written so far stay and the session says 'failed'."""
    st = make_store(tmp_path / "s", n_checkpoints=3, n_layers=2)
    bad = st._block_dir("ckpt-02", "toy", "block1") / "train.npy"
    bad.write_bytes(bad.read_bytes()[:200])
    run = tmp_path / "run"
    with processes() as start:
        p = start([sys.executable, "-m", "plateaulab", "probe", str(st.path), "-o", str(run), "--shots", "1,2",
                   "--seeds", "1", "--quiet", "--workers", "2"])
        _, err = p.communicate(timeout=120)
    err = err.decode()
    assert p.returncode == 2, err[-3000:]
    assert "checkpoint 'ckpt-02', dataset 'toy', layer 'block1'" in err and "train.npy" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    session = json.loads((run / "manifest.json").read_text())["sessions"][-1]
    assert session["status"] == "failed" and "ckpt-02" in session["error"]
    assert not (run / "results.parquet").exists()


def test_without_dask_the_flags_say_what_to_install(tmp_path, small_store):
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from plateaulab.cli import main\n"
            f"sys.exit(main(['probe', {str(small_store.path)!r}, '-o', {str(tmp_path / 'r')!r}, '--workers', '2']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--workers runs on Dask, which is not installed: pip install 'plateaulab[cluster]'" in out.stderr, out.stderr
    assert not (tmp_path / "r").exists()


def test_units_keep_plan_order_and_one_checkpoint_and_dataset_each():
    from plateaulab._run.distributed import UNIT_MAX_BLOCKS, make_units
    from plateaulab._run.plan import PlannedBlock

    todo = [PlannedBlock(f"ck{c}", ds, f"l{i}", i) for c in range(3) for ds in ("a", "b") for i in range(20)]
    for n_workers in (1, 2, 8, 64):
        units = make_units(todo, n_workers)
        assert [b for u in units for b in u] == todo
        assert all(len({(b.checkpoint, b.dataset) for b in u}) == 1 for u in units)
        assert max(len(u) for u in units) <= UNIT_MAX_BLOCKS
        assert len(units) >= min(len(todo), 2 * n_workers)
    assert [len(u) for u in make_units(todo[:12], 1)] == [6, 6]      # two units for one worker
    assert len(make_units(todo, 2, max_blocks=1)) == len(todo)
