"""Architectures are named through a registry; nothing in a data file is imported unless allowed.

A manifest is data: ``os:abort`` in its architecture column must be an error (exit status 2 and a
message naming the file, the line and the flag), never a call. The refusals need neither torch nor
timm, so most of these tests run everywhere.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plateaulab import InputError
from plateaulab.extract import (read_manifest, register_architecture, registered_architectures,
                                resolve_architecture, unregister_architecture)
from plateaulab.extract.checkpoints import expand_checkpoints

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture()
def registered():
    """Registers two names for one test and removes them afterwards."""
    names = []

    def add(name, builder, **kw):
        register_architecture(name, builder, **kw)
        names.append(name)
        return builder

    yield add
    for n in names:
        unregister_architecture(n)


def _manifest(tmp_path, arch, suffix=".csv"):
    (tmp_path / "w.pt").write_bytes(b"")
    p = tmp_path / f"m{suffix}"
    if suffix == ".csv":
        p.write_text(f"file,architecture,name\nw.pt,{arch},a\n")
    else:
        p.write_text(json.dumps({"file": "w.pt", "architecture": arch}) + "\n")
    return p


def _child_cli(tmp_path, argv):
    """The command line in a child process: a regression that did call os.abort kills only the child."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]; "
            "from plateaulab.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)


def test_os_abort_in_a_manifest_is_refused_not_called(tmp_path):
    m = _manifest(tmp_path, "os:abort")
    (tmp_path / "tr.npz").write_bytes(b"")
    out = _child_cli(tmp_path, ["extract", str(tmp_path / "st"), "--manifest", str(m), "--dataset", "d",
                                "--train", "tr.npz", "--test", "tr.npz", "--no-progress"])
    assert out.returncode == 2, (out.returncode, out.stderr)  # -6 (SIGABRT) if os.abort had been called
    err = out.stderr
    assert err.startswith("plateaulab extract: error: ") and "Traceback" not in err
    assert f"checkpoint manifest {m}, line 2: architecture 'os:abort' is an import path" in err
    assert "unless --allow-import is set" in err and "register_architecture" in err
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("arch", ["os:abort", "builtins:eval", "subprocess:getoutput", "os.path:join"])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_import_paths_in_a_manifest_are_refused(tmp_path, arch, suffix):
    m = _manifest(tmp_path, arch, suffix)
    with pytest.raises(InputError, match=rf"manifest .*m\{suffix}, line \d+: architecture '{arch}' is an import "
                                         r"path .*unless allow_import is set") as info:
        read_manifest(m)
    assert info.value.param == "allow_import"


