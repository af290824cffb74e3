"""Whether the data pin down each parameter of eq. (1): profiles of the least-squares objective.

A three-parameter curve through the 4-9 points of a real hull often fits equally well with very different
parameters: a step function (alpha -> its bound) reaches the plateau by US ~ 0.02; alpha trades off
against k; e_IR can slide when no point sits near the plateau. A point estimate then means nothing, and the
tool must say so.

The profile of a parameter theta is P(theta) = min of the SSE over the other two parameters with theta
held fixed. Its profile interval is {theta : P(theta) <= SSE_min + delta}, with

    delta = max(SSE_min * F(0.95; 1, n - 3) / (n - 3),   chi2(0.95; 1) * s2_noise).

The first term is the classical F-based (likelihood-ratio) profile interval of nonlinear least squares
(Bates & Watts 1988, §6.1) with the residual variance estimated from the fit. On 4-9 hull points SSE_min
can be near zero by chance (or exactly zero, n = 3 + 0), which would make any profile look sharp; the
second term is the same interval with the variance known from the measurement noise instead: s2_noise is
the mean binomial variance of the fitted points' residuals, p (1 - p) / n_test for DS plus the US term
(slope^2 p (1 - p) / n_test_us), when the test-set sizes are known. The larger of the two is used, so a
fit is never called sharper than either the scatter of its own residuals or the measurement noise allow.

A parameter is *identified* when its profile interval stays inside the parameter's range (it does not
reach alpha's bounds, k = 0 or a k so large that alpha must leave its bounds, or e_IR = 0 or 1), the fit
succeeded, and the fitted value is not itself on a bound. The saturation 1 - e_IR has e_IR's profile.
A fit with fewer than 4 distinct US values (n - 3 <= 0) identifies nothing.

Profiles are computed on grids (alpha: 241 log-spaced values over its bounds; e_IR: 501 values on [0, 1];
k: 0 and 241 log-spaced values from 1e-4 to 1e6 times the estimate), minimising over alpha on its grid for
the e_IR and k profiles and in closed form over the linear parameters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
from numba import njit

from ._powerlaw_kernels import Z_TINY, _box_wls

__all__ = ["Profile", "profile_fit", "f_quantile_95", "CHI2_1_95", "PARAMS_IDENTIFIABLE"]

PARAMS_IDENTIFIABLE = ("k", "alpha", "e_ir", "saturation")
CHI2_1_95 = 3.841458820694124
# F(0.95; 1, nu) for nu = 1..30, then 40, 60, 120 (computed with scipy.stats.f.ppf; tests/test_analysis_identify.py
# checks them). Between table entries, interpolation is linear in 1/nu, the classical practice for F tables.
_F_NU = np.array(list(range(1, 31)) + [40, 60, 120], dtype=float)
_F_95 = np.array([161.4476387975882, 18.512820512820493, 10.127964486013925, 7.708647422176786, 6.607890973703364,
                  5.987377607273699, 5.591447851220735, 5.317655071578713, 5.117355029199225, 4.964602743730711,
                  4.844335674943617, 4.747225346722515, 4.667192731826847, 4.600109936669422, 4.5430771652669755,
                  4.493998477666356, 4.451321772468127, 4.413873419170566, 4.3807496923317935, 4.351243503329288,
                  4.324793743183042, 4.300949501777654, 4.279344309144647, 4.2596772726902286, 4.2416990502771466,
                  4.225201273127487, 4.21000846835975, 4.195971818557766, 4.182964289058265, 4.170876785766691,
                  4.084745733301653, 4.001191376754993, 3.920124408969916])

N_ALPHA, N_EIR, N_K = 241, 501, 241


def f_quantile_95(nu: float) -> float:
    """F(0.95; 1, nu), the 95% quantile of Fisher's F with 1 and nu degrees of freedom (nu >= 1)."""
    if nu < 1:
        raise ValueError(f"nu must be >= 1; got {nu}")
    inv = 1.0 / nu
    xs = np.concatenate([1.0 / _F_NU, [0.0]])[::-1]
    ys = np.concatenate([_F_95, [CHI2_1_95]])[::-1]
    return float(np.interp(inv, xs, ys))


@njit(cache=True)
def _scaled(x, n):
    xref = 0.0
    for i in range(n):
        xref = max(xref, x[i])
    u = np.empty(n)
    for i in range(n):
        u[i] = math.log(x[i] / xref) if x[i] > 0.0 else -np.inf
    return xref, u


