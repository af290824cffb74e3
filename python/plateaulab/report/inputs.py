"""What a study reads: an accuracy table, a probe run directory, or the packaged open_clip table.

Every input becomes one :class:`StudyInput`: a tidy table of (model, ds_task, shots, us, ds) points on
the 0-1 scale, plus, for probe runs, the accuracy of every layer (for the Figure-6 plots) and the list
of tasks that could not be used and why. Errors that make the whole input unusable raise
:class:`~plateaulab.errors.InputError`; problems confined to some tasks are recorded and the study
goes on with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, PlateaulabError

OPENCLIP_SOURCE = ("mlfoundations/open_clip, docs/openclip_results.csv, commit 29b90b8d (MIT licence): "
                   "zero-shot accuracies of 121 CLIP models on 38 evaluations")
CLIP_BENCHMARK_SOURCE = ("LAION-AI/CLIP_benchmark, probe_benchmark/scaling_experiment_data2.json, commit b759cf60 (MIT "
                         "licence): linear probes of 12 CLIP models, best learning rate and epochs per setting")
MODEL_SOUPS_SOURCE = ("mlfoundations/model-soups, individual_model_results.jsonl, commit 3bb0f409 (MIT licence): 72 "
                      "fine-tuned CLIP ViT-B/32 models")
#: Public tables recognised by file name, read with their own loader (plateaulab.analysis).
LOADERS = {"openclip_results.csv": "openclip", "scaling_experiment_data2.json": "clip_benchmark",
           "individual_model_results.jsonl": "model_soups"}
LOADER_CHOICES = ("auto", "table", "openclip", "clip_benchmark", "model_soups")
RUN_FILES = ("results.parquet", "checkpoints.parquet", "manifest.json")
DEFAULT_RUN_US = "upstream_accuracy"


@dataclass
class StudyInput:
    """Points of a study, one row per (model, DS task, shots): columns model, ds_task, shots, us, ds."""

    points: pd.DataFrame
    us_name: str
    source: str
    kind: str                                   # "openclip", "table" or "run"
    layers: pd.DataFrame | None = None          # run inputs: checkpoint, dataset, shots, layer, layer_index, accuracy, us
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # DS task -> why it is not in the study
    planted: dict | None = None                 # synthetic stores: the values planted by construction

    @property
    def ds_tasks(self) -> list[str]:
        return list(dict.fromkeys(self.points["ds_task"]))

    @property
    def shots(self) -> list:
        return sorted(self.points["shots"].dropna().unique().tolist())


def _split_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    else:
        items = [str(v).strip() for v in value]
    items = [v for v in items if v]
    return items or None


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in RUN_FILES)


def load_study_input(source=None, *, us: str | None = None, ds=None, input_scale: str = "auto",
                     min_points: int = 3, loader: str = "auto", layer: str | None = None) -> StudyInput:
    """Read ``source`` (None: the packaged open_clip table; a directory: a probe run; else a table).

    ``loader``: "auto" reads the published tables (open_clip, CLIP_benchmark, model soups)
    with their own loaders when the file keeps its published name, and any other file with load_table;
    the other choices force one reader. ``layer`` (probe runs): the layer of the main figures, by name;
    None or "last" takes each checkpoint's deepest layer."""
    if loader not in LOADER_CHOICES:
        raise InputError(f"loader {loader!r} is not one of {', '.join(LOADER_CHOICES)}")
    ds_list = _split_list(ds)
    if source is None:
        inp = _from_table(None, us=us, ds=ds_list, input_scale=input_scale, loader="openclip")
    else:
        path = Path(source)
        if path.is_dir():
            if not is_run_dir(path):
                raise InputError(
                    f"{path} is a directory but not a probe run: it has none of {', '.join(RUN_FILES)}; "
                    "pass a run directory written by `plateaulab probe` or an accuracy table file")
            inp = _from_run(path, us=us or DEFAULT_RUN_US, ds=ds_list, layer=layer)
        elif not path.exists():
            raise InputError(f"study input {path} does not exist; pass a probe run directory or an accuracy table")
        else:
            if layer not in (None, "last"):
                raise InputError(f"--layer applies to probe run directories, not to the table {path}")
            if loader == "auto":
                loader = LOADERS.get(path.name, "table")
            inp = _from_table(path, us=us, ds=ds_list, input_scale=input_scale, loader=loader)
    _drop_thin_tasks(inp, min_points)
    if inp.points.empty:
        reasons = "; ".join(f"{t}: {r}" for t, r in inp.skipped.items()) or "no rows"
        raise InputError(f"{inp.source}: no downstream task can be analysed ({reasons})")
    return inp


