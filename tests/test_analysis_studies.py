"""The paper's other analyses (PROTOCOL §2: A3, A5-A10) against scipy and direct computations, on the shared
tables (open_clip docs/openclip_results.csv 29b90b8d; CLIP_benchmark scaling_experiment_data2.json b759cf60)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy.special import expit
from scipy.stats import pearsonr, spearmanr

from plateaulab.analysis import (fit_saturating_power_law, hull_overlay, hyperparam_discrepancy, layer_profile,
                                 load_clip_benchmark, load_openclip, params_vs_shots, prediction_power, scale_accuracy,
                                 spearman_matrices, upper_hull)
from plateaulab.errors import InputError
from conftest import DATA

CLIP_BENCH = DATA / "clip_benchmark" / "scaling_experiment_data2.json"


def test_scale_accuracy():
    p = np.array([0.01, 0.3, 0.5, 0.97])
    np.testing.assert_allclose(expit(scale_accuracy(p, "logit")), p)
    np.testing.assert_allclose(scale_accuracy(p, "neglog1m"), -np.log(1 - p))
    np.testing.assert_array_equal(scale_accuracy(p), p)
    assert np.isinf(scale_accuracy([1.0], "neglog1m")[0])
    assert np.isfinite(scale_accuracy([0.0, 1.0], "logit", eps=1e-6)).all()
    with pytest.raises(InputError, match="percent"):
        scale_accuracy([50.0], "logit")
    with pytest.raises(InputError, match="scale must be"):
        scale_accuracy(p, "log")


def test_params_vs_shots_against_scipy():
    rng = np.random.default_rng(0)
    rows = []
    for task in ("a", "b", "c"):
        for shots in (1, 5, 10, 25):
            rows.append(dict(ds_task=task, shots=shots, k=1.0 / shots + rng.normal(0, 0.01), alpha=rng.random(),
                             e_ir=0.5 - 0.01 * shots))
    rows.append(dict(ds_task="a", shots=-1, k=9.0, alpha=9.0, e_ir=9.0))  # "full data" rows are left out
    df = pd.DataFrame(rows)
    out = params_vs_shots(df)
    for task in ("a", "b", "c"):
        g = df[(df["ds_task"] == task) & (df["shots"] > 0)]
        for p in ("k", "alpha", "e_ir"):
            r = out[(out["ds_task"] == task) & (out["param"] == p)].iloc[0]
            assert r["spearman"] == pytest.approx(spearmanr(g["shots"], g[p])[0])
            assert r["pearson"] == pytest.approx(pearsonr(g["shots"], g[p])[0])
            assert r["p_increase"] == pytest.approx(np.mean(np.diff(g.sort_values("shots")[p].to_numpy()) > 0))
    mean_eir = out[(out["ds_task"] == "all") & (out["param"] == "e_ir")].iloc[0]
    assert mean_eir["p_increase"] == 0 and mean_eir["trend"] == -1 and mean_eir["n_groups"] == 3
    with pytest.raises(InputError, match="missing"):
        params_vs_shots(df.drop(columns="shots"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(5, 60))
def test_prediction_power_never_worse_than_the_mean(seed, n):
    """eq. (1) includes the constant e_IR (k = 0), so its least-squares fit on all points explains at least
    as much as the mean: ratio <= 1. Exact data gives ratio ~ 0."""
    rng = np.random.default_rng(seed)
    us, ds = rng.uniform(0.05, 0.95, n), rng.uniform(0.05, 0.95, n)
    assert prediction_power(us, ds)["ratio"] <= 1 + 1e-9
    ds_exact = 1 - (0.5 * (1 - us) ** 2 + 0.1)
    assert prediction_power(us, ds_exact)["ratio"] < 1e-5


def test_prediction_power_openclip_and_given_fit():
    us, ds = load_openclip().pair("CIFAR-10")
    fit = fit_saturating_power_law(us, ds, on="hull")
    res = prediction_power(us, ds, fit)
    resid = ds - fit.predict(us)
    assert res["std_residual"] == pytest.approx(np.std(resid)) and res["std_mean"] == pytest.approx(np.std(ds))
    assert res["fit_on"] == "hull" and 0 < res["ratio"] < 1


def test_hull_overlay():
    us, ds = load_openclip().pair("ImageNet v2")
    hx, hy = hull_overlay(us, ds)
    h = upper_hull(us, ds)
    np.testing.assert_array_equal(hx, us[h])
    np.testing.assert_array_equal(hy, ds[h])
    assert np.all(np.diff(hx) > 0)


def test_spearman_matrices_against_scipy():
    t = load_openclip()
    ds_ds, ds_us = spearman_matrices(t)
    w = t.wide()
    assert list(ds_ds.index) == t.ds_tasks and np.allclose(np.diag(ds_ds), 1) and np.allclose(ds_ds, ds_ds.T)
    for a, b in (("CIFAR-10", "EuroSAT"), ("MNIST", "SUN397")):
        assert ds_ds.loc[a, b] == pytest.approx(spearmanr(w[a], w[b])[0])
    assert ds_us["Caltech-101"] == pytest.approx(spearmanr(w["Caltech-101"], w["ImageNet 1k"])[0])
    cb = load_clip_benchmark(CLIP_BENCH)
    with pytest.raises(InputError, match="shots"):
        spearman_matrices(cb)
    dd, du = spearman_matrices(cb, shots=10)
    assert du.notna().sum() >= 10


def test_layer_profile():
    rows = []
    acc = {"c0": [0.4, 0.7, 0.795, 0.80], "c1": [0.5, 0.6, 0.7, 0.9]}
    for ck, accs in acc.items():
        for li, a in enumerate(accs):
            for seed, d in ((0, -0.01), (1, 0.01)):  # seeds average to the value above
                rows.append(dict(checkpoint=ck, layer_index=li, layer=f"b{li}", dataset="uc_merced", seed=seed,
                                 accuracy=a + d))
    out = layer_profile(pd.DataFrame(rows), tol=0.01)
    c0 = out[out["checkpoint"] == "c0"]
    np.testing.assert_allclose(c0["accuracy"], acc["c0"])
    assert (c0["best_layer"] == 3).all() and (c0["earliest_layer"] == 2).all()
    assert c0["is_earliest"].tolist() == [False, False, True, False]
    c1 = out[out["checkpoint"] == "c1"]
    assert (c1["earliest_layer"] == 3).all() and c1["relative_depth"].tolist() == [0, 1 / 3, 2 / 3, 1]
    assert (out["n_rows"] == 2).all()
    with pytest.raises(InputError, match="missing"):
        layer_profile(pd.DataFrame({"checkpoint": ["a"], "accuracy": [0.5]}))


def test_hyperparam_discrepancy_on_clip_benchmark():
    cb = load_clip_benchmark(CLIP_BENCH, hyper="all")
    long = cb.long[cb.long["shots"] == 10]
    wide = long.pivot_table(index=["model", "lr", "epochs"], columns="ds_task", values="ds").reset_index()
    keys = ["model", "lr", "epochs"]
    wide = wide.merge(long.groupby(keys, as_index=False)["us"].first(), on=keys)
    targets = ["vtab/pets", "vtab/eurosat", "vtab/dtd"]
    out = hyperparam_discrepancy(wide, "lr", "us", targets)
    assert out["target"].tolist() == ["us", *targets]
    means = wide.groupby("lr")[["us", *targets]].mean()
    for _, r in out.iterrows():
        assert r["best_param"] == means[r["target"]].idxmax()
        assert r["us_best_param"] == means["us"].idxmax()
        pair = wide[["us", r["target"]]].dropna()
        if r["target"] != "us":
            assert r["spearman_with_us"] == pytest.approx(spearmanr(pair["us"], pair[r["target"]])[0])
        assert r["loss_from_us_choice"] >= 0
    with pytest.raises(InputError, match="unknown column"):
        hyperparam_discrepancy(wide, "weight_decay", "us", targets)
