"""The numbers the report states or draws are computed in plateaulab.analysis and stored on the StudyResult;
each is checked here against an independent numpy/pandas computation on the same data: Figure 3's mean over
tasks, the most influential vertex per task, Table F.3's ratio range and significance counts, the A9
summary per dataset, and Figure 5's reference hull (the group's own hull)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plateaulab.analysis import hull_overlay
from plateaulab.analysis.layers import layer_profile, layer_summary
from plateaulab.analysis.sources import read_source
from plateaulab.analysis.study import analyse

#: a few DS tasks of Cherti et al.'s table keep the analysis to a few seconds
TASKS = ["cars", "vtab/cifar100", "imagenetv2", "vtab/dtd", "stl10", "renderedsst2"]


@pytest.fixture(scope="module")
def scaling():
    return analyse(read_source("builtin:scaling-laws-openclip", ds=TASKS), n_boot=0, sensitivity=True,
                   sensitivity_trials=3)


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    """`plateaulab synth` (5 checkpoints) then `plateaulab probe --shots 5,10`: groups with shots, and layers."""
    from plateaulab.cli import main

    base = tmp_path_factory.mktemp("split")
    assert main(["synth", str(base / "store"), "--checkpoints", "5", "--test-per-class", "30"]) == 0
    assert main(["probe", str(base / "store"), "-o", str(base / "run"), "--shots", "5,10", "--seeds", "1",
                 "--quiet"]) == 0
    return analyse(read_source(str(base / "run")), n_boot=0, sensitivity=False)


def test_sensitivity_mean_is_the_mean_over_tasks(scaling):
    sens, mean = scaling.sensitivity, scaling.sensitivity_mean
    assert mean is not None and list(mean.columns) == ["on", "n", "fit_error_mean", "pred_error_mean"]
    expected = []
    for on in sorted(sens["on"].unique()):
        for n in sorted(sens.loc[sens["on"] == on, "n"].unique()):
            rows = sens[(sens["on"] == on) & (sens["n"] == n)]
            assert rows[["ds_task", "shots"]].astype(str).drop_duplicates().shape[0] == len(rows)  # one per task
            expected.append([on, n] + [np.nanmean(rows[c].to_numpy(float)) for c in ("fit_error_mean",
                                                                                     "pred_error_mean")])
    assert mean[["on", "n"]].values.tolist() == [e[:2] for e in expected]
    np.testing.assert_allclose(mean[["fit_error_mean", "pred_error_mean"]].to_numpy(float),
                               np.array([e[2:] for e in expected], dtype=float), rtol=1e-12)


def _check_influence(res):
    top = res.influence_top
    expected = []
    for r in res.groups:
        if r.influence is None or r.influence.empty:
            continue
        d = r.influence["delta"].to_numpy(float)
        i = int(np.nanargmax(np.abs(d))) if np.isfinite(d).any() else 0
        expected.append((r.task, r.shots, str(r.influence["model"].iloc[i]), d[i]))
    assert len(top) == len(expected) and len(expected) > 0
    got = {(t, s): (m, dl) for t, s, m, dl in top[["ds_task", "shots", "model", "delta"]].itertuples(index=False)}
    for task, shots, model, delta in expected:
        m, dl = got[(task, shots)]
        assert m == model and (dl == delta or (np.isnan(dl) and np.isnan(delta)))
    a = np.abs(top["delta"].to_numpy(float))
    a = a[np.isfinite(a)]
    assert np.all(np.diff(a) <= 0)                      # listed from the most influential down
    # the full table holds every vertex of every group, with the group's saturation
    assert len(res.influence) == sum(len(r.influence) for r in res.groups if r.influence is not None)


def test_most_influential_vertex_per_task(scaling):
    _check_influence(scaling)


def test_most_influential_vertex_per_task_and_shots(synth_run):
    assert synth_run.influence_top["shots"].notna().all()
    assert synth_run.influence_top[["ds_task", "shots"]].duplicated().sum() == 0
    _check_influence(synth_run)


def test_prediction_summary_counts_against_table_f3(scaling):
    from plateaulab.report.tables import tableF3

    s = scaling.prediction_summary
    ratios = np.array([r.power["ratio"] for r in scaling.groups if r.power is not None], dtype=float)
    ratios = ratios[np.isfinite(ratios)]
    assert s["n_tasks"] == ratios.size == len(TASKS)
    assert s["ratio_median"] == pytest.approx(np.median(ratios), rel=1e-12)
    assert (s["ratio_min"], s["ratio_max"]) == (ratios.min(), ratios.max())
    # per axis, from Table F.3's columns (as the report used to count them)
    table = tableF3(scaling)
    total = 0
    for _, t in s["tests"].iterrows():
        key = t["axis"].replace(" ", "_")
        p, rho = table[f"resid_p_{key}"].to_numpy(float), table[f"resid_spearman_{key}"].to_numpy(float)
        sig = np.isfinite(p) & (p < 0.05)
        assert t["n_pairs"] == np.isfinite(p).sum()
        assert t["n_significant"] == sig.sum() and t["n_significant_positive"] == (sig & (rho > 0)).sum()
        total += int(np.isfinite(p).sum())
    assert list(s["tests"]["axis"]) == [a.name for a in scaling.scaleup.axes]
    assert s["n_pairs"] == total and s["expected_by_chance"] == pytest.approx(0.05 * total)
    assert s["n_significant"] == int(s["tests"]["n_significant"].sum())


def test_scaleup_sentence_words_the_summary(scaling):
    from plateaulab.report.text import scaleup_sentence

    s = scaling.prediction_summary
    text = scaleup_sentence(s)
    assert text.startswith(f"Across {len(TASKS)} tasks") and f"{s['ratio_median']:.2f} times" in text
    assert f"in {s['n_significant']} of {s['n_pairs']} (task, axis) pairs" in text
    assert scaleup_sentence(None) == ""


def test_reference_hull_is_the_groups_own_hull(scaling, synth_run):
    """Figure 5 draws ref_r.us[ref_r.hull]: the same points hull_overlay recomputes."""
    for res in (scaling, synth_run):
        for r in res.groups:
            hu, hd = hull_overlay(r.us, r.ds)
            np.testing.assert_array_equal(r.us[r.hull], hu)
            np.testing.assert_array_equal(r.ds[r.hull], hd)


def _expected_layer_summary(profile: pd.DataFrame) -> dict:
    out = {}
    for ds in profile["dataset"].unique():
        best, early, not_last = [], [], []
        for ck in profile.loc[profile["dataset"] == ds, "checkpoint"].unique():
            g = profile[(profile["dataset"] == ds) & (profile["checkpoint"] == ck)]
            acc, idx = g["accuracy"].to_numpy(float), g["layer_index"].to_numpy()
            b = idx[np.argmax(acc)]                         # first among ties, idx sorted
            e = idx[acc >= acc.max() - 0.01 - 1e-12].min()
            best.append(b), early.append(e), not_last.append(e < idx.max())
        out[ds] = (len(best), np.mean(best), np.mean(early), np.mean(not_last))
    return out


def test_layer_summary_on_a_built_table():
    rng = np.random.default_rng(3)
    rows = [{"checkpoint": f"c{c}", "dataset": ds, "layer_index": li, "layer": f"l{li}",
             "accuracy": float(np.clip(0.5 + 0.1 * li * (1 if ds == "late" else -0.3) + rng.normal(0, 0.02), 0, 1))}
            for c in range(4) for ds in ("late", "early") for li in range(5)]
    profile = layer_profile(pd.DataFrame(rows), tol=0.01)
    got = layer_summary(profile).set_index("dataset")
    for ds, (n, b, e, share) in _expected_layer_summary(profile).items():
        row = got.loc[ds]
        assert row["checkpoints"] == n
        np.testing.assert_allclose([row["mean_best_layer"], row["mean_earliest_layer"],
                                    row["share_last_layer_not_needed"]], [b, e, share], rtol=1e-12)
    assert layer_summary(None) is None and layer_summary(profile.iloc[:0]) is None


def test_study_stores_the_layer_summary(synth_run):
    got = synth_run.layer_summary.set_index("dataset")
    assert set(got.index) == set(synth_run.layer_table["dataset"])
    for ds, (n, b, e, share) in _expected_layer_summary(synth_run.layer_table).items():
        np.testing.assert_allclose(got.loc[ds, ["checkpoints", "mean_best_layer", "mean_earliest_layer",
                                                "share_last_layer_not_needed"]].to_numpy(float), [n, b, e, share])