@njit(cache=True)
def _z(u, alpha, n, z):
    for i in range(n):
        zi = math.exp(alpha * u[i])
        z[i] = zi if zi > Z_TINY else 0.0


@njit(cache=True)
def profile_alpha(x, y, n, alphas, out):
    """out[j] <- min over k >= 0, 0 <= e_IR <= 1 of the SSE at alpha = alphas[j]."""
    xref, u = _scaled(x, n)
    z = np.empty(n)
    w = np.ones(n)
    res = np.empty(3)
    for j in range(alphas.shape[0]):
        _z(u, alphas[j], n, z)
        _box_wls(z, y, w, n, res)
        out[j] = res[2]


@njit(cache=True)
def profile_eir(x, y, n, cs, alphas, out):
    """out[i] <- min over alpha (on its grid) and k >= 0 of the SSE at e_IR = cs[i]."""
    xref, u = _scaled(x, n)
    z = np.empty(n)
    for i in range(cs.shape[0]):
        out[i] = np.inf
    for j in range(alphas.shape[0]):
        _z(u, alphas[j], n, z)
        szz = 0.0
        for t in range(n):
            szz += z[t] * z[t]
        for i in range(cs.shape[0]):
            c = cs[i]
            szy = 0.0
            for t in range(n):
                szy += z[t] * (y[t] - c)
            kk = szy / szz if szz > 0.0 and szy > 0.0 else 0.0
            sse = 0.0
            for t in range(n):
                r = y[t] - c - kk * z[t]
                sse += r * r
            if sse < out[i]:
                out[i] = sse


@njit(cache=True)
def profile_k(x, y, n, ks, alphas, out):
    """out[i] <- min over alpha (on its grid) and 0 <= e_IR <= 1 of the SSE at k = ks[i] (true scale)."""
    xref, u = _scaled(x, n)
    z = np.empty(n)
    for i in range(ks.shape[0]):
        out[i] = np.inf
    for j in range(alphas.shape[0]):
        _z(u, alphas[j], n, z)
        scale = math.exp(alphas[j] * math.log(xref))     # k x^alpha = k xref^alpha z
        for i in range(ks.shape[0]):
            kk = ks[i] * scale
            m = 0.0
            for t in range(n):
                m += y[t] - kk * z[t]
            c = min(max(m / n, 0.0), 1.0)
            sse = 0.0
            for t in range(n):
                r = y[t] - c - kk * z[t]
                sse += r * r
            if sse < out[i]:
                out[i] = sse


@dataclasses.dataclass
class Profile:
    """Profile intervals and identifiability of one fit."""

    identifiable: dict                  # {"k", "alpha", "e_ir", "saturation": bool}
    intervals: dict                     # {param: (lo, hi)} of the profile sets (saturation from e_IR)
    delta: float                        # the SSE threshold above the optimum
    s2_noise: Optional[float]           # measurement-noise variance used (None: test-set sizes unknown)
    reasons: dict                       # {param: why it is not identified}

    def to_dict(self) -> dict:
        def num(v):
            v = float(v)
            return v if math.isfinite(v) else None

        return {"identifiable": dict(self.identifiable),
                "profile": {p: [num(a), num(b)] for p, (a, b) in self.intervals.items()},
                "profile_delta": num(self.delta), "noise_variance": None if self.s2_noise is None else num(self.s2_noise)}


def _interval(grid: np.ndarray, prof: np.ndarray, limit: float):
    inside = prof <= limit
    if not inside.any():
        return (float("nan"), float("nan")), False, False
    idx = np.flatnonzero(inside)
    return (float(grid[idx[0]]), float(grid[idx[-1]])), bool(inside[0]), bool(inside[-1])


