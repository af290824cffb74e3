"""Probe-run directories as accuracy tables: the one reader that ``fit``, ``sensitivity`` and ``study`` use.

A run (``plateaulab probe``) holds one row per (checkpoint, layer, dataset, shots, seed, l2) in
results.parquet and the checkpoints' metadata in checkpoints.parquet. The analysis needs one point per
(checkpoint, dataset, shots): its DS accuracy and its US accuracy. The rules, in order:

1. Rows at the selected l2 only (the ``selected`` column: the fixed l2, or the one chosen by leave-one-out
   or the validation split; never by the test split).
2. The mean accuracy over seeds, per (checkpoint, dataset, shots, layer). Its noise is more than the test
   set's: each seed draws another few-shot training set. The two sources are independent (the test set
   is drawn once, the seeds' training sets apart from it), so their variances add: p (1 - p) / m for the
   shared test set and s^2 / S for the mean over seeds. ``n_test`` is the *effective* test-set size, the
   binomial size with the same variance as the mean, p (1 - p) / (p (1 - p) / m + s^2 / S), with m the
   test examples (kept as ``n_test_examples``), s the standard deviation of the accuracy over the S seeds.
   The measurement-noise interval then resamples both sources of noise.
3. The layer. ``layer="last"`` (the default) takes, per (checkpoint, dataset), the deepest layer probed for
   that checkpoint on that dataset (highest ``layer_index``): a dataset whose deepest layer is shallower than
   another's keeps its own deepest layer. ``layer=NAME`` takes that layer wherever it exists; checkpoints
   without it are left out and counted in the notes. Every layer stays in ``layers`` (Figure 6).
4. US accuracy is a numeric checkpoint-metadata column (default ``upstream_accuracy``); a column whose
   values exceed 1 is read as percent (values up to 100) and divided by 100, with a note.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..errors import InputError, PlateaulabError
from .accuracy import AccuracyTable

__all__ = ["RunPoints", "read_run", "is_run_dir", "RUN_FILES", "DEFAULT_RUN_US"]

RUN_FILES = ("manifest.json", "results.parquet", "checkpoints.parquet")
DEFAULT_RUN_US = "upstream_accuracy"
_NEEDED = ("checkpoint", "dataset", "shots", "accuracy", "layer", "layer_index")


@dataclasses.dataclass
class RunPoints:
    """What :func:`read_run` found: one point per (checkpoint, dataset, shots), and every layer."""

    path: Path
    long: pd.DataFrame               # model, ds_task, shots, us, ds, layer, layer_index, n_test, seeds
    layers: pd.DataFrame             # checkpoint, dataset, shots, layer, layer_index, accuracy, us, seeds, n_test
    us_name: str
    layer_rule: str                  # "last" or the layer's name
    notes: list = dataclasses.field(default_factory=list)
    manifest: dict = dataclasses.field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.layers["layer_index"].nunique())

    @property
    def table(self) -> AccuracyTable:
        return AccuracyTable(long=self.long, us_name=self.us_name, ds_tasks=list(dict.fromkeys(self.long["ds_task"])),
                             scale_detected="unit", source=str(self.path))


def is_run_dir(path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / f).exists() for f in RUN_FILES)


def _load(path: Path):
    missing = [f for f in RUN_FILES if not (path / f).exists()]
    if missing:
        raise InputError(f"probe run {path} is missing {', '.join(missing)}; a run directory written by "
                         f"`plateaulab probe` holds {', '.join(RUN_FILES)}. Re-run (or finish) the probe into "
                         "this directory")
    try:
        from ..run import load_run

        results, ckpts, manifest = load_run(path)
    except PlateaulabError as exc:
        raise InputError(f"probe run {path}: {exc.template}", param=exc.param) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"probe run {path}: cannot read it ({exc})") from None
    except RecursionError:
        raise InputError(f"probe run {path}: manifest.json nests JSON too deeply to be a run manifest; rerun "
                         "`plateaulab probe` into a new directory") from None
    results, ckpts = pd.DataFrame(results), pd.DataFrame(ckpts)
    lacking = sorted(set(_NEEDED) - set(results.columns))
    if lacking:
        raise InputError(f"probe run {path}: results.parquet lacks columns {lacking}")
    if results.empty:
        raise InputError(f"probe run {path}: results.parquet holds no rows; run `plateaulab probe` to completion")
    _check_columns(path, results)
    if "checkpoint" not in ckpts.columns:
        raise InputError(f"probe run {path}: checkpoints.parquet has no 'checkpoint' column")
    if not _is_text(ckpts["checkpoint"]):
        raise InputError(f"probe run {path}: checkpoints.parquet's 'checkpoint' column holds "
                         f"{ckpts['checkpoint'].dtype} values, not checkpoint names; rerun `plateaulab probe` into "
                         "this directory to rewrite it")
    names = ckpts["checkpoint"].astype(str)
    if names.duplicated().any():
        dup = list(dict.fromkeys(names[names.duplicated()]))
        raise InputError(f"probe run {path}: checkpoints.parquet lists {len(dup)} checkpoint(s) on several rows "
                         f"({', '.join(map(repr, dup[:5]))}{' ...' if len(dup) > 5 else ''}), so their metadata "
                         "(upstream accuracy) is ambiguous; rerun `plateaulab probe` into this directory to rewrite it")
    return results, ckpts, manifest if isinstance(manifest, dict) else {}


def _is_text(col: pd.Series) -> bool:
    return (pd.api.types.is_string_dtype(col) or pd.api.types.is_object_dtype(col)) and \
        bool(col.map(lambda v: isinstance(v, str)).all())


#: results.parquet columns the analysis reads, with what each must hold: (test, expectation)
_COLUMN_RULES = {
    "checkpoint": (_is_text, "checkpoint names (text)"),
    "dataset": (_is_text, "dataset names (text)"),
    "layer": (_is_text, "layer names (text)"),
    "accuracy": (lambda c: pd.api.types.is_numeric_dtype(c) and not pd.api.types.is_bool_dtype(c)
                 and bool(((c >= 0) & (c <= 1)).all()), "accuracies: numbers in [0, 1]"),
    "shots": (lambda c: pd.api.types.is_numeric_dtype(c) and not pd.api.types.is_bool_dtype(c)
              and bool((c >= 1).all()), "shot counts: numbers >= 1"),
    "layer_index": (lambda c: pd.api.types.is_integer_dtype(c) and bool((c >= 0).all()),
                    "layer indices: integers >= 0"),
    "selected": (pd.api.types.is_bool_dtype, "true/false (whether the row's l2 was selected)"),
    "n_test": (lambda c: pd.api.types.is_numeric_dtype(c) and not pd.api.types.is_bool_dtype(c)
               and bool(((c >= 1) | c.isna()).all()), "test-set sizes: numbers >= 1"),
}


def _check_columns(path: Path, results: pd.DataFrame) -> None:
    """Refuse a results.parquet whose columns do not hold what `plateaulab probe` writes, naming the column
    (a table edited or written by other code), instead of averaging text or fitting accuracies of 30."""
    for col, (ok, expected) in _COLUMN_RULES.items():
        if col in results.columns and not ok(results[col]):
            values = results[col]
            shown = ", ".join(repr(v) for v in list(dict.fromkeys(values.tolist()))[:3])
            raise InputError(f"probe run {path}: results.parquet column {col!r} must hold {expected}; it holds "
                             f"{values.dtype} values such as {shown}. It was not written by `plateaulab probe` "
                             "as it is: rerun the probe into a new directory")


def _us_values(path: Path, ckpts: pd.DataFrame, us: str, notes: list) -> pd.Series:
    """US accuracy per checkpoint, on 0-1."""
    if us not in ckpts.columns:
        numeric = [c for c in ckpts.columns if c != "checkpoint" and pd.api.types.is_numeric_dtype(ckpts[c])]
        raise InputError(f"probe run {path}: checkpoint metadata has no column {us!r} for upstream accuracy "
                         f"(numeric columns: {numeric or 'none'}); store it with FeatureStore.set_checkpoint_meta "
                         "or name another column with {param}", param="us")
    raw = ckpts[us]
    values = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & values.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"probe run {path}: checkpoint {ckpts['checkpoint'].iloc[i]!r} has {us} = "
                         f"{raw.iloc[i]!r}, which is not a number; fix its metadata (meta.json) and rerun the probe")
    if values.notna().sum() == 0:
        raise InputError(f"probe run {path}: metadata column {us!r} holds no numeric values")
    if values.min() < 0 or not np.isfinite(values.dropna()).all():
        i = int(np.flatnonzero(((values < 0) | ~np.isfinite(values.fillna(0))).to_numpy())[0])
        value = raw.iloc[i].item() if hasattr(raw.iloc[i], "item") else raw.iloc[i]
        raise InputError(f"probe run {path}: checkpoint {ckpts['checkpoint'].iloc[i]!r} has {us} = "
                         f"{value!r}; an upstream accuracy lies in [0, 1] (or [0, 100] as percent): fix its "
                         "metadata (meta.json) and rerun the probe")
    if values.max() > 1.0 + 1e-9:
        if values.max() > 100.0:
            raise InputError(f"probe run {path}: upstream column {us!r} has values outside [0, 100] "
                             f"({values.min():g} to {values.max():g})")
        values = values / 100.0
        notes.append(f"Upstream column {us!r} looked like percent and was divided by 100.")
    out = pd.Series(values.to_numpy(), index=ckpts["checkpoint"].astype(str))
    missing = sorted(out.index[out.isna()])
    if missing:
        notes.append(f"{len(missing)} checkpoint(s) have no {us!r} and are left out: {', '.join(missing[:10])}"
                     + (" ..." if len(missing) > 10 else ""))
    return out


def _pick_layer(path: Path, layers: pd.DataFrame, layer: str, notes: list) -> pd.DataFrame:
    if layer in (None, "last"):
        deepest = layers.groupby(["checkpoint", "dataset"])["layer_index"].transform("max")
        return layers[layers["layer_index"] == deepest]
    chosen = layers[layers["layer"].astype(str) == str(layer)]
    if chosen.empty:
        raise InputError(f"probe run {path}: no layer named {layer!r} (layers: "
                         f"{sorted(set(layers['layer'].astype(str)))}); pass {{param}}='last' or one of those",
                         param="layer")
    lacking = sorted(set(layers["checkpoint"]) - set(chosen["checkpoint"]))
    if lacking:
        notes.append(f"{len(lacking)} checkpoint(s) have no layer {layer!r} and are left out: "
                     f"{', '.join(lacking[:10])}" + (" ..." if len(lacking) > 10 else ""))
    return chosen


def read_run(path, *, us: str = DEFAULT_RUN_US, ds=None, layer: Optional[str] = "last") -> RunPoints:
    """The points of a probe run directory, by the rules of the module docstring.

    ds: DS datasets to keep (list or comma-separated; default all). layer: "last" or a layer name.
    """
    path = Path(path)
    results, ckpts, manifest = _load(path)
    notes: list = []
    if not manifest.get("complete", False):
        notes.append(f"The run's manifest.json does not mark the run complete: results are partial "
                     f"({len(results)} probe rows).")
    if "selected" in results.columns:
        results = results[results["selected"].astype(bool)]
    us_map = _us_values(path, ckpts, us, notes)
    results = results.assign(checkpoint=results["checkpoint"].astype(str))
    unknown = sorted(set(results["checkpoint"]) - set(us_map.index))
    if unknown:
        notes.append(f"{len(unknown)} checkpoint(s) in results.parquet are missing from checkpoints.parquet "
                     f"and are left out: {', '.join(unknown[:10])}")
    results = results.assign(us=results["checkpoint"].map(us_map))
    if results["us"].isna().all():
        raise InputError(f"probe run {path}: no checkpoint of results.parquet has a {us!r} value in "
                         f"checkpoints.parquet (checkpoints: {', '.join(sorted(set(results['checkpoint']))[:5])}); "
                         "store it with FeatureStore.set_checkpoint_meta and rerun the probe, or name another "
                         "column with {param}", param="us")
    results = results[results["us"].notna()]
    if ds is not None:
        wanted = [d.strip() for d in ds.split(",")] if isinstance(ds, str) else [str(d) for d in ds]
        unknown_ds = [d for d in wanted if d not in set(results["dataset"])]
        if unknown_ds:
            raise InputError(f"probe run {path}: {{param}} names {unknown_ds}, not in the run (datasets: "
                             f"{sorted(set(results['dataset']))})", param="ds")
        results = results[results["dataset"].isin(wanted)]
    if "n_test" not in results.columns:
        results = results.assign(n_test=np.nan)
    layers = (results.groupby(["checkpoint", "dataset", "shots", "layer", "layer_index"], as_index=False)
              .agg(accuracy=("accuracy", "mean"), us=("us", "first"), seeds=("accuracy", "size"),
                   seed_std=("accuracy", "std"), n_test_examples=("n_test", "first")))
    layers["n_test"] = effective_test_size(layers["accuracy"], layers["n_test_examples"], layers["seed_std"],
                                           layers["seeds"])
    chosen = _pick_layer(path, layers, layer, notes)
    long = pd.DataFrame({"model": chosen["checkpoint"].astype(str), "ds_task": chosen["dataset"].astype(str),
                         "shots": pd.to_numeric(chosen["shots"], errors="coerce"), "us": chosen["us"],
                         "ds": chosen["accuracy"], "layer": chosen["layer"].astype(str),
                         "layer_index": chosen["layer_index"], "n_test": chosen["n_test"],
                         "n_test_examples": chosen["n_test_examples"], "seeds": chosen["seeds"]}).reset_index(drop=True)
    return RunPoints(path=path, long=long, layers=layers, us_name=us, layer_rule="last" if layer in (None, "last") else str(layer),
                     notes=notes, manifest=manifest)


def effective_test_size(p, m, seed_std, seeds) -> pd.Series:
    """The binomial test-set size whose variance equals that of a mean over seeds (module docstring, 2.)."""
    p = pd.to_numeric(p, errors="coerce").to_numpy(float)
    m = pd.to_numeric(m, errors="coerce").to_numpy(float)
    s = np.nan_to_num(pd.to_numeric(seed_std, errors="coerce").to_numpy(float))
    k = np.maximum(pd.to_numeric(seeds, errors="coerce").to_numpy(float), 1.0)
    pq = np.clip(p * (1.0 - p), 1e-12, None)
    var = pq / m + s * s / k
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.where(np.isfinite(var) & (var > 0), np.minimum(np.round(pq / var), m), np.nan)
    return pd.Series(np.maximum(n, 1.0), index=getattr(seed_std, "index", None))


def planted_values(manifest: dict) -> Optional[dict]:
    """What a synthetic store planted (plateaulab synth writes synth.json), found through the run's store."""
    planted = manifest.get("planted")
    if planted:
        return planted
    cfg = manifest.get("config", {})
    store = cfg.get("store") or manifest.get("store")
    if not store:
        return None
    f = Path(store) / "synth.json"
    try:
        return json.loads(f.read_text()) if f.exists() else None
    except (OSError, ValueError):
        return None
