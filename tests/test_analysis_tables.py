"""Accuracy tables: formats, layouts, scales, NaN handling and the loaders of the three public tables in
the packaged copies of the published tables (open_clip docs/openclip_results.csv 29b90b8d; CLIP_benchmark
probe_benchmark/scaling_experiment_data2.json b759cf60; model-soups individual_model_results.jsonl 3bb0f409)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plateaulab.analysis.sources import read_source
from plateaulab.analysis import AccuracyTable, load_clip_benchmark, load_model_soups, load_openclip, load_table
from plateaulab.errors import InputError
from conftest import DATA

SHARED = DATA  # the packaged copies of the published tables
CLIP_BENCH = SHARED / "clip_benchmark" / "scaling_experiment_data2.json"
SOUPS = SHARED / "model_soups" / "individual_model_results.jsonl"
OPENCLIP = DATA / "open_clip" / "openclip_results.csv"


def test_packaged_tables_are_the_published_files():
    """Each shipped table has the SHA-256 that PROVENANCE.md records for the unchanged published copy."""
    import hashlib
    import re

    text = (DATA / "PROVENANCE.md").read_text()
    recorded = dict((path, digest) for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+)$", text, re.M))
    shipped = sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.is_file() and p.name != "PROVENANCE.md")
    assert sorted(recorded) == shipped
    for path, digest in recorded.items():
        assert hashlib.sha256((DATA / path).read_bytes()).hexdigest() == digest, path


def test_packaged_openclip_loads():
    t = load_openclip()
    assert isinstance(t, AccuracyTable) and t.us_name == "ImageNet 1k" and t.scale_detected == "unit"
    assert len(t.ds_tasks) == 34 and "Flickr" not in t.ds_tasks and "Average perf. on 38 datasets" not in t.ds_tasks
    w = t.wide()
    assert len(w) == 121 and list(w.columns[:2]) == ["model", "ImageNet 1k"]
    raw = pd.read_csv(OPENCLIP)
    np.testing.assert_allclose(w["CIFAR-100"].to_numpy(), raw["CIFAR-100"].to_numpy())
    assert {"params (M)", "FLOPs (B)"} <= set(t.long.columns)
    assert t.long["shots"].isna().all()


def test_formats_layouts_and_percent(tmp_path):
    raw = pd.read_csv(OPENCLIP)[["name", "pretrained", "ImageNet 1k", "CIFAR-10", "EuroSAT"]]
    raw = raw.assign(model=raw["name"] + "/" + raw["pretrained"])
    ref = load_table(raw, us="ImageNet 1k", ds=["CIFAR-10", "EuroSAT"], model_col="model")
    pct = raw.copy()
    pct[["ImageNet 1k", "CIFAR-10", "EuroSAT"]] *= 100
    paths = {"csv": tmp_path / "t.csv", "parquet": tmp_path / "t.parquet", "jsonl": tmp_path / "t.jsonl"}
    pct.to_csv(paths["csv"], index=False)
    pct.to_parquet(paths["parquet"], index=False)
    pct.to_json(paths["jsonl"], orient="records", lines=True)
    for p in paths.values():
        t = load_table(p, us="ImageNet 1k", ds="CIFAR-10,EuroSAT", model_col="model")
        assert t.scale_detected == "percent"
        np.testing.assert_allclose(t.long["ds"].to_numpy(), ref.long["ds"].to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(t.long["us"].to_numpy(), ref.long["us"].to_numpy(), rtol=1e-12)
    # Long layout, US given as one of the datasets: the same pairs.
    long = raw.melt(id_vars=["model"], value_vars=["ImageNet 1k", "CIFAR-10", "EuroSAT"], var_name="dataset",
                    value_name="accuracy")
    t = load_table(long, us="ImageNet 1k")
    assert sorted(t.ds_tasks) == ["CIFAR-10", "EuroSAT"]
    for task in t.ds_tasks:
        np.testing.assert_allclose(np.sort(t.pair(task)[1]), np.sort(ref.pair(task)[1]))
    # Forcing the wrong scale is caught as out of range.
    with pytest.raises(InputError, match="scale"):
        load_table(pct, us="ImageNet 1k", ds=["CIFAR-10"], scale="unit")


def test_nan_rows_dropped_and_counted_or_raised():
    df = pd.DataFrame({"model": list("abcde"), "us": [0.1, 0.2, np.nan, 0.4, 0.5], "ds": [0.3, np.nan, 0.4, 0.5, 0.6]})
    t = load_table(df, us="us", ds=["ds"], layout="wide")
    assert t.n_dropped_nan == 2 and len(t.long) == 3
    with pytest.raises(InputError, match="2 row"):
        load_table(df, us="us", ds=["ds"], layout="wide", nan="raise")


@pytest.mark.parametrize("kwargs, match", [
    (dict(us="nope", ds=["a"]), "known columns: model, u, a"),
    (dict(us="u", ds=["a", "zz"]), "unknown DS column"),
    (dict(us="u", ds=["a"], scale="pct"), "scale must be"),
    (dict(us="u", ds=["c"]), "constant"),
])
def test_bad_input_messages(kwargs, match):
    df = pd.DataFrame({"model": ["m1", "m2", "m3"], "u": [0.1, 0.5, 0.9], "a": [0.2, 0.3, 0.5]})
    df["c"] = 0.4
    with pytest.raises(InputError, match=match):
        load_table(df, layout="wide", **kwargs)


def test_constant_us_and_too_few_rows():
    with pytest.raises(InputError, match="constant"):
        load_table(pd.DataFrame({"u": [0.3, 0.3], "a": [0.1, 0.2]}), us="u", ds=["a"], layout="wide")
    with pytest.raises(InputError, match="at least 2"):
        load_table(pd.DataFrame({"u": [0.3, np.nan], "a": [0.1, 0.2]}), us="u", ds=["a"], layout="wide")
    with pytest.raises(InputError, match="does not exist"):
        load_table("/nonexistent.csv", us="u")


def test_clip_benchmark_best_over_hyperparameters():
    raw = pd.DataFrame(json.loads(CLIP_BENCH.read_text()))
    t = load_clip_benchmark(CLIP_BENCH)
    assert t.us_name == "imagenet1k-unverified" and "imagenet1k-unverified" not in t.ds_tasks
    assert t.long["model"].nunique() == 12 and len(t.ds_tasks) == 20
    assert set(t.long["shots"].unique()) <= {10, 25, -1}
    assert not t.long.duplicated(["model", "ds_task", "shots"]).any()
    # One row checked against the raw JSON: best lp_acc1 over lr x epochs, and ImageNet's best as US.
    raw["model_id"] = raw["model"] + "/" + raw["pretrained"]
    row = t.long[(t.long["ds_task"] == "vtab/pets") & (t.long["shots"] == 10)].iloc[0]
    sel = raw[(raw["model_id"] == row["model"]) & (raw["fewshot_k"] == 10)]
    assert row["ds"] == sel[sel["dataset"] == "vtab/pets"]["lp_acc1"].max()
    assert row["us"] == sel[sel["dataset"] == "imagenet1k-unverified"]["lp_acc1"].max()
    allrows = load_clip_benchmark(CLIP_BENCH, hyper="all")
    assert len(allrows.long) == (raw["dataset"] != "imagenet1k-unverified").sum()
    with pytest.raises(InputError, match="several rows"):
        allrows.wide()


def test_model_soups():
    t = load_model_soups(SOUPS)
    assert t.us_name == "ImageNet" and t.ds_tasks == ["ImageNetV2", "ImageNetSketch", "ImageNetR", "ObjectNet",
                                                      "ImageNetA"]
    assert t.long["model"].nunique() == 72 and len(t.long) == 72 * 5
    assert 0.74 < t.long["us"].min() and t.long["us"].max() < 0.81


def test_probe_run_directory(tmp_path):
    rows = []
    for ck, up in (("c0", 0.5), ("c1", 0.6), ("c2", 0.7)):
        for layer in (0, 1):
            for seed in (0, 1):
                for sel in (True, False):
                    rows.append(dict(checkpoint=ck, layer=f"block{layer}", layer_index=layer, dataset="pets", shots=5,
                                     seed=seed, l2=1024.0 if sel else 1.0, selected=sel,
                                     accuracy=up / 2 + 0.1 * layer + 0.01 * seed + (0 if sel else 0.3)))
    pd.DataFrame(rows).to_parquet(tmp_path / "results.parquet")
    pd.DataFrame({"checkpoint": ["c0", "c1", "c2"], "upstream_accuracy": [0.5, 0.6, 0.7]}).to_parquet(
        tmp_path / "checkpoints.parquet")
    (tmp_path / "manifest.json").write_text('{"format": "plateaulab-probe-run", "complete": true}')
    t = read_source(tmp_path).table      # one reader of run directories (analysis.runs)
    with pytest.raises(InputError, match="read_source"):
        load_table(tmp_path)
    assert t.us_name == "upstream_accuracy" and t.ds_tasks == ["pets"]
    got = t.long.sort_values("model")
    np.testing.assert_allclose(got["ds"], [0.25 + 0.1 + 0.005, 0.3 + 0.1 + 0.005, 0.35 + 0.1 + 0.005])
    np.testing.assert_allclose(got["us"], [0.5, 0.6, 0.7])
