"""plateaulab study: the default study on the packaged open_clip table, table and run inputs, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plateaulab.errors import InputError
from plateaulab.report.study import read_fits, run_study

FIT_KEYS = {"ds", "on", "k", "alpha", "e_ir", "saturation", "sse", "n_points", "hull_points", "identified",
            "on_bound"}


@pytest.fixture(scope="module")
def default_report(tmp_path_factory):
    """`plateaulab study -o DIR` with no input: the packaged open_clip table, default options but a small
    bootstrap and fewer sensitivity trials to keep the suite short."""
    from plateaulab.cli import main

    out = tmp_path_factory.mktemp("default") / "report"
    rc = main(["study", "-o", str(out), "--bootstrap", "100", "--trials", "3", "--quiet"])
    assert rc == 0
    return out


def test_default_study_writes_every_artefact(default_report):
    out = default_report
    html = (out / "report.html").read_text()
    for name in ("fig1_saturation_grid", "fig3_sensitivity", "figF20_spearman_ds_ds", "figF21_spearman_ds_us",
                 "fig5_hull_overlay"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (out / "figures" / f"{name}.svg").exists()
    for name in ("parameters", "tableF3_prediction_power", "points", "sensitivity", "spearman_ds_ds", "spearman_ds_us",
                 "coverage"):
        assert (out / "tables" / f"{name}.csv").exists()
        json.loads((out / "tables" / f"{name}.json").read_text())
    # self-contained: figures inline, nothing fetched from elsewhere
    assert html.count("data:image/png;base64,") >= 5
    assert not re.search(r'(src|href)="(https?:)?//', html)
    # provenance of the packaged table
    assert "mlfoundations/open_clip" in html and "29b90b8d" in html


def test_default_study_fits_cover_every_classification_task(default_report):
    from plateaulab.analysis import load_openclip

    table = load_openclip()
    fits = read_fits(default_report)
    assert [f["ds"] for f in fits] == list(table.ds_tasks)
    assert "ImageNet 1k" not in {f["ds"] for f in fits}
    for f in fits:
        assert FIT_KEYS <= set(f)
        assert f["on"] == "hull"
        assert f["saturation"] == pytest.approx(1.0 - f["e_ir"])
        assert set(f["ci"]) >= {"k", "alpha", "e_ir", "saturation"} and f["ci_source"] in ("noise", "models")
        assert f["n_boot"] == 100 and f["n_failed"] <= 100
        models = f["intervals"]["models"]
        assert models["n_boot"] == 100 and models["n_failed"] + models["n_on_bound"] <= 100
        # a fit on 3 points is never called identified, nor one whose alpha sits at an edge of its range
        if f["n_points"] <= 3:
            assert not f["identified"]
        if f["alpha"] is not None and not 0.02 < f["alpha"] < 80:
            assert not f["identified"] and not f["identifiable"]["alpha"]
        assert f["identified"] == all(f["identifiable"][p] for p in ("k", "alpha", "e_ir"))


def test_fits_json_matches_direct_fit(default_report):
    """fits.json holds what fit_saturating_power_law / bootstrap_fit give on the same points."""
    from plateaulab.analysis import bootstrap_fit, fit_saturating_power_law, load_openclip

    table = load_openclip()
    fits = {f["ds"]: f for f in read_fits(default_report)}
    for task in ("Caltech-101", "CIFAR-100", "SUN397"):
        rows = table.long[table.long["ds_task"] == task].dropna(subset=["us", "ds"])
        direct = fit_saturating_power_law(rows["us"].to_numpy(), rows["ds"].to_numpy(), on="hull")
        assert fits[task]["saturation"] == pytest.approx(direct.saturation, abs=1e-9)
        assert fits[task]["hull_points"] == direct.hull_points
        boot = bootstrap_fit(rows["us"].to_numpy(), rows["ds"].to_numpy(), n_boot=100, on="hull", seed=0)
        assert fits[task]["intervals"]["models"]["ci"]["saturation"] == pytest.approx(list(boot.ci["saturation"]),
                                                                                    abs=1e-9)


def test_fits_json_has_the_schema_of_fit_json(default_report, tmp_path, capsys):
    from plateaulab.cli import main

    csv = Path(__import__("plateaulab").__file__).parent / "data" / "open_clip" / "openclip_results.csv"
    capsys.readouterr()
    rc = main(["fit", str(csv), "--us", "ImageNet 1k", "--ds", "Caltech-101,SUN397", "--bootstrap", "100",
               "--json"])
    assert rc == 0
    theirs = {f["ds"]: f for f in json.loads(capsys.readouterr().out)["fits"]}
    ours = {f["ds"]: f for f in read_fits(default_report)}
    for task, f in theirs.items():
        assert set(f) <= set(ours[task]) | {"shots"}
        for key in ("k", "alpha", "e_ir", "saturation", "hull_points", "identified"):
            assert ours[task][key] == pytest.approx(f[key]), key


def test_report_summaries_and_flags(default_report):
    params = pd.read_csv(default_report / "tables" / "parameters.csv")
    html = (default_report / "report.html").read_text()
    short = params[params["fit_points"] <= 3]
    assert not short.empty          # the real table has short hulls (PROTOCOL §3)
    for _, row in short.iterrows():
        assert f"not identified: {row['fit_points']} distinct fitted points" in row["flags"]
        assert not row["identified"] and row["status"].startswith("not identified")
    for _, row in params.iterrows():
        assert row["saturation_lo"] <= row["saturation_hi"]
        d = 3 if row["saturation_hi"] - row["saturation_lo"] < 0.02 else 2
        sat = (f"{row['saturation']:.{d}f} [{row['saturation_lo']:.{d}f}, {row['saturation_hi']:.{d}f}]")
        if row["saturation_identified"]:
            assert f"saturates at {sat}" in row["summary"]
        else:
            assert f"saturation not identified (fit gives {sat})" in row["summary"]
        assert f"the fit rests on {row['fit_points']} of {row['n_models']} models" in row["summary"]
        assert row["ds_task"] in html
    # The summary counts the identified saturations, and lists the others after them, with their reason.
    summary = pd.read_csv(default_report / "tables" / "summary.csv")
    n_ident = int(params["saturation_identified"].sum())
    assert f"The data identify the saturation of {n_ident} of {len(params)} tasks." in html
    assert summary["saturation_identified"].tolist() == sorted(summary["saturation_identified"], reverse=True)
    power = pd.read_csv(default_report / "tables" / "tableF3_prediction_power.csv")
    assert (power["std_residual"] <= power["std_mean"] + 1e-12).all()


def _wide_table(path: Path, n: int = 30, seed: int = 0) -> Path:
    """A wide accuracy table in percent: DS tasks following eq. (1) plus noise, one task with 2 models."""
    rng = np.random.default_rng(seed)
    us = np.sort(rng.uniform(0.3, 0.9, n))
    df = pd.DataFrame({"model": [f"m{i}" for i in range(n)], "upstream": 100 * us})
    for name, (k, a, e) in {"alpha_task": (0.9, 1.5, 0.1), "beta_task": (0.7, 2.5, 0.3)}.items():
        ds = 1 - (k * (1 - us) ** a + e) - np.abs(rng.normal(0, 0.02, n))
        df[name] = 100 * np.clip(ds, 0, 1)
    thin = np.full(n, np.nan)
    thin[:2] = [40.0, 50.0]
    df["thin_task"] = thin
    df.to_csv(path, index=False)
    return path


def test_table_input_partial_coverage_is_reported(tmp_path):
    table = _wide_table(tmp_path / "acc.csv")
    html_path = run_study(table, tmp_path / "rep", us="upstream", n_boot=50, sensitivity=False,
                          axis_scale="logit")
    html = html_path.read_text()
    fits = read_fits(tmp_path / "rep")
    assert {f["ds"] for f in fits} == {"alpha_task", "beta_task"}
    assert "Not analysed" in html and "thin_task" in html
    missing = pd.read_csv(tmp_path / "rep" / "tables" / "not_analysed.csv")
    assert missing["what"].tolist() == ["thin_task"] and "2 model" in missing["why"].iloc[0]
    assert "logit" in html
    # percent input detected: fits refer to 0-1 accuracies
    assert all(0 <= f["saturation"] <= 1 for f in fits)


def test_table_without_us_column_is_an_input_error(tmp_path):
    table = _wide_table(tmp_path / "acc.csv")
    with pytest.raises(InputError, match="ImageNet 1k"):
        run_study(table, tmp_path / "rep", us="ImageNet 1k", n_boot=10, sensitivity=False)
    assert not (tmp_path / "rep" / "report.html").exists()


def test_cli_bad_input_exits_2_with_message(tmp_path, capsys):
    from plateaulab.cli import main

    table = _wide_table(tmp_path / "acc.csv")
    capsys.readouterr()
    assert main(["study", str(table), "--us", "nope", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "plateaulab study: error:" in err and "nope" in err
    assert main(["study", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["study", str(tmp_path), "-o", str(tmp_path / "r")]) == 2     # a directory that is no run
    assert "is a directory but neither a probe run" in capsys.readouterr().err


def _fake_run(run_dir: Path, *, n_ck: int = 12, layers: int = 3, seed: int = 0) -> Path:
    """A hand-made run directory with the probe engine's layout (results, checkpoints, manifest)."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    rows = []
    us = np.sort(rng.uniform(0.4, 0.95, n_ck))
    for i, u in enumerate(us):
        for ds, e_ir in (("dsA", 0.1), ("dsB", 0.25)):
            for li in range(layers):
                for shots in (1, 5):
                    for s in range(2):
                        acc = 1 - ((1.0 - 0.15 * (layers - 1 - li)) * (1 - u) ** 1.5 + e_ir) \
                              - abs(rng.normal(0, 0.01)) - (0.05 if shots == 1 else 0.0)
                        rows.append(dict(checkpoint=f"ck{i:02d}", layer=f"L{li}", layer_index=li, dataset=ds,
                                         shots=shots, seed=s, l2=1024.0, accuracy=acc, selected=True))
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet")
    pd.DataFrame({"checkpoint": [f"ck{i:02d}" for i in range(n_ck)], "upstream_accuracy": us}).to_parquet(
        run_dir / "checkpoints.parquet")
    (run_dir / "manifest.json").write_text(json.dumps({"complete": True, "config": {}}))
    return run_dir