# --------------------------------------------------------------------------- tables

def _from_table(path, *, us, ds, input_scale, loader) -> StudyInput:
    from .. import analysis

    where = "the packaged open_clip table" if path is None else str(path)
    try:
        skipped: dict = {}
        if loader == "table":
            table = _load_generic(path, us=us, ds=ds, input_scale=input_scale, skipped=skipped)
            kind, source = "table", str(path)
        else:
            read = {"openclip": analysis.load_openclip, "clip_benchmark": analysis.load_clip_benchmark,
                    "model_soups": analysis.load_model_soups}[loader]
            table = read(path, scale=input_scale)
            kind = "openclip" if loader == "openclip" else "table"
            source = {"openclip": OPENCLIP_SOURCE, "clip_benchmark": CLIP_BENCHMARK_SOURCE,
                      "model_soups": MODEL_SOUPS_SOURCE}[loader]
            if path is not None:
                source += f" (read from {path})"
            if us is not None and us != table.us_name:
                raise InputError(f"{where} is read with the {loader} loader, whose US column is "
                                 f"{table.us_name!r}; --us {us!r} does not apply (pass --loader table to map "
                                 "columns yourself)")
    except InputError:
        raise
    except PlateaulabError as exc:
        raise InputError(str(exc)) from None
    except (KeyError, ValueError, OSError) as exc:
        raise InputError(f"{where}: {exc}") from None
    long = table.long.copy()
    if "shots" not in long.columns:
        long["shots"] = np.nan
    points = long[["model", "ds_task", "shots", "us", "ds"]].copy()
    if ds is not None and loader != "table":
        unknown = [d for d in ds if d not in set(points["ds_task"])]
        if unknown:
            raise InputError(f"--ds names {unknown} not in {where}; known: {sorted(set(points['ds_task']))}")
        points = points[points["ds_task"].isin(ds)]
    points["shots"] = pd.to_numeric(points["shots"], errors="coerce")
    inp = StudyInput(points=points.reset_index(drop=True), us_name=str(table.us_name), source=source, kind=kind,
                     skipped=skipped)
    for name in ds or []:
        if name not in set(points["ds_task"]) and name not in skipped:
            inp.skipped[name] = "no model has both a US and a DS accuracy"
    if loader == "openclip":
        inp.notes.append("For these CLIP models ImageNet is not the pre-training task: as in Kornblith et al. (2019) "
                         "and Figure 5 of Abnar et al. (2022), ImageNet 1k zero-shot accuracy plays the upstream role. "
                         "Accuracies are zero-shot, not few-shot.")
    return inp


