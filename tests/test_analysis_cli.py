"""`plateaulab fit` and `plateaulab sensitivity` on the real shared tables (open_clip: mlfoundations/open_clip
docs/openclip_results.csv 29b90b8d; model soups: mlfoundations/model-soups individual_model_results.jsonl 3bb0f409)."""

import json
from pathlib import Path

import numpy as np
import pytest

from plateaulab.analysis import bootstrap_fit, fit_saturating_power_law, load_openclip
from plateaulab.analysis.noise import noise_bootstrap
from plateaulab.cli import main
from conftest import DATA

SHARED = DATA  # the packaged copies of the published tables
SOUPS = SHARED / "model_soups" / "individual_model_results.jsonl"
FIT_KEYS = {"ds", "on", "k", "alpha", "e_ir", "saturation", "sse", "n_points", "hull_points", "identified", "on_bound"}


def run_json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_fit_packaged_openclip_with_bootstrap(capsys):
    out = run_json(capsys, ["fit", "builtin:openclip", "--ds", "CIFAR-100,EuroSAT", "--bootstrap", "50",
                            "--seed", "3", "--json"])
    assert [f["ds"] for f in out["fits"]] == ["CIFAR-100", "EuroSAT"]
    table = load_openclip()
    for f in out["fits"]:
        assert FIT_KEYS <= set(f) and set(f["ci"]) == {"k", "alpha", "e_ir", "saturation"}
        models = f["intervals"]["models"]
        assert models["n_boot"] == 50 and {"n_failed", "n_on_bound", "n_unidentified"} <= set(models)
        us, ds = table.pair(f["ds"])
        ref = fit_saturating_power_law(us, ds)
        assert f["saturation"] == pytest.approx(ref.saturation) and f["hull_points"] == ref.hull_points
        assert f["identifiable"] == ref.identifiable and f["flags"][:len(ref.flags)] == ref.flags
        assert f["hull_models"] == [m for m in table.long[table.long.ds_task == f["ds"]]["model"].iloc[ref.fit_indices]]
        bs = bootstrap_fit(us, ds, 50, seed=3)
        assert models["ci"]["saturation"] == pytest.approx(list(bs.ci["saturation"]))
    cifar, eurosat = out["fits"]
    # CIFAR-100's test split (10,000 images) and ImageNet's (50,000) are documented: the primary interval is
    # the measurement-noise one. EuroSAT's evaluation split is not, so its interval is the model bootstrap.
    assert cifar["ci_source"] == "noise" and cifar["n_boot"] == 50
    us, ds = table.pair("CIFAR-100")
    nb = noise_bootstrap(us, ds, 10_000, 50_000, n_boot=50, seed=3)
    assert cifar["ci"]["saturation"] == pytest.approx(list(nb.ci["saturation"]))
    assert eurosat["ci_source"] == "models" and any("test-set size is unknown" in x for x in eurosat["flags"])


def test_fit_csv_in_percent_and_all_points(tmp_path, capsys):
    table = load_openclip().wide()
    pct = table[["model", "ImageNet 1k", "Caltech-101", "Food-101"]].copy()
    pct[["ImageNet 1k", "Caltech-101", "Food-101"]] *= 100
    pct.loc[3, "Food-101"] = np.nan
    path = tmp_path / "pct.csv"
    pct.to_csv(path, index=False)
    out = run_json(capsys, ["fit", str(path), "--us", "ImageNet 1k", "--on", "all"])
    assert out["scale_detected"] == "percent" and out["n_dropped_nan"] == 1
    by = {f["ds"]: f for f in out["fits"]}
    assert by["Caltech-101"]["n_points"] == 121 and by["Food-101"]["n_points"] == 120
    us, ds = load_openclip().pair("Caltech-101")
    assert by["Caltech-101"]["alpha"] == pytest.approx(fit_saturating_power_law(us, ds, on="all").alpha)
    # --nan raise turns the dropped row into an error naming the model.
    assert main(["fit", str(path), "--us", "ImageNet 1k", "--nan", "raise"]) == 2
    assert "missing" in capsys.readouterr().err


def test_fit_model_soups_jsonl(capsys):
    out = run_json(capsys, ["fit", str(SOUPS), "--us", "ImageNet", "--ds", "ImageNetV2,ObjectNet",
                            "--model-col", "model_name"])
    assert [f["ds"] for f in out["fits"]] == ["ImageNetV2", "ObjectNet"]
    assert all(f["n_points"] >= 2 for f in out["fits"])


@pytest.mark.parametrize("argv, message", [
    (["fit", "builtin:openclip", "--ds", "Nope"], "unknown DS task(s) 'Nope'"),
    (["fit", str(SOUPS), "--us", "ImageNetX", "--loader", "table"], "known columns: model_name, ImageNet2p"),
    (["fit", str(SOUPS), "--us", "ImageNetX"], "whose US column is 'ImageNet'; --us='ImageNetX' does not apply"),
    (["fit", "/nonexistent/table.csv", "--us", "a"], "does not exist"),
])
def test_fit_bad_input_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("plateaulab fit: error:")


def test_fit_clip_benchmark_by_file_name(capsys):
    """CLIP_benchmark's JSON (LAION-AI/CLIP_benchmark b759cf60) is recognised by name: one fit per shots value."""
    out = run_json(capsys, ["fit", str(SHARED / "clip_benchmark" / "scaling_experiment_data2.json"), "--ds",
                            "vtab/pets", "--on", "all"])
    assert out["us"] == "imagenet1k-unverified"
    assert sorted(f["shots"] for f in out["fits"]) == [-1, 10]
    assert all(f["ds"] == "vtab/pets" and f["n_points"] == 12 for f in out["fits"])
    assert main(["fit", str(SHARED / "clip_benchmark" / "scaling_experiment_data2.json"), "--us", "cifar100"]) == 2
    assert "whose US column is 'imagenet1k-unverified'" in capsys.readouterr().err


def test_loader_table_on_a_builtin(capsys):
    """The generic reader on the shipped open_clip file: the id needs name + pretrained, and the size columns
    (params, FLOPs) are left out as no accuracies, with a note; the fits equal the dedicated loader's."""
    out = run_json(capsys, ["fit", "builtin:openclip", "--loader", "table", "--us", "ImageNet 1k",
                            "--id", "name,pretrained"])
    tasks = [f["ds"] for f in out["fits"]]
    assert "params (M)" not in tasks and "FLOPs (B)" not in tasks and "CIFAR-100" in tasks
    assert any("params (M)" in n and "not read as accuracies" in n for n in out["notes"])
    own = {f["ds"]: f for f in run_json(capsys, ["fit", "builtin:openclip"])["fits"]}
    generic = {f["ds"]: f for f in out["fits"]}
    assert generic["CIFAR-100"]["saturation"] == pytest.approx(own["CIFAR-100"]["saturation"])
