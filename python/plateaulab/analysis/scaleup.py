"""Controlled scale-up (Abnar et al. 2022, Section 3, Fig. 4, F.17, F.18, Table F.3): do models that differ
in one scale axis only (model size, data size, samples seen) lie on the same DS-vs-US curve, and does any
axis tell more about DS accuracy than US accuracy already does?

**What "varying one axis" means.** A grid such as Cherti et al.'s (3 architectures x 3 LAION subsets x 3
sample counts, plus a few runs off the grid) is not a set of three one-dimensional sweeps. For an axis, a
*line* is a set of models whose other axes all have the same levels and whose own levels differ: on the
full grid, nine lines of three models per axis. Every line of an axis is drawn in that axis's panel,
points coloured by the axis's level, so each panel shows every model that belongs to a line of that axis;
models on no line of it (H/14 and g/14, and OpenAI's CLIP-WIT models, on the data-size and samples-seen
panels) are drawn grey. Holding the other two axes at their most common values instead would keep three
models per panel and throw away most of the grid.

**Axes** are read from columns of the long table: a level column names a level (``arch``,
``upstream_dataset``, ``samples_seen_pretty``) and a numeric column orders the levels (``gmacs``, else
``params``; ``data_size``; ``samples_seen``); without a level column the numeric column is its own level.
A level's position is the median of its numeric values (a "13B" run saw 1.28e10 to 1.32e10 samples). A
level without a finite numeric value (OpenAI's CLIP-WIT has no LAION size) is on no line of that axis.
The model axis is ordered by compute per sample (GMACs): B/32 and B/16 have almost the same parameters.

**Same curve, in numbers.** The pooled fit is eq. (1) fitted on all points of the task (the study's
``fit_all``: Table F.3 scores it). If US accuracy carries everything the axes do, the residual
DS - eq.(1)(US) does not depend on the axis: :func:`residual_association` gives the Spearman correlation of
the residual with the axis's value over the models, and a two-sided permutation p-value.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["Axis", "AXES", "ScaleUp", "resolve_axes", "scaleup_lines", "residual_association", "scale_up",
           "pick_tasks", "residual_tests", "MIN_AXES", "SIGNIFICANCE"]

#: a scale-up needs this many axes to hold some fixed while another varies
MIN_AXES = 2
#: models a residual correlation needs
MIN_MODELS = 5
#: the level at which a residual correlation counts as significant (Table F.3's '*', the report's count)
SIGNIFICANCE = 0.05


@dataclasses.dataclass(frozen=True)
class Axis:
    """A scale axis: its name, the column naming a model's level, and the numeric column ordering levels."""

    name: str
    level: str
    value: str
    unit: str = ""


#: the axes looked for, in the order of the figure's panels: (name, level columns, value columns, unit)
AXES = (("model size", ("arch",), ("gmacs", "params"), "GMACs per sample"),
        ("data size", ("upstream_dataset",), ("data_size",), "image-text pairs"),
        ("samples seen", ("samples_seen_pretty",), ("samples_seen",), "samples"))


def _numeric(long: pd.DataFrame, col: str) -> Optional[pd.Series]:
    if col not in long.columns:
        return None
    v = pd.to_numeric(long[col], errors="coerce")
    return v if np.isfinite(v).any() else None


def resolve_axes(long: pd.DataFrame) -> list:
    """The axes of :data:`AXES` that ``long`` has (a numeric column with at least two levels)."""
    out = []
    for name, levels, values, unit in AXES:
        value = next((c for c in values if _numeric(long, c) is not None), None)
        if value is None:
            continue
        level = next((c for c in levels if c in long.columns), value)
        per_model = long.drop_duplicates("model")
        ok = per_model[np.isfinite(pd.to_numeric(per_model[value], errors="coerce"))]
        if ok[level].nunique() >= 2:
            out.append(Axis(name, level, value, unit))
    return out


def _models(long: pd.DataFrame, axes: Sequence[Axis]) -> pd.DataFrame:
    """One row per model: each axis's level (text) and the level's position (median value)."""
    cols = list(dict.fromkeys(c for a in axes for c in (a.level, a.value)))
    m = long.drop_duplicates("model")[["model", *cols]].reset_index(drop=True)
    out = pd.DataFrame({"model": m["model"].astype(str)})
    for a in axes:
        level = m[a.level].astype(str).where(m[a.level].notna(), "")
        value = pd.to_numeric(m[a.value], errors="coerce")
        pos = value.groupby(level).transform("median")
        out[f"{a.name}:level"] = level
        out[f"{a.name}:value"] = pos.where(level != "", np.nan)
    return out


