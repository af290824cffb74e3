"""Regressions found by a second campaign of bad inputs (issue 12, "done when"): each case below was a
traceback, a hang, a silently shorter table or a message that did not name its culprit. Every one is
now an error naming the file, key, column or name, with exit status 2 on the command line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plateaulab import FeatureStore
from plateaulab.cli import main as cli
from plateaulab.errors import InputError, StoreError

from conftest import make_store

FLAGS = ["--shots", "1,2", "--seeds", "1", "--quiet", "--backend", "numpy"]


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("base") / "store", n_checkpoints=2, n_layers=2, dim=6,
                      datasets={"toy": (3, 4, 30)})


@pytest.fixture
def store(tmp_path, base_store):
    shutil.copytree(base_store.path, tmp_path / "store", symlinks=True)
    return FeatureStore.open(tmp_path / "store")


@contextlib.contextmanager
def deadline(seconds=20):
    """Turn a hang (a reader blocked on a FIFO) into a failure instead of a stuck test run."""
    def fail(*_):
        raise AssertionError(f"hung for more than {seconds} s")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_cli(capsys, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _replace(path: Path, make):
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    make(path)


def _edit(path, change):
    obj = json.loads(Path(path).read_text())
    change(obj)
    Path(path).write_text(json.dumps(obj))


def _files(store):
    return {"store.json": store.path / "store.json",
            "dataset.json": store._dataset_dir("toy") / "dataset.json",
            "meta.json": store._checkpoint_dir("ckpt-01") / "meta.json",
            "block.json": store._block_dir("ckpt-01", "toy", "block1") / "block.json",
            "train.npy": store._block_dir("ckpt-01", "toy", "block1") / "train.npy",
            "y_train.npy": store._dataset_dir("toy") / "y_train.npy"}


def _npz(p):
    np.savez(str(p) + ".npz", x=np.zeros((12, 6), np.float16))
    os.replace(str(p) + ".npz", p)


# (file, how it is replaced, words of the message)
NOT_A_FILE = [
    ("store.json", lambda p: os.mkfifo(p), ["store.json", "FIFO"]),
    ("dataset.json", lambda p: os.mkfifo(p), ["dataset.json", "FIFO"]),
    ("meta.json", lambda p: os.symlink("/dev/zero", p), ["meta.json", "device"]),
    ("block.json", lambda p: os.symlink("/dev/zero", p), ["block.json", "device"]),
    ("store.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000), ["store.json", "too deeply"]),
    ("meta.json", lambda p: p.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"), ["meta.json", "too deeply"]),
    ("meta.json", lambda p: os.symlink(p.parent / "nowhere.json", p), ["meta.json", "nowhere.json", "does not exist"]),
    ("train.npy", lambda p: os.symlink("/dev/zero", p), ["train.npy", "device"]),
    ("train.npy", lambda p: os.mkfifo(p), ["train.npy", "FIFO"]),
    ("train.npy", _npz, ["train.npy", ".npz archive"]),
    ("y_train.npy", _npz, ["y_train.npy", ".npz archive"]),
]


@pytest.mark.parametrize("name,make,words", NOT_A_FILE, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(NOT_A_FILE)])
def test_a_metadata_or_array_file_that_is_not_one_is_named_without_hanging(tmp_path, capsys, store, name, make, words):
    _replace(_files(store)[name], make)
    with deadline():
        code, out, err = run_cli(capsys, "store", "check", "--deep", store.path)
        assert code in (1, 2) and "Traceback" not in err
        assert all(w in out + err for w in words), out + err
        code, _, err = run_cli(capsys, "probe", store.path, "-o", tmp_path / "run", *FLAGS)
    assert code == 2 and all(w in err for w in words), err


def test_an_oversized_metadata_file_is_refused_before_it_is_read(store, monkeypatch):
    from plateaulab._store import files

    monkeypatch.setattr(files, "MAX_JSON_BYTES", 64)
    _files(store)["dataset.json"].write_text(json.dumps({"num_classes": 3, "n_train": 12, "n_test": 30,
                                                         "padding": "x" * 100}))
    with pytest.raises(StoreError, match=r"dataset\.json is \d+ bytes, more than"):
        store.dataset("toy")


# --------------------------------------------------------------------------- schema: ranges, int64, classes

SCHEMA = [
    ("dataset.json", lambda o: o.update(num_classes=10 ** 30), ["dataset.json", "'num_classes'"]),
    ("dataset.json", lambda o: o.update(num_classes=2 * 10 ** 9), ["dataset.json", "'num_classes'", "n_train"]),
    ("dataset.json", lambda o: o.update(num_classes=4), ["dataset 'toy'", "no train example", "class 3"]),
    ("block.json", lambda o: o.update(layer_index=10 ** 20), ["block.json", "'layer_index'"]),
    ("meta.json", lambda o: o.update(epochs=10 ** 30), ["meta.json", "'epochs'", "64 bits"]),
    ("meta.json", lambda o: o.update(extra={"deep": [1, 2 ** 70]}), ["meta.json", "'extra'", "64 bits"]),
    ("meta.json", lambda o: o.update(checkpoint="ckpt-00"), ["meta.json", "'checkpoint'", "'ckpt-00'"]),
]


@pytest.mark.parametrize("name,change,words", SCHEMA, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(SCHEMA)])
def test_values_a_run_cannot_hold_are_refused_by_check_and_probe_alike(tmp_path, capsys, store, name, change, words):
    _edit(_files(store)[name], change)
    code, out, err = run_cli(capsys, "store", "check", store.path)
    assert code == 1 and all(w in out for w in words), out + err
    code, _, err = run_cli(capsys, "probe", store.path, "-o", tmp_path / "run", *FLAGS)
    assert code == 2 and "Traceback" not in err and all(w in err for w in words), err
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_writers_refuse_what_readers_would(store):
    with pytest.raises(StoreError, match=r"dataset 'd': 1 of its 3 classes have no train example \(class 1"):
        store.add_dataset("d", [0, 2, 0, 2], [0, 1, 2], num_classes=3)
    assert "d" not in store.datasets() and not store._dataset_dir("d").exists()
    with pytest.raises(StoreError, match=r"'epochs'.*64 bits"):
        store.set_checkpoint_meta("ckpt-00", epochs=10 ** 30)
    with pytest.raises(StoreError, match=r"metadata key 'upstream_accuracy' \(nan\) is not JSON"):
        store.set_checkpoint_meta("ckpt-00", upstream_accuracy=float("nan"))
    assert store.checkpoint_meta("ckpt-00")["upstream_accuracy"] == 0.5


# --------------------------------------------------------------------------- layout: files where directories belong

def _file_for(path):
    def make(store):
        p = store.path / path
        if p.is_dir():
            shutil.rmtree(p)
        p.write_text("not a directory")
    return make


LAYOUT = [
    ("a file named like a checkpoint", _file_for("checkpoints/ckpt-02"), ["ckpt-02", "is a file"]),
    ("a dangling checkpoint symlink", lambda s: os.symlink(s.path / "gone", s.path / "checkpoints" / "ckpt-02"),
     ["ckpt-02", "does not exist"]),
    ("features/ is a file", _file_for("checkpoints/ckpt-01/features"), ["ckpt-01", "features", "is a file"]),
    ("features/<dataset> is a file", _file_for("checkpoints/ckpt-01/features/toy"), ["features/toy", "is a file"]),
    ("a file among the layers", _file_for("checkpoints/ckpt-01/features/toy/block2"), ["block2", "is a file"]),
    ("a file among the datasets", _file_for("datasets/toy2"), ["toy2", "is a file"]),
]


@pytest.mark.parametrize("what,make,words", LAYOUT, ids=[c[0] for c in LAYOUT])
def test_a_file_where_a_directory_belongs_is_named_not_skipped(tmp_path, capsys, store, what, make, words):
    make(store)
    code, out, err = run_cli(capsys, "store", "check", store.path)
    assert code == 1 and all(w in out for w in words), out
    code, _, err = run_cli(capsys, "probe", store.path, "-o", tmp_path / "run", *FLAGS)
    assert code == 2 and all(w in err for w in words), err       # was: exit 0 and a table missing its rows


def test_an_escaped_dot_dot_directory_is_named_as_an_unholdable_name(store):
    (store.path / "checkpoints" / "ckpt-01").rename(store.path / "checkpoints" / "%2E%2E")
    problems = [str(p) for p in store.check()]
    assert any("%2E%2E" in p and "decodes to checkpoint name '..'" in p for p in problems), problems
    assert not any("both decode" in p for p in problems)      # the parent directory is no twin


def test_a_file_given_as_a_store_is_named_as_a_file(tmp_path):
    (tmp_path / "x").write_text("x")
    with pytest.raises(StoreError, match="it is a file, not a store directory"):
        FeatureStore.open(tmp_path / "x")
    with pytest.raises(StoreError, match="is a file, not a directory"):
        FeatureStore.create(tmp_path / "x")


def test_a_directory_in_checkpoints_that_is_no_checkpoint_is_a_problem(tmp_path, capsys, store):
    # A probe run pointed into the store's checkpoints/ directory used to pass `store check` as a checkpoint.
    # probe now refuses such an output; a run directory put there by other means is still a store problem.
    assert run_cli(capsys, "probe", store.path, "-o", store.path / "checkpoints" / "run", *FLAGS)[0] == 2
    (store.path / "checkpoints" / "run").mkdir()
    (store.path / "checkpoints" / "run" / "manifest.json").write_text("{}")
    problems = [str(p) for p in store.check()]
    assert any("checkpoint 'run'" in p and "neither meta.json nor features/" in p for p in problems), problems


# --------------------------------------------------------------------------- analysis inputs

GOOD = pd.DataFrame({"model": [f"m{i}" for i in range(8)], "imagenet": np.linspace(0.5, 0.85, 8),
                     "cifar": np.linspace(0.6, 0.9, 8) ** 1.5, "pets": np.linspace(0.3, 0.8, 8) ** 0.7})

TABLES = [
    ("t.json", "[" * 100_000 + "]" * 100_000, [], ["t.json", "too deeply"]),
    ("t.json", json.dumps([{"model": "a", "imagenet": 0.5}, 5, "x"]), [], ["t.json", "not all objects"]),
    ("t.json", "5", [], ["t.json", "single value"]),
    ("t.csv", GOOD.iloc[:1].to_csv(index=False), [], ["t.csv", "1 model ('m0')"]),
    ("t.csv", GOOD.to_csv(index=False), ["--ds", "imagenet"], ["--ds names only 'imagenet'", "US column"]),
    ("t.csv", GOOD.to_csv(index=False), ["--min-us", "0.99"], ["--min-us", "leaves 0 of the 8 models"]),
    ("t.csv", GOOD.to_csv(index=False), ["--exclude", ",".join(f"m{i}" for i in range(7))],
     ["--exclude", "leaves 1 of the 8 models", "'m7'"]),
]


@pytest.mark.parametrize("fname,text,extra,words", TABLES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TABLES)])
def test_bad_tables_and_options_name_the_culprit(tmp_path, capsys, fname, text, extra, words):
    (tmp_path / fname).write_text(text)
    code, _, err = run_cli(capsys, "fit", tmp_path / fname, "--us", "imagenet", *extra)
    assert code == 2 and "Traceback" not in err and all(w in err for w in words), err


def test_a_table_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    from plateaulab.analysis.tables import load_table

    os.mkfifo(tmp_path / "t.csv")
    with deadline(), pytest.raises(InputError, match="not a regular file"):
        load_table(tmp_path / "t.csv", us="imagenet")


def test_a_run_whose_checkpoints_table_repeats_a_checkpoint_is_named(tmp_path, capsys, base_store):
    run = tmp_path / "run"
    assert run_cli(capsys, "probe", base_store.path, "-o", run, *FLAGS)[0] == 0
    ck = pd.read_parquet(run / "checkpoints.parquet")
    pd.concat([ck, ck.assign(upstream_accuracy=0.99)]).to_parquet(run / "checkpoints.parquet")
    code, _, err = run_cli(capsys, "fit", run)
    assert code == 2 and "checkpoints.parquet lists 2 checkpoint(s) on several rows ('ckpt-00', 'ckpt-01')" in err


TIMM_HEAD = "model,top1,top1_err,top5,top5_err,param_count,img_size,crop_pct,interpolation"


def _timm_file(path, top1, sizes=None):
    sizes = sizes or ["224"] * len(top1)
    lines = [TIMM_HEAD] + [f"net{i},{a},0,99,1,\"1,013.01\",{sz},0.9,bicubic"
                           for i, (a, sz) in enumerate(zip(top1, sizes))]
    path.write_text("\n".join(lines) + "\n")


TIMM = [
    ("header only", lambda f: f.write_text(TIMM_HEAD + "\n"), ["results-sketch.csv holds no rows"]),
    ("an empty img_size", lambda f: _timm_file(f, ["30", "35", "40", "45"], ["224", "224", "", "224"]),
     ["results-sketch.csv: column 'img_size' is empty on 1 line(s) (line 4)"]),
    ("fractions read as percent", lambda f: _timm_file(f, ["0.3", "0.35", "0.4", "0.45"]),
     ["results-sketch.csv: every top1 value is at most 1", "--input-scale='sketch=unit'"]),
    ("text in top1", lambda f: _timm_file(f, ["30", "bad", "40", "45"]), ["of timm results folder", "'bad'"]),
]


@pytest.mark.parametrize("what,make,words", TIMM, ids=[c[0] for c in TIMM])
def test_a_malformed_timm_results_file_is_named(tmp_path, capsys, what, make, words):
    folder = tmp_path / "results"
    folder.mkdir()
    _timm_file(folder / "results-imagenet.csv", ["60", "70", "80", "85"])
    make(folder / "results-sketch.csv")
    code, _, err = run_cli(capsys, "fit", folder)
    assert code == 2 and all(w in err for w in words) and "<DataFrame>" not in err, err


def test_a_timm_file_of_fractions_reads_when_its_scale_is_given(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    _timm_file(folder / "results-imagenet.csv", ["60", "70", "80", "85"])
    _timm_file(folder / "results-sketch.csv", ["0.3", "0.36", "0.41", "0.43"])
    code, out, err = run_cli(capsys, "fit", folder, "--input-scale", "sketch=unit", "--json")
    assert code == 0, err
    assert json.loads(out)["fits"][0]["ds"] == "sketch"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, base_store):
    run = tmp_path_factory.mktemp("run") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli(["probe", str(base_store.path), "-o", str(run), *FLAGS]) == 0
    return run


def _results(change):
    def f(run):
        change(pd.read_parquet(run / "results.parquet")).to_parquet(run / "results.parquet")
    return f


def _checkpoints(change):
    def f(run):
        change(pd.read_parquet(run / "checkpoints.parquet")).to_parquet(run / "checkpoints.parquet")
    return f


RUNS = [
    ("accuracy as text", _results(lambda r: r.assign(accuracy=r["accuracy"].astype(str))), ["column 'accuracy'"]),
    ("accuracy in percent", _results(lambda r: r.assign(accuracy=r["accuracy"] * 50)), ["column 'accuracy'", "[0, 1]"]),
    ("selected as text", _results(lambda r: r.assign(selected="no")), ["column 'selected'"]),
    ("shots as text", _results(lambda r: r.assign(shots="many")), ["column 'shots'", "'many'"]),
    ("negative n_test", _results(lambda r: r.assign(n_test=-5)), ["column 'n_test'"]),
    ("negative upstream", _checkpoints(lambda c: c.assign(upstream_accuracy=[-0.5, 0.6])),
     ["checkpoint 'ckpt-00' has upstream_accuracy = -0.5"]),
    ("checkpoint ids as numbers", _checkpoints(lambda c: c.assign(checkpoint=[0, 1])),
     ["'checkpoint' column holds int64"]),
    ("no checkpoint has a US value", _checkpoints(lambda c: c.assign(checkpoint=["x", "y"])),
     ["no checkpoint of results.parquet has a 'upstream_accuracy' value", "--us"]),
    ("a manifest nested too deeply", lambda run: (run / "manifest.json").write_text("[" * 100_000 + "]" * 100_000),
     ["manifest.json nests JSON too deeply"]),
]


@pytest.mark.parametrize("what,change,words", RUNS, ids=[c[0] for c in RUNS])
def test_a_run_directory_changed_behind_the_probe_is_named(tmp_path, capsys, finished_run, what, change, words):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    change(run)
    code, _, err = run_cli(capsys, "fit", run)
    assert code == 2 and "Traceback" not in err and all(w in err for w in words), err


# --------------------------------------------------------------------------- extraction manifests (no torch needed)

@pytest.fixture
def registered():
    from plateaulab.extract import register_architecture, unregister_architecture

    register_architecture("campaign-arch", lambda: None, replace=True)
    yield "campaign-arch"
    unregister_architecture("campaign-arch")


MANIFESTS = [
    ("m.csv", "", "lists no checkpoints"),
    ("m.csv", "file,architecture\n", "lists no checkpoints"),
    ("m.json", "[" * 100_000 + "]" * 100_000, "too deeply"),
    ("m.jsonl", json.dumps({"file": "a.pt", "name": 7}) + "\n", "'name' must be a string"),
    ("m.csv", "path,architecture\na.pt,campaign-arch\n", "no 'file' column (columns: 'path', 'architecture')"),
]


@pytest.mark.parametrize("fname,text,words", MANIFESTS, ids=[f"{c[0]}-{i}" for i, c in enumerate(MANIFESTS)])
def test_bad_manifests_name_the_manifest(tmp_path, registered, fname, text, words):
    from plateaulab.extract import read_manifest

    (tmp_path / fname).write_text(text)
    with pytest.raises(InputError, match="checkpoint manifest") as err:
        read_manifest(tmp_path / fname)
    assert words in str(err.value) and fname in str(err.value)


def test_manifest_names_stay_text_and_a_byte_order_mark_is_not_part_of_a_column(tmp_path, registered):
    from plateaulab.extract import read_manifest

    (tmp_path / "m.csv").write_text("\ufefffile,architecture,name,epochs\na.pt,campaign-arch,007,90\n",
                                    encoding="utf-8")
    (row,) = read_manifest(tmp_path / "m.csv")
    assert row["name"] == "007" and row["file"] == str(tmp_path / "a.pt") and row["epochs"] == 90


# --------------------------------------------------------------------------- extraction error paths (torch)

def _tiny_model():
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8))
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.blocks(x))
    return torch, Tiny()


def test_a_model_that_fails_on_the_inputs_is_named(tmp_path):
    from plateaulab.extract import extract

    torch, model = _tiny_model()
    y = np.arange(12) % 3
    with pytest.raises(InputError, match=r"checkpoint 'tiny', dataset 'd': the model failed on the train inputs "
                                         r".*RuntimeError: mat1 and mat2 shapes"):
        extract(model, tmp_path / "st", "d", train=(np.zeros((12, 7), np.float32), y),
                test=(np.zeros((6, 7), np.float32), y[:6]), checkpoint="tiny", progress=False)


@pytest.mark.parametrize("device,words", [("tpu", "not a device torch knows"), ("meta", "extraction runs on")])
def test_an_unknown_device_is_named(device, words):
    pytest.importorskip("torch")
    from plateaulab.extract.engine import resolve_device

    with pytest.raises(InputError, match=words) as err:
        resolve_device(device)
    assert err.value.param == "device" and repr(device) in str(err.value)


def test_an_empty_checkpoint_file_is_named(tmp_path):
    pytest.importorskip("torch")
    from plateaulab.extract.checkpoints import read_state_dict

    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(InputError, match=r"e\.pt is empty"):
        read_state_dict(tmp_path / "e.pt")


# --------------------------------------------------------------------------- the command line's warnings

def test_plateaulab_warnings_are_one_line_each(tmp_path, base_store):
    import subprocess
    import sys

    run = tmp_path / "run"
    assert cli(["probe", str(base_store.path), "-o", str(run), *FLAGS]) == 0
    (run / "parts" / "ckpt-00" / "toy" / "block0.parquet").write_bytes(b"garbage")
    p = subprocess.run([sys.executable, "-m", "plateaulab", "probe", str(base_store.path), "-o", str(run), *FLAGS],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("plateaulab probe: warning: ") for line in lines), p.stderr
    assert "block0.parquet" in p.stderr and "UserWarning" not in p.stderr