def profile_fit(fit, us_fit: np.ndarray, ds_fit: np.ndarray, *, n_test=None, n_test_us=None,
                weights=None) -> Profile:
    """Profile intervals of the fit ``fit`` (a PowerLawFit) on the points it used (us_fit, ds_fit).

    n_test, n_test_us: test-set sizes behind the DS / US accuracies (scalars or one per point; None or 0:
    unknown), for the measurement-noise floor of the threshold (module docstring).
    weights: the fit's weights of those points. The profiles are of the unweighted sum of squares, so a
    fit with equal weights c has its SSE divided by c, and a fit with unequal weights is not assessed:
    nothing is called identified. For loss "huber" or "log" the profile is that of the squared error
    around the fitted parameters (the robust objective's own profile is not computed).
    """
    lo_a, hi_a = fit.alpha_bounds
    x = np.ascontiguousarray(1.0 - us_fit - fit.us_bayes_error, dtype=np.float64)
    y = np.ascontiguousarray(1.0 - ds_fit, dtype=np.float64)
    n = x.size
    n_distinct = int(np.unique(x).size)
    s2 = _noise_variance(fit, us_fit, ds_fit, n_test, n_test_us)
    names = ("k", "alpha", "e_ir", "saturation")
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    unequal = w is not None and w.size > 0 and not np.allclose(w, w[0])
    if not fit.success or n_distinct < 4 or unequal:
        why = ("the fit failed" if not fit.success
               else "the points have unequal weights, and the profile (unweighted squares) cannot judge the fit"
               if unequal else f"{n_distinct} distinct US value(s) for 3 parameters: the curve interpolates them")
        nan = (float("nan"), float("nan"))
        return Profile(identifiable={p: False for p in names}, intervals={p: nan for p in names},
                       delta=float("inf"), s2_noise=s2, reasons={p: why for p in names})
    sse = max(float(fit.sse), 0.0) / (float(w[0]) if w is not None and w.size and w[0] > 0 else 1.0)
    delta = sse * f_quantile_95(n_distinct - 3) / (n_distinct - 3)
    if s2 is not None:
        delta = max(delta, CHI2_1_95 * s2)
    limit = sse + delta
    alphas = np.geomspace(lo_a, hi_a, N_ALPHA)
    near = np.geomspace(max(lo_a, fit.alpha / 2), min(hi_a, fit.alpha * 2), 81) if fit.alpha > 0 else []
    alphas = np.unique(np.concatenate([alphas, near, [min(max(fit.alpha, lo_a), hi_a)]]))
    p_alpha = np.empty(alphas.size)
    profile_alpha(x, y, n, alphas, p_alpha)
    cs = np.unique(np.concatenate([np.linspace(0.0, 1.0, N_EIR), [fit.e_ir]]))
    p_eir = np.empty(cs.size)
    profile_eir(x, y, n, cs, alphas, p_eir)
    k_ref = fit.k if fit.k > 0 else 1.0
    ks = np.unique(np.concatenate([[0.0], np.geomspace(1e-4 * k_ref, 1e6 * k_ref, N_K),
                                   np.geomspace(k_ref / 3, 3 * k_ref, 121), [max(fit.k, 0.0)]]))
    p_k = np.empty(ks.size)
    profile_k(x, y, n, ks, alphas, p_k)
    ident, intervals, reasons = {}, {}, {}
    for name, grid, prof, ends in (("alpha", alphas, p_alpha, (f"its bound {lo_a:g}", f"its bound {hi_a:g}")),
                                   ("e_ir", cs, p_eir, ("e_IR = 0 (saturation 1)", "e_IR = 1")),
                                   ("k", ks, p_k, ("k = 0 (a flat line)", "k without limit"))):
        intervals[name], at_lo, at_hi = _interval(grid, prof, limit)
        on_bound = name in (fit.on_bound or [])
        ident[name] = not (at_lo or at_hi or on_bound)
        if not ident[name]:
            end = ends[0] if at_lo else ends[1] if at_hi else "a bound"
            reasons[name] = (f"the fit sits on {end}" if on_bound and not (at_lo or at_hi)
                             else f"its profile interval reaches {end}")
    ident["saturation"] = ident["e_ir"]
    lo_c, hi_c = intervals["e_ir"]
    intervals["saturation"] = (1.0 - hi_c, 1.0 - lo_c)
    if "e_ir" in reasons:
        reasons["saturation"] = reasons["e_ir"]
    return Profile(identifiable=ident, intervals=intervals, delta=float(delta), s2_noise=s2, reasons=reasons)


