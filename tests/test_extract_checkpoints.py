"""Many checkpoint files: loading, metadata, the command line, and resuming after kill -9."""

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from plateaulab import FeatureStore, InputError  # noqa: E402
from plateaulab.cli import main as cli_main  # noqa: E402
from plateaulab.extract import CheckpointSpec, extract_checkpoints  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
_spec = importlib.util.spec_from_file_location("test_extract_models", TESTS / "test_extract_models.py")
M = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(M)
# The CLI and the subprocesses import the models by module name: put tests/ on the path.
sys.modules.setdefault("test_extract_models", M)
ARCH = "test_extract_models:small_cnn"


@pytest.fixture()
def ckpts(tmp_path):
    """Three checkpoint files of one architecture, saved the ways training scripts save them."""
    d = tmp_path / "runs"
    d.mkdir()
    models = [M.trained_like_cnn(s) for s in range(3)]
    torch.save(models[0].state_dict(), d / "step100.pt")
    # Lightning / DDP style: nested under "state_dict" with a "module." prefix.
    torch.save({"state_dict": {f"module.{k}": v for k, v in models[1].state_dict().items()}, "epoch": 3},
               d / "step200.pt")
    from safetensors.torch import save_file
    save_file(models[2].state_dict(), str(d / "step300.safetensors"))
    return d, models


@pytest.fixture()
def data():
    x, y = M.images(36, seed=5), np.arange(36) % 3
    return dict(train=(x[:24], y[:24]), test=(x[24:], y[24:])), x


