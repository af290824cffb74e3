"""Few-shot accuracy from each layer's representation, and the earliest layer that is as good as the best
(Abnar et al. 2022, Section 4, Fig. 6, F.22, F.23): tasks close to US want the top layers, tasks that
saturate early (UC-Merced, colorectal histology) are served as well by lower ones."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["layer_profile", "layer_summary"]


def layer_profile(df: pd.DataFrame, tol: float = 0.01) -> pd.DataFrame:
    """Mean accuracy per layer and, per (checkpoint[, dataset][, shots]), the best layer and the earliest
    layer whose accuracy is within ``tol`` (absolute, 0-1 units) of the best.

    df: probe results with columns checkpoint, layer_index, accuracy and optionally dataset, shots, layer;
    rows of the same layer (seeds, repeats) are averaged. Returns one row per layer with columns
    <keys>, layer_index, [layer], accuracy, n_rows, best_accuracy, best_layer, earliest_layer, is_earliest,
    gap_to_best, relative_depth (layer_index / deepest layer_index of that checkpoint).
    """
    missing = [c for c in ("checkpoint", "layer_index", "accuracy") if c not in df.columns]
    if missing:
        raise InputError(f"layer_profile: missing column(s) {', '.join(missing)}; known columns: "
                         f"{', '.join(map(str, df.columns))}")
    if not tol >= 0:
        raise InputError(f"tol must be >= 0; got {tol!r}")
    acc = pd.to_numeric(df["accuracy"], errors="coerce")
    if acc.isna().any():
        raise InputError(f"layer_profile: {int(acc.isna().sum())} row(s) without a numeric accuracy")
    if acc.min() < 0 or acc.max() > 1:
        raise InputError(f"layer_profile: accuracy must lie in [0, 1]; got [{acc.min():g}, {acc.max():g}]")
    keys = ["checkpoint"] + [c for c in ("dataset", "shots") if c in df.columns]
    data = df.assign(accuracy=acc)
    agg = {"accuracy": ("accuracy", "mean"), "n_rows": ("accuracy", "size")}
    if "layer" in data.columns:
        agg["layer"] = ("layer", "first")
    out = data.groupby(keys + ["layer_index"], sort=True, dropna=False).agg(**agg).reset_index()
    g = out.groupby(keys, sort=False, dropna=False)
    out["best_accuracy"] = g["accuracy"].transform("max")
    # idxmax gives the first (shallowest) layer among exact ties.
    best_layer = out.loc[g["accuracy"].idxmax(), keys + ["layer_index"]].rename(columns={"layer_index": "best_layer"})
    out = out.merge(best_layer, on=keys, how="left")
    within = out["accuracy"] >= out["best_accuracy"] - tol - 1e-12
    earliest = out[within].groupby(keys, sort=False, dropna=False)["layer_index"].min().rename("earliest_layer")
    out = out.merge(earliest.reset_index(), on=keys, how="left")
    out["is_earliest"] = out["layer_index"] == out["earliest_layer"]
    out["gap_to_best"] = out["best_accuracy"] - out["accuracy"]
    deepest = out.groupby("checkpoint")["layer_index"].transform("max")
    out["relative_depth"] = np.where(deepest > 0, out["layer_index"] / deepest.where(deepest > 0, 1), 1.0)
    return out


def layer_summary(table: Optional[pd.DataFrame]) -> Optional[pd.DataFrame]:
    """Per dataset, from :func:`layer_profile`'s table: the mean best and earliest-near-best layer over
    checkpoints, and the share of checkpoints whose earliest near-best layer is below the checkpoint's
    deepest layer (the paper's early-saturating tasks: the last layer is not needed). None for no table."""
    if table is None or table.empty:
        return None
    per_ck = table.groupby(["dataset", "checkpoint"], sort=False).agg(
        best_layer=("best_layer", "first"), earliest_layer=("earliest_layer", "first"),
        deepest=("layer_index", "max")).reset_index()
    per_ck["not_last"] = per_ck["earliest_layer"] < per_ck["deepest"]
    return (per_ck.groupby("dataset", sort=False)
            .agg(checkpoints=("checkpoint", "size"), mean_best_layer=("best_layer", "mean"),
                 mean_earliest_layer=("earliest_layer", "mean"), share_last_layer_not_needed=("not_last", "mean"))
            .reset_index())
