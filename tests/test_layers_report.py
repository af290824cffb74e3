"""A9 in the report: the synth demo (synth -> probe -> study) gets Figure 6 and the table of each checkpoint's
earliest layer within epsilon (--layer-tol) of its best, checked against results.parquet with pandas; a run
of one checkpoint (nothing to fit) still gets its layer profile."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from plateaulab.report.study import run_study


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`plateaulab synth STORE --checkpoints 12` then `plateaulab probe STORE -o RUN --shots 5,10 --seeds 2`."""
    from plateaulab.cli import main

    base = tmp_path_factory.mktemp("demo")
    assert main(["synth", str(base / "store"), "--checkpoints", "12", "--test-per-class", "60"]) == 0
    assert main(["probe", str(base / "store"), "-o", str(base / "run"), "--shots", "5,10", "--seeds", "2",
                 "--quiet"]) == 0
    return base / "run"


def _expected_earliest(run, shots, tol):
    res = pd.read_parquet(run / "results.parquet")
    res = res[res["selected"] & (res["shots"] == shots)]
    acc = res.groupby(["dataset", "checkpoint", "layer_index"])["accuracy"].mean().reset_index()
    best = acc.groupby(["dataset", "checkpoint"])["accuracy"].transform("max")
    near = acc[acc["accuracy"] >= best - tol - 1e-12]
    return near.groupby(["dataset", "checkpoint"])["layer_index"].min()


def test_synth_demo_report_has_the_layer_figure_and_table(demo_run, tmp_path, capsys):
    from plateaulab.cli import main

    out = tmp_path / "rep"
    assert main(["study", str(demo_run), "-o", str(out), "--bootstrap", "10", "--no-sensitivity", "--layer-tol",
                 "0.02", "--quiet"]) == 0
    html = (out / "report.html").read_text()
    assert (out / "figures" / "fig6_layers.png").stat().st_size > 20_000
    assert "Accuracy per layer (Figure 6)" in html and "&epsilon; = 0.02" in html
    early = pd.read_csv(out / "tables" / "layer_earliest.csv")
    assert len(early) == 12 * 3 and (early["layers"] == 3).all()
    # 10 shots: the count that covers every task, and the most shots
    expect = _expected_earliest(demo_run, 10, 0.02)
    got = early.set_index(["dataset", "checkpoint"])["earliest index"]
    pd.testing.assert_series_equal(got.sort_index(), expect.sort_index(), check_names=False, check_dtype=False)
    assert (early["its accuracy"] >= early["best accuracy"] - 0.02 - 1e-12).all()
    assert (early["earliest index"] <= early["best index"]).all()
    # far_task peaks at the second-to-last layer by construction (plateaulab.synth)
    far = early[early["dataset"] == "far_task"]
    assert (far["best layer"] == "block2").mean() > 0.5
    # a larger epsilon never picks a later layer
    wide = _expected_earliest(demo_run, 10, 0.05)
    assert (wide.sort_index() <= expect.sort_index()).all()
    coverage = pd.read_csv(out / "tables" / "coverage.csv").set_index("id")
    assert coverage.loc["A9", "in_report"] and coverage.loc["A3", "in_report"]


def test_layer_tol_out_of_range_names_the_flag(demo_run, tmp_path, capsys):
    from plateaulab.cli import main

    capsys.readouterr()
    assert main(["study", str(demo_run), "-o", str(tmp_path / "r"), "--layer-tol", "-0.1", "--bootstrap", "0"]) == 2
    assert "--layer-tol is an accuracy difference in [0, 1)" in capsys.readouterr().err


def test_one_checkpoint_run_gets_a_layer_only_report(demo_run, tmp_path):
    import shutil

    run = tmp_path / "one"
    shutil.copytree(demo_run, run)
    res = pd.read_parquet(run / "results.parquet")
    res[res["checkpoint"] == "synth-03"].to_parquet(run / "results.parquet")
    html = run_study(run, tmp_path / "rep", n_boot=10, sensitivity=False, formats=("png",)).read_text()
    assert (tmp_path / "rep" / "figures" / "fig6_layers.png").exists()
    assert json.loads((tmp_path / "rep" / "fits.json").read_text()) == {"fits": []}
    assert "Analyses not in this report" in html
    # one line for the eight analyses that need a fit, then A10's
    assert ("A1 DS-vs-US scatter with the upper convex hull (Fig. 1); A2 ") in html
    assert html.count("not in this report because") == 2
    assert ("A8 Spearman rank correlations DS x DS and DS x US (Figs. F.20, F.21): not in this report because the "
            "input lacks a DS task with 3 or more models") in html
    early = pd.read_csv(tmp_path / "rep" / "tables" / "layer_earliest.csv")
    assert early["checkpoint"].unique().tolist() == ["synth-03"] and len(early) == 3
    expect = _expected_earliest(run, 10, 0.01)
    np.testing.assert_array_equal(early.set_index(["dataset", "checkpoint"])["earliest index"].sort_index(),
                                  expect.sort_index())
