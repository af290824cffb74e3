"""Identifiability of eq. (1)'s parameters from the profile of the objective (analysis.identify)."""

import json

import numpy as np
import pytest
from scipy import stats

from plateaulab.analysis import fit_saturating_power_law, load_openclip
from plateaulab.analysis.identify import CHI2_1_95, f_quantile_95, knee_us
from plateaulab.analysis.simulate import simulated_zoo
from plateaulab.cli import main


@pytest.mark.parametrize("nu", [1, 2, 3, 5, 8, 13, 30, 35, 50, 80, 200, 10_000])
def test_f_quantile_matches_scipy(nu):
    assert f_quantile_95(nu) == pytest.approx(float(stats.f.ppf(0.95, 1, nu)), rel=2e-3)
    assert CHI2_1_95 == pytest.approx(float(stats.chi2.ppf(0.95, 1)))


def _profile_by_brute_force(x, y, alphas, cs):
    """min SSE over k >= 0 (closed form) for each e_IR in cs, minimising over a fine alpha grid (numpy)."""
    z = x[None, :] ** alphas[:, None]                             # (A, n)
    r = y[None, :] - cs[:, None]                                  # (C, n)
    k = np.clip((r @ z.T) / np.sum(z * z, axis=1)[None, :], 0, None)   # (C, A)
    sse = np.sum((r[:, None, :] - k[:, :, None] * z[None, :, :]) ** 2, axis=2)
    return sse.min(axis=1)


def test_eir_profile_interval_against_brute_force():
    """A well-sampled frontier: e_IR's profile interval from the kernel contains the truth and matches a
    brute-force profile's set {SSE <= SSE_min + delta}."""
    zoo = simulated_zoo(4)
    fit = fit_saturating_power_law(zoo.us, zoo.ds, n_test=zoo.n_test, n_test_us=zoo.n_test)
    assert fit.identified and all(fit.identifiable.values())
    lo, hi = fit.profile.intervals["e_ir"]
    assert lo <= 0.2 <= hi and hi - lo < 0.05
    x, y = 1 - zoo.us[fit.fit_indices], 1 - zoo.ds[fit.fit_indices]
    cs = np.linspace(0, 1, 1001)
    prof = _profile_by_brute_force(x, y, np.geomspace(0.01, 100, 1500), cs)
    inside = cs[prof <= fit.sse + fit.profile.delta]
    assert inside.min() == pytest.approx(lo, abs=0.003) and inside.max() == pytest.approx(hi, abs=0.003)


def test_step_function_is_not_identified():
    """A hull that jumps to its plateau at the first point after the near-chance model: alpha runs to its
    bound; the plateau itself is still pinned down by the flat part."""
    us = np.array([0.008, 0.30, 0.45, 0.60, 0.75, 0.85])
    ds = np.array([0.10, 0.799, 0.8005, 0.8015, 0.802, 0.8022])     # concave: every point is a hull vertex
    fit = fit_saturating_power_law(us, ds, n_test=10_000)
    assert fit.n_points == 6
    assert not fit.identified and not fit.identifiable["alpha"]
    assert any("alpha not identified" in f for f in fit.flags)
    assert any("to the left of that knee" in f for f in fit.flags)
    assert knee_us(fit, us[fit.fit_indices]) < 0.30


def test_three_points_identify_nothing_and_the_flag_says_so():
    fit = fit_saturating_power_law([0.2, 0.5, 0.8], [0.3, 0.5, 0.6])
    assert not fit.identified and not any(fit.identifiable.values())
    assert fit.flags[0].startswith("not identified: 3 distinct fitted points")


def test_no_openclip_fit_at_an_alpha_edge_is_identified():
    """The shipped open_clip table (mlfoundations/open_clip 29b90b8d): fits whose alpha is at or next to the
    end of its range (the step functions) are never identified, and every unidentified fit says why."""
    table = load_openclip()
    n_identified = 0
    for task in table.ds_tasks:
        us, ds = table.pair(task)
        fit = fit_saturating_power_law(us, ds, ds=task)
        if fit.alpha > 60 or fit.alpha < 0.02 or "alpha" in fit.on_bound:
            assert not fit.identified and not fit.identifiable["alpha"], task
        if not fit.identified:
            assert any("not identified" in f for f in fit.flags), (task, fit.flags)
        n_identified += fit.identified
    assert 0 < n_identified < len(table.ds_tasks)


def test_fit_json_contract(capsys):
    assert main(["fit", "builtin:openclip", "--ds", "MNIST,ImageNet Sketch", "--json"]) == 0
    fits = {f["ds"]: f for f in json.loads(capsys.readouterr().out)["fits"]}
    for f in fits.values():
        assert set(f["identifiable"]) == {"k", "alpha", "e_ir", "saturation"}
        assert f["identified"] == all(f["identifiable"][p] for p in ("k", "alpha", "e_ir"))
        assert isinstance(f["flags"], list) and all(isinstance(x, str) for x in f["flags"])
        assert len(f["hull_models"]) == f["n_points"]
    assert not fits["MNIST"]["identified"] and fits["MNIST"]["flags"]