def test_run_input_uses_last_layer_and_draws_layers(tmp_path):
    run = _fake_run(tmp_path / "run")
    html = run_study(run, tmp_path / "rep", n_boot=50, sensitivity=False).read_text()
    fits = read_fits(tmp_path / "rep")
    assert {(f["ds"], f["shots"]) for f in fits} == {("dsA", 1), ("dsA", 5), ("dsB", 1), ("dsB", 5)}
    points = pd.read_csv(tmp_path / "rep" / "tables" / "points.csv")
    res = pd.read_parquet(run / "results.parquet")
    last = res[res["layer_index"] == 2].groupby(["checkpoint", "dataset", "shots"])["accuracy"].mean()
    got = points.set_index(["model", "ds_task", "shots"])["ds"]
    assert np.allclose(got.sort_index().to_numpy(), last.sort_index().to_numpy())
    assert (tmp_path / "rep" / "figures" / "fig6_layers.png").exists()
    assert (tmp_path / "rep" / "figures" / "fig2_params_vs_shots.png").exists()
    assert "Figure 6" in html and "Figure 2" in html


def test_run_input_with_a_chosen_layer(tmp_path):
    run = _fake_run(tmp_path / "run")
    run_study(run, tmp_path / "rep", n_boot=20, sensitivity=False, layer="L0")
    points = pd.read_csv(tmp_path / "rep" / "tables" / "points.csv")
    res = pd.read_parquet(run / "results.parquet")
    first = res[res["layer"] == "L0"].groupby(["checkpoint", "dataset", "shots"])["accuracy"].mean()
    got = points.set_index(["model", "ds_task", "shots"])["ds"]
    assert np.allclose(got.sort_index().to_numpy(), first.sort_index().to_numpy())
    with pytest.raises(InputError, match="no layer named 'L9'"):
        run_study(run, tmp_path / "rep2", n_boot=20, sensitivity=False, layer="L9")


