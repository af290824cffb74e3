"""Malformed stores, names, files and limits (issue 12): every one a clear error (exit 2, the file, key
or name in the message, no traceback) or a correct table, and `store check` agrees with `probe`."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import string
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from plateaulab import FeatureStore
from plateaulab.cli import main as cli
from plateaulab.errors import PlateaulabError, RunError, StoreError
from plateaulab.run import probe_store

from conftest import make_store, crash_after

KW = dict(shots=[1, 2], seeds=1, l2=[1024.0], quiet=True, backend="numpy")
FLAGS = ["--shots", "1,2", "--seeds", "1", "--quiet", "--backend", "numpy"]


def _tiny(path):
    return make_store(path, n_checkpoints=2, n_layers=2, dim=6, datasets={"toy": (3, 4, 30)})


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("base") / "store")


@pytest.fixture
def store(tmp_path, base_store):
    shutil.copytree(base_store.path, tmp_path / "store")
    return FeatureStore.open(tmp_path / "store")


def _cli(capsys, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _files(store):
    return {
        "store.json": store.path / "store.json",
        "dataset.json": store._dataset_dir("toy") / "dataset.json",
        "meta.json": store._checkpoint_dir("ckpt-01") / "meta.json",
        "block.json": store._block_dir("ckpt-01", "toy", "block1") / "block.json",
    }


def _edit(path: Path, change):
    obj = json.loads(path.read_text())
    obj = change(obj)
    path.write_text(json.dumps(obj))


def _set(key, value):
    def change(obj):
        obj[key] = value
        return obj
    return change


def _drop(key):
    def change(obj):
        obj.pop(key)
        return obj
    return change


# (file, change, words the message must contain)
CORPUS = [
    ("store.json", _set("version", "1"), ["store.json", "'version'", "'1'"]),
    ("store.json", _set("format", "zarr"), ["store.json", "'format'", "'zarr'"]),
    ("dataset.json", _set("num_classes", "three"), ["dataset.json", "'num_classes'", "'three'"]),
    ("dataset.json", _drop("num_classes"), ["dataset.json", "'num_classes'", "missing"]),
    ("dataset.json", lambda o: [o], ["dataset.json", "JSON object", "list"]),
    ("dataset.json", _set("num_classes", True), ["dataset.json", "'num_classes'", "True"]),
    ("dataset.json", _set("n_train", -1), ["dataset.json", "'n_train'", "-1"]),
    ("dataset.json", _set("class_names", ["a"]), ["dataset.json", "class_names"]),
    ("dataset.json", _set("name", "other"), ["dataset.json", "'name'", "'other'"]),
    ("meta.json", lambda o: [o], ["meta.json", "JSON object", "list"]),
    ("meta.json", _set("upstream_accuracy", "high"), ["meta.json", "'upstream_accuracy'", "'high'"]),
    ("meta.json", _set("params", -5), ["meta.json", "'params'", "-5"]),
    ("block.json", _drop("dim"), ["block.json", "'dim'", "missing"]),
    ("block.json", _drop("rows"), ["block.json", "'rows'", "missing"]),
    ("block.json", _set("layer_index", "3"), ["block.json", "'layer_index'", "'3'"]),
    ("block.json", _set("crc32", {"train": "deadbeef"}), ["block.json", "'crc32.train'", "'deadbeef'"]),
    ("block.json", _set("xxh3_64", {"train": 12}), ["block.json", "'xxh3_64.train'", "12"]),
    ("block.json", _set("dim", 0), ["block.json", "'dim'", "0"]),
    ("block.json", _set("dtype", "float64"), ["block.json", "'dtype'", "'float64'"]),
    ("block.json", _set("rows", {"train": "12", "test": 30}), ["block.json", "'rows.train'", "'12'"]),
    ("block.json", _set("rows", {"train": 12, "test": 30, "extra": 4}), ["block.json", "'rows.extra'"]),
    ("block.json", _set("layer", "block9"), ["block.json", "'layer'", "'block9'"]),
    ("block.json", lambda o: None, ["block.json", "JSON object", "NoneType"]),
]


@pytest.mark.parametrize("name,change,words", CORPUS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CORPUS)])
def test_malformed_metadata_is_named_by_check_and_probe_alike(tmp_path, capsys, store, name, change, words):
    _edit(_files(store)[name], change)
    code, out, err = _cli(capsys, "store", "check", store.path)
    assert code in (1, 2), out + err
    for w in words:
        assert w in out + err, (w, out + err)
    code, _, err = _cli(capsys, "probe", store.path, "-o", tmp_path / "run", *FLAGS)
    assert code == 2 and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    # Metadata is validated before any block is probed: no part was written, nothing blocks a retry.
    assert not list((tmp_path / "run").rglob("*.parquet"))
    assert not (tmp_path / "run" / "manifest.json").exists()


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 2 ** 40) | st.floats(allow_nan=True)
                    | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
KEYS = {"dataset.json": ["name", "num_classes", "class_names", "n_train", "n_test", "n_val", "extra"],
        "block.json": ["checkpoint", "dataset", "layer", "layer_index", "dim", "dtype", "rows", "xxh3_64",
                       "crc32", "extra"],
        "meta.json": ["upstream_accuracy", "params", "arch", "architecture"],
        "store.json": ["format", "version", "extra"]}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_check_passes_exactly_when_probe_succeeds(tmp_path_factory, base_store, data):
    """Property: after any change of one key of one metadata file, `store check` passes if and only if
    `probe` succeeds, and `probe` never fails with anything but a PlateaulabError."""
    root = tmp_path_factory.mktemp("prop")
    shutil.copytree(base_store.path, root / "store")
    store = FeatureStore.open(root / "store")
    name = data.draw(st.sampled_from(sorted(KEYS)))
    key = data.draw(st.sampled_from(KEYS[name]))
    delete = data.draw(st.booleans())
    value = None if delete else data.draw(JSON)
    path = _files(store)[name]
    obj = json.loads(path.read_text())
    if delete:
        obj.pop(key, None)
    else:
        obj[key] = value
    path.write_text(json.dumps(obj))
    try:
        problems = FeatureStore.open(store.path).check(deep=True)
    except StoreError:
        problems = ["store.json"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe_store(store.path, root / "run", **KW)
        ok = True
    except PlateaulabError:
        ok = False
    assert ok == (not problems), (name, key, value, problems)


# --------------------------------------------------------------------------- names

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=120))
def test_a_name_is_refused_at_write_time_exactly_when_the_store_cannot_round_trip_it(store, name):
    import unicodedata
    from urllib.parse import quote

    unholdable = (name in (".", "..") or name.startswith(".") or len(quote(name, safe="").encode()) > 240
                  or any(unicodedata.category(c) in ("Cc", "Cs") for c in name))
    try:
        store.set_checkpoint_meta(name, arch="x")
    except StoreError as exc:
        assert unholdable and "invalid checkpoint name" in str(exc)
        assert name not in store.checkpoints()
        return
    assert not unholdable
    assert store.checkpoints().count(name) == 1
    assert store.checkpoint_meta(name)["arch"] == "x"


@pytest.mark.parametrize("name,why", [(".hidden", "start with '.'"), ("a\x00b", "control character"),
                                      ("tab\there", "control character"), ("x" * 241, "240"),
                                      ("\u00e9" * 50, "percent-encoded")])
def test_names_the_store_cannot_round_trip_are_refused_before_anything_is_written(store, name, why):
    for call in (lambda: store.set_checkpoint_meta(name, a=1),
                 lambda: store.add_dataset(name, [0, 1], [1, 0]),
                 lambda: store.add_features("ckpt-00", "toy", name, train=np.ones((12, 2), np.float16),
                                            test=np.ones((30, 2), np.float16))):
        before = sorted(p for p in store.path.rglob("*"))
        with pytest.raises(StoreError, match="invalid (checkpoint|dataset|layer) name") as err:
            call()
        assert why in str(err.value)
        assert sorted(p for p in store.path.rglob("*")) == before


def test_a_long_layer_name_that_fits_probes_end_to_end(tmp_path, store):
    layer = "l" * 235
    b = store.block("ckpt-00", "toy", "block0")
    store.add_features("ckpt-00", "toy", layer, train=np.asarray(b.train), test=np.asarray(b.test), layer_index=5)
    df = probe_store(store.path, tmp_path / "run", layers="last", checkpoints=["ckpt-00"], **KW).results()
    assert set(df["layer"]) == {layer}


def test_a_name_too_long_for_a_part_file_is_refused_before_compute(tmp_path, capsys, monkeypatch, store):
    layer = "m" * 250           # a store written by other code: canonical, fits its file system
    src = store._block_dir("ckpt-00", "toy", "block1")
    dst = src.parent / layer
    src.rename(dst)
    _edit(dst / "block.json", _set("layer", layer))
    code, _, err = _cli(capsys, "probe", store.path, "-o", tmp_path / "run", *FLAGS)
    assert code == 2 and "invalid layer name 'mmmm" in err and "240" in err
    assert not (tmp_path / "run").exists()
    # A file system with shorter names (eCryptfs allows 143 bytes): the part files are checked up front.
    dst.rename(src)
    _edit(src / "block.json", _set("layer", "block1"))
    layer = "n" * 140
    b = store.block("ckpt-00", "toy", "block0")
    store.add_features("ckpt-00", "toy", layer, train=np.asarray(b.train), test=np.asarray(b.test))
    monkeypatch.setattr(os, "pathconf", lambda p, what: 143 if what == "PC_NAME_MAX" else 4096)
    code, _, err = _cli(capsys, "probe", store.path, "-o", tmp_path / "run", *FLAGS)
    assert code == 2 and "part file" in err and "148 bytes (limit 143)" in err and layer[:20] in err
    assert not (tmp_path / "run").exists()


def test_non_canonical_and_colliding_directories_are_named(tmp_path, capsys, store):
    root = store.path / "checkpoints"
    (root / "ckpt-01").rename(root / "ckpt%2D01")
    for msgs in ([str(p) for p in store.check()],):
        assert any("ckpt%2D01" in m and "not the canonical encoding" in m and "'ckpt-01'" in m for m in msgs)
    code, _, err = _cli(capsys, "probe", store.path, "-o", tmp_path / "r1", *FLAGS)
    assert code == 2 and "ckpt%2D01" in err and "canonical" in err
    shutil.copytree(root / "ckpt%2D01", root / "ckpt-01")
    code, _, err = _cli(capsys, "probe", store.path, "-o", tmp_path / "r2", *FLAGS)
    assert code == 2 and "ckpt%2D01" in err and str(root / "ckpt-01") in err and "both decode" in err


def test_duplicate_selections_are_deduplicated(tmp_path, store):
    once = probe_store(store.path, tmp_path / "a", datasets=["toy"], layers=["block0"], **KW).results()
    twice = probe_store(store.path, tmp_path / "b", datasets=["toy", "toy"], layers=["block0", "block0"],
                        checkpoints=["ckpt-0*", "*"], **KW).results()
    assert not twice.duplicated(["checkpoint", "layer", "dataset", "shots", "seed", "l2"]).any()
    pd.testing.assert_frame_equal(once, twice)


def test_incomplete_blocks_are_warned_counted_and_refused_with_strict(tmp_path, capsys, store):
    (store._block_dir("ckpt-01", "toy", "block0") / "block.json").unlink()
    with pytest.warns(UserWarning, match=r"1 requested block\(s\) are incomplete.*'ckpt-01'.*'block0'"):
        run = probe_store(store.path, tmp_path / "run", **KW)
    assert run.blocks_total == 3
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["incomplete_blocks"] == 1
    code, _, err = _cli(capsys, "probe", store.path, "-o", tmp_path / "strict", "--strict", *FLAGS)
    assert code == 2 and "incomplete" in err and "--strict" in err
    assert not (tmp_path / "strict").exists()


# --------------------------------------------------------------------------- integrity

def _flip_a_data_byte(path: Path):
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_stops_the_run_unless_verification_is_off(tmp_path, capsys, store):
    _flip_a_data_byte(store._block_dir("ckpt-01", "toy", "block1") / "test.npy")
    code, _, err = _cli(capsys, "probe", store.path, "-o", tmp_path / "run", *FLAGS)
    assert code == 2 and "layer 'block1': test.npy fails its xxh3_64 check" in err
    assert len(list((tmp_path / "run" / "parts").rglob("*.parquet"))) == 3   # earlier blocks kept
    code, _, _ = _cli(capsys, "probe", store.path, "-o", tmp_path / "unverified", "--no-verify", *FLAGS)
    assert code == 0


def test_crc32_stores_still_verify_and_unchecksummed_blocks_are_counted(tmp_path, store):
    from plateaulab.store import array_crc32

    for layer in ("block0", "block1"):
        b = store.block("ckpt-00", "toy", layer)
        sums = {s: array_crc32(getattr(b, s)) for s in ("train", "test")}
        _edit(b.path / "block.json", lambda o: {**{k: v for k, v in o.items() if k != "xxh3_64"}, "crc32": sums})
    _edit(store._block_dir("ckpt-01", "toy", "block0") / "block.json", _drop("xxh3_64"))
    with pytest.warns(UserWarning, match="1 block"):
        probe_store(store.path, tmp_path / "ok", **KW)
    session = json.loads((tmp_path / "ok" / "manifest.json").read_text())["sessions"][-1]
    assert session["unverified_blocks"] == 1 and session["verify"]
    _flip_a_data_byte(store._block_dir("ckpt-00", "toy", "block1") / "train.npy")
    with pytest.raises(StoreError, match="layer 'block1': train.npy fails its crc32 check"):
        probe_store(store.path, tmp_path / "bad", **KW)


# --------------------------------------------------------------------------- resume that cannot be stale


def _rewrite_block(store, ck="ckpt-00", layer="block0", scale=3.0):
    b = store.block(ck, "toy", layer)
    store.add_features(ck, "toy", layer, train=np.asarray(b.train) * scale, test=np.asarray(b.test) * -scale,
                       layer_index=b.layer_index, overwrite=True)


@pytest.mark.parametrize("finished", [False, True])
def test_a_changed_block_is_recomputed_on_resume(tmp_path, monkeypatch, store, finished):
    run = tmp_path / "run"
    if finished:
        probe_store(store.path, run, **KW)
    else:
        with crash_after(monkeypatch, 1):
            probe_store(store.path, run, **KW)
    _rewrite_block(store)                   # the first block, whose part is already written
    with pytest.raises(RunError, match="'block0': the block or its dataset's labels changed"):
        probe_store(store.path, run, strict=True, **KW)
    with pytest.warns(UserWarning, match="recomputing"):
        resumed = probe_store(store.path, run, **KW)
    assert [(r["checkpoint"], r["layer"]) for r in resumed.recomputed] == [("ckpt-00", "block0")]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["sessions"][-1]["recomputed"][0]["layer"] == "block0" and manifest["complete"]
    straight = probe_store(store.path, tmp_path / "straight", **KW).results()
    pd.testing.assert_frame_equal(resumed.results(), straight)
    again = probe_store(store.path, run, **KW)        # nothing changed since: nothing recomputed
    assert again.recomputed == [] and again.blocks_done_now == 0


def test_changed_labels_recompute_every_part(tmp_path, store):
    probe_store(store.path, tmp_path / "run", **KW)
    ds = store.dataset("toy")
    y_test = ds.y_test.copy()
    y_test[:5] = (y_test[:5] + 1) % ds.num_classes
    store.add_dataset("toy", ds.y_train, y_test, num_classes=ds.num_classes, overwrite=True)
    with pytest.warns(UserWarning):
        again = probe_store(store.path, tmp_path / "run", **KW)
    assert len(again.recomputed) == 4
    pd.testing.assert_frame_equal(again.results(), probe_store(store.path, tmp_path / "s", **KW).results())


# --------------------------------------------------------------------------- files

def test_temp_files_of_a_killed_run_are_removed_and_nothing_else(tmp_path, monkeypatch, store):
    run = tmp_path / "run"
    with crash_after(monkeypatch, 2):
        probe_store(store.path, run, **KW)
    d = next((run / "parts").rglob("*.parquet")).parent
    ours = [d / ".plateaulab-0123456789abcdef.tmp", run / ".manifest.json.a1B2c3D4.tmp"]
    theirs = [d / "notes.tmp", d / ".hidden.tmp", run / "README"]
    for p in ours + theirs:
        p.write_text("x")
    probe_store(store.path, run, **KW)
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
    assert json.loads((run / "manifest.json").read_text())["sessions"][-1]["temp_files_removed"] == 2


def test_a_truncated_part_is_recomputed_and_said_so(tmp_path, store):
    run = tmp_path / "run"
    full = probe_store(store.path, run, **KW).results()
    part = sorted((run / "parts").rglob("*.parquet"))[1]
    part.write_bytes(part.read_bytes()[:100])
    with pytest.warns(UserWarning, match="cannot be read.*recomputing"):
        again = probe_store(store.path, run, **KW)
    assert again.blocks_done_now == 1 and "cannot be read" in again.recomputed[0]["reason"]
    pd.testing.assert_frame_equal(again.results(), full)


def test_a_refused_command_does_not_block_the_corrected_one(tmp_path, capsys, store):
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "probe", store.path, "-o", run, "--shots", "31", "--quiet")
    assert code == 2 and "fewer than shots=31" in err and "--shots" in err
    assert not run.exists() or not (run / "manifest.json").exists()
    # Refused while reading its first block (a bad array): the manifest exists but holds no result.
    _flip_a_data_byte(store._block_dir("ckpt-00", "toy", "block0") / "test.npy")
    code, _, _ = _cli(capsys, "probe", store.path, "-o", run, "--shots", "3", "--seeds", "1", "--quiet")
    assert code == 2 and (run / "manifest.json").exists()
    code, _, err = _cli(capsys, "probe", store.path, "-o", run, "--shots", "1,2", "--seeds", "1", "--quiet",
                        "--no-verify")
    assert code == 0, err


def test_a_full_disk_names_the_path_and_leaves_the_manifest_consistent(tmp_path, monkeypatch, store):
    import pyarrow.parquet as pq

    real, calls = pq.write_table, []

    def full_after_one(table, where, **kw):
        calls.append(1)
        if len(calls) > 1:
            where.write(b"PAR1 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kw)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(pq, "write_table", full_after_one)
        with pytest.raises(RunError, match=r"cannot write .*parts.*\.parquet: no space left on the device"):
            probe_store(store.path, run, **KW)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["sessions"][-1]["status"] == "failed"
    assert not [p for p in run.rglob("*.tmp")]
    assert len(list((run / "parts").rglob("*.parquet"))) == 1
    resumed = probe_store(store.path, run, **KW)
    assert resumed.blocks_done_now == 3
    pd.testing.assert_frame_equal(resumed.results(), probe_store(store.path, tmp_path / "s", **KW).results())


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_honour_the_umask(tmp_path, base_store, umask, mode):
    old = os.umask(umask)
    try:
        st2 = _tiny(tmp_path / "store")
        probe_store(st2.path, tmp_path / "run", **KW)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"]
    files += [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert files and {p.stat().st_mode & 0o777 for p in files} == {mode}


# --------------------------------------------------------------------------- limits checked up front

@pytest.mark.parametrize("seeds,words", [("99999999999999999999", ["--seeds", "GiB", "fewer seeds"]),
                                         ("1,18446744073709551616", ["--seeds", "2**63 - 1"]),
                                         ("0", ["--seeds", "at least 1"]),
                                         ("x", ["--seeds", "expected a number of seeds"])])
def test_seed_limits(tmp_path, capsys, store, seeds, words):
    with pytest.raises(SystemExit) if seeds == "x" else contextlib.nullcontext():
        code, _, err = _cli(capsys, "probe", store.path, "-o", tmp_path / "run", "--seeds", seeds, "--quiet")
    if seeds == "x":
        err = capsys.readouterr().err
        code = 2
    assert code == 2 and "Traceback" not in err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "run").exists()


def test_memory_estimate_is_checked_before_work_starts(tmp_path, capsys, monkeypatch, store):
    from plateaulab._run import plan

    monkeypatch.setattr(plan, "physical_memory", lambda: 64 * 2 ** 10)
    code, _, err = _cli(capsys, "probe", store.path, "-o", tmp_path / "run", "--shots", "1,2", "--seeds", "40",
                        "--l2", "1,2,4,8", "--quiet")
    assert code == 2 and "would need about" in err and "GiB" in err and "320 probes" in err
    assert not (tmp_path / "run").exists()


def test_memory_estimate_counts_each_local_worker(monkeypatch):
    """--workers N: each worker process holds the train indices and two blocks, so the estimate is N
    times a plain run's (plus the client's indices); a budget one process fits is refused for four."""
    from types import SimpleNamespace

    from plateaulab._run import plan
    from plateaulab.protocol import ProtocolError

    cfg = SimpleNamespace(seeds=list(range(10)), l2=[1.0, 2.0], shots=[1, 5], on_short="error")
    blocks = [SimpleNamespace(dataset="d", dim=768)]
    datasets = {"d": (100, np.full(100, 50))}
    indices = 8 * 10 * (1 + 5) * 100
    per_block = 2 * 10 * 2 * (4 * 769 * 100 + 200)
    one = indices + 2 * per_block
    monkeypatch.setattr(plan, "physical_memory", lambda: one)
    plan.check_resources(cfg, blocks, datasets)                      # exactly fits one process
    with pytest.raises(ProtocolError) as info:
        plan.check_resources(cfg, blocks, datasets, processes=4)
    assert "4 worker processes" in str(info.value) and "--workers" in str(info.value)
    monkeypatch.setattr(plan, "physical_memory", lambda: 4 * one + indices)
    plan.check_resources(cfg, blocks, datasets, processes=4)          # exactly fits four and the client


def test_workers_memory_refusal_starts_nothing(tmp_path, capsys, monkeypatch, store):
    pytest.importorskip("distributed")
    from plateaulab._run import plan

    monkeypatch.setattr(plan, "physical_memory", lambda: 64 * 2 ** 10)
    code, _, err = _cli(capsys, "probe", store.path, "-o", tmp_path / "run", "--shots", "1,2", "--seeds", "40",
                        "--workers", "3", "--quiet")
    assert code == 2 and "Traceback" not in err and "3 worker processes" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_broken_manifest_is_a_clear_error(tmp_path, store, text):
    from plateaulab.run import load_run

    probe_store(store.path, tmp_path / "run", **KW)
    (tmp_path / "run" / "manifest.json").write_text(text)
    with pytest.raises(RunError, match="manifest.json"):
        load_run(tmp_path / "run")
    with pytest.raises(RunError, match="manifest.json"):
        probe_store(store.path, tmp_path / "run", **KW)
