"""Spearman's rank correlation without scipy (scipy is a development dependency only; pandas'
Series.corr(method="spearman") calls scipy)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def spearman(a, b, min_periods: int = 2) -> float:
    """Pearson correlation of the average ranks of the pairs where both values are present; NaN when
    fewer than ``min_periods`` pairs remain or either side is constant."""
    s = pd.DataFrame({"a": pd.to_numeric(pd.Series(np.asarray(a, dtype=float)), errors="coerce"),
                      "b": pd.to_numeric(pd.Series(np.asarray(b, dtype=float)), errors="coerce")}).dropna()
    if len(s) < max(min_periods, 2):
        return float("nan")
    ra = s["a"].rank().to_numpy(dtype=float, copy=True)
    rb = s["b"].rank().to_numpy(dtype=float, copy=True)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")
