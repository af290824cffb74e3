"""The study's computation: every analysis of the report, on one :class:`~plateaulab.analysis.sources.Source`.

Per (DS task, shots) group (:func:`analyse_group`): the upper hull, eq. (1) fitted on the hull and on all
points, the bootstrap and its pointwise band, and how well US accuracy predicts DS accuracy. Across
groups (:func:`analyse`): the sample-size sensitivity (A4), the parameters against shots (A3), the
Spearman matrices (A8), the reference task of the hull overlay (A7), the controlled scale-up (A6), the layer
profile (A9) and the hyper-parameters on which US and DS disagree (A10), and the derived numbers the report
states or draws (the most influential vertex per task, the mean sensitivity over tasks, the A9 summary per
dataset, Table F.3's ratio range and significance counts). ``StudyResult.absent`` says, for
every analysis the input does not support, what it lacks (analysis.coverage lists all ten).

Nothing here draws or words anything: ``plateaulab.report`` does, from the :class:`StudyResult`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import numpy as np
import pandas as pd

from ..errors import InputError, PlateaulabError
from . import _validate
from .bootstrap import BootstrapResult, bootstrap_fit
from .correlations import spearman_matrices
from .coverage import coverage
from .groups import Group, iter_groups, shots_order
from .hull import upper_hull
from .hyperparams import hparam_study, hparam_summary
from .influence import influence_flag, influence_table, most_influential, vertex_influence
from .layers import layer_profile, layer_summary
from .noise import NoiseResult, noise_bootstrap
from .records import fit_record
from .powerlaw import PowerLawFit, fit_saturating_power_law
from .prediction import prediction_power
from .scaleup import SIGNIFICANCE, ScaleUp, residual_tests, scale_up
from .sensitivity import sample_size_sensitivity
from .shots import params_vs_shots
from .sources import Source
from .accuracy import AccuracyTable

__all__ = ["GroupResult", "StudyResult", "analyse", "analyse_group", "main_shots", "DEFAULT_BOOTSTRAP",
           "MIN_MODELS", "MIN_SENSITIVITY_MODELS", "CI_SOURCES"]

CI_SOURCES = ("noise", "models", "both")

DEFAULT_BOOTSTRAP = 300
#: A group needs this many models for a three-parameter fit.
MIN_MODELS = 3
#: The sensitivity analysis needs enough models below the cut to draw samples of several sizes.
MIN_SENSITIVITY_MODELS = 12
BAND_LEVEL = 0.95


@dataclasses.dataclass
class GroupResult:
    """Everything the study computes for one (DS task, shots)."""

    group: Group
    hull: np.ndarray
    fit_hull: PowerLawFit
    fit_all: Optional[PowerLawFit]
    boot: Optional[BootstrapResult]                 # model bootstrap
    power: Optional[dict]
    noise: Optional[NoiseResult] = None             # measurement-noise bootstrap
    band: Optional[tuple] = None      # (grid, lo, hi) of the primary interval's pointwise band, accuracy units
    influence: Optional[pd.DataFrame] = None        # the saturation without each fitted vertex
    record: dict = dataclasses.field(default_factory=dict)   # the fit record (analysis.records)

    @property
    def flags(self) -> list:
        return list(self.record.get("flags", []))

    @property
    def interval(self) -> Optional[tuple]:
        """(lo, hi) of the saturation's primary interval, or None."""
        ci = self.record.get("ci", {}).get("saturation")
        return None if ci is None or None in ci else (float(ci[0]), float(ci[1]))

    @property
    def ci_source(self) -> Optional[str]:
        return self.record.get("ci_source")

    @property
    def band_excludes_curve(self) -> bool:
        """Whether the fitted curve leaves its own pointwise band somewhere over the data's US range."""
        if self.band is None:
            return False
        grid, lo, hi = self.band
        sel = (grid >= self.us.min()) & (grid <= 1.0)
        curve = self.fit_hull.predict(grid[sel])
        return bool(np.any((curve < lo[sel] - 1e-9) | (curve > hi[sel] + 1e-9)))

    task = property(lambda self: self.group.task)
    shots = property(lambda self: self.group.shots)
    label = property(lambda self: self.group.label)
    us = property(lambda self: self.group.us)
    ds = property(lambda self: self.group.ds)
    models = property(lambda self: self.group.models)