def test_import_paths_given_to_the_library_are_refused_too(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    # Entries built by code from a data file look the same as a manifest's: the library refuses them as well.
    with pytest.raises(InputError, match=r"checkpoint file .*w\.pt: architecture 'builtins:eval' is an import path"):
        expand_checkpoints([{"file": str(tmp_path / "w.pt"), "architecture": "builtins:eval"}])
    with pytest.raises(InputError, match="import path"):
        resolve_architecture("os:abort")


def test_allow_import_imports_and_names_builder_errors(tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, str(TESTS))
    try:
        arch = resolve_architecture("test_extract_models:small_cnn", allow_import=True)
        assert arch.kind == "import" and arch.label == "test_extract_models:small_cnn"
        assert type(arch.build()).__name__ == "TinyResNet"
        # The manifest path is allowed with the flag as well.
        m = _manifest(tmp_path, "test_extract_models:small_cnn")
        assert read_manifest(m, allow_import=True)[0]["architecture"] == "test_extract_models:small_cnn"
    finally:
        sys.path.remove(str(TESTS))
    # Allowed but not a model builder: an error naming the architecture, not a traceback.
    with pytest.raises(InputError, match=r"architecture 'builtins:eval': building the model failed \(TypeError"):
        resolve_architecture("builtins:eval", allow_import=True).build()
    with pytest.raises(InputError, match=r"'builtins:len'.*not a torch nn.Module|building the model failed"):
        resolve_architecture("builtins:len", allow_import=True).build()
    with pytest.raises(InputError, match=r"cannot import 'nope' from 'os' \(AttributeError"):
        resolve_architecture("os:nope", allow_import=True)
    with pytest.raises(InputError, match=r"cannot import 'f' from 'no_such_module_xyz' \(ModuleNotFoundError"):
        resolve_architecture("no_such_module_xyz:f", allow_import=True)
    with pytest.raises(InputError, match="'sep' is a str, not a callable"):
        resolve_architecture("os:sep", allow_import=True)


@pytest.mark.parametrize("arch", ["models/vit.py", "./vit.py:build", "/tmp/evil.py:build", "..\\x.py", "~/m.pt",
                                  "vit.py"])
def test_path_like_names_are_refused(tmp_path, arch):
    m = _manifest(tmp_path, arch.replace(",", ""))
    with pytest.raises(InputError, match=r"line 2: architecture .* looks like a file path; .*hf:DIR"):
        read_manifest(m, allow_import=True)  # not even allow_import turns a file into code


def test_registered_names_resolve_with_did_you_mean(tmp_path, registered):
    def my_builder():
        raise AssertionError("resolving must not build")

    registered("lab-vit-s16", my_builder)
    registered("lab-resnet", my_builder)
    assert {"lab-vit-s16", "lab-resnet"} <= set(registered_architectures())
    arch = resolve_architecture("lab-vit-s16")
    assert (arch.kind, arch.label, arch.target) == ("registered", "lab-vit-s16", my_builder)
    m = _manifest(tmp_path, "lab-vit-s16")
    assert read_manifest(m)[0]["architecture"] == "lab-vit-s16"
    with pytest.raises(InputError, match=r"architecture 'lab-vit-s61' is not registered \(did you mean 'lab-vit-s16'"
                                         r"\?\).*registered: .*lab-resnet, lab-vit-s16"):
        read_manifest(_manifest(tmp_path, "lab-vit-s61"))
    with pytest.raises(InputError, match=r"'totally-unknown' is not registered; name an architecture as timm:NAME"):
        resolve_architecture("totally-unknown")


def test_register_architecture_rules(registered):
    def b():
        return None

    with pytest.raises(InputError, match="':' is reserved"):
        register_architecture("lab:vit", b)
    with pytest.raises(InputError, match="must be letters"):
        register_architecture("", b)
    with pytest.raises(InputError, match="must be callable"):
        register_architecture("lab-x", "os:abort")
    registered("lab-x", b)
    registered("lab-x", b)  # the same builder again is harmless

    def other():
        return None

    with pytest.raises(InputError, match=r"'lab-x' is already registered .*replace=True"):
        register_architecture("lab-x", other)
    register_architecture("lab-x", other, replace=True)
    assert resolve_architecture("lab-x").target is other

    @register_architecture("lab-decorated")
    def decorated():
        return None

    try:
        assert resolve_architecture("lab-decorated").target is decorated
    finally:
        unregister_architecture("lab-decorated")


def test_registered_builder_extracts(tmp_path, registered):
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    spec = importlib.util.spec_from_file_location("extract_models_reg", TESTS / "test_extract_models.py")
    M = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(M)
    from plateaulab import FeatureStore
    from plateaulab.extract import extract_checkpoints

    registered("lab-small-cnn", M.small_cnn)
    model = M.trained_like_cnn(4)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "m.jsonl").write_text(json.dumps({"file": "w.pt", "architecture": "lab-small-cnn", "epochs": 3}) + "\n")
    x, y = M.images(12, seed=1), np.arange(12) % 2
    extract_checkpoints(read_manifest(tmp_path / "m.jsonl"), tmp_path / "st", "d", train=(x[:8], y[:8]),
                        test=(x[8:], y[8:]), dtype="float32", progress=False)
    st = FeatureStore.open(tmp_path / "st")
    meta = st.checkpoint_meta("w")
    assert meta["architecture"] == "lab-small-cnn" and meta["epochs"] == 3
    np.testing.assert_allclose(st.block("w", "d", "layer3").test, M.manual_resnet(model, x[8:])["layer3"],
                               rtol=1e-5, atol=1e-5)


def test_hf_directories_resolve_against_the_manifest_and_never_run_remote_code(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(InputError, match=r"line 2: architecture 'hf:nowhere': .*nowhere/config\.json does not exist"):
        read_manifest(_manifest(tmp_path, "hf:nowhere"))
    with pytest.raises(InputError, match="names no directory"):
        resolve_architecture("hf:")
    model_dir = tmp_path / "mymodel"
    model_dir.mkdir()
    # A config that asks for remote code: its module would abort the process if it were ever imported.
    (model_dir / "config.json").write_text(json.dumps(
        {"model_type": "evil-remote", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (model_dir / "evil.py").write_text("import os\nos.abort()\n")
    rows = read_manifest(_manifest(tmp_path, "hf:mymodel"))
    assert rows[0]["architecture"] == f"hf:{model_dir.resolve()}"  # relative to the manifest's folder
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    with pytest.raises(InputError, match=r"transformers cannot build a model from .*config\.json.*never runs"):
        resolve_architecture(rows[0]["architecture"]).build()


def test_timm_and_torchvision_names_without_the_package():
    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed: tests/test_extract_timm.py checks timm names")
    from plateaulab.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match=r"architecture 'timm:resnet18' needs the Python package 'timm'"):
        resolve_architecture("timm:resnet18")


def test_cli_typed_import_path_counts_as_permission_but_not_for_the_manifest(tmp_path):
    """--arch module:attr typed by the user is allowed; the same command's manifest rows are not."""
    m = _manifest(tmp_path, "os:abort")
    out = _child_cli(tmp_path, ["extract", str(tmp_path / "st"), "--manifest", str(m), "--arch", "os:getcwd",
                                "--dataset", "d", "--train", "x.npz", "--test", "x.npz", "--no-progress"])
    assert out.returncode == 2 and "architecture 'os:abort' is an import path" in out.stderr, out.stderr
    # The typed one was resolved (imported, not called): an unimportable one is named as such.
    out = _child_cli(tmp_path, ["extract", "--list-layers", "--arch", "no_such_module_xyz:f"])
    assert out.returncode == 2 and "cannot import 'f' from 'no_such_module_xyz'" in out.stderr, out.stderr