def scaleup_lines(long: pd.DataFrame, axes: Sequence[Axis]) -> pd.DataFrame:
    """Every line of every axis (module docstring): rows axis, line (number within the axis), fixed (the
    other axes' levels, as text), model, level, value; sorted by axis, line and value."""
    models = _models(long, axes)
    rows = []
    for a in axes:
        others = [o for o in axes if o.name != a.name]
        on = models[np.isfinite(models[f"{a.name}:value"])]
        keys = [f"{o.name}:level" for o in others]
        n = 0
        for key, g in on.groupby(keys, sort=True) if keys else [((), on)]:
            if g[f"{a.name}:level"].nunique() < 2:
                continue
            key = key if isinstance(key, tuple) else (key,)
            fixed = ", ".join(f"{o.name} {k}" for o, k in zip(others, key))
            for _, r in g.sort_values([f"{a.name}:value", "model"]).iterrows():
                rows.append({"axis": a.name, "line": n, "fixed": fixed, "model": r["model"],
                             "level": r[f"{a.name}:level"], "value": float(r[f"{a.name}:value"])})
            n += 1
    return pd.DataFrame(rows, columns=["axis", "line", "fixed", "model", "level", "value"])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks of a 1-D array (ties share their mean rank), as scipy.stats.rankdata."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.shape, dtype=float)
    ranks[order] = np.arange(1, x.size + 1, dtype=float)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def residual_association(residual, value, *, n_perm: int = 2000, seed: int = 0) -> dict:
    """Spearman correlation of ``residual`` with ``value`` over the models where both are finite, and its
    two-sided permutation p-value ((1 + #|rho_perm| >= |rho|) / (1 + n_perm)). NaN with fewer than
    MIN_MODELS models or a constant input."""
    r = np.asarray(residual, dtype=float)
    v = np.asarray(value, dtype=float)
    ok = np.isfinite(r) & np.isfinite(v)
    n = int(ok.sum())
    out = {"n_models": n, "spearman": float("nan"), "p_value": float("nan")}
    if n < MIN_MODELS or np.ptp(r[ok]) == 0 or np.ptp(v[ok]) == 0:
        return out
    rx, ry = _ranks(v[ok]), _ranks(r[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    rho = float(rx @ ry / denom)
    perm = np.random.default_rng(seed).permuted(np.tile(ry, (n_perm, 1)), axis=1)
    null = perm @ rx / denom
    out["spearman"] = rho
    out["p_value"] = float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (1 + n_perm))
    return out


@dataclasses.dataclass
class ScaleUp:
    """A6 on one input: its axes, the lines of each, and per group and axis the residual association."""

    axes: list
    lines: pd.DataFrame
    models: pd.DataFrame            # one row per model: '<axis>:level', '<axis>:value'
    residuals: pd.DataFrame         # ds_task, shots, axis, n_models, spearman, p_value
    shown: list                     # group labels drawn in Figure 4 (all of them in F.17)


def pick_tasks(ratios: dict, n: int = 6) -> list:
    """Up to ``n`` group labels spread over the prediction-power ratios (best predicted to worst), so that
    Figure 4 shows the range of behaviours; ``ratios``: {label: ratio}, in the study's order for ties."""
    items = [(k, v) for k, v in ratios.items() if np.isfinite(v)]
    items.sort(key=lambda kv: kv[1])
    if len(items) <= n:
        return [k for k, _ in items]
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))
    return [items[i][0] for i in idx]


def scale_up(long: pd.DataFrame, groups: Sequence, *, seed: int = 0, n_perm: int = 2000) -> ScaleUp:
    """A6 for the study's fitted groups (analysis.study.GroupResult: task, shots, models, us, ds, fit_all).
    Raises InputError naming what the input lacks when fewer than MIN_AXES axes have lines."""
    axes = resolve_axes(long)
    lines = scaleup_lines(long, axes) if len(axes) >= MIN_AXES else pd.DataFrame()
    with_lines = sorted(set(lines["axis"])) if not lines.empty else []
    if len(with_lines) < MIN_AXES:
        found = ", ".join(a.name for a in axes) or "none"
        raise InputError("the input lacks models that differ in one scale axis only, on at least two of model "
                         "size (columns arch with gmacs or params), data size (data_size) and samples seen "
                         f"(samples_seen); axes found: {found}")
    axes = [a for a in axes if a.name in with_lines]
    models = _models(long, axes).set_index("model")
    rows, ratios = [], {}
    for r in groups:
        if r.fit_all is None or not np.isfinite(r.fit_all.k):
            continue
        resid = r.ds - r.fit_all.predict(r.us)
        sd = float(np.std(r.ds))
        ratios[r.label] = float(np.std(resid)) / sd if sd > 0 else float("nan")
        for a in axes:
            value = models[f"{a.name}:value"].reindex([str(m) for m in r.models]).to_numpy(float)
            assoc = residual_association(resid, value, n_perm=n_perm, seed=seed)
            rows.append({"ds_task": r.task, "shots": r.shots, "axis": a.name, **assoc})
    residuals = pd.DataFrame(rows, columns=["ds_task", "shots", "axis", "n_models", "spearman", "p_value"])
    return ScaleUp(axes=axes, lines=lines, models=models.reset_index(), residuals=residuals,
                   shown=pick_tasks(ratios))


def residual_tests(residuals: pd.DataFrame, axes: Sequence[Axis], level: float = SIGNIFICANCE) -> pd.DataFrame:
    """Per axis (in ``axes``' order) of :attr:`ScaleUp.residuals`: how many (task, shots) pairs have a
    p-value (n_pairs), how many are significant at ``level`` (p < level), how many of those correlate
    positively, and how many would be significant by chance if the axis carried no information beyond US
    accuracy (level x n_pairs). Axes with no residual row are left out."""
    rows = []
    for a in axes:
        g = residuals[residuals["axis"] == a.name]
        if g.empty:
            continue
        p, rho = g["p_value"], g["spearman"]
        sig = (p < level) & p.notna()
        n = int(p.notna().sum())
        rows.append({"axis": a.name, "n_pairs": n, "n_significant": int(sig.sum()),
                     "n_significant_positive": int((sig & (rho > 0)).sum()), "expected_by_chance": level * n})
    return pd.DataFrame(rows, columns=["axis", "n_pairs", "n_significant", "n_significant_positive",
                                       "expected_by_chance"])
