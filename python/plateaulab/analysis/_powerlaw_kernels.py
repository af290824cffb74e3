"""Numba kernels that fit eq. (1) of Abnar et al. (2022): e_DS = k * e_US**alpha + e_IR.

Notation: x = e_US (minus an optional upstream Bayes error), y = e_DS, w >= 0 point weights.

Variable projection. For a fixed alpha the model is linear in (k, e_IR):

    y_i ~ k * z_i + c,   z_i = x_i**alpha,   k >= 0,   0 <= c <= 1.

We scale z by the largest x so that z_i = (x_i / x_ref)**alpha = exp(alpha * u_i), u_i = log(x_i / x_ref) <= 0,
lies in [0, 1] for every alpha; the fitted slope kk on this z gives k = kk * x_ref**(-alpha). Without this
scaling a large alpha makes every z vanish and the 2x2 system loses all precision.

The 2x2 box-constrained weighted least squares (``_box_wls``). With W = sum w, weighted means zb, tb and
centred moments Czz = sum w (z - zb)^2, Czt = sum w (z - zb)(t - tb), Ctt = sum w (t - tb)^2:

* unconstrained optimum: k = Czt / Czz, c = tb - k zb, objective Ctt - k Czt;
* the objective is a convex quadratic in (k, c), so if that optimum is infeasible the constrained optimum
  lies on an edge of the feasible set {k >= 0} x {0 <= c <= 1}, and on each edge the 1-D optimum is the
  clipped 1-D stationary point (convex in one variable):
    - k = 0:   c = clip(tb, 0, 1), objective Ctt + W (tb - c)^2;
    - c = c0:  k = max(0, Szt / Szz) with Szz = Czz + W zb^2, Szt = Czt + W zb (tb - c0),
               objective Ctt + W (tb - c0)^2 - 2 k Szt + k^2 Szz.
  The smallest of these candidates is the global constrained optimum for this alpha.

The outer problem, min over alpha of the profiled objective, is one-dimensional: a grid over
[alpha_lo, alpha_hi] (geometric segments, each cut into equal steps in alpha; see ``fit_kernel_ws``) and
Brent refinement (in log alpha) of the best few grid-local minima. The result is deterministic and needs no
starting point. The l2 profile costs one pass over the points per alpha (``_solve_l2``).

Losses: "l2" is the closed form above. "huber" is minimised for fixed alpha by iteratively reweighted
least squares, an MM algorithm: the Huber function is majorised by a weighted quadratic, each step solves
the box problem exactly, so the objective never increases. "log" minimises sum w (log y - log f)^2 with
projected Gauss-Newton steps: linearising log f at the current (k, c) gives the weighted LS problem
t_i = f_i (1 + log(y_i / f_i)) ~ k' z_i + c' with weights w_i / f_i^2, solved with the box constraints, then
a backtracking step keeps the objective decreasing.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

LOSS_L2 = 0
LOSS_HUBER = 1
LOSS_LOG = 2

# Brent's refine stops when log alpha is known to XTOL; the SSE is quadratic near its minimum, so the
# SSE then sits within ~XTOL**2 (relative) of the optimum along alpha.
XTOL = 1e-7
# z = (x / x_ref)**alpha lies in [0, 1] and the scaled slope is O(1) (k z + c <= ~1 at z = 1), so a z below
# 1e-100 contributes nothing at double precision; flushing it to 0 keeps the moments (products of two z)
# out of the subnormal range, where each operation costs ~100 cycles.
Z_TINY = 1e-100
CGOLD = 0.3819660112501051


@njit(cache=True)
def _box_wls(z, t, w, n, res):
    """Weighted LS t ~ k z + c with k >= 0, 0 <= c <= 1 over the first n entries (two passes);
    res <- (k, c, objective), so res needs 3 entries."""
    W = 0.0
    sz = 0.0
    st = 0.0
    for i in range(n):
        W += w[i]
        sz += w[i] * z[i]
        st += w[i] * t[i]
    zb = sz / W
    tb = st / W
    czz = 0.0
    czt = 0.0
    ctt = 0.0
    for i in range(n):
        dz = z[i] - zb
        dt = t[i] - tb
        czz += w[i] * dz * dz
        czt += w[i] * dz * dt
        ctt += w[i] * dt * dt
    _box_from_moments(W, zb, tb, czz, czt, ctt, res)


@njit(cache=True)
def _box_from_moments(W, zb, tb, czz, czt, ctt, res):
    """The box-constrained 2x2 solution from the weighted moments (module docstring);
    res <- (k, c, objective)."""
    if czz > 0.0:
        k = czt / czz
        c = tb - k * zb
        if k >= 0.0 and c >= 0.0 and c <= 1.0:
            res[0] = k
            res[1] = c
            res[2] = max(ctt - k * czt, 0.0)
            return
    # Edge k = 0 (best c clipped into [0, 1]), then the edges c = 0 and c = 1 (best k >= 0).
    c = min(max(tb, 0.0), 1.0)
    best = ctt + W * (tb - c) * (tb - c)
    bk = 0.0
    bc = c
    s2 = czz + W * zb * zb
    for e in range(2):
        c0 = float(e)
        s1 = czt + W * zb * (tb - c0)
        k = 0.0
        if s2 > 0.0 and s1 > 0.0:
            k = s1 / s2
        obj = ctt + W * (tb - c0) * (tb - c0) - 2.0 * k * s1 + k * k * s2
        if obj < best:
            best = obj
            bk = k
            bc = c0
    res[0] = bk
    res[1] = bc
    res[2] = max(best, 0.0)


@njit(cache=True)
def _objective(z, y, w, n, k, c, loss, delta):
    """Loss of the parameters (k on the scaled z, c) over the first n points."""
    s = 0.0
    for i in range(n):
        f = k * z[i] + c
        r = y[i] - f
        if loss == LOSS_L2:
            s += w[i] * r * r
        elif loss == LOSS_HUBER:
            a = abs(r)
            # 2 * Huber: equals r^2 for |r| <= delta, so it is on the scale of the SSE.
            if a <= delta:
                s += w[i] * r * r
            else:
                s += w[i] * delta * (2.0 * a - delta)
        else:
            if f <= 0.0:
                return np.inf
            d = math.log(y[i]) - math.log(f)
            s += w[i] * d * d
    return s


@njit(cache=True)
def _solve_l2(z, y, w, n, res):
    """The l2 case of ``_profile_z`` in one pass over the points (the bootstrap's inner loop).

    Moments are accumulated about the first point (z_0, y_0) so that the centred moments
    Czz = Szz - Sz^2 / W (etc.) lose no precision to a large common offset. The objective of each candidate
    comes from the same moments (see the module docstring), so no second pass is needed.
    """
    z0 = z[0]
    y0 = y[0]
    W = 0.0
    sz = 0.0
    st = 0.0
    szz = 0.0
    szt = 0.0
    stt = 0.0
    for i in range(n):
        dz = z[i] - z0
        dt = y[i] - y0
        wi = w[i]
        W += wi
        sz += wi * dz
        st += wi * dt
        szz += wi * dz * dz
        szt += wi * dz * dt
        stt += wi * dt * dt
    mz = sz / W
    mt = st / W
    czz = szz - sz * mz
    czt = szt - sz * mt
    ctt = max(stt - st * mt, 0.0)
    zb = z0 + mz
    tb = y0 + mt
    _box_from_moments(W, zb, tb, czz, czt, ctt, res)


@njit(cache=True)
def _profile(alpha, u, y, w, n, loss, delta, z, t, w2, res):
    """Minimise the loss over (k, c) for fixed alpha; res <- (k_scaled, c, objective)."""
    for i in range(n):
        zi = math.exp(alpha * u[i])
        z[i] = zi if zi > Z_TINY else 0.0
    _profile_z(z, y, w, n, loss, delta, t, w2, res)


@njit(cache=True)
def _profile_z(z, y, w, n, loss, delta, t, w2, res):
    """``_profile`` for given z = (x / x_ref)**alpha."""
    if loss == LOSS_L2:
        _solve_l2(z, y, w, n, res)
        return
    _box_wls(z, y, w, n, res)
    k = res[0]
    c = res[1]
    obj = _objective(z, y, w, n, k, c, loss, delta)
    if loss == LOSS_HUBER:
        for _ in range(50):
            for i in range(n):
                a = abs(y[i] - k * z[i] - c)
                w2[i] = w[i] if a <= delta else w[i] * delta / a
            _box_wls(z, y, w2, n, res)
            new = _objective(z, y, w, n, res[0], res[1], loss, delta)
            if new > obj:
                break
            done = obj - new <= 1e-14 * obj + 1e-300
            k = res[0]
            c = res[1]
            obj = new
            if done:
                break
    elif loss == LOSS_LOG:
        if not np.isfinite(obj):
            # The LS start predicts a non-positive error somewhere; move to the best positive constant.
            k = 0.0
            c = 0.0
            for i in range(n):
                c = max(c, y[i])
            c = min(c, 1.0)
            obj = _objective(z, y, w, n, k, c, loss, delta)
        for _ in range(50):
            for i in range(n):
                f = k * z[i] + c
                t[i] = f * (1.0 + math.log(y[i] / f))
                w2[i] = w[i] / (f * f)
            _box_wls(z, t, w2, n, res)
            # Backtrack along the Gauss-Newton direction (the box is convex, so every point of the
            # segment stays feasible) until the true log objective decreases.
            dk = res[0] - k
            dc = res[1] - c
            step = 1.0
            new = np.inf
            for _b in range(30):
                new = _objective(z, y, w, n, k + step * dk, c + step * dc, loss, delta)
                if new < obj:
                    break
                step *= 0.5
            if not new < obj:
                break
            done = obj - new <= 1e-14 * obj + 1e-300
            k = k + step * dk
            c = c + step * dc
            obj = new
            if done:
                break
    res[0] = k
    res[1] = c
    res[2] = obj


@njit(cache=True)
def _brent(a, b, x, fx, u, y, w, n, loss, delta, z, t, w2, res):
    """Brent's minimisation of the profiled loss in log alpha on [a, b], from the grid point x (f(x) = fx).

    Parabolic steps through the three best points, with a golden-section step whenever the parabola
    leaves the bracket or does not shrink fast enough; the bracket [a, b] always holds the incumbent x.
    Stops when the bracket is within XTOL (in log alpha) of x on both sides; typically ~10 evaluations.
    """
    v = x
    wp = x
    fv = fx
    fw = fx
    d = 0.0
    e = 0.0
    for _ in range(100):
        m = 0.5 * (a + b)
        tol1 = XTOL
        tol2 = 2.0 * tol1
        if abs(x - m) <= tol2 - 0.5 * (b - a):
            break
        golden = True
        if abs(e) > tol1:
            r = (x - wp) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - wp) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            else:
                q = -q
            etemp = e
            e = d
            if abs(p) < abs(0.5 * q * etemp) and p > q * (a - x) and p < q * (b - x):
                d = p / q
                uu = x + d
                if uu - a < tol2 or b - uu < tol2:
                    d = tol1 if m >= x else -tol1
                golden = False
        if golden:
            e = (a - x) if x >= m else (b - x)
            d = CGOLD * e
        uu = x + d if abs(d) >= tol1 else x + (tol1 if d > 0 else -tol1)
        _profile(math.exp(uu), u, y, w, n, loss, delta, z, t, w2, res)
        fu = res[2]
        if fu <= fx:
            if uu >= x:
                a = x
            else:
                b = x
            v = wp
            fv = fw
            wp = x
            fw = fx
            x = uu
            fx = fu
        else:
            if uu < x:
                a = uu
            else:
                b = uu
            if fu <= fw or wp == x:
                v = wp
                fv = fw
                wp = uu
                fw = fu
            elif fu <= fv or v == x or v == wp:
                v = uu
                fv = fu
    return x, fx


@njit(cache=True)
def work_size(n, n_grid):
    """Length of the float64 workspace ``fit_kernel_ws`` needs for n points and an n_grid-point grid."""
    return 5 * n + 2 * n_grid + 3


@njit(cache=True)
def fit_kernel(x, y, w, n, loss, delta, log_lo, log_hi, n_seg, n_sub, n_refine, out):
    """``fit_kernel_ws`` with its workspace allocated here (single fits; the bootstrap reuses one)."""
    n_grid = n_seg * n_sub + 1
    work = np.empty(work_size(n, n_grid))
    iwork = np.empty(n_grid, dtype=np.int64)
    return fit_kernel_ws(x, y, w, n, loss, delta, log_lo, log_hi, n_seg, n_sub, n_refine, out, work, iwork)


@njit(cache=True)
def fit_kernel_ws(x, y, w, n, loss, delta, log_lo, log_hi, n_seg, n_sub, n_refine, out, work, iwork):
    """Fit eq. (1) to the first n points (x = e_US >= 0, y = e_DS, w > 0).

    The alpha grid has at most n_seg * n_sub + 1 points (see below; n_seg = ceil(log2(hi / lo))); the best
    n_refine grid-local minima are refined with Brent's method.
    out <- (k, alpha, e_ir, objective, sse, alpha_on_bound). Returns 0 on success, 1 if there are fewer
    than 2 points or the US errors are all equal (nothing to fit), 2 on a non-finite result.
    work (float64, ``work_size(n, n_grid)``) and iwork (int64, n_grid) are scratch space, so that the
    parallel bootstrap allocates nothing per replicate.
    """
    for j in range(6):
        out[j] = np.nan
    if n < 2:
        return 1
    xref = 0.0
    xmin = np.inf
    for i in range(n):
        xref = max(xref, x[i])
        xmin = min(xmin, x[i])
    if not (xref > xmin):
        return 1
    u = work[0:n]
    z = work[n:2 * n]
    t = work[2 * n:3 * n]
    w2 = work[3 * n:4 * n]
    e = work[4 * n:5 * n]
    n_grid = n_seg * n_sub + 1
    grid = work[5 * n:5 * n + n_grid]
    vals = work[5 * n + n_grid:5 * n + 2 * n_grid]
    res = work[5 * n + 2 * n_grid:5 * n + 2 * n_grid + 3]
    for i in range(n):
        u[i] = math.log(x[i] / xref) if x[i] > 0.0 else -np.inf

    # The grid: segments [A, 2A] starting at A = alpha_lo, each cut into n_sub equal steps d = A / n_sub,
    # up to alpha_hi (n_seg = ceil(log2(alpha_hi / alpha_lo)) segments), plus alpha_hi itself. Neighbouring
    # grid values differ by a ratio of at most 1 + 1 / n_sub. Within a segment z = exp(alpha u) advances by a
    # product with e = exp(d u); the next segment's step is 2d, so its e is the square of this one's. The
    # whole grid therefore costs two exps per point instead of one per point and grid value (exp dominates).
    # The recurrence loses ~2**n_seg ulps (~1e-11 relative): enough to locate brackets; Brent and the final
    # evaluation recompute z exactly.
    a_start = math.exp(log_lo)
    hi_alpha = math.exp(log_hi) * (1.0 - 1e-12)
    for i in range(n):
        zi = math.exp(a_start * u[i])
        z[i] = zi if zi > Z_TINY else 0.0
        ei = math.exp(a_start / n_sub * u[i])
        e[i] = ei if ei > Z_TINY else 0.0
    j = 0
    seg_a = a_start
    done = False
    for sgi in range(n_seg):
        d = seg_a / n_sub
        for q in range(n_sub):
            alpha_q = seg_a + q * d
            if alpha_q >= hi_alpha:
                done = True
                break
            if q > 0:
                for i in range(n):
                    zi = z[i] * e[i]
                    z[i] = zi if zi > Z_TINY else 0.0
            grid[j] = math.log(alpha_q)
            _profile_z(z, y, w, n, loss, delta, t, w2, res)
            vals[j] = res[2]
            j += 1
        if done:
            break
        for i in range(n):
            zi = z[i] * e[i]
            z[i] = zi if zi > Z_TINY else 0.0
            ei = e[i] * e[i]
            e[i] = ei if ei > Z_TINY else 0.0
        seg_a *= 2.0
    grid[j] = log_hi
    _profile(math.exp(log_hi), u, y, w, n, loss, delta, z, t, w2, res)
    vals[j] = res[2]
    n_grid = j + 1

    # Grid-local minima, best first (a plain selection: there are few). A plateau (e.g. alpha so large
    # that only the x_ref point has z > 0) yields one candidate, its right end, not one per grid point.
    cand = iwork
    nc = 0
    for j in range(n_grid):
        left = vals[j - 1] if j > 0 else np.inf
        right = vals[j + 1] if j < n_grid - 1 else np.inf
        if vals[j] <= left and vals[j] < right:
            cand[nc] = j
            nc += 1
    for a in range(nc):
        for b in range(a + 1, nc):
            if vals[cand[b]] < vals[cand[a]]:
                tmp = cand[a]
                cand[a] = cand[b]
                cand[b] = tmp

    best_obj = np.inf
    best_la = grid[0]
    for r in range(min(nc, n_refine)):
        j = cand[r]
        la, fla = _brent(grid[max(j - 1, 0)], grid[min(j + 1, n_grid - 1)], grid[j], vals[j],
                         u, y, w, n, loss, delta, z, t, w2, res)
        if fla < best_obj:
            best_obj = fla
            best_la = la

    alpha = math.exp(best_la)
    _profile(alpha, u, y, w, n, loss, delta, z, t, w2, res)
    kk = res[0]
    c = res[1]
    sse = 0.0
    for i in range(n):
        r = y[i] - kk * z[i] - c
        sse += w[i] * r * r
    # k * x**alpha = kk * (x / xref)**alpha.
    k = kk * math.exp(-alpha * math.log(xref))
    out[0] = k
    out[1] = alpha
    out[2] = c
    out[3] = res[2]
    out[4] = sse
    tol = 1e-7
    out[5] = 1.0 if (best_la - log_lo <= tol or log_hi - best_la <= tol) else 0.0
    if not (np.isfinite(k) and np.isfinite(sse)):
        return 2
    return 0
