"""Hyper-parameters on which US and DS disagree (Abnar et al. 2022, App. C, D; Fig. D.1, D.3, D.4, F.24-F.28):
the value of a chosen hyper-parameter (e.g. head weight decay, learning rate) that is best for each DS task
and for US, and that choice against the rank agreement of US and DS accuracy."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ._rank import spearman

__all__ = ["hyperparam_discrepancy"]


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