def _load_generic(path, *, us, ds, input_scale, skipped: dict):
    """load_table on the whole table; if it refuses a wide table because of some DS columns (constant,
    out of range, empty), load every DS column on its own, record why the bad ones fail, and go on with
    the others, so that the report covers what it can."""
    from .. import analysis
    from ..analysis.tables import read_frame

    kwargs = {"scale": input_scale}
    if us is not None:
        kwargs["us"] = us
    if ds is not None:
        kwargs["ds"] = ds
    try:
        return analysis.load_table(path, **kwargs)
    except InputError as whole:
        if us is None:
            raise
        df, _ = read_frame(path, None)
        long_layout = any(c in df.columns for c in ("ds_task", "dataset"))
        if us not in df.columns or long_layout:
            raise whole from None
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
        shots = [c for c in ("shots",) if c in df.columns]
        ids = [c for c in df.columns if c not in numeric and c not in shots]
        candidates = ds if ds is not None else [c for c in numeric if c not in (us, *shots)]
        if any(c not in df.columns for c in candidates):
            raise whole from None
        good = []
        for c in candidates:
            try:
                analysis.load_table(df[ids + shots + [us, c]], us=us, ds=[c], scale=input_scale)
                good.append(c)
            except InputError as exc:
                skipped[str(c)] = str(exc).replace("<DataFrame>", str(path))
        if not good or not skipped:
            raise whole from None
        return analysis.load_table(df[ids + shots + [us, *good]], us=us, ds=good, scale=input_scale)


# --------------------------------------------------------------------------- probe runs

