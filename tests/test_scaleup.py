"""A6, the controlled scale-up, on the shipped table of Cherti et al. 2023 (LAION-AI/scaling-laws-openclip,
commit 652b1e74; python/plateaulab/data/PROVENANCE.md): the loader against the raw files read with pandas,
the lines of each axis against a direct group-by, the residual correlation against scipy, and the study's
Figure 4 and Table F.3 against numpy on the fitted parameters."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata, spearmanr

from conftest import DATA
from plateaulab.analysis.scaleup import (_ranks, pick_tasks, residual_association, resolve_axes, scale_up,
                                         scaleup_lines)
from plateaulab.analysis.scaling_laws_openclip import load_scaling_laws_openclip
from plateaulab.analysis.sources import read_source
from plateaulab.errors import InputError

FOLDER = DATA / "scaling_laws_openclip"
NOT_DS = {"imagenet1k", "imagenet_robustness", "vtab", "vtab+", "voc2007_multilabel"}


@pytest.fixture(scope="module")
def raw():
    z = pd.read_csv(FOLDER / "zeroshot_results.csv")
    return z[z["task"] == "zeroshot_classification"]


#: a third of the DS tasks keeps the study short (Figures 1 and 5 draw one panel per task)
TASKS = ["cars", "vtab/cifar100", "imagenetv2", "vtab/dtd", "stl10", "vtab/kitti_closest_vehicle_distance",
         "renderedsst2", "vtab/pets", "imagenet-r", "vtab/dsprites_label_orientation"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """`plateaulab study builtin:scaling-laws-openclip --hparams lr` on TASKS: small bootstrap, no sensitivity,
    PNG only."""
    from plateaulab.report.study import run_study

    out = tmp_path_factory.mktemp("scaleup") / "report"
    run_study("builtin:scaling-laws-openclip", out, ds=TASKS, hparams="lr", n_boot=20, sensitivity=False,
              formats=("png",))
    return out


def test_loader_matches_the_raw_files(raw):
    t = load_scaling_laws_openclip()
    long = t.long
    assert t.us_name == "imagenet1k" and t.scale_detected == "unit"
    ds = sorted(set(raw["downstream_dataset"]) - NOT_DS)
    assert sorted(t.ds_tasks) == ds and len(ds) == 34
    assert long["model"].nunique() == 32 == raw.groupby(["name", "arch"]).ngroups
    assert len(long) == 32 * 34
    # US: each model's imagenet1k acc1; DS: acc1 of the task
    im = raw[raw["downstream_dataset"] == "imagenet1k"]
    us = im.set_index(im["name"] + "/" + im["arch"])["acc1"]
    np.testing.assert_allclose(long["us"].to_numpy(), us.reindex(long["model"]).to_numpy())
    key = raw["name"] + "/" + raw["arch"] + "|" + raw["downstream_dataset"]
    np.testing.assert_allclose(long["ds"].to_numpy(),
                               raw.set_index(key)["acc1"].reindex(long["model"] + "|" + long["ds_task"]).to_numpy())
    # joined columns
    arch = pd.read_csv(FOLDER / "arch_info.csv").set_index("model")["mparams"] * 1e6
    np.testing.assert_allclose(long["params"].to_numpy(), arch.reindex(long["arch"]).to_numpy())
    lr = pd.read_csv(FOLDER / "trained_models_info.csv").set_index("name")["lr"]
    names = long["model"].str.rsplit("/", n=1).str[0]
    np.testing.assert_allclose(long["lr"].to_numpy(), lr.reindex(names).to_numpy())
    assert long.loc[names == "openai", "lr"].isna().all()
    sizes = {"LAION-80M": 8e7, "LAION-400M": 4e8, "LAION-2B": 2e9}
    np.testing.assert_allclose(long["data_size"].to_numpy(), long["upstream_dataset"].map(sizes).to_numpy())


def test_loader_refuses_a_folder_without_the_side_files(tmp_path):
    (tmp_path / "zeroshot_results.csv").write_bytes((FOLDER / "zeroshot_results.csv").read_bytes())
    with pytest.raises(InputError, match="missing arch_info.csv, trained_models_info.csv") as err:
        read_source(tmp_path / "zeroshot_results.csv")
    assert err.value.param == "loader"
    # the generic reader still reads it as a long table when asked
    src = read_source(tmp_path / "zeroshot_results.csv", loader="table", us="imagenet1k", ds="cars,sun397",
                      id="name,arch", dataset_col="downstream_dataset", acc_col="acc1")
    assert src.table.ds_tasks == ["cars", "sun397"]


def test_lines_against_a_direct_groupby():
    long = read_source("builtin:scaling-laws-openclip").long
    axes = resolve_axes(long)
    assert [(a.name, a.level, a.value) for a in axes] == [
        ("model size", "arch", "gmacs"), ("data size", "upstream_dataset", "data_size"),
        ("samples seen", "samples_seen_pretty", "samples_seen")]
    lines = scaleup_lines(long, axes)
    models = long.drop_duplicates("model")
    levels = {"model size": "arch", "data size": "upstream_dataset", "samples seen": "samples_seen_pretty"}
    for name, col in levels.items():
        others = [c for c in levels.values() if c != col]
        on = models[models["data_size"].notna()] if name == "data size" else models
        expect = {tuple(k): set(g["model"]) for k, g in on.groupby(others) if g[col].nunique() >= 2}
        got = lines[lines["axis"] == name]
        assert got["line"].nunique() == len(expect)
        assert sorted(map(sorted, got.groupby("line")["model"].apply(set))) == sorted(map(sorted, expect.values()))
        # within a line the other axes are fixed and the axis's own values increase
        for _, g in got.groupby("line"):
            assert models.set_index("model").loc[g["model"], others].nunique().max() == 1
            assert (np.diff(g["value"].to_numpy()) >= 0).all()
    counts = lines.groupby("axis").agg(lines=("line", "nunique"), models=("model", "nunique"))
    # the 3 x 3 x 3 grid gives 9 lines per axis; the model axis adds H/14, g/14 and OpenAI's CLIP-WIT line
    assert counts.loc["model size"].tolist() == [10, 32]
    assert counts.loc["data size"].tolist() == [9, 27] and counts.loc["samples seen"].tolist() == [9, 27]
    # B/32 and B/16 have almost the same parameters: the model axis is ordered by GMACs per sample
    order = lines[lines["axis"] == "model size"].drop_duplicates("level").sort_values("value")["level"].tolist()
    assert order == ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14", "ViT-g-14"]


def test_ranks_and_residual_association_against_scipy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, 30).astype(float)          # ties, as axis levels have
    np.testing.assert_allclose(_ranks(x), rankdata(x))
    resid = 0.3 * x + rng.normal(size=30)
    out = residual_association(resid, x, n_perm=4000, seed=0)
    assert out["spearman"] == pytest.approx(spearmanr(resid, x)[0])
    assert out["n_models"] == 30
    # an exact permutation p-value on 6 models (720 orderings) against the Monte Carlo one
    r, v = np.array([0.1, -0.2, 0.4, 0.05, 0.3, -0.1]), np.array([1.0, 2, 3, 4, 5, 6])
    rho = spearmanr(r, v)[0]
    exact = np.mean([abs(spearmanr(np.array(p), v)[0]) >= abs(rho) - 1e-12 for p in itertools.permutations(r)])
    assert residual_association(r, v, n_perm=20000, seed=3)["p_value"] == pytest.approx(exact, abs=0.01)
    # NaN values (OpenAI's CLIP-WIT has no LAION size) are left out; too few models give NaN
    v_nan = np.r_[v, np.nan]
    assert residual_association(np.r_[r, 9.0], v_nan, seed=3)["n_models"] == 6
    assert np.isnan(residual_association(r[:4], v[:4])["spearman"])


def test_pick_tasks_spreads_over_the_ratio():
    ratios = {f"t{i}": r for i, r in enumerate([0.9, 0.1, 0.5, np.nan, 0.3, 0.7, 0.2, 0.8])}
    # sorted: t1 0.1, t6 0.2, t4 0.3, t2 0.5, t5 0.7, t7 0.8, t0 0.9 (t3 has no ratio): ends and middle
    assert pick_tasks(ratios, n=3) == ["t1", "t2", "t0"]
    assert pick_tasks({"a": 0.2, "b": np.nan}, n=6) == ["a"]


def test_scale_up_refuses_an_input_without_axes():
    src = read_source("builtin:openclip")
    with pytest.raises(InputError, match="lacks models that differ in one scale axis only"):
        scale_up(src.long, [])


def test_study_draws_figure_4_and_table_f3(report):
    html = (report / "report.html").read_text()
    assert (report / "figures" / "fig4_scaleup.png").stat().st_size > 50_000
    assert "Controlled scale-up (Figure 4)" in html and "Table F.3" in html
    assert "6 of 10 tasks, chosen to span Table F.3's ratio" in html
    assert "LAION-AI/scaling-laws-openclip" in html and "652b1e74" in html
    f3 = pd.read_csv(report / "tables" / "tableF3_prediction_power.csv")
    assert sorted(f3["ds_task"]) == sorted(TASKS)
    # Table F.3 from the fitted parameters of eq. (1) on all points, recomputed with numpy
    fits = pd.read_csv(report / "tables" / "fits_all_points.csv").set_index("ds_task")
    long = read_source("builtin:scaling-laws-openclip").long
    models = long.drop_duplicates("model").set_index("model")
    gmacs = models["gmacs"]
    for task in ("cars", "vtab/cifar100", "imagenetv2"):
        rows = long[long["ds_task"] == task]
        k, a, e = fits.loc[task, ["k", "alpha", "e_ir"]]
        resid = rows["ds"].to_numpy() - (1 - (k * (1 - rows["us"].to_numpy()) ** a + e))
        row = f3.set_index("ds_task").loc[task]
        assert row["std_residual"] == pytest.approx(np.std(resid), rel=1e-9)
        assert row["std_mean"] == pytest.approx(np.std(rows["ds"]), rel=1e-9)
        assert row["ratio"] == pytest.approx(np.std(resid) / np.std(rows["ds"]), rel=1e-9)
        assert row["resid_spearman_model_size"] == pytest.approx(spearmanr(resid, gmacs.loc[rows["model"]])[0])
        ok = rows["data_size"].notna().to_numpy()
        assert row["resid_spearman_data_size"] == pytest.approx(spearmanr(resid[ok], rows["data_size"][ok])[0])
        assert 0 < row["resid_p_samples_seen"] <= 1
    assert (f3["std_residual"] <= f3["std_mean"] + 1e-12).all()
    lines = pd.read_csv(report / "tables" / "scaleup_lines.csv")
    assert set(lines["axis"]) == {"model size", "data size", "samples seen"}
    coverage = pd.read_csv(report / "tables" / "coverage.csv").set_index("id")
    assert coverage.loc["A6", "in_report"] and coverage.loc["A10", "in_report"]
    assert not coverage.loc["A9", "in_report"] and "layers" in coverage.loc["A9", "why"]


def test_scale_up_figure_reads_the_levels():
    """The figure's colours follow each axis's levels from smallest to largest."""
    from plateaulab.report.figures import _level_colours

    long = read_source("builtin:scaling-laws-openclip").long
    lines = scaleup_lines(long, resolve_axes(long))
    colours = _level_colours(lines[lines["axis"] == "samples seen"])
    assert list(colours) == ["3B", "13B", "34B"]
