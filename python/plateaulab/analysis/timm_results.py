"""timm's results folder (huggingface/pytorch-image-models, ``results/``) as an accuracy table.

The folder holds one CSV per test set, ``results-<test set>.csv``, with the columns model, top1, top1_err,
top5, top5_err, param_count, img_size, crop_pct, interpolation (the distribution-shift files add top1_diff,
top5_diff and rank_diff against their base file). top1 and top5 are in percent; param_count is in millions,
written with a thousands separator ("1,014.45"). results-imagenet.csv is ImageNet-1k validation.

How it is read:

* a model is a (model, img_size) pair, id ``"model/img_size"``: timm evaluates some weights at several
  image sizes, and each size is a different point;
* US is results-imagenet.csv's ``top1`` (``us=`` picks another file by its suffix); every other
  results-*.csv is a DS task named after its suffix (results-imagenet-a.csv -> "imagenet-a");
  results-all.csv, an early file of ImageNet results rather than one test set, is skipped, with a note;
* accuracies are percent, as timm writes them (``scale="auto"`` means that here; NAME=SCALE overrides one
  file);
* a model missing from the US file has no US accuracy: its rows are dropped and counted (``nan="drop"``);
* rows carry ``n_test`` / ``n_test_us``, the documented test-set sizes (analysis.test_sizes; the "-clean"
  files are ImageNet validation on the 200 classes of ImageNet-A or -R: 200 x 50 = 10,000 images;
  ImageNet-ReaL's count of labelled images is left unknown), for the measurement-noise interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..errors import InputError
from .accuracy import AccuracyTable
from .tables import _as_list, _try_match, match_name, match_names, parse_scale, read_frame, load_table

__all__ = ["load_timm_results", "is_timm_results", "timm_folder", "TIMM_US", "TIMM_CITATION"]

PREFIX = "results-"
TIMM_US = "imagenet"
METRICS = ("top1", "top5")
#: files of the folder that are not one test set
SKIPPED = {"all": "an early file of ImageNet results, not one test set"}
TIMM_CITATION = ("huggingface/pytorch-image-models, results/results-*.csv (Apache-2.0 licence): accuracy of timm's "
                 "pretrained models on ImageNet-1k validation and on the test sets of the other files")
#: test set -> name in plateaulab/data/test_set_sizes.csv
_DOCUMENTED = {"imagenet": "ImageNet 1k", "imagenetv2-matched-frequency": "ImageNet v2", "sketch": "ImageNet Sketch",
               "imagenet-a": "ImageNet-A", "imagenet-r": "ImageNet-R"}
#: ImageNet validation restricted to the 200 classes of ImageNet-A / -R: 50 images per class
_COUNTED = {"imagenet-a-clean": 10000, "imagenet-r-clean": 10000}
_KEPT = ("param_count", "crop_pct", "interpolation")


def _files(folder: Path) -> dict:
    return {p.name[len(PREFIX):-len(".csv")]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().startswith(PREFIX) and p.name.lower().endswith(".csv")
            and len(p.name) > len(PREFIX) + len(".csv")}


def is_timm_results(path) -> bool:
    """Whether ``path`` is a folder holding results-*.csv files."""
    path = Path(path)
    return path.is_dir() and bool(_files(path))


def timm_folder(path) -> Path:
    """The results folder that ``path`` names: itself, or the folder of a results-*.csv file."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.is_file() and path.name.lower().startswith(PREFIX) and path.suffix.lower() == ".csv":
        return path.parent
    raise InputError(f"{path} is neither a timm results folder nor one of its results-*.csv files")


def _size(task: str) -> float:
    from .test_sizes import documented_size

    if task in _COUNTED:
        return float(_COUNTED[task])
    return documented_size(_DOCUMENTED[task]) if task in _DOCUMENTED else np.nan


