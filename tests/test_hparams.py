"""A10, hyper-parameters on which US and DS disagree, on the shipped tables: CLIP_benchmark's linear-probe
grid (LAION-AI/CLIP_benchmark scaling_experiment_data2.json, b759cf60: lr x epochs for every model) and the
pre-training learning rate of scaling-laws-openclip's runs (652b1e74). Optima and rank correlations are
recomputed from the raw JSON with pandas and scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from conftest import DATA
from plateaulab.analysis.hyperparams import hparam_study, hparam_summary, runs_wide
from plateaulab.analysis.sources import read_source
from plateaulab.errors import InputError

US = "imagenet1k-unverified"


@pytest.fixture(scope="module")
def raw():
    df = pd.read_json(DATA / "clip_benchmark" / "scaling_experiment_data2.json")
    return df.assign(model=df["model"] + "/" + df["pretrained"])


@pytest.fixture(scope="module")
def clip_table():
    src = read_source("builtin:clip-benchmark", hparams="lr,epochs")
    table, skipped = hparam_study(src.hparams, src.hparam_names, src.table.ds_tasks)
    return src, table, skipped


def test_runs_come_from_every_grid_point(raw, clip_table):
    src, _, _ = clip_table
    assert src.hparam_names == ["lr", "epochs"]
    ds_rows = raw[raw["dataset"] != US]
    assert len(src.hparams) == len(ds_rows)
    # the study's own points keep one (the best) run per model, task and shots
    assert len(src.long) == ds_rows.groupby(["model", "dataset", "fewshot_k"]).ngroups


def test_optima_against_the_raw_json(raw, clip_table):
    _, table, skipped = clip_table
    assert skipped == {}
    full = raw[raw["fewshot_k"] == -1]
    for h in ("lr", "epochs"):
        got = table[(table["hparam"] == h) & (table["shots"] == -1)].set_index("target")
        us_mean = full[full["dataset"] == US].groupby(h)["lp_acc1"].mean()
        assert got.loc["US", "best_param"] == us_mean.idxmax()
        for task in ("vtab/pets", "vtab/pcam", "cifar100", "vtab/clevr_count_all"):
            rows = full[full["dataset"] == task]
            means = rows.groupby(h)["lp_acc1"].mean()
            assert got.loc[task, "best_param"] == means.idxmax()
            assert got.loc[task, "loss_from_us_choice"] == pytest.approx(means.max() - means[us_mean.idxmax()])
            # Spearman of DS and US accuracy over the runs (model x lr x epochs)
            pair = rows.merge(full[full["dataset"] == US], on=["model", "lr", "epochs"], suffixes=("", "_us"))
            assert got.loc[task, "spearman_with_us"] == pytest.approx(spearmanr(pair["lp_acc1"], pair["lp_acc1_us"])[0])
    assert table["crossed"].all()      # every model is probed at every lr and epochs
    # with the full training sets, ImageNet's best probe is lr 0.001 for 10 epochs; no DS task agrees
    assert table[(table["shots"] == -1) & (table["target"] == "US")]["best_param"].tolist() == [0.001, 10]


def test_summary_against_the_table(clip_table):
    _, table, _ = clip_table
    summary = hparam_summary(table).set_index(["hparam", "shots"])
    for (h, shots), row in summary.iterrows():
        ds = table[(table["hparam"] == h) & (table["shots"] == shots) & (table["target"] != "US")]
        assert row["n_tasks"] == len(ds) and row["n_agree"] == int(ds["agrees_with_us"].sum())
        assert row["mean_loss"] == pytest.approx(ds["loss_from_us_choice"].mean())
        assert row["max_loss"] == pytest.approx(ds["loss_from_us_choice"].max())
        best = pd.to_numeric(ds["best_param"])
        if best.nunique() > 1:
            assert row["spearman_optimum_vs_rank"] == pytest.approx(spearmanr(best, ds["spearman_with_us"])[0])
        else:
            assert np.isnan(row["spearman_optimum_vs_rank"])
    assert summary.loc[("lr", -1.0), "n_agree"] == 0


def test_per_model_hyperparameter_is_not_crossed():
    src = read_source("builtin:scaling-laws-openclip", hparams="LR")
    assert src.hparam_names == ["lr"]
    table, _ = hparam_study(src.hparams, ["lr"], src.table.ds_tasks)
    assert not table["crossed"].any()
    wide = runs_wide(src.hparams, ["lr"])
    assert len(wide) == 32 and set(wide["lr"].dropna()) == {0.0005, 0.001}
    us = wide.groupby("lr")["us"].mean()
    assert table[table["target"] == "US"]["best_param"].iloc[0] == us.idxmax()


def test_unknown_hyperparameter_is_an_input_error():
    with pytest.raises(InputError, match="unknown hyper-parameter column.*'weight_decay'") as err:
        read_source("builtin:clip-benchmark", hparams="weight_decay")
    assert err.value.param == "hparams"


def test_study_with_hparams_has_the_a10_section(tmp_path, capsys):
    from plateaulab.cli import main

    out = tmp_path / "rep"
    rc = main(["study", "builtin:clip-benchmark", "--hparams", "lr,epochs", "--ds", "vtab/pets,vtab/pcam,cifar100",
               "-o", str(out), "--bootstrap", "10", "--no-sensitivity", "--quiet"])
    assert rc == 0
    html = (out / "report.html").read_text()
    assert "Hyper-parameters on which US and DS disagree (App. C, D): lr, epochs" in html
    for fig in ("figD3_hparam_optimum", "figD4_hparam_vs_rank"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 20_000
    table = pd.read_csv(out / "tables" / "hparams.csv")
    assert set(table["target"]) == {"US", "vtab/pets", "vtab/pcam", "cifar100"}
    assert "lr (full): best for US is 0.001; 0 of 3 DS tasks share it" in html
    coverage = pd.read_csv(out / "tables" / "coverage.csv").set_index("id")
    assert coverage.loc["A10", "in_report"]
    # a column the input does not have is named, with the flag
    capsys.readouterr()
    assert main(["study", "builtin:clip-benchmark", "--hparams", "nope", "-o", str(tmp_path / "r2")]) == 2
    assert "--hparams names unknown hyper-parameter column(s) 'nope'" in capsys.readouterr().err


def test_generic_long_table_of_runs(raw, tmp_path):
    """A table of runs in the generic long layout (model, dataset, lr, epochs, accuracy; US a dataset): the
    study's points average each model's runs (--duplicates mean), A10 reads every run again, told apart by
    the declared columns, and finds what the CLIP_benchmark loader finds."""
    rows = raw[(raw["fewshot_k"] == -1) & raw["dataset"].isin([US, "vtab/pets", "vtab/pcam", "cifar100"])]
    rows[["model", "dataset", "lr", "epochs", "lp_acc1"]].rename(columns={"lp_acc1": "accuracy"}).to_csv(
        tmp_path / "runs.csv", index=False)
    src = read_source(tmp_path / "runs.csv", us=US, duplicates="mean", hparams="LR,epochs")
    assert len(src.long) == 12 * 3 and len(src.hparams) == 12 * 9 * 3
    ours, _ = hparam_study(src.hparams, src.hparam_names, src.table.ds_tasks)
    builtin = read_source("builtin:clip-benchmark", hparams="lr,epochs", ds="vtab/pets,vtab/pcam,cifar100")
    theirs, _ = hparam_study(builtin.hparams, builtin.hparam_names, builtin.table.ds_tasks)
    theirs = theirs[theirs["shots"] == -1]
    key = ["hparam", "target"]
    cols = ["best_param", "us_best_param", "loss_from_us_choice", "spearman_with_us"]
    pd.testing.assert_frame_equal(ours.set_index(key)[cols].sort_index(), theirs.set_index(key)[cols].sort_index())
