"""The fit record: one JSON object per (DS task, shots), the schema of ``plateaulab fit --json`` and of the
study's fits.json. Both are built here, so they cannot drift apart.

Keys, in order: ``ds``, ``shots`` (when the table has shots), then the fit (``on, k, alpha, e_ir,
saturation, sse, n_points, hull_points, identified, on_bound, success, message, loss, us_bayes_error``),
then, with a bootstrap, ``ci`` ({parameter: [lo, hi]}) and its counts (``ci_level, n_boot, n_failed,
n_on_bound, n_unidentified, n_on_bound_by_param, m, seed``), then any extra keys of the caller (e.g.
``layer`` for probe runs). Non-finite numbers become null.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = ["fit_record", "jsonable"]

_BOOT_KEYS = ("ci_level", "n_boot", "n_failed", "n_on_bound", "n_unidentified", "n_on_bound_by_param", "m", "seed")


def jsonable(v):
    """v with numpy scalars and arrays turned into Python ones and non-finite floats into None."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def _shots_value(shots):
    return int(shots) if float(shots).is_integer() else float(shots)


def fit_record(fit, *, task: str, shots=None, boot=None, extra: Optional[dict] = None) -> dict:
    """The record of one fit (a PowerLawFit), with its bootstrap (a BootstrapResult) when given."""
    rec = {"ds": str(task)}
    if shots is not None:
        rec["shots"] = _shots_value(shots)
    d = fit.to_dict()
    d.pop("ds", None)
    rec.update(d)
    if boot is not None:
        b = boot.to_dict()
        rec["ci"] = b["ci"]
        rec.update({k: b[k] for k in _BOOT_KEYS if k in b})
    rec.update(extra or {})
    return jsonable(rec)