def _from_run(path: Path, *, us: str, ds, layer: str | None = None) -> StudyInput:
    missing = [f for f in RUN_FILES if not (path / f).exists()]
    if missing:
        raise InputError(
            f"probe run {path} is missing {', '.join(missing)}; a run directory written by `plateaulab probe` "
            f"holds {', '.join(RUN_FILES)}. Re-run (or finish) the probe into this directory")
    try:
        from ..run import load_run
        results, ckpts, manifest = load_run(path)
    except PlateaulabError as exc:
        raise InputError(f"probe run {path}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"probe run {path}: cannot read it ({exc})") from None
    results = pd.DataFrame(results)
    ckpts = pd.DataFrame(ckpts)
    need = {"checkpoint", "dataset", "shots", "accuracy", "layer", "layer_index"}
    lacking = need - set(results.columns)
    if lacking:
        raise InputError(f"probe run {path}: results.parquet lacks columns {sorted(lacking)}")
    if "checkpoint" not in ckpts.columns:
        raise InputError(f"probe run {path}: checkpoints.parquet has no 'checkpoint' column")
    if us not in ckpts.columns:
        numeric = [c for c in ckpts.columns if c != "checkpoint" and pd.api.types.is_numeric_dtype(ckpts[c])]
        raise InputError(
            f"probe run {path}: checkpoint metadata has no column {us!r} for upstream accuracy "
            f"(numeric columns: {numeric or 'none'}); store it with FeatureStore.set_checkpoint_meta "
            "or name another column with --us")
    notes = []
    if not manifest.get("complete", False):
        notes.append(f"The run's manifest.json does not mark the run complete: results are partial "
                     f"({len(results)} probe rows).")
    if results.empty:
        raise InputError(f"probe run {path}: results.parquet holds no rows; run `plateaulab probe` to completion")
    if "selected" in results.columns:
        results = results[results["selected"].astype(bool)]
    us_vals = pd.to_numeric(ckpts[us], errors="coerce")
    if us_vals.notna().sum() == 0:
        raise InputError(f"probe run {path}: metadata column {us!r} holds no numeric values")
    if us_vals.max() > 1.0 + 1e-9:
        if us_vals.max() <= 100.0:
            us_vals = us_vals / 100.0
            notes.append(f"Upstream column {us!r} looked like percent and was divided by 100.")
        else:
            raise InputError(f"probe run {path}: upstream column {us!r} has values above 100 ({us_vals.max():g})")
    us_map = pd.Series(us_vals.to_numpy(), index=ckpts["checkpoint"].astype(str))
    no_us = sorted(us_map.index[us_map.isna()])
    if no_us:
        notes.append(f"{len(no_us)} checkpoint(s) have no {us!r} and are left out: {', '.join(no_us[:10])}"
                     + (" ..." if len(no_us) > 10 else ""))
    results = results.copy()
    results["checkpoint"] = results["checkpoint"].astype(str)
    unknown = sorted(set(results["checkpoint"]) - set(us_map.index))
    if unknown:
        notes.append(f"{len(unknown)} checkpoint(s) in results.parquet are missing from checkpoints.parquet "
                     f"and are left out: {', '.join(unknown[:10])}")
    results["us"] = results["checkpoint"].map(us_map)
    results = results[results["us"].notna()]
    if ds is not None:
        unknown_ds = [d for d in ds if d not in set(results["dataset"])]
        if unknown_ds:
            raise InputError(f"probe run {path}: --ds names {unknown_ds}, not in the run "
                             f"(datasets: {sorted(set(results['dataset']))})")
        results = results[results["dataset"].isin(ds)]
    # Mean over seeds of the accuracy at the selected l2, per checkpoint, dataset, shots and layer.
    layers = (results.groupby(["checkpoint", "dataset", "shots", "layer", "layer_index"], as_index=False)
              .agg(accuracy=("accuracy", "mean"), us=("us", "first"), seeds=("accuracy", "size")))
    if layer in (None, "last"):
        # Main figures use each checkpoint's last layer (highest layer_index) for that dataset.
        last = layers.loc[layers.groupby(["checkpoint", "dataset", "shots"])["layer_index"].idxmax()]
    else:
        last = layers[layers["layer"].astype(str) == str(layer)]
        if last.empty:
            raise InputError(f"probe run {path}: no layer named {layer!r} (layers: "
                             f"{sorted(set(layers['layer'].astype(str)))}); pass --layer last or one of those")
        lacking = sorted(set(layers["checkpoint"]) - set(last["checkpoint"]))
        if lacking:
            notes.append(f"{len(lacking)} checkpoint(s) have no layer {layer!r} and are left out of the main "
                         f"figures: {', '.join(lacking[:10])}" + (" ..." if len(lacking) > 10 else ""))
        notes.append(f"Main figures use layer {layer!r} (--layer).")
    points = pd.DataFrame({"model": last["checkpoint"], "ds_task": last["dataset"], "shots": last["shots"],
                           "us": last["us"], "ds": last["accuracy"]}).reset_index(drop=True)
    inp = StudyInput(points=points, us_name=us, source=str(path), kind="run",
                     layers=layers if layers["layer_index"].nunique() > 1 else None, notes=notes)
    planted = manifest.get("planted") if isinstance(manifest, dict) else None
    inp.planted = planted or _planted_from_store(manifest)
    return inp


def _planted_from_store(manifest: dict) -> dict | None:
    """Synthetic stores record their planted saturations; find them through the run's store path."""
    import json

    cfg = manifest.get("config", {}) if isinstance(manifest, dict) else {}
    store = cfg.get("store") or manifest.get("store") if isinstance(manifest, dict) else None
    if not store:
        return None
    f = Path(store) / "synth.json"
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def _drop_thin_tasks(inp: StudyInput, min_points: int) -> None:
    """Leave out (and name) the tasks a three-parameter fit cannot use."""
    pts = inp.points.dropna(subset=["us", "ds"])
    n_dropped = len(inp.points) - len(pts)
    if n_dropped:
        inp.notes.append(f"{n_dropped} point(s) with a missing US or DS accuracy were left out.")
    keep = []
    for task, g in pts.groupby("ds_task", sort=False):
        counts = g.groupby("shots", dropna=False).size()
        if counts.max() < min_points:
            inp.skipped[str(task)] = (f"only {int(counts.max())} model(s) with both accuracies; "
                                      f"the fit needs at least {min_points}")
        elif g["ds"].nunique() < 2:
            inp.skipped[str(task)] = f"DS accuracy is constant ({g['ds'].iloc[0]:.4g}) across models"
        else:
            keep.append(task)
    all_tasks = list(dict.fromkeys(inp.points["ds_task"]))
    for task in all_tasks:
        if task not in keep and str(task) not in inp.skipped:
            inp.skipped[str(task)] = "no model has both a US and a DS accuracy"
    inp.points = pts[pts["ds_task"].isin(keep)].reset_index(drop=True)
