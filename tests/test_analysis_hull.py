"""Upper hull: the numba monotone chain against scipy's Qhull, a pure-Python reference, and the real
open_clip table (mlfoundations/open_clip docs/openclip_results.csv, commit 29b90b8d, MIT)."""

import numpy as np
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from scipy.spatial import ConvexHull, QhullError

from plateaulab.analysis import load_openclip, upper_hull
from plateaulab.analysis.hull import _sort_order, _upper_chain_sorted, upper_chain_layered, upper_hull_reference, \
    upper_layers

SETTINGS = dict(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def qhull_upper_chain(us, ds):
    """Vertices of Qhull's facets whose outward normal points up (positive DS component), as (x, y) pairs
    sorted by x. Vertical facets (normal (+-1, 0)) are not upper, which is our equal-US convention."""
    pts = np.column_stack([us, ds])
    hull = ConvexHull(pts)
    verts = np.unique(hull.simplices[hull.equations[:, 1] > 0])
    out = pts[verts]
    return out[np.argsort(out[:, 0])]


# Coordinates on a 1/16 grid: cross products are exact in float64, so collinear and duplicate points are
# real ties, and Qhull (with its tolerances) and the exact chain must agree on them.
grid_points = st.integers(3, 40).flatmap(
    lambda n: st.tuples(st.lists(st.integers(0, 16), min_size=n, max_size=n),
                        st.lists(st.integers(0, 16), min_size=n, max_size=n)))


@settings(**SETTINGS)
@given(grid_points)
def test_matches_qhull_upper_chain_on_grid_points(xy):
    us = np.array(xy[0], float) / 16
    ds = np.array(xy[1], float) / 16
    try:
        expected = qhull_upper_chain(us, ds)
    except QhullError:
        assume(False)  # Qhull refuses collinear-only input; the reference test covers it
    got = upper_hull(us, ds)
    np.testing.assert_array_equal(np.column_stack([us[got], ds[got]]), expected)


@settings(**SETTINGS)
@given(st.integers(3, 200), st.integers(0, 2**32 - 1))
def test_matches_qhull_on_random_floats(n, seed):
    rng = np.random.default_rng(seed)
    us, ds = rng.random(n), rng.random(n) * rng.random(n)
    got = upper_hull(us, ds)
    np.testing.assert_array_equal(np.column_stack([us[got], ds[got]]), qhull_upper_chain(us, ds))


@settings(**SETTINGS)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, np.nan]),
                          st.sampled_from([0.0, 0.5, 1.0, 0.3, np.inf])), max_size=25))
def test_kernel_equals_reference_with_ties_nan_and_tiny_inputs(pairs):
    us = np.array([p[0] for p in pairs], float)
    ds = np.array([p[1] for p in pairs], float)
    np.testing.assert_array_equal(upper_hull(us, ds), upper_hull_reference(us, ds))


@settings(**SETTINGS)
@given(st.integers(1, 60), st.integers(0, 2**32 - 1))
def test_chain_properties(n, seed):
    rng = np.random.default_rng(seed)
    us, ds = rng.integers(0, 10, n) / 10, rng.random(n)
    h = upper_hull(us, ds)
    hx, hy = us[h], ds[h]
    assert np.all(np.diff(hx) > 0)  # sorted by US, one vertex per US value
    assert hx[0] == us.min() and hx[-1] == us.max()
    assert hy[0] == ds[us == us.min()].max() and hy[-1] == ds[us == us.max()].max()
    # Every point lies on or below the chain, and every interior vertex is a strict (clockwise) turn.
    assert np.all(ds <= np.interp(us, hx, hy) + 1e-12)
    for a, b, c in zip(h[:-2], h[1:-1], h[2:]):
        assert (us[b] - us[a]) * (ds[c] - ds[a]) - (ds[b] - ds[a]) * (us[c] - us[a]) < 0


def test_small_and_degenerate_inputs():
    assert upper_hull([], []).size == 0
    np.testing.assert_array_equal(upper_hull([0.3], [0.2]), [0])
    np.testing.assert_array_equal(upper_hull([0.3, 0.1], [0.2, 0.5]), [1, 0])
    np.testing.assert_array_equal(upper_hull([0.3, 0.3], [0.2, 0.5]), [1])        # equal US: higher DS
    np.testing.assert_array_equal(upper_hull([0.3, 0.3, 0.5], [0.5, 0.5, 0.1]), [0, 2])  # duplicate: lowest index
    np.testing.assert_array_equal(upper_hull([0, 1, 2, 3], [0, 1, 2, 3]), [0, 3])  # collinear: ends only
    np.testing.assert_array_equal(upper_hull([0, 1, np.nan, 2], [0, 1, 5, 0]), [0, 1, 3])  # NaN skipped
    # The chain keeps descending after the highest DS point (still reachable by mixing models).
    np.testing.assert_array_equal(upper_hull([0, 1, 2], [0, 1, 0.5]), [0, 1, 2])


@settings(**SETTINGS)
@given(st.integers(1, 300), st.integers(0, 2**32 - 1), st.booleans(), st.floats(0.05, 0.95))
def test_layered_chain_equals_plain_chain(n, seed, on_grid, p_present):
    """The bootstrap's layer-pruned chain must return exactly the plain scan's vertices."""
    rng = np.random.default_rng(seed)
    if on_grid:
        us, ds = rng.integers(0, 6, n) / 6, rng.integers(0, 6, n) / 6
    else:
        us = rng.random(n)
        ds = 1 - (1 - us) ** 2 - np.abs(rng.normal(0, 0.05, n))
    order = _sort_order(us, ds)
    layers = upper_layers(us, ds, order, 24)
    out, ref = np.empty(n, np.int64), np.empty(n, np.int64)
    for _ in range(20):
        present = rng.random(n) < p_present
        h = upper_chain_layered(us, ds, order, present, *layers, out)
        h2 = _upper_chain_sorted(us, ds, order, present, ref)
        np.testing.assert_array_equal(out[:h], ref[:h2])


def test_openclip_hulls_match_qhull():
    table = load_openclip()
    wide = table.wide()
    us = wide[table.us_name].to_numpy()
    outlier = int(np.argmin(us))  # coca_ViT-B-32 / mscoco_finetuned, ImageNet 0.0079
    assert wide["model"][outlier].startswith("coca_ViT-B-32/mscoco_finetuned") and us[outlier] < 0.01
    sizes = []
    for task in table.ds_tasks:
        ds = wide[task].to_numpy()
        ok = np.isfinite(ds)
        h = upper_hull(us[ok], ds[ok])
        np.testing.assert_array_equal(np.column_stack([us[ok][h], ds[ok][h]]), qhull_upper_chain(us[ok], ds[ok]))
        sizes.append(h.size)
        assert np.flatnonzero(ok)[h[0]] == outlier  # the leftmost point always starts the chain
    assert len(sizes) == 34 and 2 <= min(sizes) and max(sizes) <= 25  # short hulls of 121 models
