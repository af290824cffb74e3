"""Bootstrap of the eq. (1) fit: resample models with replacement, recompute the upper hull of every
replicate, refit, and take percentile intervals (PROTOCOL §5).

Speed: one numba kernel runs all replicates in parallel (prange). The points are sorted once by
(US ascending, DS descending); a resample is a multiset of the original points and duplicates never change
a hull, so each replicate only marks which points it drew and runs the O(n) monotone-chain scan over the
presorted order: no per-replicate sort. Better still, the points are peeled once into upper layers
(``hull.upper_layers``) and a replicate's chain is built from the top layers only, with an exact test that
nothing deeper can reach it (``hull.upper_chain_layered``). For on="all" the draw counts become the fit's
weights.

Reproducibility: replicate b draws from its own SplitMix64 stream seeded by (seed, b), so results do not
depend on the number of threads or on scheduling. An index in [0, n) is taken as the high 32 bits of a
64-bit draw times n, shifted right by 32 (Lemire's multiply-shift), and likewise from the low 32 bits;
its bias is below n / 2**32.

Caveat (docs/ANALYSIS.md): the hull is an extreme-value statistic of the sample, and the n-out-of-n
bootstrap is inconsistent for maxima (Bickel & Sakov 2008). With m < n, each replicate draws m models
(m-out-of-n). We report the plain percentile interval of the m-out-of-n replicates, without rescaling by a
convergence rate (the rate of hull-based estimators is not known), so such intervals are conservative.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numba
import numpy as np
from numba import njit, prange

from . import _validate
from ._powerlaw_kernels import fit_kernel_ws, work_size
from .hull import MAX_LAYERS, _sort_order, rising_length, upper_chain_layered, upper_layers
from .powerlaw import ALPHA_BOUNDS, MIN_IDENTIFIED, N_SUB, N_REFINE, _LOSS_CODES, n_segments, PowerLawFit, \
    fit_saturating_power_law

__all__ = ["BootstrapResult", "bootstrap_fit", "PARAMS"]

PARAMS = ("k", "alpha", "e_ir", "saturation")

_GAMMA = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _mix64(z):
    """SplitMix64 output function (a bijection of 64-bit integers with good avalanche)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def draw_counts(seed, b, n, m, counts):
    """counts[i] <- how many of m uniform draws from [0, n) hit i, for replicate b of ``seed``.

    Each 64-bit output gives two indices, one from each 32-bit half: index = (half * n) >> 32.
    """
    for i in range(n):
        counts[i] = 0
    state = _mix64(np.uint64(seed) * _GAMMA + np.uint64(b) + np.uint64(1))
    nn = np.uint64(n)
    lo_mask = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    j = 0
    while j < m:
        state = state + _GAMMA
        v = _mix64(state)
        counts[np.int64(((v >> s32) * nn) >> s32)] += 1
        j += 1
        if j < m:
            counts[np.int64(((v & lo_mask) * nn) >> s32)] += 1
            j += 1


@njit(cache=True)
def _replicate(us, ds, order, layers, counts, on_hull, rising, bayes, loss, delta, log_lo, log_hi, n_seg, n_sub, n_refine,
               present, sel, x, y, w, out, work, iwork):
    """One replicate's fit from its draw counts, in the given scratch arrays.

    out <- (k, alpha, e_ir, objective, sse, alpha_at_bound); returns (status, distinct US values used).
    """
    n = us.shape[0]
    for i in range(n):
        present[i] = counts[i] > 0
    if on_hull:
        union_idx, union_ptr, layer_idx, layer_ptr, n_layers = layers
        h = upper_chain_layered(us, ds, order, present, union_idx, union_ptr, layer_idx, layer_ptr, n_layers, sel)
        if rising:
            h = rising_length(ds, sel, h)
        n_distinct = h
    else:
        h = 0
        n_distinct = 0
        last = np.nan
        for t in range(n):
            i = order[t]
            if present[i]:
                sel[h] = i
                h += 1
                if us[i] != last:
                    n_distinct += 1
                    last = us[i]
    for j in range(h):
        i = sel[j]
        x[j] = 1.0 - us[i] - bayes
        y[j] = 1.0 - ds[i]
        w[j] = 1.0 if on_hull else float(counts[i])
    status = fit_kernel_ws(x, y, w, h, loss, delta, log_lo, log_hi, n_seg, n_sub, n_refine, out, work, iwork)
    return status, n_distinct


