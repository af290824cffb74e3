"""The point sets the analyses run on: one per (DS task, shots) of an accuracy table.

``fit``, ``sensitivity`` and ``study`` all loop over the same groups, built here, in the same order:
DS tasks in the table's order, and within a task the shot counts in increasing order with "full data"
(CLIP_benchmark's shots = -1) last. A table without shots has one group per task (``shots`` None).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["Group", "iter_groups", "shots_order", "shots_text", "norm_shots"]


def norm_shots(shots) -> Optional[float]:
    """A shots value as a float, or None for "no shots" (NaN, None)."""
    if shots is None or (isinstance(shots, float) and math.isnan(shots)):
        return None
    return float(shots)


def shots_order(shots) -> float:
    """Sort key: no shots first, then increasing shot counts, "full data" (-1) last."""
    shots = norm_shots(shots)
    if shots is None:
        return -1.0
    return float("inf") if shots < 0 else shots


def shots_text(shots) -> str:
    """'5-shot', 'full' (shots = -1) or '' (no shots)."""
    shots = norm_shots(shots)
    if shots is None:
        return ""
    s = int(shots) if shots.is_integer() else shots
    return "full" if s == -1 else f"{s}-shot"


@dataclasses.dataclass
class Group:
    """The models of one (DS task, shots): their US and DS accuracies and the rest of their rows."""

    task: str
    shots: Optional[float]
    rows: pd.DataFrame

    @property
    def us(self) -> np.ndarray:
        return self.rows["us"].to_numpy(np.float64)

    @property
    def ds(self) -> np.ndarray:
        return self.rows["ds"].to_numpy(np.float64)

    @property
    def models(self) -> np.ndarray:
        return self.rows["model"].astype(str).to_numpy()

    @property
    def label(self) -> str:
        """'CIFAR-100' or 'CIFAR-100 (5-shot)': how messages, tables and figures name the group."""
        return self.task if self.shots is None else f"{self.task} ({shots_text(self.shots)})"

    def __len__(self) -> int:
        return len(self.rows)


def iter_groups(long: pd.DataFrame, *, tasks: Optional[Sequence[str]] = None, shots=None) -> list[Group]:
    """The (DS task, shots) groups of a long accuracy table (columns model, ds_task, us, ds, shots).

    tasks: the DS tasks, in order (default: the table's order). shots: keep only this shots value; a task
    without rows at that value is an error naming the values it has.
    """
    order = list(tasks) if tasks is not None else list(dict.fromkeys(long["ds_task"]))
    groups = []
    for task in order:
        rows = long[long["ds_task"] == task]
        values = sorted({v for v in (norm_shots(s) for s in rows["shots"]) if v is not None}, key=shots_order)
        if shots is not None:
            if float(shots) not in values:
                raise InputError(f"DS task {task!r} has no rows with {{param}}={float(shots):g}; it has "
                                 f"{', '.join(f'{v:g}' for v in values) or 'no shots column'}", param="shots")
            values = [float(shots)]
        for value in values or [None]:
            sub = rows if value is None else rows[rows["shots"] == value]
            groups.append(Group(task=str(task), shots=value, rows=sub.reset_index(drop=True)))
    return groups
