"""How much the fit rests on single models: the saturation refitted without each fitted hull vertex.

A hull anchored on one model (open_clip's coca_ViT-B-32 / mscoco_finetuned, ImageNet accuracy 0.0079, is
the left end of all 34 hulls) shows it here: dropping that model changes the hull, and the refit says by
how much the saturation moves. Every model still counts in the default fit (the paper's choice); this is a
diagnostic, and ``min_us`` / ``exclude`` of the input readers are the remedy when a reader decides a
model does not belong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .powerlaw import fit_saturating_power_law

__all__ = ["vertex_influence", "influence_table", "most_influential", "INFLUENCE_FLOOR"]

#: a vertex whose removal moves the saturation by more than this (or by more than half the interval's
#: width, if larger) is flagged
INFLUENCE_FLOOR = 0.01


def vertex_influence(us, ds, models, fit, **fit_options) -> pd.DataFrame:
    """One row per fitted vertex of ``fit``: model, us, ds, the refit's saturation and identification
    without that model, and the change of saturation (``delta``)."""
    us, ds = np.asarray(us, dtype=float), np.asarray(ds, dtype=float)
    rows = []
    keep = np.ones(us.size, dtype=bool)
    for i in fit.fit_indices:
        keep[i] = False
        ok = keep.sum() >= 3 and np.ptp(us[keep]) > 0 and np.ptp(ds[keep]) > 0
        refit = fit_saturating_power_law(us[keep], ds[keep], profile=False, **fit_options) if ok else None
        keep[i] = True
        sat = refit.saturation if refit is not None and refit.success else np.nan
        rows.append({"model": str(models[i]), "us": float(us[i]), "ds": float(ds[i]), "saturation_without": sat,
                     "delta": sat - fit.saturation,
                     "hull_points_without": refit.n_points if refit is not None else 0})
    return pd.DataFrame(rows)


def influence_flag(table: pd.DataFrame, fit, interval=None):
    """A sentence naming the model whose removal moves the saturation most, if it moves it by more than
    INFLUENCE_FLOOR (or half the interval's width); else None."""
    if table is None or table.empty or not np.isfinite(table["delta"]).any():
        return None
    limit = INFLUENCE_FLOOR
    if interval is not None and all(np.isfinite(interval)):
        limit = max(limit, (interval[1] - interval[0]) / 2)
    row = table.loc[table["delta"].abs().idxmax()]
    if abs(row["delta"]) <= limit:
        return None
    return (f"rests on one model: without {row['model']} the saturation moves from {fit.saturation:.3f} to "
            f"{row['saturation_without']:.3f}")


def influence_table(groups: list) -> pd.DataFrame:
    """Per group (the study's GroupResults) and fitted vertex: the saturation refitted without that model,
    with the group's ds_task, shots and saturation in front; empty when no group has an influence table."""
    frames = []
    for r in groups:
        if r.influence is None or r.influence.empty:
            continue
        df = r.influence.copy()
        df.insert(0, "ds_task", r.task)
        df.insert(1, "shots", r.shots)
        df.insert(2, "saturation", r.fit_hull.saturation)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def most_influential(table: pd.DataFrame) -> pd.DataFrame:
    """Per (ds_task[, shots]) of :func:`influence_table`: the vertex whose removal moves the saturation most
    (largest |delta|; a group whose refits all failed keeps a row with delta NaN), rows ordered by |delta|
    descending. Columns ds_task, shots, saturation, model, saturation_without, delta."""
    cols = ["ds_task", "shots", "saturation", "model", "saturation_without", "delta"]
    if table is None or table.empty:
        return pd.DataFrame(columns=cols)
    keys = ["ds_task"] + (["shots"] if table["shots"].notna().any() else [])
    worst = (table.assign(abs_delta=table["delta"].abs()).sort_values("abs_delta", ascending=False)
             .groupby(keys, sort=False, dropna=False).head(1))
    return worst[cols].reset_index(drop=True)