@dataclasses.dataclass
class StudyResult:
    source: Source
    groups: list
    n_boot: int
    seed: int
    skipped: dict = dataclasses.field(default_factory=dict)     # what was not analysed -> why
    sensitivity: Optional[pd.DataFrame] = None
    sensitivity_mean: Optional[pd.DataFrame] = None             # A4: on, n, errors averaged over tasks (Fig. 3)
    influence: Optional[pd.DataFrame] = None                    # every fitted vertex's refit (influence_table)
    influence_top: Optional[pd.DataFrame] = None                # per task, the vertex moving the saturation most
    prediction_summary: Optional[dict] = None                   # Table F.3: ratio range, residual tests (A6)
    shots_long: Optional[pd.DataFrame] = None                   # k, alpha, e_ir per (task, shots)
    shots_table: Optional[pd.DataFrame] = None                  # Tables F.1 / F.2
    spearman: Optional[tuple] = None                            # (ds_ds DataFrame, ds_us Series)
    overlay_ref: Optional[str] = None
    layer_table: Optional[pd.DataFrame] = None
    layer_tol: float = 0.01                                     # A9: "near the best" means within this
    layer_shots: Optional[float] = None                         # A9: the shot count of the layer profile
    layer_summary: Optional[pd.DataFrame] = None                # A9: per dataset, means over checkpoints
    scaleup: Optional[ScaleUp] = None                           # A6
    hparams: Optional[pd.DataFrame] = None                      # A10: analysis.hyperparams.hparam_study
    hparam_summary: Optional[pd.DataFrame] = None               # A10: per (hyper-parameter, shots)
    coverage: Optional[pd.DataFrame] = None                     # A1-A10: in the report, or what the input lacks
    main_shots: Optional[float] = None
    sensitivity_asked: bool = True
    tail: bool = False                                          # the descending tail was fitted too (--tail)
    ci_source: str = "both"                                     # which intervals were asked for (--ci-source)
    absent: dict = dataclasses.field(default_factory=dict)      # analysis id -> what the input lacks
    timings: dict = dataclasses.field(default_factory=dict)

    @property
    def tasks(self) -> list:
        return list(dict.fromkeys(r.task for r in self.groups))

    @property
    def shots(self) -> list:
        return sorted({r.shots for r in self.groups if r.shots is not None}, key=shots_order)


def bootstrap_band(samples, grid: np.ndarray, level: float = BAND_LEVEL, centre=None, us_bayes_error: float = 0.0):
    """Pointwise percentile band of eq. (1) over bootstrap replicates (rows k, alpha, e_ir, ...; accuracy
    units), or None when fewer than 10 replicates succeeded. With ``centre`` (the fitted curve on the grid),
    the band is centred on it as the measurement-noise interval is (analysis.noise): curve + (q - median).
    ``us_bayes_error``: the b the replicates were fitted with (e_US = 1 - us - b), as in PowerLawFit.predict."""
    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or samples.shape[0] == 0:
        return None
    ok = np.all(np.isfinite(samples[:, :3]), axis=1)
    if ok.sum() < 10:
        return None
    k, alpha, e_ir = samples[ok, 0:1], samples[ok, 1:2], samples[ok, 2:3]
    e_us = np.clip(1.0 - grid - us_bayes_error, 0.0, None)[None, :]
    acc = 1.0 - (k * e_us ** alpha + e_ir)
    q = (1.0 - level) / 2.0
    lo, med, hi = np.quantile(acc, [q, 0.5, 1.0 - q], axis=0)
    if centre is not None:
        lo, hi = np.clip(centre - (med - lo), 0.0, 1.0), np.clip(centre + (hi - med), 0.0, 1.0)
    return grid, lo, hi


