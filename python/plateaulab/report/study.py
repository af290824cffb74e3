"""The study: from an input (table, probe run, or the packaged open_clip table) to a report directory.

The flow is input -> analyses -> artefacts:

1. :func:`~plateaulab.report.inputs.load_study_input` turns the input into (model, DS task, shots, US, DS)
   points, and the per-layer accuracies of probe runs.
2. :func:`analyse` runs, per (DS task, shots), the hull, the fit of eq. (1) on the hull and on all points,
   the bootstrap and the prediction power; then the sample-size sensitivity, parameters against shots,
   Spearman matrices, the hull overlay and the layer profile.
3. :func:`write_report` saves every table as CSV and JSON, every figure as PNG and SVG, ``fits.json``
   (the schema of ``plateaulab fit --json``) and a self-contained ``report.html``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, PlateaulabError
from .inputs import StudyInput, load_study_input

PARAMS = ("k", "alpha", "e_ir", "saturation")
AXIS_SCALES = ("linear", "logit", "neglog1m")
DEFAULT_BOOTSTRAP = 300


@dataclass
class GroupResult:
    """Everything the study computes for one (DS task, shots)."""

    task: str
    shots: float | None
    us: np.ndarray
    ds: np.ndarray
    models: np.ndarray
    hull: np.ndarray
    fit_hull: object                  # PowerLawFit
    fit_all: object | None
    boot: object | None               # BootstrapResult
    power: dict | None
    band: tuple | None = None         # (grid, lo, hi) of the bootstrap band in accuracy units

    @property
    def label(self) -> str:
        return self.task if self.shots is None else f"{self.task} ({_shots_text(self.shots)})"


@dataclass
class StudyResult:
    input: StudyInput
    groups: list[GroupResult]
    params: dict
    sensitivity: pd.DataFrame | None = None
    shots_table: pd.DataFrame | None = None
    spearman: tuple | None = None     # (ds_ds DataFrame, ds_us Series)
    overlay_ref: str | None = None
    layer_table: pd.DataFrame | None = None
    failed: dict = field(default_factory=dict)   # label -> why the analysis failed
    timings: dict = field(default_factory=dict)


def _shots_text(shots) -> str:
    if shots is None or (isinstance(shots, float) and math.isnan(shots)):
        return ""
    s = int(shots) if float(shots).is_integer() else shots
    return "full" if s == -1 else f"{s}-shot"


def _shots_order(shots) -> float:
    """Increasing shot counts, with "full data" (-1) last and no shots first."""
    if shots is None:
        return -1.0
    return float("inf") if shots < 0 else float(shots)


def _norm_shots(s):
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return None
    return float(s)


# --------------------------------------------------------------------------- analyses

def _band(boot, grid: np.ndarray, ci: float = 0.95):
    """Pointwise percentile band of eq. (1) over the bootstrap replicates (accuracy units)."""
    samples = np.asarray(boot.samples, dtype=float)
    if samples.ndim != 2 or samples.shape[0] == 0:
        return None
    ok = np.all(np.isfinite(samples[:, :3]), axis=1)
    if ok.sum() < 10:
        return None
    k, alpha, e_ir = samples[ok, 0:1], samples[ok, 1:2], samples[ok, 2:3]
    e_us = np.clip(1.0 - grid, 0.0, None)[None, :]
    acc = 1.0 - (k * e_us ** alpha + e_ir)
    q = (1.0 - ci) / 2.0
    return grid, np.quantile(acc, q, axis=0), np.quantile(acc, 1.0 - q, axis=0)


def analyse_group(task, shots, g: pd.DataFrame, *, n_boot: int, seed: int, on_all: bool = True) -> GroupResult:
    from ..analysis import bootstrap_fit, fit_saturating_power_law, prediction_power, upper_hull

    us = g["us"].to_numpy(float)
    ds = g["ds"].to_numpy(float)
    hull = np.asarray(upper_hull(us, ds), dtype=int)
    fit_hull = fit_saturating_power_law(us, ds, on="hull", ds=str(task))
    fit_all = fit_saturating_power_law(us, ds, on="all", ds=str(task)) if on_all else None
    boot = bootstrap_fit(us, ds, n_boot=n_boot, on="hull", seed=seed) if n_boot > 0 else None
    power = prediction_power(us, ds, fit=fit_all) if fit_all is not None else None
    r = GroupResult(task=str(task), shots=_norm_shots(shots), us=us, ds=ds,
                    models=g["model"].astype(str).to_numpy(), hull=hull, fit_hull=fit_hull,
                    fit_all=fit_all, boot=boot, power=dict(power) if power is not None else None)
    if boot is not None:
        lo = 0.0 if us.min() < 0.2 else float(us.min())
        lo_pos = max(1e-3, float(us.min()))
        # linear spacing for linear axes, plus points dense near both ends for logit-type axes
        grid = np.unique(np.concatenate([np.linspace(lo, 1.0, 120), np.geomspace(lo_pos, 1.0, 60),
                                         1.0 - np.geomspace(1e-4, 1.0 - lo_pos, 60)]))
        r.band = _band(boot, grid)
    return r


def fit_record(r: GroupResult) -> dict:
    """One entry of fits.json: the schema of ``plateaulab fit --json`` (plus ``shots`` when known)."""
    d = {k: _jsonable(v) for k, v in r.fit_hull.to_dict().items()}
    rec = {"ds": r.task, "on": d.get("on", "hull"), "k": d.get("k"), "alpha": d.get("alpha"),
           "e_ir": d.get("e_ir"), "saturation": d.get("saturation"), "sse": d.get("sse"),
           "n_points": d.get("n_points"), "hull_points": d.get("hull_points"),
           "identified": bool(d.get("identified")), "on_bound": list(d.get("on_bound") or [])}
    for key, value in d.items():
        rec.setdefault(key, value)
    if r.shots is not None:
        rec["shots"] = int(r.shots) if float(r.shots).is_integer() else r.shots
    if r.boot is not None:
        b = {k: _jsonable(v) for k, v in r.boot.to_dict().items()}
        ci = b.pop("ci", None) or {}
        rec["ci"] = {p: [float(v[0]), float(v[1])] for p, v in ci.items()}
        for key, value in b.items():
            if key != "samples":
                rec[key] = value
    return rec


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def flags(r: GroupResult) -> list[str]:
    """Plain warnings about one fit: identification, parameters on bounds, bootstrap failures."""
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


def saturation_text(r: GroupResult) -> str:
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


def summary_sentence(r: GroupResult) -> str:
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


def parameter_table(groups: list[GroupResult]) -> pd.DataFrame:
    rows = []
    for r in groups:
        f = r.fit_hull
        row = {"ds_task": r.task, "shots": r.shots, "n_models": len(r.us), "hull_points": int(f.hull_points),
               "k": f.k, "alpha": f.alpha, "e_ir": f.e_ir, "saturation": f.saturation, "sse": f.sse,
               "identified": bool(f.identified)}
        if r.boot is not None:
            for p in PARAMS:
                lo, hi = r.boot.ci.get(p, (np.nan, np.nan))
                row[f"{p}_lo"], row[f"{p}_hi"] = float(lo), float(hi)
            row["boot_n"], row["boot_failed"] = int(r.boot.n_boot), int(r.boot.n_failed)
            row["boot_on_bound"], row["boot_unidentified"] = int(r.boot.n_on_bound), int(r.boot.n_unidentified)
        if r.fit_all is not None:
            row["saturation_all_points"] = r.fit_all.saturation
            row["alpha_all_points"] = r.fit_all.alpha
        row["best_ds"] = float(np.max(r.ds))
        row["flags"] = "; ".join(flags(r))
        row["summary"] = summary_sentence(r)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df["shots"].isna().all():
        df = df.drop(columns="shots")
    return df


def power_table(groups: list[GroupResult]) -> pd.DataFrame:
    rows = []
    for r in groups:
        if r.power is None:
            continue
        row = {"ds_task": r.task, "shots": r.shots}
        row.update({k: (float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else v)
                    for k, v in r.power.items() if np.isscalar(v)})
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty and df["shots"].isna().all():
        df = df.drop(columns="shots")
    return df


def analyse(inp: StudyInput, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, sensitivity: bool = True,
            sensitivity_trials: int = 10, overlay: str | None = None, progress=None) -> StudyResult:
    t0 = time.perf_counter()
    groups, failed = [], {}
    for (task, shots), g in inp.points.groupby(["ds_task", "shots"], sort=False, dropna=False):
        label = f"{task}" if _norm_shots(shots) is None else f"{task} ({_shots_text(shots)})"
        if len(g) < 3:
            failed[label] = f"only {len(g)} model(s); the fit needs at least 3"
            continue
        try:
            groups.append(analyse_group(task, shots, g, n_boot=n_boot, seed=seed))
        except PlateaulabError as exc:
            failed[label] = str(exc)
        if progress:
            progress(label)
    task_order = {t: i for i, t in enumerate(dict.fromkeys(r.task for r in groups))}
    groups.sort(key=lambda r: (task_order[r.task], _shots_order(r.shots)))
    if not groups:
        raise InputError(f"{inp.source}: no downstream task could be fitted: "
                         + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    res = StudyResult(input=inp, groups=groups, params={"n_boot": n_boot, "seed": seed}, failed=failed)
    res.timings["fits"] = time.perf_counter() - t0

    if sensitivity:
        from ..analysis import sample_size_sensitivity

        t1 = time.perf_counter()
        frames = []
        for r in groups:
            if len(r.us) < 12:
                continue
            try:
                df = sample_size_sensitivity(r.us, r.ds, trials=sensitivity_trials, seed=seed)
            except PlateaulabError as exc:
                res.failed[f"sensitivity of {r.label}"] = str(exc)
                continue
            df = pd.DataFrame(df).copy()
            df.insert(0, "ds_task", r.task)
            df.insert(1, "shots", r.shots)
            frames.append(df)
        if frames:
            res.sensitivity = pd.concat(frames, ignore_index=True)
        res.timings["sensitivity"] = time.perf_counter() - t1

    shots_present = sorted({r.shots for r in groups if r.shots is not None})
    if len(shots_present) >= 2:
        df = pd.DataFrame([{"ds_task": r.task, "shots": r.shots, "k": r.fit_hull.k, "alpha": r.fit_hull.alpha,
                            "e_ir": r.fit_hull.e_ir, "identified": bool(r.fit_hull.identified)}
                           for r in groups if r.shots is not None])
        from ..analysis import params_vs_shots

        try:
            res.shots_table = pd.DataFrame(params_vs_shots(df[["ds_task", "shots", "k", "alpha", "e_ir"]]))
        except PlateaulabError as exc:
            res.failed["parameters vs shots"] = str(exc)
        res.params["shots_long"] = df

    res.spearman = _spearman(inp, res)
    res.overlay_ref = _overlay_reference(inp, res, overlay)
    if inp.layers is not None:
        res.layer_table = _layers(inp, res)
    res.timings["total"] = time.perf_counter() - t0
    return res


def main_shots(points: pd.DataFrame):
    """The shot count used where one is needed (Spearman, layers): the one that covers the most DS tasks,
    and among those the most shots ("full" = -1 counts as the most)."""
    pts = points.dropna(subset=["shots"])
    if pts.empty:
        return None
    cover = pts.groupby("shots")["ds_task"].nunique()
    return max(cover.index, key=lambda s: (cover[s], _shots_order(float(s))))


def _main_shots(inp: StudyInput):
    return main_shots(inp.points)


def _spearman(inp: StudyInput, res: StudyResult):
    """DS x DS and DS x US Spearman matrices over models, at the main shot count."""
    from ..analysis import AccuracyTable, spearman_matrices

    fitted = list(dict.fromkeys(r.task for r in res.groups))
    pts = inp.points[inp.points["ds_task"].isin(fitted)]
    main = _main_shots(inp)
    table = AccuracyTable(long=pts[["model", "ds_task", "ds", "us", "shots"]].reset_index(drop=True),
                          us_name=inp.us_name, ds_tasks=fitted, scale_detected="unit", source=inp.source)
    try:
        ds_ds, ds_us = spearman_matrices(table, shots=main)
    except PlateaulabError as exc:
        res.failed["Spearman matrices (Figures F.20, F.21)"] = str(exc)
        return None
    return pd.DataFrame(ds_ds), pd.Series(ds_us)


def _overlay_reference(inp: StudyInput, res: StudyResult, overlay: str | None) -> str | None:
    tasks = [r.task for r in res.groups]
    if overlay is not None:
        if overlay not in tasks:
            raise InputError(f"--overlay {overlay!r} is not a fitted DS task; fitted tasks: {sorted(set(tasks))}")
        return overlay
    if len(set(tasks)) < 2:
        return None
    if res.spearman is not None:
        ds_us = res.spearman[1].dropna()
        ds_us = ds_us[ds_us.index.isin(tasks)]
        if not ds_us.empty:
            return str(ds_us.idxmax())
    return tasks[0]


def _layers(inp: StudyInput, res: StudyResult) -> pd.DataFrame | None:
    from ..analysis import layer_profile

    lay = inp.layers
    main = _main_shots(inp)
    if main is not None:
        lay = lay[lay["shots"] == main]
    try:
        prof = layer_profile(lay[["checkpoint", "layer_index", "accuracy", "dataset"]].reset_index(drop=True))
    except PlateaulabError as exc:
        res.failed["layer profile"] = str(exc)
        return None
    return pd.DataFrame(prof)


# --------------------------------------------------------------------------- entry point

def run_study(source=None, out_dir="study_report", *, us=None, ds=None, n_boot: int = DEFAULT_BOOTSTRAP,
              seed: int = 0, axis_scale: str = "linear", input_scale: str = "auto", overlay: str | None = None,
              sensitivity: bool = True, sensitivity_trials: int = 10, formats=("png", "svg"),
              loader: str = "auto", layer: str | None = None, progress=None) -> Path:
    """Run the whole study and write ``out_dir`` (report.html, fits.json, figures/, tables/). Returns the
    path of report.html."""
    if axis_scale not in AXIS_SCALES:
        raise InputError(f"axis scale {axis_scale!r} is not one of {', '.join(AXIS_SCALES)}")
    if n_boot < 0:
        raise InputError(f"--bootstrap must be >= 0, got {n_boot}")
    inp = load_study_input(source, us=us, ds=ds, input_scale=input_scale, loader=loader, layer=layer)
    res = analyse(inp, n_boot=n_boot, seed=seed, sensitivity=sensitivity,
                  sensitivity_trials=sensitivity_trials, overlay=overlay, progress=progress)
    res.params["axis_scale"] = axis_scale
    from .writer import write_report

    return write_report(res, Path(out_dir), axis_scale=axis_scale, formats=formats)


def read_fits(report_dir) -> list[dict]:
    with open(Path(report_dir) / "fits.json") as f:
        return json.load(f)["fits"]
