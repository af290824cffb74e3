"""Measurement-noise intervals for the eq. (1) fit: a parametric bootstrap of the accuracies themselves.

Every accuracy is a binomial estimate over a test set of n examples (PROTOCOL §4), so for a *fixed* set of
models the uncertainty of the fit comes from the test sets: redraw each accuracy as Binomial(n, p)/n with
p the observed accuracy, recompute the upper hull (noise moves points on and off it), refit, and repeat.
This answers "how much would the saturation move if the same models were evaluated on new test sets";
resampling the models (``bootstrap_fit``) answers another question (another set of models).

The interval is centred on the estimate. Redrawing every accuracy independently moves points near the top
up as often as down, and the hull keeps the ones that went up, so the replicates sit systematically above
the estimate wherever many models crowd the frontier (e.g. a ceiling that the best models share: all
models of a study are scored on one test set, so their errors are correlated, while the redraws are
not). The bootstrap's spread is trusted, its location is not: the interval is the percentile interval of
theta_hat + (theta* - median(theta*)), so the estimate always lies inside it.

Validation (docs/ANALYSIS.md; tests/test_analysis_noise.py repeats a smaller run): on simulated zoos
(plateaulab.analysis.simulate: 25 models on a known frontier, 60 below it, binomial noise) the 95%
interval of the rising-hull fit covers the true saturation at about the nominal rate. A double bootstrap
that calibrates the levels (Davison & Hinkley 1997, §3.9) was tried and under-covered (82% and 75% of
200 zoos at n_test = 10,000 and 2,000), so it is not offered.

Reproducibility: replicate b reseeds numba's per-thread generator from (seed, b) through SplitMix64, so
results do not depend on the number of threads.
"""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np
from numba import njit, prange

from . import _validate
from ._powerlaw_kernels import fit_kernel_ws, work_size
from .bootstrap import PARAMS, _mix64
from .hull import _upper_chain_sorted, rising_length
from .powerlaw import ALPHA_BOUNDS, N_REFINE, N_SUB, _LOSS_CODES, fit_saturating_power_law, n_segments

__all__ = ["NoiseResult", "noise_bootstrap", "DEFAULT_BOOT"]

DEFAULT_BOOT = 300


@njit(cache=True)
def _seed(seed, b):
    s = _mix64(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(b) + np.uint64(1))
    np.random.seed(np.int64(s >> np.uint64(33)))


@njit(cache=True)
def _draw(p, n, out):
    """out[i] <- Binomial(n[i], p[i]) / n[i]; n[i] <= 0 leaves p[i] as it is (no noise known)."""
    for i in range(p.shape[0]):
        if n[i] > 0:
            ni = np.int64(n[i])
            out[i] = np.random.binomial(ni, min(max(p[i], 0.0), 1.0)) / ni
        else:
            out[i] = p[i]


@njit(cache=True)
def _fit_points(us, ds, on_hull, rising, bayes, loss, delta, log_lo, log_hi, n_seg, n_sub, n_refine,
                keys, order, present, sel, x, y, w, out, work, iwork):
    """Fit eq. (1) to the (rising) upper hull of (us, ds); returns the kernel's status, out as fit_kernel."""
    n = us.shape[0]
    # Sort by (US ascending, DS descending): a stable sort by -DS, then a stable sort by US.
    for i in range(n):
        keys[i] = -ds[i]
    o1 = np.argsort(keys, kind="mergesort")
    for i in range(n):
        keys[i] = us[o1[i]]
    o2 = np.argsort(keys, kind="mergesort")
    for i in range(n):
        order[i] = o1[o2[i]]
    if on_hull:
        h = _upper_chain_sorted(us, ds, order, present, sel)
        if rising:
            h = rising_length(ds, sel, h)
    else:
        h = n
        for t in range(n):
            sel[t] = order[t]
    for j in range(h):
        i = sel[j]
        x[j] = 1.0 - us[i] - bayes
        y[j] = 1.0 - ds[i]
        w[j] = 1.0
    return fit_kernel_ws(x, y, w, h, loss, delta, log_lo, log_hi, n_seg, n_sub, n_refine, out, work, iwork)


@njit(parallel=True, cache=True)
def noise_kernel(us, ds, n_us, n_ds, n_boot, seed, on_hull, rising, bayes, loss, delta, log_lo, log_hi, n_seg, n_sub,
                 n_refine, samples, status):
    """All replicates: samples (n_boot, 4) <- k, alpha, e_ir, saturation (NaN rows on failure)."""
    n = us.shape[0]
    n_grid = n_seg * n_sub + 1
    for b in prange(n_boot):
        us1 = np.empty(n)
        ds1 = np.empty(n)
        keys = np.empty(n)
        order = np.empty(n, dtype=np.int64)
        present = np.ones(n, dtype=np.bool_)
        sel = np.empty(n, dtype=np.int64)
        x = np.empty(n)
        y = np.empty(n)
        w = np.empty(n)
        out = np.empty(6)
        work = np.empty(work_size(n, n_grid))
        iwork = np.empty(n_grid, dtype=np.int64)
        _seed(seed, b)
        _draw(us, n_us, us1)
        _draw(ds, n_ds, ds1)
        st = _fit_points(us1, ds1, on_hull, rising, bayes, loss, delta, log_lo, log_hi, n_seg, n_sub, n_refine,
                         keys, order, present, sel, x, y, w, out, work, iwork)
        status[b] = st
        if st != 0:
            for p in range(4):
                samples[b, p] = np.nan
        else:
            samples[b, 0] = out[0]
            samples[b, 1] = out[1]
            samples[b, 2] = out[2]
            samples[b, 3] = 1.0 - out[2]