def band_grid(us: np.ndarray) -> np.ndarray:
    """US accuracies at which the band is evaluated: linear spacing for linear axes, plus points dense
    near both ends for logit-type axes."""
    lo = 0.0 if us.min() < 0.2 else float(us.min())
    lo_pos = max(1e-3, float(us.min()))
    return np.unique(np.concatenate([np.linspace(lo, 1.0, 120), np.geomspace(lo_pos, 1.0, 60),
                                     1.0 - np.geomspace(1e-4, 1.0 - lo_pos, 60)]))


def _sizes(rows: pd.DataFrame, col: str):
    if col not in rows:
        return None
    v = pd.to_numeric(rows[col], errors="coerce").to_numpy(float)
    return v if np.isfinite(v).any() else None


def analyse_group(group: Group, *, n_boot: int, seed: int, on: str = "hull", loss: str = "l2",
                  us_bayes_error: float = 0.0, tail: bool = False, ci_source: str = "both", m: Optional[int] = None,
                  ci: float = 0.95, on_all: bool = True, influence: bool = True,
                  extra: Optional[dict] = None) -> GroupResult:
    """Every per-group analysis (``plateaulab fit`` runs it too): eq. (1) fitted with its profile and flags
    (``on``: the rising hull by default, or every point), the fit on all points, the intervals asked for
    (``ci_source``), the band of the primary one, the influence of each fitted vertex, and the record."""
    if not 0.0 < ci < 1.0:
        raise InputError(f"{{param}} must be in (0, 1); got {ci!r}", param="ci")
    us, ds = group.us, group.ds
    n_ds, n_us = _sizes(group.rows, "n_test"), _sizes(group.rows, "n_test_us")
    opts = dict(on=on, loss=loss, us_bayes_error=us_bayes_error, tail=tail)
    fit = fit_saturating_power_law(us, ds, ds=group.task, n_test=n_ds, n_test_us=n_us, **opts)
    fit_all = (fit_saturating_power_law(us, ds, on="all", loss=loss, us_bayes_error=us_bayes_error, ds=group.task,
                                        profile=False) if on_all else None)
    flags, noise, boot = [], None, None
    if n_boot > 0 and ci_source in ("noise", "both"):
        if n_ds is None or not np.all(np.isfinite(n_ds) & (n_ds > 0)):
            flags.append("no measurement-noise interval: the DS test-set size is unknown (give n_test)")
        else:
            noise = noise_bootstrap(us, ds, n_ds, n_us, n_boot=n_boot, seed=seed, ci=ci, **opts)
    if n_boot > 0 and (ci_source in ("models", "both") or noise is None):
        boot = bootstrap_fit(us, ds, n_boot=n_boot, seed=seed, m=m, ci=ci, **opts)
    power = prediction_power(us, ds, fit=fit_all) if fit_all is not None else None
    r = GroupResult(group=group, hull=np.asarray(upper_hull(us, ds), dtype=int), fit_hull=fit, fit_all=fit_all,
                    boot=boot, power=dict(power) if power is not None else None, noise=noise)
    grid = band_grid(us)
    if noise is not None:
        r.band = bootstrap_band(noise.samples, grid, centre=fit.predict(grid) if fit.success else None,
                                us_bayes_error=us_bayes_error)
    elif boot is not None:
        r.band = bootstrap_band(boot.samples, grid, us_bayes_error=us_bayes_error)
    if influence and on == "hull" and fit.success:
        r.influence = vertex_influence(us, ds, group.models, fit, **opts)
    r.record = fit_record(fit, task=group.task, shots=group.shots, boot=boot, noise=noise, models=group.models,
                          extra=extra)
    sentence = influence_flag(r.influence, fit, r.interval)
    if sentence:
        flags.append(sentence)
    if r.band_excludes_curve:
        flags.append("the fitted curve leaves its own 95% band")
    r.record["flags"] = r.record["flags"] + flags
    return r


