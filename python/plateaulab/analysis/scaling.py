"""Axis scalings of accuracy (Abnar et al. 2022, App. E and Fig. F.2).

linear: p. logit: log(p / (1 - p)). neglog1m: -log(1 - p), the log of the error with its sign flipped, under
which a pure power law e = k e_US^alpha becomes a straight line against -log(1 - us). p = 0 or 1 map to
-inf / +inf (logit) and +inf (neglog1m at 1) unless ``eps`` clips p into [eps, 1 - eps] first.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError

__all__ = ["scale_accuracy", "SCALES"]

SCALES = ("linear", "logit", "neglog1m")


def scale_accuracy(p, scale: str = "linear", *, eps: Optional[float] = None) -> np.ndarray:
    """Accuracy p (0-1) on the named axis scale: "linear", "logit" or "neglog1m" (-log(1 - p))."""
    if scale not in SCALES:
        raise InputError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")
    a = np.asarray(p, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise InputError(f"accuracies must lie in [0, 1] to be scaled; got values in [{finite.min():g}, "
                         f"{finite.max():g}] (percentages? divide by 100)")
    if eps is not None:
        if not 0 < eps < 0.5:
            raise InputError(f"eps must be in (0, 0.5); got {eps!r}")
        a = np.clip(a, eps, 1 - eps)
    with np.errstate(divide="ignore"):
        if scale == "linear":
            return a.copy()
        if scale == "logit":
            return np.log(a) - np.log1p(-a)
        return -np.log1p(-a)
