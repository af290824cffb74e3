"""Checks that run in Python before any kernel: they convert and return arrays, or raise InputError
saying what was expected, what was received and what to do."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

ON_CHOICES = ("hull", "all")
LOSS_CHOICES = ("l2", "huber", "log")


def choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise InputError(f"{{param}} must be one of {', '.join(map(repr, allowed))}; got {value!r}", param=name)
    return value


def accuracy_pair(us_acc, ds_acc, *, where: str = "", min_points: int = 2,
                  weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate paired accuracies on the 0-1 scale; returns float64 (us, ds, weights)."""
    ctx = f" ({where})" if where else ""
    try:
        us = np.asarray(us_acc, dtype=np.float64).reshape(-1)
        ds = np.asarray(ds_acc, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"accuracies must be numeric{ctx}: {exc}") from None
    if us.size != ds.size:
        raise InputError(f"US and DS accuracies must have the same length{ctx}; got {us.size} and {ds.size}")
    for name, a in (("US", us), ("DS", ds)):
        bad = ~np.isfinite(a)
        if bad.any():
            raise InputError(
                f"{name} accuracy has {int(bad.sum())} NaN/inf value(s){ctx}, first at position "
                f"{int(np.flatnonzero(bad)[0])}; drop those rows first (load_table(..., nan='drop') does)")
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if lo < 0.0 or hi > 1.0:
            hint = (" The values look like percentages: divide by 100 or load with scale='percent'."
                    if hi <= 100.0 and lo >= 0.0 else "")
            raise InputError(f"{name} accuracy must lie in [0, 1]{ctx}; got values in [{lo:g}, {hi:g}].{hint}")
    if us.size < min_points:
        raise InputError(f"need at least {min_points} points to fit{ctx}; got {us.size}")
    if weights is None:
        w = np.ones(us.size)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != us.size:
            raise InputError(f"weights must have one value per point{ctx}; got {w.size} for {us.size} points")
        if not np.all(np.isfinite(w)) or (w < 0).any():
            raise InputError(f"weights must be finite and >= 0{ctx}")
        if not (w > 0).sum() >= min_points:
            raise InputError(f"need at least {min_points} points with positive weight{ctx}")
    if np.ptp(us[w > 0]) == 0.0:
        raise InputError(f"US accuracy is constant ({us[0]:g}) over all {us.size} points{ctx}: "
                         "there is no relation to fit; check the US column")
    if np.ptp(ds[w > 0]) == 0.0:
        raise InputError(f"DS accuracy is constant ({ds[0]:g}) over all {ds.size} points{ctx}: "
                         "eq. (1) is not identified; check the DS column")
    return np.ascontiguousarray(us), np.ascontiguousarray(ds), np.ascontiguousarray(w)


def bayes_error(us: np.ndarray, us_bayes_error: float, where: str = "") -> float:
    b = float(us_bayes_error)
    if not (0.0 <= b < 1.0):  # NaN fails this too
        raise InputError(f"{{param}} must be in [0, 1); got {us_bayes_error!r}", param="us_bayes_error")
    if b > 0 and (1.0 - us - b).min() < 0.0:
        raise InputError(f"{{param}}={b:g} exceeds the US error of some points "
                         f"(largest US accuracy {us.max():g}){' (' + where + ')' if where else ''}: "
                         "e_US - Bayes error must be >= 0", param="us_bayes_error")
    return b


def seed(value) -> int:
    """A seed for numpy's generators: a whole number in [0, 2**63)."""
    try:
        v = int(value)
        ok = v == float(value) and 0 <= v < 2 ** 63
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InputError(f"{{param}} must be a whole number in [0, 2**63); got {value!r}", param="seed")
    return v


def test_sizes(n, size: int, name: str) -> np.ndarray:
    """Test-set sizes behind ``size`` accuracies (a scalar or one per accuracy; None or NaN: unknown, 0),
    as float64; whole and non-negative, or an InputError naming ``name``."""
    try:
        arr = np.asarray(np.nan if n is None else n, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{{param}} must hold numbers of test examples; got {n!r}", param=name) from None
    if arr.ndim > 1 or (arr.ndim == 1 and arr.size not in (1, size)):
        raise InputError(f"{{param}} must be one size or one per model ({size}); got {arr.size} values",
                         param=name)
    arr = np.broadcast_to(arr.reshape(-1) if arr.ndim else arr, (size,)).copy()
    arr[~np.isfinite(arr)] = 0.0
    bad = (arr < 0) | (arr != np.round(arr))
    if bad.any():
        raise InputError(f"{{param}} must hold whole, non-negative test-set sizes; got {arr[bad][:3].tolist()}",
                         param=name)
    return arr
