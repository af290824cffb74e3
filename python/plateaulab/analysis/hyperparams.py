"""Hyper-parameters on which US and DS disagree (Abnar et al. 2022, App. C, D; Fig. D.1, D.3, D.4, F.24-F.28):
the value of a chosen hyper-parameter (e.g. head weight decay, learning rate) that is best for each DS task
and for US, and that choice against the rank agreement of US and DS accuracy.

:func:`hyperparam_discrepancy` works on one table of runs; :func:`hparam_study` runs it for every declared
hyper-parameter and shot count of a long accuracy table (the study's ``--hparams``). A value is "best" by
the mean accuracy over the runs that have it. That compares like with like only when the hyper-parameter is
*crossed* with the models (every model was run with every value, as CLIP_benchmark's linear probes are
with every learning rate and epoch count); when each model has one value (the pre-training learning rate
of scaling-laws-openclip's runs), the means compare different models, and ``crossed`` is False.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ._rank import spearman

__all__ = ["hyperparam_discrepancy", "hparam_study", "hparam_summary", "runs_wide"]


def hyperparam_discrepancy(df: pd.DataFrame, param_col: str, us_col: str, ds_cols: Sequence[str]) -> pd.DataFrame:
    """Per target (US first, then each DS column): the value of ``param_col`` with the best mean accuracy,
    the DS accuracy lost by using the US-optimal value instead, and the Spearman correlation between US
    and that DS accuracy over the rows (the paper plots the optimum against this rank correlation).

    df: one row per run (e.g. per model x hyper-parameter value), with param_col, us_col and ds_cols.
    Returns columns target, best_param, best_accuracy, us_best_param, accuracy_at_us_best,
    loss_from_us_choice, agrees_with_us, spearman_with_us, n_rows, n_param_values.
    """
    ds_cols = [ds_cols] if isinstance(ds_cols, str) else list(ds_cols)
    missing = [c for c in [param_col, us_col, *ds_cols] if c not in df.columns]
    if missing:
        raise InputError(f"hyperparam_discrepancy: unknown column(s) {', '.join(map(repr, missing))}; known "
                         f"columns: {', '.join(map(str, df.columns))}")
    if df[param_col].nunique(dropna=True) < 2:
        raise InputError(f"hyperparam_discrepancy: {param_col!r} takes fewer than 2 values; nothing to compare")
    means = df.groupby(param_col, sort=True)[[us_col, *ds_cols]].mean()
    us_best = means[us_col].idxmax()
    rows = []
    for target in [us_col, *ds_cols]:
        col = means[target].dropna()
        if col.empty:
            raise InputError(f"hyperparam_discrepancy: column {target!r} has no values")
        best = col.idxmax()
        at_us = float(means.loc[us_best, target]) if us_best in col.index else np.nan
        pair = df[[us_col, target]].apply(pd.to_numeric, errors="coerce").dropna()
        rho = 1.0 if target == us_col else spearman(pair[us_col], pair[target])
        rows.append({"target": target, "best_param": best, "best_accuracy": float(col.max()),
                     "us_best_param": us_best, "accuracy_at_us_best": at_us,
                     "loss_from_us_choice": float(col.max()) - at_us, "agrees_with_us": bool(best == us_best),
                     "spearman_with_us": rho, "n_rows": int(pair.shape[0]), "n_param_values": int(col.size)})
    return pd.DataFrame(rows)


def runs_wide(long: pd.DataFrame, hparams: Sequence[str]) -> pd.DataFrame:
    """One row per run, (model, *hparams), from a long table (model, ds_task, ds, us, *hparams) of one shot
    count: the US accuracy in ``us`` and one column per DS task."""
    keys = ["model", *hparams]
    ds = long.pivot_table(index=keys, columns="ds_task", values="ds", aggfunc="mean", sort=False, dropna=False)
    us = long.groupby(keys, sort=False, dropna=False)["us"].mean()
    out = pd.concat([us, ds], axis=1).reset_index()
    out.columns.name = None
    return out[out["us"].notna()].reset_index(drop=True)


def _crossed(wide: pd.DataFrame, param: str) -> bool:
    """Whether every model has a run at every value of ``param``."""
    have = wide.dropna(subset=[param]).groupby("model")[param].nunique()
    return bool(len(have) > 0 and (have == wide[param].nunique()).all() and len(have) == wide["model"].nunique())


def hparam_study(long: pd.DataFrame, hparams: Sequence[str], ds_tasks: Sequence[str]) -> tuple[pd.DataFrame, dict]:
    """:func:`hyperparam_discrepancy` for each hyper-parameter in ``hparams`` and each shot count of ``long``.

    Returns (table, skipped): the rows of hyperparam_discrepancy with columns hparam, shots and crossed
    first (the US row's target is "US"), and {what: why} for the (hyper-parameter, shots) pairs that could
    not be compared (fewer than two values)."""
    missing = [h for h in hparams if h not in long.columns]
    if missing:
        raise InputError(f"{{param}} names {', '.join(map(repr, missing))}, not a column of the table; columns: "
                         f"{', '.join(map(str, long.columns))}", param="hparams")
    frames, skipped = [], {}
    shots_values = long["shots"].dropna().unique() if long["shots"].notna().any() else [None]
    for shots in sorted(shots_values, key=lambda s: (s is not None and s < 0, s if s is not None else 0)):
        rows = long if shots is None else long[long["shots"] == shots]
        wide = runs_wide(rows, hparams)
        targets = [t for t in ds_tasks if t in wide.columns]
        for h in hparams:
            where = f"hyper-parameter {h}" + ("" if shots is None else f" at shots {shots:g}")
            try:
                out = hyperparam_discrepancy(wide, h, "us", targets)
            except InputError as exc:
                skipped[where] = str(exc).replace("hyperparam_discrepancy: ", "")
                continue
            out["target"] = out["target"].where(out["target"] != "us", "US")
            out.insert(0, "hparam", h)
            out.insert(1, "shots", shots)
            out.insert(2, "crossed", _crossed(wide, h))
            frames.append(out)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return table, skipped


def hparam_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (hyper-parameter, shots) of :func:`hparam_study`'s table: the US optimum, how many DS tasks share
    it, the mean and largest DS accuracy lost by taking the US optimum (and the task losing most), and the
    Spearman correlation over DS tasks between a task's optimum and its US/DS rank correlation (Fig. D.4:
    the paper finds tasks that rank models like US prefer the US-like value)."""
    rows = []
    for (h, shots), g in table.groupby(["hparam", "shots"], sort=False, dropna=False):
        ds = g[g["target"] != "US"]
        if ds.empty or ds["loss_from_us_choice"].isna().all():
            continue   # no DS task has runs at the US optimum: nothing to compare
        worst = ds.loc[ds["loss_from_us_choice"].idxmax()]
        rows.append({"hparam": h, "shots": shots, "crossed": bool(g["crossed"].iloc[0]),
                     "us_best": g["us_best_param"].iloc[0], "n_tasks": int(len(ds)),
                     "n_agree": int(ds["agrees_with_us"].sum()), "mean_loss": float(ds["loss_from_us_choice"].mean()),
                     "max_loss": float(worst["loss_from_us_choice"]), "max_loss_task": str(worst["target"]),
                     "spearman_optimum_vs_rank": spearman(pd.to_numeric(ds["best_param"], errors="coerce"),
                                                          ds["spearman_with_us"])})
    return pd.DataFrame(rows)