def test_many_checkpoints_features_and_metadata(tmp_path, ckpts, data):
    d, models = ckpts
    splits, x = data
    rep = extract_checkpoints(str(d / "step*"), tmp_path / "st", "toy", architecture=M.small_cnn, dtype="float32",
                              metadata={"upstream": "synthetic"}, progress=False, **splits)
    assert [p.status for p in rep.pairs] == ["extracted"] * 3
    st = FeatureStore.open(tmp_path / "st")
    assert st.checkpoints() == ["step100", "step200", "step300"]
    for name, model in zip(st.checkpoints(), models):
        want = M.manual_resnet(model, x[24:])
        assert st.layers(name, "toy") == list(want)
        for layer, w in want.items():
            np.testing.assert_allclose(st.block(name, "toy", layer).test, w, rtol=1e-5, atol=1e-5)
        meta = st.checkpoint_meta(name)
        f = next(d.glob(name + ".*"))
        assert meta["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert meta["file"] == str(f.resolve()) and meta["file_bytes"] == f.stat().st_size
        assert meta["parameters"] == sum(p.numel() for p in model.parameters())
        assert meta["upstream"] == "synthetic" and meta["architecture"].endswith("small_cnn")
    # Different weights give different features: the skeleton really was reloaded per file.
    assert not np.allclose(st.block("step100", "toy", "layer3").test, st.block("step200", "toy", "layer3").test)
    again = extract_checkpoints(str(d / "step*"), tmp_path / "st", "toy", architecture=M.small_cnn, progress=False,
                                **splits)
    assert [p.status for p in again.pairs] == ["skipped"] * 3


def test_architecture_file_pairs_names_and_specs(tmp_path, ckpts, data):
    d, models = ckpts
    splits, _ = data
    (d / "a").mkdir()
    (d / "b").mkdir()
    for sub, m in (("a", models[0]), ("b", models[1])):
        torch.save(m.state_dict(), d / sub / "last.pt")
    # An import path runs code: it takes allow_import=True (a callable or a registered name does not).
    extract_checkpoints([(ARCH, d / "a" / "last.pt"), (M.small_cnn, str(d / "b" / "last.pt")),
                         CheckpointSpec(d / "step300.safetensors", M.small_cnn, name="final", metadata={"epochs": 9})],
                        tmp_path / "st", "toy", progress=False, allow_import=True, **splits)
    st = FeatureStore.open(tmp_path / "st")
    # Equal stems become paths relative to the common folder.
    assert st.checkpoints() == ["a/last", "b/last", "final"]
    assert st.checkpoint_meta("a/last")["architecture"] == ARCH
    assert st.checkpoint_meta("final")["epochs"] == 9
    np.testing.assert_array_equal(np.asarray(st.block("a/last", "toy", "layer1").train),
                                  np.asarray(st.block("a/last", "toy", "layer1").train))


def test_missing_unreadable_and_mismatched_checkpoints(tmp_path, ckpts, data):
    d, _ = ckpts
    splits, _ = data
    with pytest.raises(InputError, match=r"checkpoint file .*nope\.pt does not exist.*never downloads"):
        extract_checkpoints([d / "nope.pt"], tmp_path / "st", "toy", architecture=M.small_cnn, **splits)
    with pytest.raises(InputError, match="matches no files"):
        extract_checkpoints(str(d / "*.ckpt"), tmp_path / "st", "toy", architecture=M.small_cnn, **splits)
    (d / "garbage.pt").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(InputError, match=r"cannot read checkpoint file .*garbage\.pt"):
        extract_checkpoints([d / "garbage.pt"], tmp_path / "st", "toy", architecture=M.small_cnn, **splits)
    (d / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match=r"garbage\.safetensors as safetensors"):
        extract_checkpoints([d / "garbage.safetensors"], tmp_path / "st", "toy", architecture=M.small_cnn, **splits)
    torch.save(M.TinyViT().state_dict(), d / "vit.pt")
    with pytest.raises(InputError, match=r"vit\.pt does not fit architecture TinyResNet: .*missing"):
        extract_checkpoints([d / "vit.pt"], tmp_path / "st", "toy", architecture=M.small_cnn, **splits)
    with pytest.raises(InputError, match="no architecture given; pass architecture"):
        extract_checkpoints([d / "step100.pt"], tmp_path / "st", "toy", **splits)
    # A name already in the store that came from a different file is not silently mixed.
    extract_checkpoints([d / "step100.pt"], tmp_path / "st", "toy", architecture=M.small_cnn, progress=False,
                        **splits)
    torch.save(M.trained_like_cnn(7).state_dict(), d / "other.pt")
    with pytest.raises(InputError, match="sha256"):
        extract_checkpoints([CheckpointSpec(d / "other.pt", M.small_cnn, name="step100")], tmp_path / "st", "toy",
                            layers=["layer1"], progress=False, **splits)


def _write_npz(tmp_path, x, y):
    np.savez(tmp_path / "tr.npz", x=x[:24], y=y[:24])
    np.savez(tmp_path / "te.npz", x=x[24:], y=y[24:])
    return ["--dataset", "toy", "--train", str(tmp_path / "tr.npz"), "--test", str(tmp_path / "te.npz")]


def test_cli_manifest_and_list_layers(tmp_path, ckpts, data, capsys):
    d, _ = ckpts
    splits, x = data
    args = _write_npz(tmp_path, x, np.arange(36) % 3)
    (tmp_path / "ck.csv").write_text(
        "file,architecture,name,upstream_acc,data_size\n"
        f"runs/step100.pt,{ARCH},small-a,0.71,1000\n"
        f"{d / 'step300.safetensors'},{ARCH},small-b,0.83,30000\n")
    # The manifest's import paths are refused without --allow-import, naming the file, the line and the flag.
    assert cli_main(["extract", str(tmp_path / "st"), "--manifest", str(tmp_path / "ck.csv"), "--no-progress",
                     *args]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint manifest {tmp_path / 'ck.csv'}, line 2: architecture '{ARCH}' is an import path" in err
    assert "unless --allow-import is set" in err and "Traceback" not in err
    assert not (tmp_path / "st").exists(), "a refused manifest must not start the run"
    assert cli_main(["extract", str(tmp_path / "st"), "--manifest", str(tmp_path / "ck.csv"), "--no-progress",
                     "--allow-import", "--meta", "epochs=90", "--meta", "note=two runs", *args]) == 0
    assert "extracted 2 (checkpoint, dataset) pairs of 4 layers" in capsys.readouterr().out
    st = FeatureStore.open(tmp_path / "st")
    meta = st.checkpoint_meta("small-b")
    assert (meta["upstream_acc"], meta["data_size"], meta["epochs"], meta["note"]) == (0.83, 30000, 90, "two runs")
    assert cli_main(["extract", "--list-layers", "--arch", ARCH]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1:5] == ["layer1", "layer2", "layer3", "pre_logits"]
    assert "layer2.0.conv1\tConv2d" in out
    # --arch typed on the command line is the user's own choice: its import path needs no --allow-import.
    assert cli_main(["extract", str(tmp_path / "st2"), str(d / "step100.pt"), "--arch", ARCH, "--layers",
                     "layer9", *args]) == 2
    err = capsys.readouterr().err
    assert "layer 'layer9' does not exist" in err and "--layers takes the names" in err
    assert "`plateaulab extract --list-layers --arch ARCH` prints them" in err


# The child process of the kill -9 tests. The library has no test hook: the child wraps one of its
# real steps (a store block written, a batch's features written to the memmaps) so that the
# ``count``-th call SIGKILLs the process right after it, exactly where a `kill -9` could land.
_CHILD = """
import os, signal, sys
# A stale editable install's import redirector would shadow PYTHONPATH; drop it so the
# subprocess runs this checkout, as the in-process tests do.
sys.meta_path[:] = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]
kill_after, count = sys.argv[1], int(sys.argv[2])
if kill_after != "none":
    import plateaulab.extract.engine as engine
    import plateaulab.store as store
    owner, attr = {"blocks": (store.FeatureStore, "add_features"),
                   "batches": (engine._Capture, "store_chunk")}[kill_after]
    original, calls = getattr(owner, attr), [0]

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(owner, attr, wrapped)
from plateaulab.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _cli(tmp_path, argv, kill_after="none", count=0):
    # One intra-op thread: the models are tiny, and spinning OpenMP workers only slow a busy CI box.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "python"), str(TESTS)]), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", _CHILD, kill_after, str(count), *argv], capture_output=True,
                          text=True, env=env, cwd=tmp_path)


def _block_files(st):
    return {(ck, ds, layer): (st.block(ck, ds, layer).path / "block.json").stat().st_mtime_ns
            for ck, ds, layer in st.iter_blocks()}


@pytest.mark.parametrize("kill_after,count", [("blocks", 6), ("batches", 12)])
def test_resume_after_kill_9(tmp_path, ckpts, data, kill_after, count):
    """kill -9 mid-run (between two blocks of a pair, or mid-inference), then the same command finishes
    the work without redoing completed pairs, and the store equals an uninterrupted run's."""
    d, _ = ckpts
    _, x = data
    argv = ["extract", str(tmp_path / "st"), str(d / "step*"), "--arch", ARCH, "--no-progress",
            "--batch-size", "4", *_write_npz(tmp_path, x, np.arange(36) % 3)]
    killed = _cli(tmp_path, argv, kill_after, count)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    st = FeatureStore.open(tmp_path / "st")
    done_before = _block_files(st)
    # 4 layers per pair: 6 blocks is the first pair plus half of the second. A checkpoint takes 9
    # batches of 4 (24 train + 12 test rows), so 12 batches ends inside the second one's inference.
    if kill_after == "blocks":
        assert sorted(done_before) == sorted([("step100", "toy", n) for n in ("layer1", "layer2", "layer3", "pre_logits")]
                                             + [("step200", "toy", "layer1"), ("step200", "toy", "layer2")])
    else:
        assert {k[0] for k in done_before} == {"step100"} and len(done_before) == 4
        assert any((tmp_path / "st" / ".extract-tmp").iterdir()), "the killed pass should leave its memmaps"
    resumed = _cli(tmp_path, argv)
    assert resumed.returncode == 0, resumed.stderr
    assert "extracted 2 (checkpoint, dataset) pairs" in resumed.stdout and "1 already complete" in resumed.stdout
    after = _block_files(FeatureStore.open(tmp_path / "st"))
    assert len(after) == 12
    assert all(after[k] == v for k, v in done_before.items()), "completed blocks were rewritten"
    assert not list((tmp_path / "st" / ".extract-tmp").iterdir()), "stale temporary memmaps were left"
    clean = _cli(tmp_path, [a if a != str(tmp_path / "st") else str(tmp_path / "clean") for a in argv])
    assert clean.returncode == 0, clean.stderr
    a, b = FeatureStore.open(tmp_path / "st"), FeatureStore.open(tmp_path / "clean")
    for ck, ds, layer in b.iter_blocks():
        for s in ("train", "test"):
            np.testing.assert_array_equal(getattr(a.block(ck, ds, layer), s), getattr(b.block(ck, ds, layer), s))
    assert a.check(deep=True) == []
    meta = json.loads((tmp_path / "st" / "checkpoints" / "step200" / "meta.json").read_text())
    assert meta["extraction"]["layers"] == ["layer1", "layer2", "layer3", "pre_logits"]