def _noise_variance(fit, us_fit, ds_fit, n_test, n_test_us) -> Optional[float]:
    """Mean measurement-noise variance of the residuals of the fitted points, or None if unknown."""
    def sizes(v):
        if v is None:
            return None
        a = np.broadcast_to(np.asarray(v, dtype=float), us_fit.shape).astype(float)
        return np.where(np.isfinite(a) & (a > 0), a, np.nan)

    # An unknown US size adds no US term, as in the measurement-noise bootstrap (analysis.noise holds
    # US fixed then): the DS size says nothing about the upstream test set.
    n_ds, n_us = sizes(n_test), sizes(n_test_us)
    if n_ds is None or np.isnan(n_ds).all():
        return None
    var = ds_fit * (1.0 - ds_fit) / n_ds
    if n_us is not None:
        x = np.clip(1.0 - us_fit - fit.us_bayes_error, 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = fit.k * fit.alpha * np.where(x > 0, x ** (fit.alpha - 1.0), 0.0)
        var = var + np.nan_to_num(slope ** 2 * us_fit * (1.0 - us_fit) / n_us)
    var = var[np.isfinite(var)]
    return float(np.mean(var)) if var.size else None


#: "the knee": where the curve has covered this share of its rise from the leftmost fitted point to the plateau
KNEE_SHARE = 0.95
#: a fit resting on fewer than this share of the models is flagged (real hulls: 3-7% of 121 open_clip models;
#: 0.1-0.4% of ~1,500 timm models)
MIN_FIT_SHARE = 0.03
#: a fitted point farther from the curve than the models' scatter, and than this many measurement
#: standard errors, is flagged
MAX_RESIDUAL_Z = 3.0


def knee_us(fit, us_fit: np.ndarray) -> float:
    """US accuracy at which eq. (1) has covered KNEE_SHARE of its rise from the leftmost fitted point to
    its plateau: the gap k e^alpha shrinks to (1 - KNEE_SHARE) of its value there."""
    e_left = float(np.max(1.0 - us_fit - fit.us_bayes_error))
    return 1.0 - fit.us_bayes_error - e_left * (1.0 - KNEE_SHARE) ** (1.0 / fit.alpha)


def shape_flags(fit, us_fit: np.ndarray, ds_fit: np.ndarray, n_models: int, *, scatter: Optional[float] = None,
                n_test=None) -> list:
    """Short sentences about a fit the data support poorly: a knee with fewer than two fitted points on
    its left; a fit resting on a small share of the models; a fitted point farther from the curve than the
    models scatter around their trend (``scatter``: the standard deviation of every model's DS accuracy
    about eq. (1) fitted to all points) and than MAX_RESIDUAL_Z measurement standard errors.
    (Unidentified parameters are reported by the profile.)"""
    out = []
    if not fit.success or fit.k <= 0 or not np.isfinite(fit.alpha):
        return out
    knee = knee_us(fit, us_fit)
    left = int(np.count_nonzero(us_fit < knee))
    if left < 2:
        out.append(f"the curve reaches {KNEE_SHARE:.0%} of its rise by US {knee:.3f}, with {left} fitted point"
                   f"{'' if left == 1 else 's'} to the left of that knee")
    share = us_fit.size / max(n_models, 1)
    if share < MIN_FIT_SHARE:
        out.append(f"the fit rests on {us_fit.size} of {n_models} models ({share:.1%})")
    if scatter is not None and np.isfinite(scatter):
        resid = np.abs(ds_fit - fit.predict(us_fit))
        limit = np.full(resid.shape, float(scatter))
        if n_test is not None:
            n_ds = np.broadcast_to(np.asarray(n_test, dtype=float), us_fit.shape)
            ok = np.isfinite(n_ds) & (n_ds > 0)
            se = np.sqrt(np.clip(ds_fit * (1 - ds_fit), 1e-12, None) / np.where(ok, n_ds, 1.0))
            limit = np.where(ok, np.maximum(limit, MAX_RESIDUAL_Z * se), limit)
        worst = int(np.argmax(resid - limit))
        if resid[worst] > limit[worst]:
            out.append(f"the curve misses a fitted point by {resid[worst]:.3f}, more than the models' scatter "
                       f"around their trend ({scatter:.3f})")
    return out


def uncertainty_flags(fit, interval: Optional[tuple], source: Optional[str], boot=None, level: float = 0.95) -> list:
    """Short sentences about a fit's interval: the estimate outside its own interval; a model bootstrap
    whose replicates often fail or sit on a bound."""
    out = []
    if interval is not None and all(np.isfinite(interval)):
        lo, hi = interval
        if not lo <= fit.saturation <= hi:
            out.append(f"the estimate {fit.saturation:.3f} lies outside its own {level:.0%} {source} interval "
                       f"[{lo:.3f}, {hi:.3f}]")
    if boot is not None and boot.n_boot:
        share_fail = boot.n_failed / boot.n_boot
        share_bound = boot.n_on_bound / boot.n_boot
        if share_fail > 0.05:
            out.append(f"{share_fail:.0%} of model-bootstrap fits failed")
        if share_bound > 0.25:
            out.append(f"{share_bound:.0%} of model-bootstrap fits sit on a bound")
    return out
