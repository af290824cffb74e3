"""The fit record: one JSON object per (DS task, shots), the schema of ``plateaulab fit --json`` and of the
study's fits.json. Both are built here, so they cannot drift apart.

Keys, in order:

* ``ds``, ``shots`` (when the table has shots);
* the fit: ``on, k, alpha, e_ir, saturation, sse, n_points, hull_points, identified, on_bound, success,
  message, loss, us_bayes_error, tail``; ``identified`` is true only when k, alpha and e_IR all are;
* ``identifiable``: {"k", "alpha", "e_ir", "saturation": bool}, from the profile intervals in ``profile``
  ({parameter: [lo, hi]});
* ``hull_models``: the models the fit rests on (its points, left to right), when the caller knows them;
* ``flags``: short sentences saying why a parameter is not identified and what else limits the fit;
* with an interval: ``ci`` ({parameter: [lo, hi]}) of the source named by ``ci_source`` ("noise": the
  measurement-noise bootstrap; "models": the model bootstrap), ``ci_level``, ``n_boot`` and ``n_failed``
  of that source, and ``intervals``: every source computed, {source: {ci, n_boot, n_failed, ...}};
* any extra keys of the caller (e.g. ``layer`` for probe runs).

Non-finite numbers become null.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .identify import uncertainty_flags

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


def fit_record(fit, *, task: str, shots=None, boot=None, noise=None, models=None, flags: Sequence[str] = (),
               extra: Optional[dict] = None) -> dict:
    """The record of one fit (a PowerLawFit), with its model bootstrap (``boot``, a BootstrapResult) and its
    measurement-noise bootstrap (``noise``, a NoiseResult) when given; the noise interval is the primary
    one when both exist. ``flags``: more sentences of the caller (e.g. the influence of one model)."""
    rec = {"ds": str(task)}
    if shots is not None:
        rec["shots"] = _shots_value(shots)
    d = fit.to_dict()
    d.pop("ds", None)
    fit_flags = d.pop("flags", [])
    rec.update(d)
    if models is not None and fit.fit_indices is not None:
        rec["hull_models"] = [str(models[i]) for i in fit.fit_indices]
    intervals = {}
    if noise is not None:
        intervals["noise"] = noise.to_dict()
    if boot is not None:
        b = boot.to_dict()
        intervals["models"] = {k: b[k] for k in ("ci", *_BOOT_KEYS) if k in b}
    primary = "noise" if "noise" in intervals else "models" if "models" in intervals else None
    interval = None
    if primary is not None:
        chosen = intervals[primary]
        rec["ci"] = chosen["ci"]
        rec["ci_source"] = primary
        rec["ci_level"] = chosen.get("ci_level", 0.95)
        rec["n_boot"], rec["n_failed"] = chosen["n_boot"], chosen["n_failed"]
        lo, hi = chosen["ci"]["saturation"]
        interval = (np.nan if lo is None else lo, np.nan if hi is None else hi)
        rec["intervals"] = intervals
    level = rec.get("ci_level", 0.95)
    rec["flags"] = list(fit_flags) + uncertainty_flags(fit, interval, primary and _SOURCE_NAMES[primary], boot,
                                                       level=level) + list(flags)
    rec.update(extra or {})
    return jsonable(rec)


_SOURCE_NAMES = {"noise": "measurement-noise", "models": "model-bootstrap"}
