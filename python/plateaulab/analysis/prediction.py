"""How much US accuracy alone predicts DS accuracy (Abnar et al. 2022, Section 3, Table F.3, Fig. F.18),
and the hull of one DS task drawn on another task's plot (Fig. 5, F.19).

Prediction power compares two predictors of DS accuracy: eq. (1) fitted to the points (a function of US
accuracy only) and the mean DS accuracy (no information). The paper reports the standard deviation of the
error of the first and notes it is far below that of the second; ``ratio`` = std_residual / std_mean is
that comparison (1 means US accuracy predicts nothing, 0 perfectly).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import _validate
from .hull import upper_hull
from .powerlaw import PowerLawFit, fit_saturating_power_law

__all__ = ["prediction_power", "hull_overlay"]


def prediction_power(us_acc, ds_acc, fit: Optional[PowerLawFit] = None, *, on: str = "all") -> dict:
    """std of DS - eq.(1)(US) against std of DS - mean(DS). ``fit`` defaults to eq. (1) fitted on all points
    (``on``), since the question is about every model, not the frontier."""
    us, ds, _ = _validate.accuracy_pair(us_acc, ds_acc)
    if fit is None:
        fit = fit_saturating_power_law(us, ds, on=on)
    resid = ds - fit.predict(us)
    std_resid = float(np.std(resid))
    std_mean = float(np.std(ds))
    return {"std_residual": std_resid, "std_mean": std_mean,
            "ratio": std_resid / std_mean if std_mean > 0 else float("nan"),
            "rmse_residual": float(np.sqrt(np.mean(resid ** 2))), "n_points": int(us.size),
            "fit_on": fit.on, "identified": bool(fit.identified)}


def hull_overlay(us_acc, ds_acc_ref) -> tuple:
    """(hull_us, hull_ds): the upper hull of the reference task's DS-vs-US points, sorted by US, to draw
    over another task's plot (Fig. 5 overlays ImageNet's hull on every DS task)."""
    us = np.asarray(us_acc, dtype=np.float64).reshape(-1)
    ds = np.asarray(ds_acc_ref, dtype=np.float64).reshape(-1)
    h = upper_hull(us, ds)
    return us[h].copy(), ds[h].copy()
