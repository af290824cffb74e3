"""Accuracy tables: tidy input for the analysis, from a DataFrame, Parquet, CSV, JSON/JSONL or a probe run
directory, wide (one column per dataset) or long (one row per model x dataset [x shots]).

After loading, every accuracy is on the 0-1 scale and the long table has the columns
``model, ds_task, ds, us, shots`` (shots NaN when the source has none) plus any other kept columns.
Loaders for the published tables shipped in the package (see python/plateaulab/data/PROVENANCE.md) sit at the end.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from .accuracy import AccuracyTable

__all__ = ["AccuracyTable", "load_table", "load_openclip", "load_clip_benchmark", "load_model_soups",
           "OPENCLIP_US", "OPENCLIP_NOT_CLASSIFICATION"]

MODEL_CANDIDATES = ("model", "checkpoint", "model_name", "name")
DATASET_CANDIDATES = ("ds_task", "dataset")
ACC_CANDIDATES = ("ds", "accuracy", "acc")
SHOTS_CANDIDATES = ("shots",)


def describe_source(source) -> str:
    """How messages name a table: its path, or <DataFrame>."""
    return "<DataFrame>" if isinstance(source, pd.DataFrame) else str(source)


def read_frame(source, fmt: Optional[str] = None) -> tuple[pd.DataFrame, str]:
    """The raw DataFrame of a table file, DataFrame or probe run directory, and a name for messages."""
    if isinstance(source, pd.DataFrame):
        return source.copy(), "<DataFrame>"
    path = Path(source)
    if not path.exists():
        raise InputError(f"accuracy table {str(path)!r} does not exist")
    if path.is_dir():
        raise InputError(f"{str(path)!r} is a directory; a probe run is read by load_table or read_source, "
                         "a table must be a file")
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    try:
        if fmt in ("csv", "tsv", "txt"):
            return pd.read_csv(path, sep="\t" if fmt == "tsv" else ","), str(path)
        if fmt in ("parquet", "pq"):
            return pd.read_parquet(path), str(path)
        if fmt in ("jsonl", "ndjson"):
            return pd.read_json(path, lines=True), str(path)
        if fmt == "json":
            with open(path) as fh:
                return pd.DataFrame(json.load(fh)), str(path)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {str(path)!r} as {fmt}: {exc}") from None
    raise InputError(f"unknown table format {fmt!r} for {str(path)!r}; use csv, tsv, parquet, json or jsonl "
                     "(or pass format=)")


def _pick(df: pd.DataFrame, given, candidates, what: str, required: bool = True):
    if given is not None:
        if given not in df.columns:
            raise InputError(f"unknown {what} column {given!r}; known columns: {', '.join(map(str, df.columns))}")
        return given
    for c in candidates:
        if c in df.columns:
            return c
    if required:
        raise InputError(f"no {what} column found (looked for {', '.join(candidates)}); pass its name. "
                         f"Known columns: {', '.join(map(str, df.columns))}")
    return None


def _as_list(v) -> Optional[list]:
    if v is None:
        return None
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return list(v)


def load_table(source, *, model_col: Optional[str] = None, us: Optional[str] = None, ds=None,
               shots_col: Optional[str] = None, scale: str = "auto", format: Optional[str] = None,
               nan: str = "drop", layout: str = "auto", dataset_col: Optional[str] = None,
               acc_col: Optional[str] = None, keep: Optional[Sequence[str]] = None) -> AccuracyTable:
    """Load an accuracy table.

    source: DataFrame, a path (csv/tsv/parquet/json/jsonl, by extension or ``format=``) or a probe run
    directory (results.parquet + checkpoints.parquet).
    layout: "wide" (one accuracy column per dataset; ``us`` and ``ds`` name columns) or "long" (a dataset
    column and an accuracy column; ``us`` names either a dataset value, joined per model and shots, or a
    column holding the US accuracy of each row, e.g. checkpoints.parquet's ``upstream_accuracy``). "auto"
    picks long when a dataset column (ds_task, dataset) and an accuracy column (ds, accuracy, acc) exist.
    ds: DS names (list or comma-separated string); None means every other dataset (long) or every other
    numeric column (wide).
    scale: "unit" (0-1), "percent" (0-100) or "auto": percent when any accuracy exceeds 1.
    nan: "drop" drops rows with a missing US or DS accuracy and counts them in ``n_dropped_nan``;
    "raise" raises instead.
    keep: extra columns to carry into ``long`` (default: every non-accuracy column of a wide table, every
    column of a long one).
    """
    if scale not in ("auto", "unit", "percent"):
        raise InputError(f"scale must be 'auto', 'unit' or 'percent'; got {scale!r}")
    if nan not in ("drop", "raise"):
        raise InputError(f"nan must be 'drop' or 'raise'; got {nan!r}")
    if not isinstance(source, pd.DataFrame) and Path(source).is_dir():
        from .runs import DEFAULT_RUN_US, read_run   # probe runs have one reader

        return read_run(source, us=us or DEFAULT_RUN_US, ds=ds).table
    df, src = read_frame(source, format)
    if df.empty:
        raise InputError(f"accuracy table {src} is empty")
    if us is None and "upstream_accuracy" in df.columns:
        us = "upstream_accuracy"
    ds_list = _as_list(ds)
    if layout == "auto":
        has_long = any(c in df.columns for c in ((dataset_col,) if dataset_col else DATASET_CANDIDATES)) and \
            any(c in df.columns for c in ((acc_col,) if acc_col else ACC_CANDIDATES))
        wide_named = ds_list is not None and all(d in df.columns for d in ds_list) and us in df.columns
        layout = "long" if has_long and not wide_named else "wide"
    if layout not in ("wide", "long"):
        raise InputError(f"layout must be 'auto', 'wide' or 'long'; got {layout!r}")
    if us is None:
        raise InputError(f"name the upstream accuracy with us= (a column or, for long tables, a dataset); "
                         f"known columns: {', '.join(map(str, df.columns))}")
    shots_col = _pick(df, shots_col, SHOTS_CANDIDATES, "shots", required=False)
    if layout == "wide":
        long = _wide_to_long(df, src, model_col, us, ds_list, shots_col, keep)
    else:
        long = _long_to_long(df, src, model_col, us, ds_list, shots_col, dataset_col, acc_col, keep)
    return _finish(long, src, str(us), scale, nan)


def _wide_to_long(df, src, model_col, us, ds_list, shots_col, keep) -> pd.DataFrame:
    model_col = _pick(df, model_col, MODEL_CANDIDATES, "model", required=False)
    if us not in df.columns:
        raise InputError(f"unknown US column {us!r} in {src}; known columns: {', '.join(map(str, df.columns))}")
    reserved = {us, model_col, shots_col}
    if ds_list is None:
        ds_list = [c for c in df.columns if c not in reserved and pd.api.types.is_numeric_dtype(df[c])]
    unknown = [d for d in ds_list if d not in df.columns]
    if unknown:
        raise InputError(f"unknown DS column(s) {', '.join(map(repr, unknown))} in {src}; known columns: "
                         f"{', '.join(map(str, df.columns))}")
    if not ds_list:
        raise InputError(f"no DS columns in {src}; name them with ds=")
    models = df[model_col].astype(str) if model_col else pd.Series([f"row{i}" for i in range(len(df))], index=df.index)
    if keep is None:
        keep = [c for c in df.columns if c not in reserved and c not in ds_list]
    base = pd.DataFrame({"model": models, "us": pd.to_numeric(df[us], errors="coerce"),
                         "shots": pd.to_numeric(df[shots_col], errors="coerce") if shots_col else np.nan})
    for c in keep:
        if c not in base.columns:
            base[c] = df[c]
    parts = []
    for d in ds_list:
        p = base.copy()
        p.insert(1, "ds_task", str(d))
        p.insert(2, "ds", pd.to_numeric(df[d], errors="coerce"))
        parts.append(p)
    return pd.concat(parts, ignore_index=True)


def _long_to_long(df, src, model_col, us, ds_list, shots_col, dataset_col, acc_col, keep) -> pd.DataFrame:
    model_col = _pick(df, model_col, MODEL_CANDIDATES, "model")
    dataset_col = _pick(df, dataset_col, DATASET_CANDIDATES, "dataset")
    acc_col = _pick(df, acc_col, ACC_CANDIDATES, "accuracy")
    datasets = df[dataset_col].astype(str)
    keys = [model_col] + ([shots_col] if shots_col else [])
    if us in df.columns and us not in (dataset_col, acc_col):
        us_vals = pd.to_numeric(df[us], errors="coerce")
        rows = df
    elif (datasets == us).any():
        # US is one of the datasets: its accuracy per (model, shots) becomes each row's us.
        us_rows = df[datasets == us]
        dup = us_rows.duplicated(keys)
        if dup.any():
            raise InputError(f"US dataset {us!r} has several rows per ({', '.join(keys)}) in {src}; aggregate "
                             f"(e.g. mean over seeds) or filter first")
        us_map = us_rows.set_index(keys)[acc_col]
        rows = df[datasets != us]
        idx = pd.MultiIndex.from_frame(rows[keys]) if len(keys) > 1 else pd.Index(rows[model_col])
        us_vals = pd.Series(us_map.reindex(idx).to_numpy(), index=rows.index)
        us_vals = pd.to_numeric(us_vals, errors="coerce")
    else:
        raise InputError(f"us={us!r} is neither a column nor a dataset of {src}; known columns: "
                         f"{', '.join(map(str, df.columns))}; known datasets: "
                         f"{', '.join(sorted(datasets.unique()))}")
    known = sorted(rows[dataset_col].astype(str).unique())
    if ds_list is not None:
        unknown = [d for d in ds_list if d not in known]
        if unknown:
            raise InputError(f"unknown DS dataset(s) {', '.join(map(repr, unknown))} in {src}; known: "
                             f"{', '.join(known)}")
        sel = rows[dataset_col].astype(str).isin(ds_list)
        rows, us_vals = rows[sel], us_vals[sel]
    out = pd.DataFrame({"model": rows[model_col].astype(str), "ds_task": rows[dataset_col].astype(str),
                        "ds": pd.to_numeric(rows[acc_col], errors="coerce"), "us": us_vals,
                        "shots": pd.to_numeric(rows[shots_col], errors="coerce") if shots_col else np.nan})
    reserved = {model_col, dataset_col, acc_col, shots_col, us}
    for c in (keep if keep is not None else [c for c in rows.columns if c not in reserved]):
        if c not in out.columns:
            out[c] = rows[c]
    return out.reset_index(drop=True)


def _finish(long: pd.DataFrame, src: str, us_name: str, scale: str, nan: str) -> AccuracyTable:
    asked = list(dict.fromkeys(long["ds_task"]))
    bad = long["us"].isna() | long["ds"].isna()
    n_bad = int(bad.sum())
    if n_bad:
        if nan == "raise":
            first = long.loc[bad].iloc[0]
            raise InputError(f"{n_bad} row(s) of {src} have a missing US or DS accuracy (first: model "
                             f"{first['model']!r}, DS {first['ds_task']!r}); pass nan='drop' to drop them")
        long = long.loc[~bad].reset_index(drop=True)
    if len(long) < 2:
        raise InputError(f"{src} has {len(long)} usable row(s) after dropping missing accuracies; need at least 2")
    hi = float(max(long["us"].max(), long["ds"].max()))
    detected = "percent" if hi > 1.0 else "unit"
    use = detected if scale == "auto" else scale
    if use == "percent":
        long["us"] = long["us"] / 100.0
        long["ds"] = long["ds"] / 100.0
    for col, name in (("us", f"US column {us_name!r}"), ("ds", "DS accuracy")):
        out = (long[col] < 0) | (long[col] > 1)
        if out.any():
            r = long.loc[out].iloc[0]
            raise InputError(f"{name} out of range in {src}: {int(out.sum())} value(s) outside "
                             f"[0, {100 if use == 'percent' else 1}] (first: model {r['model']!r}, DS "
                             f"{r['ds_task']!r}, value {r[col] * (100 if use == 'percent' else 1):g}); "
                             f"check scale= (now {use!r})")
    if long["us"].nunique() < 2:
        raise InputError(f"US column {us_name!r} of {src} is constant; there is no relation to analyse")
    tasks = list(dict.fromkeys(long["ds_task"]))
    const = [t for t, g in long.groupby("ds_task", sort=False)["ds"] if g.nunique() < 2 and len(g) > 1]
    if const:
        raise InputError(f"DS column(s) {', '.join(map(repr, const))} of {src} are constant; leave them out "
                         f"with ds=")
    return AccuracyTable(long=long, us_name=us_name, ds_tasks=tasks, scale_detected=detected,
                         n_dropped_nan=n_bad, source=src, empty_tasks=[t for t in asked if t not in set(tasks)])


# --- the published tables shipped in the package ------------------------------------------------------------------

#: open_clip's x-axis, as in Kornblith et al. 2019 and Fig. 5 of Abnar et al. (not CLIP's pre-training task).
OPENCLIP_US = "ImageNet 1k"
#: Columns of openclip_results.csv that are not classification accuracies: identity and cost columns,
#: the 38-task average, and the retrieval / association scores (Flickr, MSCOCO recall; WinoGAViL Jaccard).
OPENCLIP_NOT_CLASSIFICATION = ("name", "pretrained", "params (M)", "FLOPs (B)", "Average perf. on 38 datasets",
                               "Flickr", "MSCOCO", "WinoGAViL")


def _packaged(name: str) -> Path:
    return Path(__file__).resolve().parent.parent / "data" / name


def load_openclip(path=None, *, scale: str = "auto") -> AccuracyTable:
    """open_clip's zero-shot results (mlfoundations/open_clip docs/openclip_results.csv, commit 29b90b8d, MIT).

    path None reads the copy shipped in plateaulab/data. Model id is "name/pretrained"; US is
    "ImageNet 1k"; DS is every other classification column. params and FLOPs are kept.
    """
    src = Path(path) if path is not None else _packaged("open_clip/openclip_results.csv")
    df, _ = read_frame(src, "csv")
    missing = [c for c in ("name", "pretrained", OPENCLIP_US) if c not in df.columns]
    if missing:
        raise InputError(f"{src} does not look like openclip_results.csv: missing {', '.join(missing)}")
    df.insert(0, "model", df["name"].astype(str) + "/" + df["pretrained"].astype(str))
    ds = [c for c in df.columns if c not in OPENCLIP_NOT_CLASSIFICATION and c not in ("model", OPENCLIP_US)]
    table = load_table(df, model_col="model", us=OPENCLIP_US, ds=ds, scale=scale, layout="wide",
                       keep=["params (M)", "FLOPs (B)"])
    table.source = str(src)
    return table


def load_clip_benchmark(path=None, *, hyper: str = "best", scale: str = "auto") -> AccuracyTable:
    """CLIP_benchmark's linear-probe runs (LAION-AI/CLIP_benchmark probe_benchmark/scaling_experiment_data2.json,
    commit b759cf60, MIT): 12 CLIP models x 21 datasets x few-shot k in {10, 25, -1 = full} x lr x epochs.

    Accuracy is ``lp_acc1``; US is "imagenet1k-unverified" at the same k (and, with hyper="all", the same lr
    and epochs). shots = fewshot_k, keeping the source's -1 for the full training set.
    hyper="best" keeps, per (model, dataset, k), the run with the best accuracy over the lr x epochs grid:
    the source selects on test accuracy, so these are optimistic (the selection leaks), as in its paper.
    hyper="all" keeps every run, with lr and epochs columns (for :func:`hyperparam_discrepancy`).
    """
    if hyper not in ("best", "all"):
        raise InputError(f"hyper must be 'best' or 'all'; got {hyper!r}")
    df, src = read_frame(path if path is not None else _packaged("clip_benchmark/scaling_experiment_data2.json"),
                         "json")
    need = ["model", "pretrained", "dataset", "fewshot_k", "lr", "epochs", "lp_acc1"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(f"{src} does not look like CLIP_benchmark's scaling_experiment_data2.json: missing "
                         f"{', '.join(missing)}")
    df = df.assign(model=df["model"].astype(str) + "/" + df["pretrained"].astype(str), shots=df["fewshot_k"])
    us_name = "imagenet1k-unverified"
    keys = ["model", "shots"]
    if hyper == "best":
        df = df.loc[df.groupby(["model", "dataset", "shots"])["lp_acc1"].idxmax()]
        keep = ["lr", "epochs", "upstream_dataset", "samples_seen", "gmacs_total"]
    else:
        keys += ["lr", "epochs"]
        keep = ["lr", "epochs", "upstream_dataset", "samples_seen", "gmacs_total"]
    us_rows = df[df["dataset"] == us_name].set_index(keys)["lp_acc1"].rename("us_acc")
    rows = df[df["dataset"] != us_name].join(us_rows, on=keys)
    table = load_table(rows, model_col="model", us="us_acc", dataset_col="dataset", acc_col="lp_acc1",
                       shots_col="shots", scale=scale, layout="long", keep=keep)
    table.us_name = us_name
    table.source = src
    return table


#: ImageNet2p is the 2% of ImageNet's train split held out to select soups, not a downstream task.
MODEL_SOUPS_DS = ("ImageNetV2", "ImageNetSketch", "ImageNetR", "ObjectNet", "ImageNetA")


def load_model_soups(path=None, *, scale: str = "auto") -> AccuracyTable:
    """model-soups' 72 fine-tuned CLIP ViT-B/32 models (mlfoundations/model-soups individual_model_results.jsonl,
    commit 3bb0f409, MIT). US is ImageNet; DS are the five distribution-shift test sets. The US range is very
    narrow (0.75-0.80), so fits on it extrapolate far."""
    df, src = read_frame(path if path is not None else _packaged("model_soups/individual_model_results.jsonl"),
                         "jsonl")
    table = load_table(df, model_col="model_name", us="ImageNet", ds=[d for d in MODEL_SOUPS_DS if d in df.columns],
                       scale=scale, layout="wide")
    table.source = src
    return table