@pytest.mark.parametrize("remove", ["results.parquet", "checkpoints.parquet", "manifest.json"])
def test_run_with_missing_piece_is_an_input_error(tmp_path, remove):
    run = _fake_run(tmp_path / "run")
    (run / remove).unlink()
    with pytest.raises(InputError, match=re.escape(remove)):
        run_study(run, tmp_path / "rep", n_boot=10, sensitivity=False)


def test_run_without_us_metadata_is_an_input_error(tmp_path):
    run = _fake_run(tmp_path / "run")
    pd.DataFrame({"checkpoint": [f"ck{i:02d}" for i in range(12)], "params": np.arange(12.0)}).to_parquet(
        run / "checkpoints.parquet")
    with pytest.raises(InputError, match="upstream_accuracy"):
        run_study(run, tmp_path / "rep", n_boot=10, sensitivity=False)


def test_run_with_some_datasets_unusable_reports_the_rest(tmp_path):
    run = _fake_run(tmp_path / "run")
    res = pd.read_parquet(run / "results.parquet")
    # dsB probed on two checkpoints only (e.g. features missing for the others)
    keep = (res["dataset"] == "dsA") | res["checkpoint"].isin(["ck00", "ck01"])
    res[keep].to_parquet(run / "results.parquet")
    html = run_study(run, tmp_path / "rep", n_boot=20, sensitivity=False).read_text()
    assert {f["ds"] for f in read_fits(tmp_path / "rep")} == {"dsA"}
    assert "Not analysed" in html and "dsB" in html and "only 2 model" in html


