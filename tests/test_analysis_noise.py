"""The measurement-noise interval (analysis.noise) validated on simulated zoos with a known frontier
(analysis.simulate), and the rising-hull fit against the whole-hull fit on the same zoos."""

import numpy as np
import pytest

from plateaulab.analysis import fit_saturating_power_law
from plateaulab.analysis.noise import noise_bootstrap
from plateaulab.analysis.simulate import simulated_zoo
from plateaulab.errors import InputError

N_ZOOS = 120


@pytest.fixture(scope="module")
def zoo_runs():
    """For each seeded zoo: the true saturation, the rising-hull and whole-hull estimates, and the 95%
    measurement-noise intervals of both fits."""
    out = []
    for z in range(N_ZOOS):
        zoo = simulated_zoo(10_000 + z)
        rising = noise_bootstrap(zoo.us, zoo.ds, zoo.n_test, zoo.n_test, n_boot=100, seed=z)
        whole = noise_bootstrap(zoo.us, zoo.ds, zoo.n_test, zoo.n_test, n_boot=100, seed=z, tail=True)
        out.append((zoo.saturation, rising.fit.saturation, rising.ci["saturation"], whole.fit.saturation,
                    whole.ci["saturation"]))
    return out


def test_noise_interval_covers_the_true_saturation(zoo_runs):
    """At a nominal 95%, the interval must cover the truth in at least 90% of the zoos. With the observed
    coverage near 0.95, the binomial standard error over 120 zoos is about 0.02, so a drop below 0.90 is a
    real regression, not chance."""
    covered = [lo <= truth <= hi for truth, _, (lo, hi), _, _ in zoo_runs]
    assert np.mean(covered) >= 0.90, np.mean(covered)
    # never an interval that excludes its own estimate
    assert all(lo <= est <= hi for _, est, (lo, hi), _, _ in zoo_runs)


def test_rising_hull_is_less_biased_than_the_whole_hull(zoo_runs):
    truth = np.array([r[0] for r in zoo_runs])
    rising = np.array([r[1] for r in zoo_runs]) - truth
    whole = np.array([r[3] for r in zoo_runs]) - truth
    assert abs(rising.mean()) < 0.003 < abs(whole.mean())       # the tail pulls the plateau down
    assert rising.std() < whole.std()
    assert whole.mean() < 0


def test_noise_bootstrap_is_reproducible_and_validates():
    zoo = simulated_zoo(3)
    a = noise_bootstrap(zoo.us, zoo.ds, zoo.n_test, n_boot=50, seed=4)
    b = noise_bootstrap(zoo.us, zoo.ds, zoo.n_test, n_boot=50, seed=4)
    np.testing.assert_array_equal(a.samples, b.samples)
    c = noise_bootstrap(zoo.us, zoo.ds, zoo.n_test, n_boot=50, seed=5)
    assert not np.array_equal(a.samples, c.samples)
    # n_test = 0 everywhere: nothing to resample
    with pytest.raises(InputError, match="no test-set size"):
        noise_bootstrap(zoo.us, zoo.ds, 0, n_boot=50)
    with pytest.raises(InputError, match="n_boot"):
        noise_bootstrap(zoo.us, zoo.ds, 1000, n_boot=5)
    with pytest.raises(InputError, match="whole"):
        noise_bootstrap(zoo.us, zoo.ds, 10.5, n_boot=50)


def test_noise_scales_with_test_set_size():
    """The same zoo measured on 20x fewer test examples gives a wider interval."""
    zoo = simulated_zoo(11)
    wide = noise_bootstrap(zoo.us, zoo.ds, 500, 500, n_boot=200, seed=1).ci["saturation"]
    narrow = noise_bootstrap(zoo.us, zoo.ds, 10_000, 10_000, n_boot=200, seed=1).ci["saturation"]
    assert wide[1] - wide[0] > 2 * (narrow[1] - narrow[0])


def test_fixed_accuracies_without_sizes_stay_fixed():
    """A DS accuracy with n_test 0 is held fixed: only US noise moves the fit."""
    zoo = simulated_zoo(12)
    only_us = noise_bootstrap(zoo.us, zoo.ds, 0, 10_000, n_boot=50, seed=0)
    both = noise_bootstrap(zoo.us, zoo.ds, 10_000, 10_000, n_boot=50, seed=0)
    width = lambda r: r.ci["saturation"][1] - r.ci["saturation"][0]  # noqa: E731
    assert width(only_us) < width(both)


def test_centred_interval_stays_inside_the_parameter_ranges():
    """FGVC Aircraft of open_clip (3,333 test images; mlfoundations/open_clip 29b90b8d): a 3-point rising hull
    whose replicates spread widely; centring on the estimate must not push the saturation past 1."""
    from plateaulab.analysis import load_openclip

    us, ds = load_openclip().pair("FGVC Aircraft")
    r = noise_bootstrap(us, ds, 3333, 50_000, n_boot=200, seed=0)
    lo, hi = r.ci["saturation"]
    assert 0.0 <= lo <= r.fit.saturation <= hi <= 1.0
    assert r.ci["k"][0] >= 0 and 0.01 <= r.ci["alpha"][0] <= r.ci["alpha"][1] <= 100
