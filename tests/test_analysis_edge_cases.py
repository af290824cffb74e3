"""Edge cases of the analysis found by reading it again: each test failed before its fix.

The band honours the US Bayes error; profiles judge weighted fits only where they can; an unknown US
test size adds no US noise; the effective test size of a mean over seeds adds its two variances; test
sizes, seeds and hyper-parameter tables that cannot be used are refused by name; the held-out target of
a hull fit with its tail is the whole held-out hull; a fit on a bound is never identified."""

import shutil

import numpy as np
import pandas as pd
import pytest

from plateaulab.analysis import fit_saturating_power_law, sample_size_sensitivity, upper_hull
from plateaulab.analysis import identify
from plateaulab.analysis.noise import noise_bootstrap
from plateaulab.analysis.runs import effective_test_size
from plateaulab.analysis.study import band_grid, bootstrap_band
from plateaulab.errors import InputError


def _frontier(n=40, seed=0, b=0.0):
    """Models on and below e_DS = 0.5 e_US^2 + 0.2 (e_US = 1 - us - b), with one-sided scatter."""
    rng = np.random.default_rng(seed)
    us = rng.uniform(0.05, 0.85, n)
    ds = 1.0 - (0.5 * np.clip(1.0 - us - b, 0, None) ** 2 + 0.2) - np.abs(rng.normal(0, 0.03, n))
    ds[: n // 3] = 1.0 - (0.5 * np.clip(1.0 - us[: n // 3] - b, 0, None) ** 2 + 0.2)
    return us, ds


def test_the_band_uses_the_us_bayes_error_of_its_replicates():
    us, ds = _frontier(b=0.1)
    fit = fit_saturating_power_law(us, ds, us_bayes_error=0.1)
    assert fit.success
    samples = np.tile([fit.k, fit.alpha, fit.e_ir], (20, 1))      # every replicate equals the fit
    grid = band_grid(us)
    _, lo, hi = bootstrap_band(samples, grid, us_bayes_error=0.1)
    np.testing.assert_allclose(lo, fit.predict(grid), atol=1e-12)
    np.testing.assert_allclose(hi, fit.predict(grid), atol=1e-12)


def test_equal_weights_give_the_unweighted_profile_and_unequal_ones_are_not_judged():
    us, ds = _frontier(seed=1)
    plain = fit_saturating_power_law(us, ds, on="all")
    scaled = fit_saturating_power_law(us, ds, np.full(us.size, 50.0), on="all")
    assert plain.identifiable == scaled.identifiable
    for p in ("k", "alpha", "e_ir"):
        np.testing.assert_allclose(scaled.profile.intervals[p], plain.profile.intervals[p], rtol=1e-6)
    w = np.linspace(1.0, 3.0, us.size)
    weighted = fit_saturating_power_law(us, ds, w, on="all")
    assert not weighted.identified and not any(weighted.identifiable.values())
    assert any("unequal weights" in f for f in weighted.flags)


def test_an_unknown_us_test_size_adds_no_us_noise():
    us, ds = _frontier(seed=2)
    fit = fit_saturating_power_law(us, ds)
    idx = fit.fit_indices
    alone = identify.profile_fit(fit, us[idx], ds[idx], n_test=500)
    with_us = identify.profile_fit(fit, us[idx], ds[idx], n_test=500, n_test_us=500)
    p = ds[idx]
    assert alone.s2_noise == pytest.approx(float(np.mean(p * (1 - p) / 500)))
    assert with_us.s2_noise > alone.s2_noise


def test_the_effective_test_size_adds_test_set_and_seed_variance():
    # p = 0.5 on m = 1000 test examples, seed std 0.01 over S = 4 seeds:
    # var = 0.25 / 1000 + 0.01^2 / 4 = 2.75e-4, so n = 0.25 / 2.75e-4 = 909.
    n = effective_test_size(pd.Series([0.5]), pd.Series([1000]), pd.Series([0.01]), pd.Series([4]))
    assert n.iloc[0] == 909
    assert effective_test_size(pd.Series([0.5]), pd.Series([1000]), pd.Series([np.nan]), pd.Series([1])).iloc[0] == 1000


@pytest.mark.parametrize("n_test,words", [([100, 200], "one per model"), ("many", "numbers of test examples"),
                                          (-3, "non-negative"), (10.5, "whole")])
def test_unusable_test_sizes_are_refused_by_name(n_test, words):
    us, ds = _frontier(seed=3)
    with pytest.raises(InputError, match=words) as info:
        fit_saturating_power_law(us, ds, n_test=n_test)
    assert info.value.param == "n_test"
    with pytest.raises(InputError, match=words):
        noise_bootstrap(us, ds, n_test, n_boot=10)


def test_a_negative_seed_is_refused_by_name():
    us, ds = _frontier(seed=4)
    with pytest.raises(InputError) as info:
        sample_size_sensitivity(us, ds, seed=-1, trials=2)
    assert info.value.param == "seed"


def test_an_empty_list_of_sample_sizes_is_refused():
    us, ds = _frontier(seed=4)
    with pytest.raises(InputError, match="empty") as info:
        sample_size_sensitivity(us, ds, sizes=[], trials=2)
    assert info.value.param == "sizes"


def test_a_hull_fit_with_its_tail_is_scored_against_the_whole_held_out_hull():
    rng = np.random.default_rng(5)
    us = rng.uniform(0.05, 0.95, 120)
    ds = 0.8 - 2.0 * (us - 0.6) ** 2 - np.abs(rng.normal(0, 0.02, us.size))   # rises, then falls
    cut = 0.5
    held = np.flatnonzero(us >= cut)
    whole = upper_hull(us[held], ds[held]).size
    rows = {tail: sample_size_sensitivity(us, ds, cut=cut, sizes=[20], trials=2, on="hull", tail=tail)
            for tail in (False, True)}
    assert int(rows[True]["n_target"].iloc[0]) == whole
    assert int(rows[False]["n_target"].iloc[0]) < whole


def test_a_fit_on_a_bound_is_never_identified_even_without_the_profile():
    # A step at the left end: alpha runs to its upper bound on 6 distinct points.
    us = [0.0, 0.001, 0.002, 0.3, 0.6, 0.9]
    ds = [0.1, 0.6, 0.9, 0.9001, 0.9002, 0.9003]
    for profile in (False, True):
        fit = fit_saturating_power_law(us, ds, profile=profile)
        assert fit.on_bound == ["alpha"] and fit.n_distinct == 6
        assert not fit.identified


def test_hyperparameters_of_a_merged_wide_table_are_refused_with_a_way_out(tmp_path):
    from plateaulab.analysis.sources import read_source

    path = tmp_path / "runs.csv"
    pd.DataFrame({"model": ["a", "a", "b", "b", "c", "c", "d", "d"],
                  "lr": [1e-3, 1e-4] * 4,
                  "imagenet": [0.5, 0.52, 0.6, 0.61, 0.7, 0.69, 0.75, 0.74],
                  "cifar": [0.8, 0.81, 0.85, 0.84, 0.9, 0.91, 0.92, 0.93]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="--id") as info:
        read_source(path, us="imagenet", ds=["cifar"], duplicates="first", hparams="lr")
    assert "lr" in str(info.value)


def test_a_hyperparameter_summary_without_runs_at_the_us_optimum_is_empty():
    from plateaulab.analysis.hyperparams import hparam_summary

    table = pd.DataFrame({"hparam": ["lr", "lr"], "shots": [np.nan, np.nan], "target": ["US", "cifar"],
                          "loss_from_us_choice": [np.nan, np.nan], "crossed": [False, False],
                          "us_best_param": [1e-3, 1e-3], "agrees_with_us": [True, False],
                          "best_param": [1e-3, 1e-4], "spearman_with_us": [1.0, 0.5]})
    assert len(hparam_summary(table)) == 0


def test_a_repeated_architecture_row_does_not_break_the_scale_up_table(tmp_path):
    from plateaulab.analysis.scaling_laws_openclip import _PACKAGED, load_scaling_laws_openclip

    folder = tmp_path / "sl"
    shutil.copytree(_PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parent, folder)
    arch = pd.read_csv(folder / "arch_info.csv")
    pd.concat([arch, arch.iloc[:1]]).to_csv(folder / "arch_info.csv", index=False)
    assert len(load_scaling_laws_openclip(folder).long) == len(load_scaling_laws_openclip().long)
