"""Sample-size sensitivity (PROTOCOL §6, App. F.1.1), checked against direct fits, on generated data and on
open_clip (mlfoundations/open_clip docs/openclip_results.csv 29b90b8d)."""

import json

import numpy as np
import pytest

from plateaulab.analysis import fit_saturating_power_law, load_openclip, sample_size_sensitivity, upper_hull
from plateaulab.analysis.hull import rising_hull
from plateaulab.analysis.sensitivity import default_sizes
from plateaulab.cli import main
from plateaulab.errors import InputError

COLUMNS = ["on", "n", "fit_error_mean", "fit_error_std", "pred_error_mean", "pred_error_std", "trials", "n_failed"]


def test_full_sample_equals_direct_fit_on_openclip():
    us, ds = load_openclip().pair("Caltech-101")
    cut = 0.7
    df = sample_size_sensitivity(us, ds, cut=cut, trials=3)
    assert list(df.columns[:8]) == COLUMNS and set(df["on"]) == {"hull", "all"}
    lo, hi = us < cut, us >= cut
    n_fit = int(lo.sum())
    assert sorted(df["n"].unique()) == default_sizes(n_fit) and df["n"].max() == n_fit
    for on in ("hull", "all"):
        row = df[(df["on"] == on) & (df["n"] == n_fit)].iloc[0]
        fit = fit_saturating_power_law(us[lo], ds[lo], on=on)
        used = rising_hull(us[lo], ds[lo]) if on == "hull" else np.arange(n_fit)
        fit_mse = np.mean((ds[lo][used] - fit.predict(us[lo][used])) ** 2)
        # Each mode is scored against what it predicts: the held-out frontier (its rising hull) for the
        # hull fit, every held-out model for the all-points fit.
        aim = rising_hull(us[hi], ds[hi]) if on == "hull" else np.arange(int(hi.sum()))
        pred_mse = np.mean((ds[hi][aim] - fit.predict(us[hi][aim])) ** 2)
        pred_all = np.mean((ds[hi] - fit.predict(us[hi])) ** 2)
        # Every trial at n = all draws the same points (in another order): identical fits.
        assert row["fit_error_mean"] == pytest.approx(fit_mse, rel=1e-6)
        assert row["pred_error_mean"] == pytest.approx(pred_mse, rel=1e-6)
        assert row["fit_error_std"] == pytest.approx(0, abs=1e-9) and row["trials"] == 3 and row["n_failed"] == 0
        other = sample_size_sensitivity(us, ds, cut=cut, trials=1, sizes=[n_fit], target="all")
        assert other[other["on"] == on]["pred_error_mean"].iloc[0] == pytest.approx(pred_all, rel=1e-5)


def test_reproducible_metrics_and_quantile_cut():
    rng = np.random.default_rng(0)
    us = rng.uniform(0.0, 0.5, 600)
    ds = 1 - (0.7 * (1 - us) ** 3 + 0.2) - np.abs(rng.normal(0, 0.02, 600))
    a = sample_size_sensitivity(us, ds, cut=0.45, sizes=[50, 200], seed=1)
    b = sample_size_sensitivity(us, ds, cut=0.45, sizes=[50, 200], seed=1)
    assert a.equals(b) and (a["metric"] == "mse").all()
    rmse = sample_size_sensitivity(us, ds, cut=0.45, sizes=[50, 200], seed=1, metric="rmse")
    mae = sample_size_sensitivity(us, ds, cut=0.45, sizes=[50, 200], seed=1, metric=lambda r: float(np.abs(r).mean()))
    mae2 = sample_size_sensitivity(us, ds, cut=0.45, sizes=[50, 200], seed=1, metric="mae")
    np.testing.assert_allclose(mae["pred_error_mean"], mae2["pred_error_mean"])
    # sqrt is concave: mean of RMSEs <= sqrt of mean of MSEs.
    assert (rmse["pred_error_mean"] <= np.sqrt(a["pred_error_mean"]) + 1e-12).all()
    q = sample_size_sensitivity(us, ds, cut_quantile=0.9, sizes=[40], trials=2, on="hull")
    assert q["cut"].iloc[0] == pytest.approx(np.quantile(us, 0.9)) and list(q["on"]) == ["hull"]
    assert a["trials"].eq(10).all() and a["n_failed"].eq(0).all() and (a["pred_error_mean"] > 0).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(cut=0.01), "leaves"),
    (dict(cut=0.6, sizes=[1000]), "sample sizes"),
    (dict(metric="r2"), "metric must be"),
    (dict(on=("hull", "top")), "on must be"),
    (dict(trials=0), "trials"),
])
def test_bad_arguments(kwargs, match):
    us, ds = load_openclip().pair("CIFAR-10")
    with pytest.raises(InputError, match=match):
        sample_size_sensitivity(us, ds, **kwargs)


def test_cli_sensitivity(tmp_path, capsys):
    assert main(["sensitivity", "builtin:openclip", "--ds", "EuroSAT", "--on", "hull", "--sizes", "10,40",
                 "--trials", "4", "--cut", "0.7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["ds"], r["on"], r["n"]) for r in out["rows"]] == [("EuroSAT", "hull", 10), ("EuroSAT", "hull", 40)]
    path = tmp_path / "s.csv"
    assert main(["sensitivity", "builtin:openclip", "--ds", "EuroSAT", "--sizes", "10", "--trials", "2", "-o",
                 str(path)]) == 0
    assert path.exists() and path.read_text().startswith("ds,on,n,")
    assert main(["sensitivity", "builtin:openclip", "--ds", "EuroSAT", "--sizes", "x"]) == 2
    assert "--sizes" in capsys.readouterr().err
