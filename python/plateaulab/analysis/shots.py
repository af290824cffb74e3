"""How the fitted parameters change with the number of shots (Abnar et al. 2022, Tables F.1 and F.2).

Table F.1 gives, per DS (and US) task, the correlation of each parameter with the number of shots.
Table F.2 gives "the likelihood that each of the parameters increases/decreases as the number of shots
increases, average over all DS tasks"; its entries are signed (e.g. -0.65 for k), so we report both
P(increase) — the share of consecutive shot pairs (sorted by shots, within a task) where the parameter
goes up — and the signed trend 2 P(increase) - 1, which is +1 when it always increases and -1 when it
always decreases. Shots below 1 (e.g. CLIP_benchmark's -1 for "full data") are left out.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ._rank import spearman

__all__ = ["params_vs_shots"]


def _pearson(a, b) -> float:
    a = np.asarray(a, dtype=float) - np.mean(a)
    b = np.asarray(b, dtype=float) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def params_vs_shots(df: pd.DataFrame, params: Sequence[str] = ("k", "alpha", "e_ir"),
                    group: Sequence[str] = ("ds_task",)) -> pd.DataFrame:
    """Correlation of each parameter with shots, per group (default per DS task), plus mean rows.

    df: one row per fit with columns ``shots``, the group columns and the parameters.
    Returns columns <group...>, param, n_shots, n_groups, spearman, pearson, p_increase, trend; rows whose
    group columns are all "all" average spearman, pearson, p_increase and trend over the groups that have at
    least two shots values (n_groups of them; Table F.2). Groups with one shots value get NaN.
    """
    group = [group] if isinstance(group, str) else list(group)
    missing = [c for c in ["shots", *group, *params] if c not in df.columns]
    if missing:
        raise InputError(f"params_vs_shots: missing column(s) {', '.join(missing)}; known columns: "
                         f"{', '.join(map(str, df.columns))}")
    data = df[pd.to_numeric(df["shots"], errors="coerce") >= 1]
    rows = []
    for key, g in data.groupby(group, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values("shots")
        for p in params:
            sub = g[["shots", p]].dropna()
            # One value per shots count (mean over repeats), so ties in shots do not count as pairs.
            per = sub.groupby("shots")[p].mean()
            diffs = np.diff(per.to_numpy())
            enough = per.size >= 2
            p_inc = float(np.mean(diffs > 0)) if enough else np.nan
            rows.append({**dict(zip(group, key)), "param": p, "n_shots": int(per.size), "n_groups": 1,
                         "spearman": spearman(sub["shots"], sub[p]) if enough else np.nan,
                         "pearson": _pearson(sub["shots"], sub[p]) if enough else np.nan,
                         "p_increase": p_inc, "trend": 2 * p_inc - 1 if enough else np.nan})
    columns = [*group, "param", "n_shots", "n_groups", "spearman", "pearson", "p_increase", "trend"]
    out = pd.DataFrame(rows, columns=columns)
    if out.empty:
        return out
    means = out.groupby("param", sort=False)[["spearman", "pearson", "p_increase", "trend"]].mean().reset_index()
    for c in group:
        means[c] = "all"
    means["n_shots"] = np.nan
    means["n_groups"] = out.groupby("param", sort=False)["p_increase"].count().to_numpy()
    return pd.concat([out, means[out.columns]], ignore_index=True)