def test_report_renders_in_chromium(default_report, tmp_path):
    """The documented look-check (docs/STUDY.md): render report.html headless and check that the page is
    drawn, with figures, across its width. Skipped where Chromium is not installed."""
    from plateaulab.report.render import find_chromium, screenshot

    if find_chromium() is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    from matplotlib.image import imread

    png = screenshot(default_report / "report.html", tmp_path / "page.png", width=1400, height=3000)
    img = imread(png)[..., :3]
    assert img.shape[:2] == (3000, 1400)
    ink = img.mean(axis=2) < 0.85               # anything darker than the background
    assert 0.01 < ink.mean() < 0.5              # text and figures drawn, not a blank or black page
    # figures span the page: ink in every tenth of the width within the figure-1 area
    cols = ink[1000:3000].reshape(2000, 10, 140).any(axis=(0, 2))
    assert cols[1:9].all()
    # colour present (red fits, blue points): an all-grey page means the images failed to load
    rgb = img[1000:3000]
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 0.25).mean() > 0.002


def test_public_table_recognised_by_name_and_ds_subset(tmp_path):
    """A copy of openclip_results.csv keeps its loader (model id name/pretrained, US ImageNet 1k); the
    same file under another name needs --us like any table."""
    import shutil

    import plateaulab

    src = Path(plateaulab.__file__).parent / "data" / "open_clip" / "openclip_results.csv"
    shutil.copy(src, tmp_path / "openclip_results.csv")
    html = run_study(tmp_path / "openclip_results.csv", tmp_path / "rep", ds="CIFAR-10,SUN397", n_boot=20,
                     sensitivity=False).read_text()
    assert [f["ds"] for f in read_fits(tmp_path / "rep")] == ["CIFAR-10", "SUN397"]
    assert "29b90b8d" in html
    with pytest.raises(InputError, match="us='CIFAR-10' does not apply") as err:
        run_study(tmp_path / "openclip_results.csv", tmp_path / "rep2", us="CIFAR-10", n_boot=20)
    assert err.value.param == "us"      # the CLI spells it --us
    shutil.copy(src, tmp_path / "renamed.csv")
    # read by the generic loader: the model id is name + pretrained ('name' alone repeats, and is refused)
    run_study(tmp_path / "renamed.csv", tmp_path / "rep3", us="ImageNet 1k", ds=["CIFAR-10"], n_boot=20,
              sensitivity=False, id="name,pretrained")
    assert [f["ds"] for f in read_fits(tmp_path / "rep3")] == ["CIFAR-10"]


def test_table_with_unusable_columns_reports_the_usable_ones(tmp_path):
    """load_table refuses a table with a constant DS column; the study loads the other columns and names
    the refused ones with load_table's reason."""
    path = _wide_table(tmp_path / "acc.csv")
    df = pd.read_csv(path)
    df["constant_task"] = 50.0
    df["empty_task"] = np.nan
    df.to_csv(path, index=False)
    html = run_study(path, tmp_path / "rep", us="upstream", n_boot=20, sensitivity=False).read_text()
    assert {f["ds"] for f in read_fits(tmp_path / "rep")} == {"alpha_task", "beta_task"}
    missing = pd.read_csv(tmp_path / "rep" / "tables" / "not_analysed.csv").set_index("what")["why"]
    assert set(missing.index) == {"thin_task", "constant_task", "empty_task"}
    assert "constant" in missing["constant_task"] and str(path) in missing["constant_task"]
    assert "constant_task" in html and "empty_task" in html


def test_report_lists_the_analyses_it_does_not_hold(default_report):
    """Every analysis A1-A10 is in the report or named, with what the input lacks (open_clip's table has one
    zero-shot column per task, no scale axes, no layers and no hyper-parameters)."""
    coverage = pd.read_csv(default_report / "tables" / "coverage.csv").set_index("id")
    assert list(coverage.index) == [f"A{i}" for i in range(1, 11)]
    absent = coverage[~coverage["in_report"]]
    assert list(absent.index) == ["A3", "A6", "A9", "A10"]
    assert coverage.loc[coverage["in_report"], "why"].isna().all()
    html = (default_report / "report.html").read_text()
    assert "Analyses not in this report</h2>" in html
    for key, words in {"A3": "several shot counts", "A6": "differ in one scale axis only", "A9": "several layers",
                       "A10": "--hparams"}.items():
        assert "the input lacks" in absent.loc[key, "why"] and words in absent.loc[key, "why"]
        assert f"{key} {coverage.loc[key, 'analysis']} ({coverage.loc[key, 'paper']}): not in this report because " \
               f"{absent.loc[key, 'why']}" in html.replace("&#x27;", "'")
    # what the report holds is drawn: Figure F.2 (A5) and the sections of A1, A2, A4, A7, A8
    assert (default_report / "figures" / "figF2_axis_scales.png").stat().st_size > 10_000
    for heading in ("Figure 1", "Figure F.2", "Table F.3", "Figure 3", "Figure 5", "Figures F.20, F.21"):
        assert heading in html
