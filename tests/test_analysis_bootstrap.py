"""Bootstrap of eq. (1): every replicate of the numba kernel against the plain Python path (resample, hull,
fit) on the same draws, reproducibility, counts, m-out-of-n, and a scipy loop (Qhull + curve_fit)."""

import warnings

import numba
import numpy as np
import pytest
from scipy.optimize import curve_fit
from scipy.spatial import ConvexHull

from plateaulab.analysis import bootstrap_fit, fit_saturating_power_law, load_openclip, upper_hull
from plateaulab.analysis.bootstrap import draw_counts
from plateaulab.errors import InputError


def frontier_points(n, seed=0):
    rng = np.random.default_rng(seed)
    us = rng.uniform(0.05, 0.8, n)
    ds = 1 - (0.6 * (1 - us) ** 2.5 + 0.15) - np.abs(rng.normal(0, 0.04, n))
    return us, ds


def replicate_reference(us, ds, seed, b, m, on, **kw):
    counts = np.empty(us.size, np.int64)
    draw_counts(seed, b, us.size, m, counts)
    if on == "hull":
        keep = counts > 0
        fit = fit_saturating_power_law(us[keep], ds[keep], on="hull", **kw)
    else:
        fit = fit_saturating_power_law(us, ds, counts.astype(float), on="all", **kw)
    return fit, counts


@pytest.mark.parametrize("on, m, kw", [("hull", None, {}), ("all", None, {}), ("hull", 60, {}),
                                       ("hull", None, {"loss": "huber"}), ("all", None, {"loss": "log"}),
                                       ("hull", None, {"us_bayes_error": 0.1})])
def test_kernel_replicates_equal_python_path(on, m, kw):
    us, ds = frontier_points(200, seed=1)
    res = bootstrap_fit(us, ds, 40, on=on, seed=11, m=m, **kw)
    for b in range(40):
        fit, counts = replicate_reference(us, ds, 11, b, m or us.size, on, **kw)
        assert counts.sum() == (m or us.size)
        np.testing.assert_allclose(res.samples[b], [fit.k, fit.alpha, fit.e_ir, fit.saturation], rtol=1e-6, atol=1e-9)


def test_seeded_reproducible_and_thread_independent():
    us, ds = frontier_points(300, seed=2)
    a = bootstrap_fit(us, ds, 200, seed=5)
    b = bootstrap_fit(us, ds, 200, seed=5)
    c = bootstrap_fit(us, ds, 200, seed=6)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        d = bootstrap_fit(us, ds, 200, seed=5)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(a.samples, d.samples)
    assert a.ci == b.ci and set(a.ci) == {"k", "alpha", "e_ir", "saturation"}
    lo, hi = a.ci["saturation"]
    assert lo <= a.fit.saturation <= hi
    np.testing.assert_allclose(a.samples[:, 3], 1 - a.samples[:, 2])
    np.testing.assert_allclose([a.ci["saturation"][0], a.ci["saturation"][1]],
                               np.percentile(a.samples[:, 3], [2.5, 97.5]))


def test_draws_are_uniform():
    """Pooled counts over many replicates: a chi-square test of uniformity over the n indices."""
    n, reps = 50, 400
    total = np.zeros(n)
    counts = np.empty(n, np.int64)
    for b in range(reps):
        draw_counts(3, b, n, n, counts)
        total += counts
    expected = reps  # n * reps draws spread over n cells
    chi2 = float(((total - expected) ** 2 / expected).sum())
    assert chi2 < 100  # 49 degrees of freedom: P(chi2 > 100) < 1e-5


def test_failures_and_unidentified_are_counted_not_dropped():
    # Two distinct US values: a replicate that draws only one of them cannot be fitted.
    us = np.array([0.2, 0.2, 0.2, 0.6])
    ds = np.array([0.3, 0.25, 0.2, 0.5])
    res = bootstrap_fit(us, ds, 300, seed=0)
    failed = np.isnan(res.samples).all(axis=1)
    assert res.n_failed == failed.sum() > 0 and res.samples.shape == (300, 4)
    # Every successful replicate has at most 2 hull points: none identified.
    assert res.n_unidentified == 300 - res.n_failed
    d = res.to_dict()
    assert d["n_failed"] == res.n_failed and set(d["ci"]) == {"k", "alpha", "e_ir", "saturation"}


def test_m_out_of_n_widens_intervals_and_validates():
    us, ds = frontier_points(400, seed=4)
    full = bootstrap_fit(us, ds, 300, seed=1)
    half = bootstrap_fit(us, ds, 300, seed=1, m=100)
    width = lambda r: r.ci["saturation"][1] - r.ci["saturation"][0]
    assert half.m == 100 and width(half) > width(full)
    with pytest.raises(InputError, match="m"):
        bootstrap_fit(us, ds, 10, m=1000)
    with pytest.raises(InputError, match="n_boot"):
        bootstrap_fit(us, ds, 0)


def test_replicates_never_worse_than_scipy_loop_on_openclip():
    """Qhull + the best of several bounded curve_fit starts on the same resamples (CIFAR-100 of open_clip,
    mlfoundations/open_clip docs/openclip_results.csv 29b90b8d): the kernel's replicate SSE is never larger."""
    us, ds = load_openclip().pair("CIFAR-100")
    res = bootstrap_fit(us, ds, 25, seed=9)
    for b in range(25):
        counts = np.empty(us.size, np.int64)
        draw_counts(9, b, us.size, us.size, counts)
        keep = counts > 0
        pts = np.column_stack([us[keep], ds[keep]])
        hull = ConvexHull(pts)
        v = np.unique(hull.simplices[hull.equations[:, 1] > 0])
        assert v.size == upper_hull(us[keep], ds[keep]).size
        v = v[np.argsort(pts[v, 0])]
        top = np.flatnonzero(pts[v, 1] == pts[v, 1].max())[-1]
        v = v[:top + 1]                  # the rising part: leftmost vertex up to the highest
        x, y = 1 - pts[v, 0], 1 - pts[v, 1]
        k, alpha, e_ir, _ = res.samples[b]
        ours = float(np.sum((y - (k * x ** alpha + e_ir)) ** 2))
        best = np.inf
        for a0 in (0.5, 1.0, 3.0, 10.0):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    p, _ = curve_fit(lambda x, k, a, c: k * x ** a + c, x, y, p0=[1.0, a0, 0.05],
                                     bounds=([0, 0.01, 0], [np.inf, 100, 1]), maxfev=20000)
                best = min(best, float(np.sum((y - (p[0] * x ** p[1] + p[2])) ** 2)))
            except RuntimeError:
                pass
        assert ours <= best * (1 + 1e-6) + 1e-12
