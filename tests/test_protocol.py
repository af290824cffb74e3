"""The float64 protocol against independent formulations (scikit-learn Ridge, primal vs dual,
brute-force leave-one-out) and the sampling rules of big_vision's fewshot_lsr."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from plateaulab import protocol as P
from plateaulab.errors import ProtocolError


def _data(n, d, c, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    means = rng.normal(size=(c, d))
    x = means[y] + rng.normal(size=(n, d)) * 1.5 + offset
    return x, y


@pytest.mark.parametrize("n,d", [(60, 10), (12, 30), (31, 30)])
@pytest.mark.parametrize("l2", [1024.0, 3.0])
def test_weights_equal_sklearn_ridge_on_standardised_design(n, d, l2):
    from sklearn.linear_model import Ridge

    x, y = _data(n, d, 4)
    cache = P.precompute_cache(x, y, 4)
    w = P.ridge_weights(cache, l2)
    # Independent formulation: standardise with numpy's population std, bias column of 100,
    # targets in {-1, +1}, scikit-learn's own solver without an intercept.
    mean, std = x.mean(0), x.std(0) + 1e-5
    design = np.hstack([(x - mean) / std, np.full((n, 1), 100.0)])
    targets = np.where(np.eye(4)[y] > 0, 1.0, -1.0)
    ref = Ridge(alpha=l2, fit_intercept=False, solver="svd").fit(design, targets).coef_.T
    np.testing.assert_allclose(w, ref, rtol=1e-7, atol=1e-10 * np.abs(ref).max())


def test_primal_and_dual_agree():
    x, y = _data(40, 39, 5, seed=3)  # n = 40 >= D' = 40 -> primal
    cache_p = P.precompute_cache(x, y, 5)
    assert cache_p["primal"]
    cache_d = P.precompute_cache(x[:-1], y[:-1], 5)  # n = 39 < 40 -> dual
    assert not cache_d["primal"]
    # Same maths through the other route, written out directly in both forms.
    xs = cache_d["xs"]
    yt = cache_d["y"]
    for l2 in (0.5, 1024.0):
        primal = np.linalg.solve(xs.T @ xs + l2 * np.eye(xs.shape[1]), xs.T @ yt)
        np.testing.assert_allclose(P.ridge_weights(cache_d, l2), primal, rtol=1e-6, atol=1e-12)
        xs_p, yt_p = cache_p["xs"], cache_p["y"]
        dual = xs_p.T @ np.linalg.solve(xs_p @ xs_p.T + l2 * np.eye(len(xs_p)), yt_p)
        np.testing.assert_allclose(P.ridge_weights(cache_p, l2), dual, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("n,d", [(30, 6), (14, 20)])
@pytest.mark.parametrize("l2", [2.0, 1024.0])
def test_loo_equals_refitting_without_each_point(n, d, l2):
    x, y = _data(n, d, 3, seed=5)
    cache = P.precompute_cache(x, y, 3)
    acc, mse = P.loo_scores(cache, y, l2)
    xs, yt = cache["xs"], cache["y"]  # statistics held fixed, as documented
    hits, sq = 0, 0.0
    for i in range(n):
        keep = np.arange(n) != i
        w = np.linalg.solve(xs[keep].T @ xs[keep] + l2 * np.eye(xs.shape[1]), xs[keep].T @ yt[keep])
        pred = xs[i] @ w
        hits += int(np.argmax(pred) == y[i])
        sq += float(np.sum((yt[i] - pred) ** 2))
    assert acc == pytest.approx(hits / n)
    assert mse == pytest.approx(sq / (n * 3), rel=1e-6)


def test_sampling_matches_big_vision_rule():
    y = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2])
    idx = P.fewshot_indices(y, 3, shots=2, seed=7)
    rng = np.random.default_rng(7)
    expected = np.concatenate([rng.permutation(np.where(y == c)[0])[:2] for c in range(3)])
    np.testing.assert_array_equal(idx, expected)
    assert list(y[idx]) == [0, 0, 1, 1, 2, 2]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=30, max_size=120), st.integers(0, 2**31 - 1))
def test_sampling_is_nested_and_deterministic(labels, seed):
    y = np.array(labels)
    C = 5
    counts = np.bincount(y, minlength=C)
    max_shots = int(counts.min())
    if max_shots < 1:
        with pytest.raises(ProtocolError, match="class"):
            P.fewshot_indices(y, C, 1, seed, dataset="d")
        return
    prev = None
    for shots in range(1, max_shots + 1):
        idx = P.fewshot_indices(y, C, shots, seed)
        np.testing.assert_array_equal(idx, P.fewshot_indices(y, C, shots, seed))
        assert np.bincount(y[idx], minlength=C).tolist() == [shots] * C
        if prev is not None:  # every smaller set is contained in the larger one, class by class
            for c in range(C):
                assert set(prev[y[prev] == c]) <= set(idx[y[idx] == c])
        prev = idx


def test_short_class_error_names_dataset_class_and_count():
    y = np.array([0, 0, 0, 1, 2, 2, 2])
    with pytest.raises(ProtocolError, match=r"dataset 'pets': class 1 has 1 train examples, fewer than shots=2"):
        P.plan_tasks(y, 3, [1, 2], [0], dataset="pets")
    with pytest.warns(UserWarning, match="skipping shots=2"):
        tasks = P.plan_tasks(y, 3, [1, 2], [0, 1], dataset="pets", on_short="skip")
    assert [(t.shots, t.seed) for t in tasks] == [(1, 0), (1, 1)]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_l2_is_refused(bad):
    with pytest.raises(ProtocolError, match="l2 must be positive"):
        P.check_l2s([1024.0, bad])


def test_bad_shots_are_refused():
    with pytest.raises(ProtocolError, match="shots must be positive"):
        P.plan_tasks(np.array([0, 1, 0, 1]), 2, [0], [0])


def test_select_never_uses_more_than_its_inputs():
    l2s = [1.0, 10.0, 100.0]
    assert P.select_l2(l2s, "fixed") == 0
    assert P.select_l2(l2s, "loo", loo_acc=[0.5, 0.7, 0.7], loo_mse=[1.0, 0.9, 0.8]) == 2
    assert P.select_l2(l2s, "loo", loo_acc=[0.5, 0.7, 0.6], loo_mse=[1.0, 0.9, 0.8]) == 1
    assert P.select_l2(l2s, "val", val_acc=[0.9, 0.9, 0.1]) == 1  # tie -> larger l2


def test_argmax_ties_are_flagged():
    logits = np.array([[1.0, 1.0, 0.0], [1.0, 0.5, 0.0], [2.0, 2.0 - 1e-5, 0.0]])
    pred, tie = P.argmax_with_ties(logits)
    assert pred.tolist() == [0, 0, 0]
    assert tie.tolist() == [True, False, True]