def _usable(groups: list, skipped: dict) -> list:
    """The groups a fit can use; the others go to ``skipped`` with the reason."""
    keep = []
    for g in groups:
        if len(g) < MIN_MODELS:
            skipped[g.label] = f"only {len(g)} model(s) with both accuracies; the fit needs at least {MIN_MODELS}"
        elif g.rows["ds"].nunique() < 2:
            skipped[g.label] = f"DS accuracy is constant ({g.rows['ds'].iloc[0]:.4g}) across models"
        elif g.rows["us"].nunique() < 2:
            skipped[g.label] = f"US accuracy is constant ({g.rows['us'].iloc[0]:.4g}) across models"
        else:
            keep.append(g)
    return keep


def analyse(source: Source, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, sensitivity: bool = True,
            sensitivity_trials: int = 10, overlay: Optional[str] = None, ci_source: str = "both",
            tail: bool = False, layer_tol: float = 0.01,
            progress: Optional[Callable[[str, int, int], None]] = None) -> StudyResult:
    """Every analysis of the study. ``progress(label, done, total)`` is called after each group is fitted.

    ci_source: "noise" (measurement noise, where test-set sizes are known; else the model bootstrap,
    flagged), "models" (the model bootstrap) or "both" (both computed; noise is the primary one).
    tail: also fit the descending tail of each hull (default: the rising part only).
    layer_tol: A9's tolerance, in accuracy (0-1): a layer is "as good as the best" within it.
    A run with several layers but too few checkpoints to fit (a single extracted model) still gets its
    layer profile; any other input with no task to fit is an InputError."""
    check_bootstrap(n_boot, len(source.long))
    seed = _validate.seed(seed)
    if ci_source not in CI_SOURCES:
        raise InputError(f"{{param}} {ci_source!r} is not one of {', '.join(CI_SOURCES)}", param="ci_source")
    if not (isinstance(layer_tol, (int, float)) and 0 <= layer_tol < 1):
        raise InputError(f"{{param}} is an accuracy difference in [0, 1); got {layer_tol!r}", param="layer_tol")
    t0 = time.perf_counter()
    skipped = dict(source.skipped)
    for task in source.table.empty_tasks:
        skipped.setdefault(str(task), "no model has both a US and a DS accuracy")
    groups = _usable(iter_groups(source.long, tasks=source.table.ds_tasks), skipped)
    extra = {} if source.layer_rule is None else {"layer": source.layer_rule}
    results = []
    for i, g in enumerate(groups):
        try:
            results.append(analyse_group(g, n_boot=n_boot, seed=seed, ci_source=ci_source, tail=tail, extra=extra))
        except PlateaulabError as exc:
            skipped[g.label] = str(exc)
        if progress:
            progress(g.label, i + 1, len(groups))
    if not results and source.layers is None:
        raise InputError(f"{source.citation}: no downstream task could be fitted: "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    res = StudyResult(source=source, groups=results, n_boot=n_boot, seed=seed, skipped=skipped,
                      layer_tol=float(layer_tol), sensitivity_asked=sensitivity, tail=bool(tail),
                      ci_source=ci_source)
    res.timings["fits"] = time.perf_counter() - t0
    if sensitivity and results:
        t1 = time.perf_counter()
        res.sensitivity = _sensitivity(results, sensitivity_trials, seed, skipped, tail)
        res.sensitivity_mean = sensitivity_mean(res.sensitivity)
        res.timings["sensitivity"] = time.perf_counter() - t1
    res.influence = influence_table(results)
    res.influence_top = most_influential(res.influence)
    _shots_analysis(res)
    res.main_shots = main_shots(source.long[source.long["ds_task"].isin(res.tasks)])
    res.spearman = _spearman(res) if len(res.tasks) >= 2 else None
    res.overlay_ref = _overlay_reference(res, overlay)
    res.scaleup = _scaleup(res)
    res.prediction_summary = prediction_summary(res.groups, res.scaleup)
    if source.layers is not None:
        res.layer_table = _layers(res)
        res.layer_summary = layer_summary(res.layer_table)
    res.hparams = _hparams(res)
    res.hparam_summary = hparam_summary(res.hparams) if res.hparams is not None else None
    res.coverage = coverage(res, min_models=MIN_MODELS, min_sensitivity=MIN_SENSITIVITY_MODELS)
    res.timings["total"] = time.perf_counter() - t0
    return res


#: replicates x models above this many draws are refused up front (a B x n int64 scratch per chunk is
#: small, but the run time is proportional to B n: 1e9 draws take minutes)
MAX_BOOT_DRAWS = 2e9


def check_bootstrap(n_boot: int, n_models: int = 0) -> None:
    """Refuse a replicate count that is negative or whose time or memory can be seen to be out of reach."""
    if n_boot < 0:
        raise InputError(f"{{param}} must be >= 0 (0 turns the bootstrap off); got {n_boot}", param="n_boot")
    if n_boot > 10_000_000 or n_boot * max(n_models, 1) > MAX_BOOT_DRAWS:
        gib = n_boot * 4 * 8 / 2 ** 30
        raise InputError(f"{{param}} = {n_boot} replicates would hold {gib:,.1f} GiB of replicate parameters and "
                         f"draw {n_boot * max(n_models, 1):.2g} models; use at most a few thousand (the study's "
                         f"default is {DEFAULT_BOOTSTRAP})", param="n_boot")


def _sensitivity(results: list, trials: int, seed: int, skipped: dict, tail: bool) -> Optional[pd.DataFrame]:
    frames = []
    for r in results:
        if len(r.us) < MIN_SENSITIVITY_MODELS:
            continue
        try:
            df = sample_size_sensitivity(r.us, r.ds, trials=trials, seed=seed, tail=tail)
        except PlateaulabError as exc:
            skipped[f"sensitivity of {r.label}"] = str(exc)
            continue
        df = pd.DataFrame(df).copy()
        df.insert(0, "ds_task", r.task)
        df.insert(1, "shots", r.shots)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else None


SENSITIVITY_ERRORS = ("fit_error_mean", "pred_error_mean")


def sensitivity_mean(sens: Optional[pd.DataFrame]) -> Optional[pd.DataFrame]:
    """Figure 3's thick lines: per fit mode (``on``) and sample size ``n``, the fitting and prediction errors
    averaged over the (task, shots) groups of the sensitivity table (NaN skipped); sorted by on and n."""
    if sens is None or sens.empty:
        return None
    cols = [c for c in SENSITIVITY_ERRORS if c in sens]
    return sens.groupby(["on", "n"])[cols].mean().reset_index()


def prediction_summary(groups: list, up: Optional[ScaleUp]) -> Optional[dict]:
    """Table F.3 in numbers: over the groups with a prediction power, how many have a ratio and its median,
    min and max; with a scale-up, per axis the residual tests (analysis.scaleup.residual_tests) and their
    totals: pairs tested, significant at SIGNIFICANCE, and the number expected by chance. None without any
    prediction power."""
    powers = [r.power for r in groups if r.power is not None]
    if not powers:
        return None
    ratio = pd.Series([p.get("ratio") for p in powers], dtype=float).dropna()
    out = {"n_tasks": int(len(ratio)), "ratio_median": float(ratio.median()), "ratio_min": float(ratio.min()),
           "ratio_max": float(ratio.max()), "tests": None}
    if up is not None and not up.residuals.empty:
        tests = residual_tests(up.residuals, up.axes)
        n = int(tests["n_pairs"].sum())
        out.update(tests=tests, n_pairs=n, n_significant=int(tests["n_significant"].sum()),
                   expected_by_chance=SIGNIFICANCE * n, level=SIGNIFICANCE)
    return out


def _shots_analysis(res: StudyResult) -> None:
    """Parameters against shots (A3), when the groups have at least two shot counts."""
    if len(res.shots) < 2:
        return
    res.shots_long = pd.DataFrame([{"ds_task": r.task, "shots": r.shots, "k": r.fit_hull.k,
                                    "alpha": r.fit_hull.alpha, "e_ir": r.fit_hull.e_ir,
                                    "identified": bool(r.fit_hull.identified)}
                                   for r in res.groups if r.shots is not None])
    try:
        res.shots_table = pd.DataFrame(params_vs_shots(res.shots_long[["ds_task", "shots", "k", "alpha", "e_ir"]]))
    except PlateaulabError as exc:
        res.skipped["parameters vs shots"] = str(exc)


def main_shots(points: pd.DataFrame):
    """The shot count used where one is needed (Spearman, layers): the one that covers the most DS tasks,
    and among those the most shots ("full" = -1 counts as the most). None when the points have no shots."""
    pts = points.dropna(subset=["shots"])
    if pts.empty:
        return None
    cover = pts.groupby("shots")["ds_task"].nunique()
    return max(cover.index, key=lambda s: (cover[s], shots_order(float(s))))


def _spearman(res: StudyResult):
    """DS x DS and DS x US Spearman matrices over models, at the main shot count (A8)."""
    long = res.source.long
    pts = long[long["ds_task"].isin(res.tasks)]
    table = AccuracyTable(long=pts[["model", "ds_task", "ds", "us", "shots"]].reset_index(drop=True),
                          us_name=res.source.table.us_name, ds_tasks=res.tasks, scale_detected="unit",
                          source=res.source.citation)
    try:
        ds_ds, ds_us = spearman_matrices(table, shots=res.main_shots)
    except PlateaulabError as exc:
        res.skipped["Spearman matrices (Figures F.20, F.21)"] = str(exc)
        return None
    return pd.DataFrame(ds_ds), pd.Series(ds_us)


def _overlay_reference(res: StudyResult, overlay: Optional[str]) -> Optional[str]:
    """The DS task whose hull is drawn over the others (A7): the one asked for, else the task ranked most
    like US, else the first."""
    tasks = res.tasks
    if overlay is not None:
        if overlay not in tasks:
            raise InputError(f"{{param}} {overlay!r} is not a fitted DS task; fitted tasks: {sorted(tasks)}",
                             param="overlay")
        return overlay
    if len(tasks) < 2:
        return None
    if res.spearman is not None:
        ds_us = res.spearman[1].dropna()
        ds_us = ds_us[ds_us.index.isin(tasks)]
        if not ds_us.empty:
            return str(ds_us.idxmax())
    return tasks[0]


def _layers(res: StudyResult) -> Optional[pd.DataFrame]:
    """Few-shot accuracy per layer and the earliest layer within ``layer_tol`` of the best (A9), at the main
    shot count (the layers' own, when no task was fitted)."""
    lay = res.source.layers
    res.layer_shots = res.main_shots
    if res.layer_shots is None and lay["shots"].notna().any():
        res.layer_shots = main_shots(lay.rename(columns={"dataset": "ds_task"}))
    if res.layer_shots is not None:
        lay = lay[lay["shots"] == res.layer_shots]
    try:
        return pd.DataFrame(layer_profile(lay[["checkpoint", "layer_index", "layer", "accuracy", "dataset"]]
                                          .reset_index(drop=True), tol=res.layer_tol))
    except PlateaulabError as exc:
        res.skipped["layer profile"] = str(exc)
        return None


def _scaleup(res: StudyResult) -> Optional[ScaleUp]:
    """The controlled scale-up (A6), when the input has models that differ in one scale axis only."""
    if not res.groups:
        return None
    try:
        return scale_up(res.source.long, res.groups, seed=res.seed)
    except InputError as exc:
        res.absent["A6"] = str(exc)
        return None


def _hparams(res: StudyResult) -> Optional[pd.DataFrame]:
    """The hyper-parameters' optima for DS and for US (A10), for the columns declared with hparams."""
    runs = res.source.hparams
    if runs is None:
        res.absent["A10"] = ("the input lacks declared hyper-parameter columns (--hparams COL[,COL...], e.g. "
                             "lr,epochs for builtin:clip-benchmark)")
        return None
    try:
        table, skipped = hparam_study(runs, res.source.hparam_names, res.tasks)
    except InputError as exc:
        res.absent["A10"] = str(exc)
        return None
    res.skipped.update(skipped)
    if table.empty:
        res.absent["A10"] = "no declared hyper-parameter takes two values in the input"
        return None
    return table