@njit(parallel=True, cache=True)
def bootstrap_kernel(us, ds, order, layers, n_boot, m, seed, on_hull, rising, bayes, loss, delta, log_lo, log_hi, n_seg,
                     n_sub, n_refine, n_chunks, samples, status, n_distinct, alpha_at_bound):
    """All replicates, in n_chunks parallel chunks that each allocate their scratch once.

    samples (n_boot, 4) <- k, alpha, e_ir, saturation (NaN rows on failure).
    """
    n = us.shape[0]
    per = (n_boot + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        counts = np.empty(n, dtype=np.int64)
        present = np.empty(n, dtype=np.bool_)
        sel = np.empty(n, dtype=np.int64)
        x = np.empty(n)
        y = np.empty(n)
        w = np.empty(n)
        out = np.empty(6)
        work = np.empty(work_size(n, n_seg * n_sub + 1))
        iwork = np.empty(n_seg * n_sub + 1, dtype=np.int64)
        for b in range(c * per, min((c + 1) * per, n_boot)):
            draw_counts(seed, b, n, m, counts)
            st, nd = _replicate(us, ds, order, layers, counts, on_hull, rising, bayes, loss, delta, log_lo, log_hi, n_seg,
                                n_sub, n_refine, present, sel, x, y, w, out, work, iwork)
            status[b] = st
            n_distinct[b] = nd
            alpha_at_bound[b] = out[5] > 0.0
            if st == 0:
                samples[b, 0] = out[0]
                samples[b, 1] = out[1]
                samples[b, 2] = out[2]
                samples[b, 3] = 1.0 - out[2]
            else:
                for j in range(4):
                    samples[b, j] = np.nan


@dataclasses.dataclass
class BootstrapResult:
    """Percentile bootstrap of eq. (1). ``samples`` columns follow PARAMS; failed replicates are NaN rows."""

    ci: dict
    samples: np.ndarray
    n_boot: int
    n_failed: int
    n_on_bound: int
    n_unidentified: int
    ci_level: float = 0.95
    on: str = "hull"
    loss: str = "l2"
    m: int = 0
    n: int = 0
    seed: int = 0
    #: replicates with each parameter on a bound ("k", "alpha", "e_ir")
    n_on_bound_by_param: dict = dataclasses.field(default_factory=dict)
    #: the fit on the original sample
    fit: Optional[PowerLawFit] = None

    def to_dict(self) -> dict:
        return {
            "ci": {p: [_num(lo), _num(hi)] for p, (lo, hi) in self.ci.items()},
            "ci_level": self.ci_level, "n_boot": int(self.n_boot), "n_failed": int(self.n_failed),
            "n_on_bound": int(self.n_on_bound), "n_unidentified": int(self.n_unidentified),
            "n_on_bound_by_param": {k: int(v) for k, v in self.n_on_bound_by_param.items()},
            "on": self.on, "loss": self.loss, "m": int(self.m), "n": int(self.n), "seed": int(self.seed),
        }


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _n_chunks(n_boot: int) -> int:
    """Work items for prange: many per thread, handed out one at a time (``parallel_chunksize(1)``), so
    that uneven replicate costs, and a core shared with other processes, balance out."""
    return max(1, min(n_boot, 32 * numba.get_num_threads(), n_boot // 16 + 1))


def bootstrap_fit(us_acc, ds_acc, n_boot: int = 1000, *, on: str = "hull", seed: int = 0, m: Optional[int] = None,
                  ci: float = 0.95, loss: str = "l2", us_bayes_error: float = 0.0, huber_delta: float = 0.01,
                  alpha_bounds: tuple = ALPHA_BOUNDS, tail: bool = False) -> BootstrapResult:
    """Bootstrap percentile intervals for k, alpha, e_ir and saturation = 1 - e_ir.

    Every replicate resamples m models (default m = n) with replacement, recomputes the upper hull (on="hull")
    or uses all drawn points weighted by their counts (on="all"), and refits with the same solver as
    :func:`fit_saturating_power_law`. Failed replicates (fewer than 2 distinct US values) are counted in
    n_failed and left as NaN rows, never dropped silently; intervals use the successful ones. Replicates that
    sit on a bound or are not identified stay in the intervals and are counted.
    """
    _validate.choice("on", on, _validate.ON_CHOICES)
    _validate.choice("loss", loss, _validate.LOSS_CHOICES)
    us, ds, _ = _validate.accuracy_pair(us_acc, ds_acc)
    b = _validate.bayes_error(us, us_bayes_error)
    n = us.size
    n_boot = int(n_boot)
    if n_boot < 1:
        raise _validate.InputError(f"{{param}} must be >= 1; got {n_boot}", param="n_boot")
    m = n if m is None else int(m)
    if not 2 <= m <= n:
        raise _validate.InputError(f"{{param}} (models drawn per replicate) must be in [2, n={n}]; got {m}", param="m")
    if not 0.0 < ci < 1.0:
        raise _validate.InputError(f"{{param}} must be in (0, 1); got {ci!r}", param="ci")
    seed = _validate.seed(seed)
    if loss == "log" and ds.max() >= 1.0:
        raise _validate.InputError("loss='log' needs DS accuracy < 1 everywhere (log of a zero DS error)")
    lo, hi = (float(a) for a in alpha_bounds)
    point = fit_saturating_power_law(us, ds, on=on, loss=loss, us_bayes_error=b, huber_delta=huber_delta,
                                     alpha_bounds=(lo, hi), tail=tail, profile=False)

    order = _sort_order(us, ds)
    layers = upper_layers(us, ds, order, MAX_LAYERS)
    samples = np.empty((n_boot, 4))
    status = np.empty(n_boot, dtype=np.int64)
    n_distinct = np.empty(n_boot, dtype=np.int64)
    at_bound = np.empty(n_boot, dtype=np.bool_)
    with numba.parallel_chunksize(1):
        bootstrap_kernel(us, ds, order, layers, n_boot, m, int(seed), on == "hull", on == "hull" and not tail, b, _LOSS_CODES[loss],
                         float(huber_delta), math.log(lo), math.log(hi), n_segments(lo, hi), N_SUB, N_REFINE, _n_chunks(n_boot), samples,
                         status, n_distinct, at_bound)

    ok = status == 0
    k, e_ir = samples[:, 0], samples[:, 2]
    by_param = {"k": int((ok & (k <= 0)).sum()), "alpha": int((ok & at_bound).sum()),
                "e_ir": int((ok & ((e_ir <= 0) | (e_ir >= 1))).sum())}
    any_bound = ok & ((k <= 0) | at_bound | (e_ir <= 0) | (e_ir >= 1))
    unidentified = ok & ((n_distinct < MIN_IDENTIFIED) | (k <= 0))
    q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
    cis = {}
    for j, p in enumerate(PARAMS):
        if ok.any():
            lo_q, hi_q = np.percentile(samples[ok, j], q)
            cis[p] = (float(lo_q), float(hi_q))
        else:
            cis[p] = (float("nan"), float("nan"))
    return BootstrapResult(ci=cis, samples=samples, n_boot=n_boot, n_failed=int((~ok).sum()),
                           n_on_bound=int(any_bound.sum()), n_unidentified=int(unidentified.sum()), ci_level=ci,
                           on=on, loss=loss, m=m, n=n, seed=int(seed), n_on_bound_by_param=by_param, fit=point)