def load_timm_results(path, *, us: Optional[str] = None, ds=None, metric: str = "top1", scale="auto",
                      duplicates: str = "error", nan: str = "drop") -> AccuracyTable:
    """timm's results folder (or one of its results-*.csv files, which names the folder), by the rules of the
    module docstring. us, ds: test sets by file suffix (case-insensitive); metric: "top1" or "top5"."""
    folder = timm_folder(path)
    files = _files(folder)
    if not files:
        raise InputError(f"{folder} holds no results-*.csv file; point at timm's results folder")
    if metric not in METRICS:
        raise InputError(f"{{param}} must be one of {', '.join(METRICS)}; got {metric!r}", param="metric")
    notes = [f"{files[k].name} is skipped: {why}." for k, why in SKIPPED.items() if k in files]
    tasks = [t for t in files if t not in SKIPPED]
    where = f"timm results folder {folder}"
    us_task = match_name(us or TIMM_US, tasks, what="test set", where=where, param="us", label="US test set")
    others = [t for t in tasks if t != us_task]
    ds_tasks = (match_names(_as_list(ds), others, what="test set", where=where, param="ds", label="DS test set(s)")
                if ds is not None else others)
    if not ds_tasks:
        raise InputError(f"{where} holds only {files[us_task].name}: a DS task needs another results-*.csv "
                         "file (results-imagenet-a.csv, results-sketch.csv, ...)")
    default, overrides = parse_scale(scale)
    assumed = default == "auto"          # percent because timm writes percent, not because it was given
    default = "percent" if default == "auto" else default
    wanted = [us_task, *ds_tasks]
    per_file = {t: default for t in wanted}
    given = set()
    for key, val in overrides.items():
        hit = _try_match(key, wanted, what="test set", where=where, param="scale")
        if hit is None:
            match_name(key, wanted, what="test set", where=where, param="scale", label="test set")
        per_file[hit] = default if val == "auto" else val
        if val != "auto":
            given.add(hit)
    parts = []
    for task in wanted:
        df, name = read_frame(files[task], "csv")
        cols = {str(c).strip().lower(): c for c in df.columns}
        missing = [c for c in ("model", "img_size", metric) if c not in cols]
        if missing:
            raise InputError(f"{name} does not look like a timm results file: it lacks column(s) "
                             f"{', '.join(missing)} (it has {', '.join(map(str, df.columns))})")
        if df.empty:
            raise InputError(f"{name} holds no rows (only a header); remove it or fill it with timm's results")
        for c in ("model", "img_size"):
            empty = df[cols[c]].isna() | (df[cols[c]].astype(str).str.strip() == "")
            if empty.any():
                lines = ", ".join(str(i + 2) for i in np.flatnonzero(empty.to_numpy())[:5])
                raise InputError(f"{name}: column {c!r} is empty on {int(empty.sum())} line(s) (line {lines}); a "
                                 "model is a (model, img_size) pair: fill them or drop those lines")
        values = pd.to_numeric(df[cols[metric]], errors="coerce")
        if (assumed and task not in given and per_file[task] == "percent" and values.notna().any()
                and values.max() <= 1.0 and values.max() > 0):
            raise InputError(f"{name}: every {metric} value is at most 1 (largest {values.max():g}); timm writes "
                             f"percent, so these read as accuracies below 1%. If the file holds fractions, say so "
                             f"with {{param}}='{task}=unit'", param="scale")
        part = pd.DataFrame({"model": df[cols["model"]], "img_size": df[cols["img_size"]], "test_set": task,
                             metric: df[cols[metric]]})
        for c in _KEPT:
            if c in cols:
                v = df[cols[c]]
                if c == "param_count" and not pd.api.types.is_numeric_dtype(v):
                    v = pd.to_numeric(v.astype("string").str.replace(",", "", regex=False), errors="coerce")
                part[c] = v
        part["n_test"] = _size(task)
        part["n_test_us"] = _size(us_task)
        parts.append(part)
    long = pd.concat(parts, ignore_index=True)
    keep = [c for c in (*_KEPT, "n_test", "n_test_us") if c in long.columns]
    try:
        table = load_table(long, id=["model", "img_size"], us=us_task, dataset_col="test_set", acc_col=metric,
                           layout="long", scale=per_file, duplicates=duplicates, nan=nan, keep=keep)
    except InputError as exc:   # the files were joined into one frame: name the folder, not "<DataFrame>"
        raise InputError(exc.template.replace("<DataFrame>", where), param=exc.param) from None
    table.source = str(folder)
    table.notes = [f"timm results folder: US is {files[us_task].name} ({metric}); DS are "
                   f"{', '.join(files[t].name for t in ds_tasks)}; a model is a (model, img_size) pair."] \
        + notes + table.notes
    return table
