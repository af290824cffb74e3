"""One reader of probe-run directories (analysis.runs): the layer rule, and `fit RUN` and `study RUN` fitting
the same points when the datasets' deepest layers differ."""

import json

import numpy as np
import pandas as pd
import pytest

from plateaulab.analysis.runs import read_run
from plateaulab.cli import main
from plateaulab.report.study import read_fits, run_study
from plateaulab.run import probe_store

from conftest import make_store


@pytest.fixture(scope="module")
def uneven_run(tmp_path_factory):
    """5 checkpoints; dataset 'deep' has 3 layers, dataset 'shallow' only 2 (its block2 removed)."""
    tmp = tmp_path_factory.mktemp("uneven")
    st = make_store(tmp / "store", n_checkpoints=5, n_layers=3, datasets={"deep": (4, 8, 120), "shallow": (3, 8, 90)})
    for k in range(5):
        st.remove_block(f"ckpt-{k:02d}", "shallow", "block2")
    probe_store(st.path, tmp / "run", shots=[2, 5], seeds=2, quiet=True)
    return tmp / "run"


def test_last_layer_is_per_checkpoint_and_dataset(uneven_run):
    pts = read_run(uneven_run)
    deepest = pts.long.groupby("ds_task")["layer_index"].agg(["min", "max"])
    assert deepest.loc["deep"].tolist() == [2, 2] and deepest.loc["shallow"].tolist() == [1, 1]
    assert set(pts.long["ds_task"]) == {"deep", "shallow"} and len(pts.long) == 5 * 2 * 2
    results = pd.read_parquet(uneven_run / "results.parquet")
    sel = results[results["selected"] & (results["dataset"] == "shallow") & (results["layer"] == "block1")]
    want = sel.groupby(["checkpoint", "shots"])["accuracy"].mean()
    got = pts.long[pts.long["ds_task"] == "shallow"].set_index(["model", "shots"])["ds"]
    np.testing.assert_allclose(got.sort_index().to_numpy(), want.sort_index().to_numpy())
    # A named layer: checkpoints (here, every dataset 'shallow' point) without it are left out, with a note.
    named = read_run(uneven_run, layer="block2")
    assert set(named.long["ds_task"]) == {"deep"}


def test_fit_and_study_fit_the_same_points(uneven_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["fit", str(uneven_run), "--json"]) == 0
    fit = {(f["ds"], f["shots"]): f for f in json.loads(capsys.readouterr().out)["fits"]}
    run_study(uneven_run, tmp_path / "rep", n_boot=0, sensitivity=False)
    study = {(f["ds"], f["shots"]): f for f in read_fits(tmp_path / "rep")}
    assert set(fit) == set(study) == {("deep", 2), ("deep", 5), ("shallow", 2), ("shallow", 5)}
    for key, f in fit.items():
        for field in ("n_points", "hull_points", "k", "alpha", "e_ir", "saturation", "sse", "layer"):
            assert study[key][field] == pytest.approx(f[field]), (key, field)
    assert {f["layer"] for f in fit.values()} == {"last"}
