"""The study's words: flags, the saturation with its interval, the per-task summary sentence, and the
order in which tasks are listed (the same on stdout and in the HTML)."""

from __future__ import annotations

import numpy as np

from ..analysis.groups import shots_order, shots_text

__all__ = ["flags", "saturation_text", "summary_sentence", "ranked", "SCALE_NAMES", "shots_text", "shots_tick"]

SCALE_NAMES = {"linear": "linear", "logit": "logit", "neglog1m": "-log(1 - p)"}


def shots_tick(s) -> str:
    """A shot count as an axis tick: '5', 'full'."""
    s = float(s)
    return "full" if s < 0 else (f"{int(s)}" if s.is_integer() else f"{s:g}")


def flags(r) -> list[str]:
    """Plain warnings about one group's fit: identification, parameters on bounds, bootstrap failures."""
    out = []
    f = r.fit_hull
    if not bool(f.identified):
        if int(getattr(f, "n_distinct", f.hull_points)) <= 3 or int(f.hull_points) <= 3:
            out.append(f"not identified: hull has {int(f.hull_points)} points")
        else:
            out.append("not identified: k = 0 (a flat line; alpha has no effect)")
    for p in list(f.on_bound or []):
        out.append(f"{'e_IR' if p == 'e_ir' else p} on bound")
    if not bool(getattr(f, "success", True)):
        out.append(f"fit failed: {getattr(f, 'message', '')}".strip())
    b = r.boot
    if b is not None and b.n_boot:
        share_fail = b.n_failed / b.n_boot
        share_bound = b.n_on_bound / b.n_boot
        if share_fail > 0.05:
            out.append(f"{share_fail:.0%} of bootstrap fits failed")
        if share_bound > 0.25:
            out.append(f"{share_bound:.0%} of bootstrap fits on a bound")
    return out


def saturation_text(r) -> str:
    """'0.78 [0.74, 0.81]': the saturation and its CI, with a third decimal when the CI is narrower than
    0.02 (two decimals would print [0.65, 0.65])."""
    sat = r.fit_hull.saturation
    lo = hi = None
    if r.boot is not None and "saturation" in r.boot.ci:
        lo, hi = r.boot.ci["saturation"]
        if not (np.isfinite(lo) and np.isfinite(hi)):
            lo = hi = None
    d = 3 if lo is not None and hi - lo < 0.02 else 2
    text = f"{sat:.{d}f}"
    if lo is not None:
        text += f" [{lo:.{d}f}, {hi:.{d}f}]"
    return text


def summary_sentence(r) -> str:
    f = r.fit_hull
    text = f"saturates at {saturation_text(r)}"
    text += f"; {int(f.hull_points)} hull points of {len(r.us)} models"
    best = float(np.max(r.ds))
    gap = f.saturation - best
    if gap < -0.01:
        text += f"; the fitted plateau lies below the best model ({best:.2f})"
    elif gap <= 0.01:
        text += f"; the best model ({best:.2f}) is already at the plateau"
    else:
        text += f"; {gap:.2f} above the best model ({best:.2f})"
    fl = flags(r)
    if fl:
        text += " (" + "; ".join(fl) + ")"
    return text


def ranked(groups: list) -> list:
    """The order in which tasks are listed: with several shot counts, each task's shots together and in
    order; with one point set per task, the highest plateau first."""
    if any(r.shots is not None for r in groups):
        order = {t: i for i, t in enumerate(dict.fromkeys(r.task for r in groups))}
        return sorted(groups, key=lambda r: (order[r.task], shots_order(r.shots)))
    return sorted(groups, key=lambda r: (-r.fit_hull.saturation, r.task))
