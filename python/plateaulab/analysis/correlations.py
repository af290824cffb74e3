"""Spearman rank correlation between DS tasks and between each DS task and US over models
(Abnar et al. 2022, Fig. F.20, F.21)."""

from __future__ import annotations

import pandas as pd

from ..errors import InputError
from ._rank import spearman
from .tables import AccuracyTable

__all__ = ["spearman_matrices"]


def spearman_matrices(table: AccuracyTable, shots=None, *, min_periods: int = 3) -> tuple:
    """(ds_ds, ds_us): the DS x DS Spearman matrix (DataFrame) and each DS task's Spearman correlation with
    US (Series), over the models that have both values (pairwise; fewer than ``min_periods`` gives NaN).
    A table with several shots values needs ``shots=``."""
    wide = table.wide()
    if "shots" in wide.columns:
        values = sorted(wide["shots"].dropna().unique().tolist())
        if shots is None and len(values) > 1:
            raise InputError(f"the table has several shots values {values}; pick one with shots=")
        if shots is not None:
            if shots not in values:
                raise InputError(f"no rows with shots={shots!r}; known: {values}")
            wide = wide[wide["shots"] == shots]
    ds = wide[table.ds_tasks].apply(pd.to_numeric)
    tasks = list(table.ds_tasks)
    ds_ds = pd.DataFrame([[spearman(ds[a], ds[b], min_periods) for b in tasks] for a in tasks], index=tasks,
                         columns=tasks)
    us = pd.to_numeric(wide[table.us_name])
    ds_us = pd.Series({t: spearman(ds[t], us, min_periods) for t in tasks},
                      name=f"spearman with {table.us_name}")
    return ds_ds, ds_us
