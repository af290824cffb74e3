"""Probe runs: the results table, resuming after kill -9, refusing mismatched configs, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plateaulab.cli import main as cli
from plateaulab import protocol as P
from plateaulab.errors import RunError, StoreError
from plateaulab.run import probe_store

from conftest import make_store, crash_after

COLUMNS = {"checkpoint", "layer", "layer_index", "dataset", "shots", "seed", "l2", "accuracy", "n_train",
           "n_test", "dim", "selected", "correct", "ties"}
KEY = ["checkpoint", "layer", "dataset", "shots", "seed", "l2"]


def test_results_table(tmp_path, small_store):
    run = probe_store(small_store.path, tmp_path / "run", shots=[1, 5], seeds=2, l2=[1024.0, 8.0], quiet=True)
    df = run.results()
    assert COLUMNS <= set(df.columns)
    # 2 checkpoints x 2 layers x 1 dataset x 2 shots x 2 seeds x 2 l2
    assert len(df) == 32 and not df.duplicated(KEY).any()
    assert df["selected"].sum() == 16 and (df.loc[df["selected"], "l2"] == 1024.0).all()
    assert set(df["n_train"]) == {5, 25} and (df["n_test"] == 300).all()
    assert df.groupby("layer")["dim"].first().to_dict() == {"block0": 16, "block1": 20}
    assert df["accuracy"].between(0, 1).all()
    # The better-separated checkpoint is the more accurate one (the store is built that way).
    by_ck = df[df.shots == 5].groupby("checkpoint")["accuracy"].mean()
    assert by_ck["ckpt-01"] > by_ck["ckpt-00"]
    meta = pd.read_parquet(tmp_path / "run" / "checkpoints.parquet")
    joined = df.merge(meta, on="checkpoint", how="left")
    assert joined["upstream_accuracy"].notna().all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["sessions"][0]["backend"] in ("cpu", "cuda")
    assert {"numpy", "pandas", "plateaulab"} <= set(manifest["versions"])


def test_backends_give_the_same_table(tmp_path, small_store):
    kw = dict(shots=[1, 3, 10], seeds=3, l2=[1024.0, 2.0], select="loo", quiet=True)
    a = probe_store(small_store.path, tmp_path / "a", backend="numpy", **kw).results()
    b = probe_store(small_store.path, tmp_path / "b", backend="cpu", **kw).results()
    pd.testing.assert_frame_equal(a[KEY + ["selected", "loo_accuracy"]], b[KEY + ["selected", "loo_accuracy"]])
    assert (np.abs(a["correct"] - b["correct"]) <= np.maximum(a["ties"], b["ties"])).all()


def test_validation_selection(tmp_path):
    st = make_store(tmp_path / "s", n_checkpoints=1, n_layers=1, with_val=True)
    df = probe_store(st.path, tmp_path / "r", shots=[2], seeds=2, l2=[4096.0, 1.0], select="val",
                     quiet=True).results()
    assert df["val_accuracy"].notna().all()
    for _, g in df.groupby("seed"):
        assert g.loc[g["selected"], "val_accuracy"].iloc[0] == g["val_accuracy"].max()


def test_resume_after_partial_run_equals_uninterrupted(tmp_path, monkeypatch, small_store):
    kw = dict(shots=[1, 5], seeds=2, l2=[1024.0], quiet=True)
    full = probe_store(small_store.path, tmp_path / "full", **kw).results()
    with crash_after(monkeypatch, 1):
        probe_store(small_store.path, tmp_path / "part", **kw)
    assert not (tmp_path / "part" / "results.parquet").exists()
    first = sorted((tmp_path / "part" / "parts").rglob("*.parquet"))
    assert len(first) == 1
    stamp = first[0].stat().st_mtime_ns
    resumed = probe_store(small_store.path, tmp_path / "part", **kw)
    assert resumed.blocks_done_now == 3  # the finished block was not redone
    assert first[0].stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(resumed.results(), full)


def test_resume_after_kill_9(tmp_path):
    store = make_store(tmp_path / "s", n_checkpoints=12, n_layers=3, dim=48,
                       datasets={"toy": (10, 30, 3000)})
    cmd = [sys.executable, "-m", "plateaulab", "probe", str(store.path), "-o", str(tmp_path / "run"),
           "--backend", "numpy", "--shots", "1,5,25", "--seeds", "3", "--l2", "1024,64,4", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "run" / "parts"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if parts.exists() and len(list(parts.rglob("*.parquet"))) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make the store bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list(parts.rglob("*.parquet")))
    assert 3 <= n_done < 36
    assert not (tmp_path / "run" / "results.parquet").exists()
    # Leftover temporary files from the killed write are never read as parts.
    subprocess.run(cmd, check=True, stderr=subprocess.PIPE)
    resumed = pd.read_parquet(tmp_path / "run" / "results.parquet")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["sessions"][-1]["blocks"] == 36 - n_done
    straight = probe_store(store.path, tmp_path / "straight", backend="numpy", shots=[1, 5, 25], seeds=3,
                           l2=[1024.0, 64.0, 4.0], quiet=True).results()
    assert not resumed.duplicated(KEY).any()
    pd.testing.assert_frame_equal(resumed, straight)


def test_different_config_is_refused(tmp_path, small_store):
    probe_store(small_store.path, tmp_path / "run", shots=[1], seeds=1, quiet=True)
    with pytest.raises(RunError, match=r"different config \(shots: \[1\] -> \[1, 5\]\)"):
        probe_store(small_store.path, tmp_path / "run", shots=[1, 5], seeds=1, quiet=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not a run")
    with pytest.raises(RunError, match="not empty"):
        probe_store(small_store.path, tmp_path / "other", shots=[1], seeds=1, quiet=True)


def test_selection_of_checkpoints_and_layers(tmp_path, small_store):
    df = probe_store(small_store.path, tmp_path / "r", checkpoints=["*01"], layers="last", shots=[1],
                     seeds=1, quiet=True).results()
    assert set(df["checkpoint"]) == {"ckpt-01"} and set(df["layer"]) == {"block1"}
    df = probe_store(small_store.path, tmp_path / "r2", layers=["block0"], shots=[1], seeds=1,
                     quiet=True).results()
    assert set(df["layer"]) == {"block0"}


# --------------------------------------------------------------------------- bad input, via the CLI

def _cli(capsys, *args):
    code = cli(list(map(str, args)))
    return code, capsys.readouterr().err


def _corrupt(store, kind):
    bdir = store._block_dir("ckpt-01", "toy", "block1")
    if kind == "nan":
        a = np.load(bdir / "test.npy")
        a[7, 2] = np.inf
        np.save(bdir / "test.npy", a)
        return "checkpoint 'ckpt-01', dataset 'toy', layer 'block1': test features contain 1 NaN/Inf"
    if kind == "truncated":
        f = bdir / "train.npy"
        f.write_bytes(f.read_bytes()[:200])
        return "layer 'block1': array file"
    if kind == "width":
        info = json.loads((bdir / "block.json").read_text())
        np.save(bdir / "test.npy", np.ones((300, info["dim"] + 3), np.float16))
        return "layer 'block1'"
    if kind == "rows":
        info = json.loads((bdir / "block.json").read_text())
        np.save(bdir / "train.npy", np.ones((10, info["dim"]), np.float16))
        return "layer 'block1'"
    if kind == "labels":
        d = store._dataset_dir("toy")
        y = np.load(d / "y_test.npy")
        y[0] = 99
        np.save(d / "y_test.npy", y)
        return "dataset 'toy': y_test has label 99 but num_classes is 5"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["nan", "truncated", "width", "rows", "labels"])
def test_bad_block_fails_clearly_and_keeps_earlier_results(tmp_path, capsys, kind):
    store = make_store(tmp_path / "s")
    run = tmp_path / "run"
    expected = _corrupt(store, kind)
    # Arrays rewritten behind the store's back fail their checksum first; --no-verify reaches the other checks.
    no_verify = ["--no-verify"] if kind == "nan" else []
    code, err = _cli(capsys, "probe", store.path, "-o", run, "--shots", "1,2", "--seeds", "1", "--quiet",
                     "--backend", "cpu", *no_verify)
    assert code == 2
    assert expected in err, err
    if kind != "labels":  # blocks before the bad one are kept, and kept on the next try
        done = sorted(p.name for p in (run / "parts").rglob("*.parquet"))
        assert len(done) == 3
        stamps = {p: p.stat().st_mtime_ns for p in (run / "parts").rglob("*.parquet")}
        code, _ = _cli(capsys, "probe", store.path, "-o", run, "--shots", "1,2", "--seeds", "1", "--quiet", *no_verify)
        assert code == 2
        assert {p: p.stat().st_mtime_ns for p in (run / "parts").rglob("*.parquet")} == stamps
        assert not (run / "results.parquet").exists()


@pytest.mark.parametrize("args,expected", [
    (["--datasets", "nope"], "unknown dataset 'nope'"),
    (["--checkpoints", "vit*"], "no checkpoint in store"),
    (["--layers", "block7"], "unknown layer 'block7' for checkpoint 'ckpt-00'"),
    (["--l2", "0"], "l2 must be positive"),
    (["--l2", "1024,-3"], "l2 must be positive"),
    (["--shots", "0"], "shots must be positive"),
    (["--shots", "13"], "class 0 has 12 train examples, fewer than shots=13"),
])
def test_bad_options_fail_clearly(tmp_path, capsys, small_store, args, expected):
    code, err = _cli(capsys, "probe", small_store.path, "-o", tmp_path / "run", "--quiet", *args)
    assert code == 2
    assert expected in err, err


def test_empty_store_fails_clearly(tmp_path, capsys):
    from plateaulab import FeatureStore

    FeatureStore.create(tmp_path / "s")
    code, err = _cli(capsys, "probe", tmp_path / "s", "-o", tmp_path / "run", "--quiet")
    assert code == 2 and "is empty" in err


def test_skip_short_classes(tmp_path, capsys, small_store):
    with pytest.warns(UserWarning, match="skipping shots=13"):
        code = cli(["probe", str(small_store.path), "-o", str(tmp_path / "run"), "--shots", "1,13", "--seeds", "1",
                    "--quiet", "--skip-short-classes"])
    assert code == 0
    assert set(pd.read_parquet(tmp_path / "run" / "results.parquet")["shots"]) == {1}


def test_dataset_with_every_shot_count_skipped_does_not_block_completion(tmp_path):
    st = make_store(tmp_path / "s", n_checkpoints=1, n_layers=1,
                    datasets={"big": (4, 20, 100), "small": (4, 3, 100)})
    with pytest.warns(UserWarning, match="dataset 'small'.*skipping shots=5"):
        run = probe_store(st.path, tmp_path / "r", shots=[5], seeds=1, quiet=True, on_short="skip")
    assert set(run.results()["dataset"]) == {"big"}
    with pytest.warns(UserWarning), pytest.raises(RunError, match="every requested shot count was skipped"):
        probe_store(st.path, tmp_path / "r2", datasets=["small"], shots=[5], seeds=1, quiet=True, on_short="skip")


def test_store_commands(tmp_path, capsys, small_store):
    assert cli(["store", "info", str(small_store.path)]) == 0
    out = capsys.readouterr().out
    assert "checkpoints  2" in out and "toy: 5 classes, 60 train, 300 test" in out
    assert cli(["store", "check", str(small_store.path), "--deep"]) == 0
    f = small_store._block_dir("ckpt-00", "toy", "block0") / "block.json"
    f.unlink()
    assert cli(["store", "check", str(small_store.path)]) == 1
    assert "incomplete block" in capsys.readouterr().out


def test_peak_memory_does_not_grow_with_checkpoints(tmp_path):
    """Peak RSS of a run over 4x more checkpoints stays within a few MB (one block in memory at a time)."""
    script = ("import resource, sys; from plateaulab.run import probe_store; "
              "probe_store(sys.argv[1], sys.argv[2], shots=[1, 5], seeds=2, quiet=True, backend='cpu'); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    peaks = []
    for n in (3, 12):
        store = make_store(tmp_path / f"s{n}", n_checkpoints=n, n_layers=2, dim=256,
                           datasets={"toy": (20, 10, 4000)})
        out = subprocess.run([sys.executable, "-c", script, str(store.path), str(tmp_path / f"r{n}")],
                             check=True, capture_output=True, text=True).stdout
        peaks.append(int(out.split()[-1]) / 1024)  # MiB
    # One block is ~4.6 MB of fp16 features (x2 as float32 while scored); 9 more checkpoints would
    # add ~80 MB if blocks or results accumulated.
    assert peaks[1] - peaks[0] < 20, peaks


@pytest.mark.parametrize("select", ["fixed", "val"])
def test_prefetch_stages_ahead_in_a_reader_thread_and_changes_nothing(tmp_path, monkeypatch, select):
    """With read-ahead (the default) each block is opened, checked and staged by the cpu backend in the
    reader thread; the table is identical to a run that reads each block only when it probes it."""
    import threading

    from plateaulab.backends import cpu

    st = make_store(tmp_path / "s", n_checkpoints=2, n_layers=2, with_val=True)
    threads = []
    original = cpu.stage
    monkeypatch.setattr(cpu, "stage", lambda *a: threads.append(threading.current_thread().name) or original(*a))
    kw = dict(shots=[1, 4], seeds=2, l2=[1024.0, 3.0], select=select, backend="cpu", quiet=True)
    ahead = probe_store(st.path, tmp_path / "ahead", **kw).results()
    assert len(threads) == 4 and all(t.startswith("plateaulab-reader") for t in threads), threads
    threads.clear()
    plain = probe_store(st.path, tmp_path / "plain", prefetch=False, **kw).results()
    assert threads == ["MainThread"] * 4
    pd.testing.assert_frame_equal(ahead, plain)


@pytest.mark.parametrize("backend,prefetch", [("cpu", True), ("cpu", False), ("numpy", True)])
@pytest.mark.parametrize("split", ["train", "test", "val"])
def test_nonfinite_features_are_refused_on_every_path(tmp_path, backend, prefetch, split):
    """NaN/Inf is found whether the backend stages the block (counted while staging) or not (host
    scan), in a used train row, the test split or the val split, and named with its count."""
    st = make_store(tmp_path / "s", n_checkpoints=1, n_layers=1, with_val=True)
    bdir = st._block_dir("ckpt-00", "toy", "block0")
    a = np.load(bdir / f"{split}.npy")
    row = P.plan_tasks(st.dataset("toy").y_train, 5, [2], [0])[0].indices[1] if split == "train" else 3
    a[row, 1] = np.nan
    a[row, 4] = np.inf
    np.save(bdir / f"{split}.npy", a)
    with pytest.raises(StoreError, match=f"{split} features contain 2 NaN/Inf values"):
        probe_store(st.path, tmp_path / "run", shots=[2], seeds=1, backend=backend, prefetch=prefetch, quiet=True,
                    verify=False)