@dataclasses.dataclass
class NoiseResult:
    """Measurement-noise percentile intervals of k, alpha, e_ir and the saturation (``samples`` columns in
    PARAMS order; failed replicates are NaN rows, counted in n_failed)."""

    ci: dict
    samples: np.ndarray
    n_boot: int
    n_failed: int
    ci_level: float = 0.95
    seed: int = 0
    fit: object = None

    def to_dict(self) -> dict:
        def num(v):
            v = float(v)
            return v if math.isfinite(v) else None

        return {"ci": {p: [num(a), num(b)] for p, (a, b) in self.ci.items()}, "ci_level": self.ci_level,
                "n_boot": int(self.n_boot), "n_failed": int(self.n_failed), "seed": int(self.seed)}


def noise_bootstrap(us_acc, ds_acc, n_test_ds, n_test_us=None, *, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                    ci: float = 0.95, on: str = "hull", loss: str = "l2", us_bayes_error: float = 0.0,
                    huber_delta: float = 0.01, alpha_bounds: tuple = ALPHA_BOUNDS, tail: bool = False) -> NoiseResult:
    """Measurement-noise intervals of the fit (see the module docstring); ``on``, ``tail`` and the rest as
    in :func:`~plateaulab.analysis.powerlaw.fit_saturating_power_law`.

    n_test_ds, n_test_us: the test-set size behind each DS (US) accuracy: a scalar or one per model; 0 or
    NaN means unknown, and that accuracy is held fixed.
    """
    _validate.choice("on", on, _validate.ON_CHOICES)
    _validate.choice("loss", loss, _validate.LOSS_CHOICES)
    us, ds, _ = _validate.accuracy_pair(us_acc, ds_acc)
    b = _validate.bayes_error(us, us_bayes_error)
    n_ds = _validate.test_sizes(n_test_ds, us.size, "n_test")
    n_us = _validate.test_sizes(n_test_us, us.size, "n_test_us")
    if not (n_ds > 0).any() and not (n_us > 0).any():
        raise _validate.InputError("no test-set size is known, so there is no measurement noise to resample; "
                                   "give {param} (and the US one), or use the model bootstrap", param="n_test")
    n_boot = int(n_boot)
    if n_boot < 10:
        raise _validate.InputError(f"{{param}} must be >= 10 for a percentile interval; got {n_boot}", param="n_boot")
    if not 0.0 < ci < 1.0:
        raise _validate.InputError(f"{{param}} must be in (0, 1); got {ci!r}", param="ci")
    seed = _validate.seed(seed)
    lo, hi = (float(a) for a in alpha_bounds)
    point = fit_saturating_power_law(us, ds, on=on, loss=loss, us_bayes_error=b, huber_delta=huber_delta,
                                     alpha_bounds=(lo, hi), tail=tail, profile=False)
    samples = np.empty((n_boot, 4))
    status = np.empty(n_boot, dtype=np.int64)
    with numba.parallel_chunksize(1):
        noise_kernel(us, ds, n_us, n_ds, n_boot, int(seed), on == "hull", on == "hull" and not tail, b, _LOSS_CODES[loss], float(huber_delta),
                     math.log(lo), math.log(hi), n_segments(lo, hi), N_SUB, N_REFINE, samples, status)
    ok = status == 0
    a = 1.0 - ci
    estimate = (point.k, point.alpha, point.e_ir, point.saturation)
    ranges = ((0.0, np.inf), (lo, hi), (0.0, 1.0), (0.0, 1.0))     # centring must not leave a parameter's range
    cis = {}
    for j, p in enumerate(PARAMS):
        s = samples[ok, j]
        if s.size < 10 or not point.success:
            cis[p] = (float("nan"), float("nan"))
            continue
        q_lo, med, q_hi = np.quantile(s, [a / 2, 0.5, 1 - a / 2])
        r_lo, r_hi = ranges[j]
        cis[p] = (float(max(estimate[j] - (med - q_lo), r_lo)), float(min(estimate[j] + (q_hi - med), r_hi)))
    return NoiseResult(ci=cis, samples=samples, n_boot=n_boot, n_failed=int((~ok).sum()), ci_level=ci,
                       seed=int(seed), fit=point)
