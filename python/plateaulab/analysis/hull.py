"""Upper convex hull of downstream-vs-upstream accuracy (Abnar et al. 2022, Section 2.1, Lemma 2.1).

Mixing models j with probabilities p_j gives a randomised classifier whose (US, DS) accuracy is
sum_j p_j a_j, so every point of the convex hull of the models' points is reachable. The analysis keeps
the *upper* chain: the best DS accuracy reachable at each US accuracy, from the leftmost point to the
rightmost one. It keeps descending after the point of highest DS accuracy; that part is still reachable.

Conventions (documented in docs/ANALYSIS.md, tested in tests/test_analysis_hull.py):

* Order: the chain is returned as indices into the inputs, sorted by US ascending.
* Equal US: only the point of highest DS at that US can be on the upper chain (a vertical edge is never
  part of the upper chain, as in Qhull, whose facets with a horizontal outward normal are not "upper").
* Collinear points: a point lying exactly on the segment between two chain neighbours is dropped. The
  chain holds vertices only, which is what Qhull reports. The test is the exact sign of a float cross
  product, with no tolerance.
* Duplicates: identical (US, DS) pairs count once; the lowest index represents them.
* Fewer than 3 points: 0 points give an empty chain, 1 point gives itself, 2 points give both (or the
  higher one if they share the US value). Qhull raises on all of these; the monotone chain does not.
* NaN or infinite coordinates: such a point is skipped; it can never be a vertex.

Algorithm: Andrew's monotone chain. After sorting by (US ascending, DS descending, index ascending) one
scan keeps a stack; a new point p pops the top b (with a below it) while the turn a -> b -> p is not
strictly clockwise, i.e. while cross(b - a, p - a) >= 0. Strictly clockwise turns are exactly the
vertices of an upper chain traversed left to right. O(n log n) for the sort, O(n) for the scan.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["upper_hull", "upper_hull_reference", "rising_hull", "rising_length"]


@njit(cache=True)
def _upper_chain_sorted(x, y, order, present, out):
    """Monotone-chain scan over points visited in ``order``; returns the number of vertices.

    ``order`` must sort the points by (x ascending, y descending). Points with ``present[i] == False``
    are skipped, which lets the bootstrap reuse one sort for every replicate: a resample is a subset of
    the original points (duplicates never change a hull). ``out`` receives the chain's indices.
    """
    h = 0
    for t in range(order.shape[0]):
        i = order[t]
        if not present[i]:
            continue
        xi = x[i]
        yi = y[i]
        if h > 0 and x[out[h - 1]] == xi:
            # Same US as the point just kept, which has a DS at least as high (sort order): a vertical
            # edge or a duplicate, never an upper-chain vertex.
            continue
        while h >= 2:
            a = out[h - 2]
            b = out[h - 1]
            cross = (x[b] - x[a]) * (yi - y[a]) - (y[b] - y[a]) * (xi - x[a])
            if cross >= 0.0:
                h -= 1
            else:
                break
        out[h] = i
        h += 1
    return h


def _sort_order(us: np.ndarray, ds: np.ndarray) -> np.ndarray:
    """Indices of the finite points sorted by (US ascending, DS descending, index ascending)."""
    finite = np.flatnonzero(np.isfinite(us) & np.isfinite(ds))
    # lexsort sorts by the last key first and is stable, so ties in (us, -ds) keep index order.
    order = finite[np.lexsort((-ds[finite], us[finite]))]
    return order.astype(np.int64)


def _as_pair(us, ds) -> tuple[np.ndarray, np.ndarray]:
    us = np.ascontiguousarray(us, dtype=np.float64).reshape(-1)
    ds = np.ascontiguousarray(ds, dtype=np.float64).reshape(-1)
    if us.shape != ds.shape:
        from ..errors import InputError
        raise InputError(f"upper_hull: us and ds must have the same length, got {us.size} and {ds.size}")
    return us, ds


def upper_hull(us, ds) -> np.ndarray:
    """Indices of the upper convex hull's vertices of the points (us[i], ds[i]), sorted by US ascending.

    Works for any number of points, including 0, 1 and 2, duplicates and collinear points; non-finite
    points are skipped. See the module docstring for the exact conventions.
    """
    us, ds = _as_pair(us, ds)
    order = _sort_order(us, ds)
    present = np.ones(us.size, dtype=np.bool_)
    out = np.empty(order.size, dtype=np.int64)
    h = _upper_chain_sorted(us, ds, order, present, out)
    return out[:h].copy()


@njit(cache=True)
def rising_length(ds, chain, h):
    """How many of the chain's first h vertices form its rising part: from the leftmost vertex up to the
    one of highest DS (the last of them, if the top is a horizontal edge).

    An upper chain rises, may run flat at its top, then only descends. Eq. (1) is monotone in US accuracy,
    so it can follow the rising part; fitting the descending tail as well is a misspecification that pulls
    the plateau down (docs/ANALYSIS.md, "The rising hull").
    """
    best = -np.inf
    end = 0
    for j in range(h):
        v = ds[chain[j]]
        if v >= best:
            best = v
            end = j + 1
    return end


def rising_hull(us, ds) -> np.ndarray:
    """Indices of the rising part of the upper hull (see :func:`rising_length`), sorted by US ascending."""
    us, ds = _as_pair(us, ds)
    h = upper_hull(us, ds)
    return h[:rising_length(ds, h, h.size)].copy()


def upper_hull_reference(us, ds) -> np.ndarray:
    """Readable pure-Python version of :func:`upper_hull` with the same conventions (for tests)."""
    us, ds = _as_pair(us, ds)
    # Equal US: keep the highest DS (lowest index among exact duplicates).
    best: dict[float, int] = {}
    for i in range(us.size):
        if not (np.isfinite(us[i]) and np.isfinite(ds[i])):
            continue
        j = best.get(us[i])
        if j is None or ds[i] > ds[j]:
            best[us[i]] = i
    chain: list[int] = []
    for i in sorted(best.values(), key=lambda i: us[i]):
        while len(chain) >= 2:
            a, b = chain[-2], chain[-1]
            cross = (us[b] - us[a]) * (ds[i] - ds[a]) - (ds[b] - ds[a]) * (us[i] - us[a])
            if cross >= 0.0:
                chain.pop()
            else:
                break
        chain.append(i)
    return np.asarray(chain, dtype=np.int64)


# --- many hulls of subsets of one point set (the bootstrap) ----------------------------------------------
#
# A bootstrap replicate keeps a random subset S of the points (duplicates never change a hull), and its
# upper hull is almost always made of points near the top. Peel the full set into upper layers once:
# layer 1 is the upper chain of all points, layer k the upper chain of the points in no earlier layer.
# Every point outside layers 1..K lies on or below the chain of layer K+1 (that chain is the upper hull of
# all those points, over their whole US range). So if H_K, the upper chain of S restricted to layers 1..K,
# lies strictly above every vertex of layer K+1, and spans their US range, then H_K lies strictly above the
# whole chain of layer K+1 (a segment between two points below a concave function stays below it) and
# hence above every deeper point: H_K is the upper chain of S. Otherwise try K + 1; after MAX_LAYERS, scan
# everything. "Strictly" uses a margin of LAYER_MARGIN in DS units, far above rounding, so that a deeper
# point within rounding distance of H_K (a duplicate, a collinear point) always sends the scan deeper and
# the result equals the plain scan's exactly.

MAX_LAYERS = 24
LAYER_MARGIN = 1e-12


@njit(cache=True)
def upper_layers(x, y, order, max_layers):
    """Peel up to max_layers upper chains. Returns (union_idx, union_ptr, layer_idx, layer_ptr, n_layers):
    union_idx[union_ptr[K-1]:union_ptr[K]] lists the points of layers 1..K in ``order``'s order, and
    layer_idx[layer_ptr[K-1]:layer_ptr[K]] the vertices of layer K sorted by x."""
    n = order.shape[0]
    npts = x.shape[0]
    layer = np.zeros(npts, dtype=np.int64)
    remaining = np.zeros(npts, dtype=np.bool_)
    for t in range(n):
        remaining[order[t]] = True
    out = np.empty(n, dtype=np.int64)
    layer_idx = np.empty(n, dtype=np.int64)
    layer_ptr = np.zeros(max_layers + 1, dtype=np.int64)
    n_layers = 0
    left = n
    while left > 0 and n_layers < max_layers:
        h = _upper_chain_sorted(x, y, order, remaining, out)
        start = layer_ptr[n_layers]
        for j in range(h):
            layer[out[j]] = n_layers + 1
            remaining[out[j]] = False
            layer_idx[start + j] = out[j]
        n_layers += 1
        layer_ptr[n_layers] = start + h
        left -= h
    total = 0
    for k in range(1, n_layers + 1):
        total += layer_ptr[k]
    union_idx = np.empty(total, dtype=np.int64)
    union_ptr = np.zeros(n_layers + 1, dtype=np.int64)
    pos = 0
    for k in range(1, n_layers + 1):
        for t in range(n):
            i = order[t]
            if layer[i] >= 1 and layer[i] <= k:
                union_idx[pos] = i
                pos += 1
        union_ptr[k] = pos
    return union_idx, union_ptr, layer_idx, layer_ptr, n_layers


@njit(cache=True)
def _strictly_below(x, y, chain, h, layer_idx, a, b):
    """True if every point layer_idx[a:b] (sorted by x) lies within the chain's x-range and more than
    LAYER_MARGIN below it."""
    if h == 0:
        return b == a
    s = 0
    for t in range(a, b):
        q = layer_idx[t]
        xq = x[q]
        if xq < x[chain[0]] or xq > x[chain[h - 1]]:
            return False
        while s < h - 1 and x[chain[s + 1]] < xq:
            s += 1
        i0 = chain[s]
        if s == h - 1 or x[i0] == xq:
            yh = y[i0]
        else:
            i1 = chain[s + 1]
            yh = y[i0] + (y[i1] - y[i0]) * (xq - x[i0]) / (x[i1] - x[i0])
        if not (y[q] < yh - LAYER_MARGIN):
            return False
    return True


@njit(cache=True)
def upper_chain_layered(x, y, order, present, union_idx, union_ptr, layer_idx, layer_ptr, n_layers, out):
    """Upper chain of the present points, equal to ``_upper_chain_sorted`` over ``order``; see above."""
    n_all = order.shape[0]
    for k in range(1, n_layers + 1):
        h = _upper_chain_sorted(x, y, union_idx[union_ptr[k - 1]:union_ptr[k]], present, out)
        if layer_ptr[k] == n_all:
            return h  # layers 1..k hold every point: nothing lies deeper
        if k < n_layers and _strictly_below(x, y, out, h, layer_idx, layer_ptr[k], layer_ptr[k + 1]):
            return h
    return _upper_chain_sorted(x, y, order, present, out)
