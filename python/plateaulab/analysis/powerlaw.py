"""Fit of the saturating power law, eq. (1) of Abnar et al. (2022):

    e_DS = k * e_US**alpha + e_IR,     e = 1 - accuracy,

with k >= 0, alpha > 0 and 0 <= e_IR <= 1. The saturation value of DS accuracy is 1 - e_IR. The maths of
the solver (variable projection: a 2x2 box-constrained weighted least squares per alpha, a log grid and a
golden-section refine over alpha) is derived in ``_powerlaw_kernels``; docs/ANALYSIS.md states the
conventions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from . import _validate, identify
from ._powerlaw_kernels import LOSS_HUBER, LOSS_L2, LOSS_LOG, fit_kernel
from .hull import rising_length, upper_hull

__all__ = ["PowerLawFit", "fit_saturating_power_law", "ALPHA_BOUNDS", "N_SEG", "N_SUB", "N_REFINE"]

#: Search interval for alpha. alpha > 0 is an open bound, so the search needs a finite one; real fits show
#: alpha from 1.3 to 18 (PROTOCOL §4), so four decades leave room on both sides. A fit whose alpha ends at
#: either end reports "alpha" in on_bound.
ALPHA_BOUNDS = (1e-2, 1e2)
#: The alpha grid: segments [A, 2A] from alpha_lo up, each cut into N_SUB equal steps in alpha, so
#: neighbouring grid values differ by a ratio of at most 1 + 1/N_SUB (41 points over ALPHA_BOUNDS). The
#: best N_REFINE grid-local minima are refined with Brent's method.
N_SUB = 3
N_REFINE = 3


def n_segments(lo: float, hi: float) -> int:
    """Doubling segments needed to reach hi from lo."""
    return max(1, int(math.ceil(math.log2(hi / lo) - 1e-12)))


#: segments for the default ALPHA_BOUNDS
N_SEG = n_segments(*ALPHA_BOUNDS)
#: Fewer distinct US values than this leaves the three parameters not identified (three points are
#: interpolated exactly by a 3-parameter curve whenever it can bend to them).
MIN_IDENTIFIED = 4

_LOSS_CODES = {"l2": LOSS_L2, "huber": LOSS_HUBER, "log": LOSS_LOG}


@dataclasses.dataclass
class PowerLawFit:
    """Result of :func:`fit_saturating_power_law`. Errors and accuracies are on the 0-1 scale."""

    k: float
    alpha: float
    e_ir: float
    saturation: float
    sse: float
    n_points: int
    hull_points: int
    identified: bool
    on_bound: list
    success: bool
    message: str
    on: str
    loss: str
    #: value of the minimised loss (equals sse for loss="l2"; Huber is scaled so that it equals the SSE
    #: for residuals below huber_delta; log is the sum of squared log-error residuals)
    loss_value: float = float("nan")
    n_distinct: int = 0
    us_bayes_error: float = 0.0
    hull_indices: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)
    ds: Optional[str] = None
    #: with on="hull": whether the descending tail of the hull was fitted too (default: the rising part only)
    tail: bool = False
    #: indices of the points the fit used (the rising hull, the whole hull, or every point)
    fit_indices: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)
    alpha_bounds: tuple = ALPHA_BOUNDS
    #: whether the data pin down each of k, alpha, e_ir and the saturation (profile intervals, identify.py);
    #: empty when the profile was not computed
    identifiable: dict = dataclasses.field(default_factory=dict)
    profile: Optional[object] = dataclasses.field(default=None, repr=False)
    #: short sentences: why a parameter is not identified, and other signs of a fit the data barely support
    flags: list = dataclasses.field(default_factory=list)

    def predict(self, us_acc) -> np.ndarray:
        """Predicted DS accuracy, 1 - (k * (1 - us - b)**alpha + e_IR), at the given US accuracies."""
        x = np.clip(1.0 - np.asarray(us_acc, dtype=np.float64) - self.us_bayes_error, 0.0, None)
        return 1.0 - (self.k * x ** self.alpha + self.e_ir)

    def to_dict(self) -> dict:
        d = {} if self.ds is None else {"ds": self.ds}
        d.update(on=self.on, k=_num(self.k), alpha=_num(self.alpha), e_ir=_num(self.e_ir),
                 saturation=_num(self.saturation), sse=_num(self.sse), n_points=int(self.n_points),
                 hull_points=int(self.hull_points), identified=bool(self.identified),
                 on_bound=list(self.on_bound), success=bool(self.success), message=self.message,
                 loss=self.loss, us_bayes_error=self.us_bayes_error, tail=bool(self.tail),
                 identifiable={k: bool(v) for k, v in self.identifiable.items()}, flags=list(self.flags))
        if self.profile is not None:
            d["profile"] = self.profile.to_dict()["profile"]
        return d


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None


def on_bound_names(k: float, e_ir: float, alpha_at_bound: bool) -> list:
    names = []
    if k <= 0.0:
        names.append("k")
    if alpha_at_bound:
        names.append("alpha")
    if e_ir <= 0.0 or e_ir >= 1.0:
        names.append("e_ir")
    return names


def fit_saturating_power_law(us_acc, ds_acc, weights=None, *, on: str = "hull", loss: str = "l2",
                             us_bayes_error: float = 0.0, huber_delta: float = 0.01,
                             alpha_bounds: tuple = ALPHA_BOUNDS, ds: Optional[str] = None,
                             tail: bool = False, n_test=None, n_test_us=None, profile: bool = True) -> PowerLawFit:
    """Fit e_DS = k * e_US**alpha + e_IR to DS-vs-US accuracies (both on 0-1).

    on: "hull" fits the upper convex hull's vertices (the paper's main fit), "all" every point.
    tail: with on="hull", also fit the hull's descending tail (the vertices right of its highest one).
    The default fits the rising part only: eq. (1) is monotone, and fitting the tail biases the plateau
    low (docs/ANALYSIS.md, "The rising hull").
    loss: "l2" (least squares in accuracy units, the default), "huber" (Huber with ``huber_delta`` in
    accuracy units) or "log" (squared residuals of log e_DS).
    us_bayes_error: subtracted from e_US before the power (the paper's variant); must not exceed any e_US.
    weights: per-point weights (e.g. bootstrap counts); with on="hull" the hull vertices keep theirs.

    n_test, n_test_us: test-set sizes behind each DS / US accuracy (a scalar or one per point; None:
    unknown), the measurement-noise floor of the profile intervals and of the residual check.
    profile: compute the profile intervals and flags (a few ms; the sample-size sensitivity turns it off).

    The fit is deterministic. ``identified`` is True only when k, alpha and e_IR are each pinned down by the
    data (``identifiable``, from the profile of the objective, see ``identify``): never for fewer than 4
    distinct US values (3 parameters on <= 3 points), for k = 0 (then alpha has no effect), or for a
    parameter on a bound. ``on_bound`` lists the parameters at a constraint: "k" (k = 0), "e_ir" (0 or 1)
    and "alpha" (an end of alpha_bounds). ``flags`` says why, in short sentences. With ``profile=False``
    only those coarse checks are made (>= 4 distinct US values, k > 0, nothing on a bound): ``identified``
    may then be True for a parameter the profile would find loose, and ``identifiable`` is left empty.
    """
    _validate.choice("on", on, _validate.ON_CHOICES)
    _validate.choice("loss", loss, _validate.LOSS_CHOICES)
    us, dsa, w = _validate.accuracy_pair(us_acc, ds_acc, weights=weights, where=ds or "")
    b = _validate.bayes_error(us, us_bayes_error, ds or "")
    lo, hi = (float(a) for a in alpha_bounds)
    if not (0.0 < lo < hi < np.inf):
        raise _validate.InputError(f"{{param}} must satisfy 0 < lo < hi < inf; got {alpha_bounds!r}",
                                   param="alpha_bounds")
    if loss == "log" and dsa.max() >= 1.0:
        raise _validate.InputError("loss='log' needs DS accuracy < 1 everywhere (log of a zero DS error)")
    if loss == "huber" and not huber_delta > 0:
        raise _validate.InputError(f"{{param}} must be > 0; got {huber_delta!r}", param="huber_delta")

    pos = w > 0
    hull = upper_hull(np.where(pos, us, np.nan), dsa)
    if on == "hull":
        idx = hull if tail else hull[:rising_length(dsa, hull, hull.size)]
    else:
        idx = np.flatnonzero(pos)
    x = np.ascontiguousarray(1.0 - us[idx] - b)
    y = np.ascontiguousarray(1.0 - dsa[idx])
    wi = np.ascontiguousarray(w[idx])
    out = np.empty(6)
    status = fit_kernel(x, y, wi, idx.size, _LOSS_CODES[loss], float(huber_delta), math.log(lo), math.log(hi),
                        n_segments(lo, hi), N_SUB, N_REFINE, out)
    k, alpha, e_ir, obj, sse, at_bound = out
    n_distinct = int(np.unique(us[idx]).size)
    if status == 0:
        on_bound = on_bound_names(k, e_ir, at_bound > 0)
        identified = n_distinct >= MIN_IDENTIFIED and k > 0.0 and not on_bound
        msg = "ok"
        if n_distinct < MIN_IDENTIFIED:
            msg = (f"not identified: 3 parameters fitted to {n_distinct} distinct US value(s) "
                   f"({'hull vertices' if on == 'hull' else 'points'}); the curve interpolates them")
        elif k <= 0.0:
            msg = "not identified: k = 0, so the fit is the constant e_IR and alpha has no effect"
        if on_bound:
            msg += f"; on bound: {', '.join(on_bound)}"
    else:
        on_bound, identified = [], False
        if status == 1 and on == "hull" and not tail and hull.size >= 2 and idx.size < 2:
            msg = ("failed: the upper hull does not rise (its leftmost point is its highest), and eq. (1) with "
                   "k >= 0 cannot follow a falling frontier")
        else:
            msg = ("failed: fewer than 2 points with distinct US accuracy" if status == 1
                   else "failed: non-finite parameters")
    fit = PowerLawFit(k=float(k), alpha=float(alpha), e_ir=float(e_ir), saturation=float(1.0 - e_ir),
                      sse=float(sse), n_points=int(idx.size), hull_points=int(hull.size), identified=bool(identified),
                      on_bound=on_bound, success=status == 0, message=msg, on=on, loss=loss,
                      loss_value=float(obj), n_distinct=n_distinct, us_bayes_error=b, hull_indices=hull, ds=ds,
                      tail=bool(tail) if on == "hull" else False, fit_indices=idx, alpha_bounds=(lo, hi))
    if profile:
        scatter = None
        if on == "hull" and fit.success:
            trend = fit_saturating_power_law(us, dsa, w, on="all", loss=loss, us_bayes_error=b, profile=False,
                                             alpha_bounds=(lo, hi), huber_delta=huber_delta)
            if trend.success:
                scatter = float(np.sqrt(np.average((dsa - trend.predict(us)) ** 2, weights=w)))
        _assess(fit, us, dsa, idx, int(pos.sum()), n_test, n_test_us, scatter, w[idx])
    return fit


def _sizes_at(n, idx, size, name):
    if n is None:
        return None
    sizes = _validate.test_sizes(n, size, name)[idx]
    return np.where(sizes > 0, sizes, np.nan)


def _assess(fit: PowerLawFit, us, ds, idx, n_models: int, n_test, n_test_us, scatter, weights) -> None:
    """Profile intervals, identifiability and flags of ``fit`` (module identify)."""
    n_ds, n_us = _sizes_at(n_test, idx, us.size, "n_test"), _sizes_at(n_test_us, idx, us.size, "n_test_us")
    prof = identify.profile_fit(fit, us[idx], ds[idx], n_test=n_ds, n_test_us=n_us, weights=weights)
    fit.profile = prof
    fit.identifiable = dict(prof.identifiable)
    fit.identified = bool(fit.identified and all(prof.identifiable[p] for p in ("k", "alpha", "e_ir")))
    flags = []
    if not fit.success:
        flags.append(fit.message)
    elif fit.n_distinct < MIN_IDENTIFIED:
        flags.append(f"not identified: {fit.n_distinct} distinct fitted points for 3 parameters")
    else:
        for p in ("alpha", "k", "e_ir"):
            if p in prof.reasons:
                flags.append(f"{'e_IR' if p == 'e_ir' else p} not identified: {prof.reasons[p]}")
    flags += identify.shape_flags(fit, us[idx], ds[idx], n_models, scatter=scatter, n_test=n_ds)
    fit.flags = flags
