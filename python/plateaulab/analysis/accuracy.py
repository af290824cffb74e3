"""The tidy accuracy table every analysis reads: one row per (model, DS task[, shots]) with both accuracies
on the 0-1 scale. Loaders (``tables``, ``runs``, ``sources``) build it; the analyses only read it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..errors import InputError
from .names import match_name

__all__ = ["AccuracyTable"]


@dataclasses.dataclass
class AccuracyTable:
    """A loaded accuracy table. ``long`` has columns model, ds_task, ds, us, shots (+ kept columns).

    How the table was read (docs/ANALYSIS.md, "Reading tables"): ``scales`` holds, per US and DS name, the
    scale its values were written on ("unit" for 0-1, "percent" for 0-100; all are 0-1 in ``long``) and
    ``scale_basis`` why ("values", "written with %", "given", or no evidence); ``scale_detected`` is their
    common scale, or "mixed" when columns differ. ``id_columns`` made the model ids; ``duplicates`` is the
    policy for repeated ids, ``n_duplicate_rows`` the rows it merged or dropped and ``duplicate_ids`` the ids
    concerned. ``notes`` are sentences a report should show.
    """

    long: pd.DataFrame
    us_name: str
    ds_tasks: list
    scale_detected: str
    n_dropped_nan: int = 0
    source: str = ""
    #: DS tasks asked for (or found) that have no row with both accuracies
    empty_tasks: list = dataclasses.field(default_factory=list)
    scales: dict = dataclasses.field(default_factory=dict)
    scale_basis: dict = dataclasses.field(default_factory=dict)
    id_columns: list = dataclasses.field(default_factory=list)
    duplicates: str = "error"
    n_duplicate_rows: int = 0
    duplicate_ids: list = dataclasses.field(default_factory=list)
    layout: str = ""                             # "wide" or "long" as load_table read it; "" for other loaders
    notes: list = dataclasses.field(default_factory=list)

    def wide(self) -> pd.DataFrame:
        """One row per model (and shots, when the table has shots): the US column, then one per DS task."""
        keys = ["model"] + (["shots"] if self.long["shots"].notna().any() else [])
        dup = self.long.duplicated(keys + ["ds_task"])
        if dup.any():
            r = self.long.loc[dup].iloc[0]
            raise InputError(f"{self.source or 'the table'} has several rows per ({', '.join(keys)}, ds_task), e.g. "
                             f"model {r['model']!r}, DS {r['ds_task']!r} (hyper-parameter runs, seeds?); filter or "
                             "aggregate them before asking for a wide table")
        ds = self.long.pivot_table(index=keys, columns="ds_task", values="ds", aggfunc="first", sort=False)
        us = self.long.groupby(keys, sort=False)["us"].first().rename(self.us_name)
        out = pd.concat([us, ds.reindex(columns=self.ds_tasks)], axis=1).reset_index()
        out.columns.name = None
        return out

    def pair(self, ds_task: str, shots=None) -> tuple[np.ndarray, np.ndarray]:
        """(us, ds) accuracy arrays of one DS task (and one shots value when the table has several)."""
        if ds_task not in self.ds_tasks:
            ds_task = match_name(ds_task, self.ds_tasks, what="DS task", where=self.source or "the table",
                                 param="ds_task", label="DS task")
        rows = self.long[self.long["ds_task"] == ds_task]
        shot_values = rows["shots"].dropna().unique()
        if shots is None and shot_values.size > 1:
            raise InputError(f"DS task {ds_task!r} has several shots values {sorted(shot_values.tolist())}; "
                             "pick one with shots=")
        if shots is not None:
            rows = rows[rows["shots"] == shots]
            if rows.empty:
                raise InputError(f"DS task {ds_task!r} has no rows with shots={shots!r}; known: "
                                 f"{sorted(shot_values.tolist())}")
        return rows["us"].to_numpy(np.float64), rows["ds"].to_numpy(np.float64)
