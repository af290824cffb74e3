"""Accuracy tables: tidy input for the analysis, from a DataFrame, Parquet, CSV, JSON/JSONL or a probe run
directory, wide (one column per dataset) or long (one row per model x dataset [x shots]).

After loading, every accuracy is on the 0-1 scale and the long table has the columns
``model, ds_task, ds, us, shots`` (shots NaN when the source has none) plus any other kept columns.

How a table is read (docs/ANALYSIS.md, "Reading tables", states the same rules with examples):

* names (columns, datasets, the US and DS names, scale keys) match exactly, else ignoring case and
  surrounding spaces; an unknown name is an error with "did you mean" suggestions;
* an accuracy is a number or a string such as ``"85.0%"``; any other value (not a missing-value marker)
  makes its column "not numeric", an error naming the column, the models and the values;
* fraction (0-1) or percent (0-100) is decided per column (per dataset in a long table) from the whole
  column, and the columns read by value must agree (:func:`decide_scales`); ``scale=`` overrides it for
  the table or per column;
* the model id is one column or several joined with "/" (``id=``); ids that repeat are an error naming
  them unless ``duplicates=`` says what to keep ("first", "best": the row with the highest US accuracy,
  "mean").

Loaders for the published tables shipped in the package (see python/plateaulab/data/PROVENANCE.md) sit at the
end; timm's results folder is read by :mod:`plateaulab.analysis.timm_results`.
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
from .names import _as_list, _close, _fold, _listing, _try_match, match_name, match_names  # noqa: F401

__all__ = ["AccuracyTable", "load_table", "load_openclip", "load_clip_benchmark", "load_model_soups",
           "OPENCLIP_US", "OPENCLIP_NOT_CLASSIFICATION", "parse_scale", "match_name", "match_names",
           "SCALES", "DUPLICATES", "ID_SEP"]

MODEL_CANDIDATES = ("model", "checkpoint", "model_name", "name")
DATASET_CANDIDATES = ("ds_task", "dataset")
ACC_CANDIDATES = ("ds", "accuracy", "acc")
SHOTS_CANDIDATES = ("shots",)
#: columns never taken as DS tasks when ds= is not given: test-set sizes (read by analysis.test_sizes)
NOT_DS_COLUMNS = ("n_test", "n_test_us")
SCALES = ("auto", "unit", "percent")
DUPLICATES = ("error", "first", "best", "mean")
#: joins the values of several id columns into one model id ("resnet50.a1_in1k/224")
ID_SEP = "/"
#: strings read as a missing value, in any source (pandas.read_csv's defaults), compared case-insensitively
NA_STRINGS = frozenset(s.casefold() for s in (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null"))
#: A column holding both values in (0, 1] and values in (1, 100] is read as percent (the small values being
#: accuracies below 1%) only when its values run on across 1: the smallest value above 1 is at most
#: MIX_GAP times the largest nonzero value at or below 1. A wider gap (0.76 beside 75.2 and 80.1) is a column
#: mixing fractions and percentages, and is refused.
MIX_GAP = 10.0
_SCALE_WORDS = {"unit": "fractions (0-1)", "percent": "percent (0-100)"}


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
        raise InputError(f"{str(path)!r} is a directory; a probe run or a timm results folder is read by "
                         "load_table or read_source, a table must be a file")
    if not path.is_file():   # a FIFO would block the reader forever, a device (/dev/zero) never end
        raise InputError(f"accuracy table {str(path)!r} is not a regular file; pass a table file")
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    try:
        if fmt in ("csv", "tsv", "txt"):
            return pd.read_csv(path, sep="\t" if fmt == "tsv" else ","), str(path)
        if fmt in ("parquet", "pq"):
            return pd.read_parquet(path), str(path)
        if fmt in ("jsonl", "ndjson"):
            return pd.read_json(path, lines=True), str(path)
        if fmt == "json":
            with open(path, "rb") as fh:
                obj = json.load(fh)
            if not isinstance(obj, (list, dict)):
                raise InputError(f"cannot read {str(path)!r} as json: it holds the single value {str(obj)[:40]!r}; a table is a "
                                 "list of records ({\"model\": ..., \"<task>\": ...}) or an object of columns")
            return pd.DataFrame(obj), str(path)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {str(path)!r} as {fmt}: {exc}") from None
    except RecursionError:
        raise InputError(f"cannot read {str(path)!r} as {fmt}: it nests arrays or objects too deeply") from None
    except TypeError as exc:   # records of mixed kinds ([{...}, 5, "x"]) that pandas cannot line up
        raise InputError(f"cannot read {str(path)!r} as {fmt}: its records are not all objects of columns "
                         f"({exc}); a table is a list of records or an object of columns") from None
    raise InputError(f"unknown table format {fmt!r} for {str(path)!r}; use csv, tsv, parquet, json or jsonl "
                     "(or pass {param}=)", param="format")


# --- names ------------------------------------------------------------------------------------------------------

def _find(df: pd.DataFrame, candidates) -> Optional[str]:
    """The first column named like one of the candidates (ignoring case and surrounding spaces)."""
    for cand in candidates:
        hit = _try_match(cand, list(df.columns), what="column", where="the table", param=None)
        if hit is not None:
            return hit
    return None


def _pick(df: pd.DataFrame, given, candidates, what: str, src: str, param: str, required: bool = True):
    if given is not None:
        return match_name(given, list(df.columns), where=src, param=param, label=f"{what} column")
    found = _find(df, candidates)
    if found is None and required:
        raise InputError(f"no {what} column found in {src} (looked for {', '.join(candidates)}); name it with "
                         f"{{param}}. Known columns: {_listing(df.columns)}", param=param)
    return found


# --- values -----------------------------------------------------------------------------------------------------

def parse_values(raw: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(values, percent, bad) of a column of accuracies: float values (NaN where missing), whether each value
    was written with a '%' sign, and whether it is neither a number, a percentage nor a missing-value marker."""
    index = raw.index
    if pd.api.types.is_bool_dtype(raw):
        missing = raw.isna()
        return (pd.Series(np.nan, index=index), pd.Series(False, index=index), ~missing)
    if pd.api.types.is_numeric_dtype(raw):
        return raw.astype(float), pd.Series(False, index=index), pd.Series(False, index=index)
    is_bool = raw.map(lambda v: isinstance(v, (bool, np.bool_)))
    text = raw.astype("string").str.strip()
    missing = (raw.isna() | text.str.casefold().isin(NA_STRINGS).fillna(True)).astype(bool) & ~is_bool
    pct = text.str.endswith("%").fillna(False).astype(bool) & ~missing
    body = text.where(~pct, text.str[:-1].str.strip()).where(~missing & ~is_bool)
    values = pd.to_numeric(body, errors="coerce").astype(float)
    bad = ~missing & values.isna()
    return values, pct, bad


def _accuracy_like(raw: pd.Series) -> bool:
    """Whether a column not named by ds= is taken as a DS task: numeric, or text of which at least half the
    non-missing values are numbers or percentages (the rest are then reported as not numeric), and not a
    column of counts or sizes: one with more than a tenth of its values outside [0, 100] (parameter counts,
    FLOPs, image sizes) is no accuracy. load_table names the columns it leaves out so, in the table's notes.
    A column with fewer such values stays a DS task, so that its bad values (a typo) are named in an error,
    as they are for a column named by ds=."""
    if pd.api.types.is_bool_dtype(raw):
        return False
    if pd.api.types.is_numeric_dtype(raw):
        values = raw.astype(float)
    else:
        values, _, bad = parse_values(raw)
        n_ok, n_bad = int(values.notna().sum()), int(bad.sum())
        if not (n_ok > 0 and n_ok >= n_bad):
            return False
    v = values.dropna()
    return v.empty or float(((v < 0) | (v > 100) | ~np.isfinite(v)).mean()) <= 0.1


def _not_accuracy_columns(df: pd.DataFrame, cols) -> list:
    """Numeric columns among ``cols`` that :func:`_accuracy_like` refuses for their range (for the note)."""
    out = []
    for c in cols:
        raw = df[c]
        if pd.api.types.is_bool_dtype(raw) or not pd.api.types.is_numeric_dtype(raw):
            continue
        if not _accuracy_like(raw):
            out.append(c)
    return out


def _show(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return repr(bool(v))
    if isinstance(v, str):
        return repr(v)
    try:
        return f"{float(v):g}"
    except (TypeError, ValueError):
        return repr(v)


@dataclasses.dataclass
class _Unit:
    """What the scale is decided for: a column of a wide table, or one dataset of a long table's accuracy
    column (or the long table's US column)."""

    name: str                  # the US or DS name, the key of ``scales``
    label: str                 # how messages name it
    raw: pd.Series
    values: pd.Series
    pct: pd.Series
    models: pd.Series

    def examples(self, mask, n: int = 3) -> str:
        idx = list(mask[mask.fillna(False).astype(bool)].index[:n])
        return ", ".join(f"{_show(self.raw.loc[i])} (model {self.models.loc[i]!r})" for i in idx)


def _unit(name: str, label: str, raw: pd.Series, models: pd.Series, src: str, param: Optional[str]) -> _Unit:
    values, pct, bad = parse_values(raw)
    if bad.any():
        u = _Unit(name, label, raw, values, pct, models)
        raise InputError(f"{label} of {src} is not numeric: {int(bad.sum())} value(s) are neither numbers nor "
                         f"percentages such as '85.0%', e.g. {u.examples(bad)}; fix them, or leave the cells "
                         f"empty to mark the accuracies missing", param=param)
    return _Unit(name, label, raw, values, pct, models)


def parse_scale(scale) -> tuple[str, dict]:
    """(default, {name: scale}) of a ``scale=`` argument: "auto", "unit" or "percent" for the whole table;
    a dict {column or dataset: scale}; or a string of comma-separated NAME=SCALE pairs, with at most one bare
    scale for the other columns ("percent,ImageNet=unit")."""
    default, pairs = "auto", []
    if scale is None:
        return default, {}
    if isinstance(scale, dict):
        pairs = [(str(k), v) for k, v in scale.items()]
    elif isinstance(scale, str):
        bare = []
        for part in (p.strip() for p in scale.split(",")):
            if not part:
                continue
            if "=" in part:
                k, v = part.rsplit("=", 1)
                pairs.append((k.strip(), v.strip()))
            else:
                bare.append(part)
        if len(bare) > 1:
            raise InputError(f"{{param}} {scale!r} gives several scales for the whole table ({', '.join(bare)}); "
                             "give one, and NAME=SCALE for single columns", param="scale")
        default = bare[0].lower() if bare else "auto"
    else:
        raise InputError(f"{{param}} must be 'auto', 'unit' or 'percent', or NAME=SCALE pairs (a dict in Python); "
                         f"got {scale!r}", param="scale")
    if default not in SCALES:
        raise InputError(f"{{param}} must be 'auto', 'unit' or 'percent' (or NAME=SCALE pairs such as "
                         f"'CIFAR-10=percent'); got {default!r}", param="scale")
    out = {}
    for k, v in pairs:
        v2 = str(v).strip().lower()
        if v2 not in SCALES or not k:
            raise InputError(f"{{param}}: {k}={v} is not NAME=SCALE with SCALE 'auto', 'unit' or 'percent'",
                             param="scale")
        out[k] = v2
    return default, out


def _classify(u: _Unit, src: str) -> Optional[str]:
    """"unit", "percent" or None (no nonzero value: no evidence) from a column's values alone."""
    v = u.values
    present = v.notna()
    bad = present & (~np.isfinite(v.where(present, 0.0)) | (v < 0) | (v > 100))
    if bad.any():
        is_ds = not u.label.startswith("US")
        raise InputError(f"{u.label} of {src} has {int(bad.sum())} value(s) that are no accuracy on 0-1 or "
                         f"0-100 (negative, above 100 or infinite), e.g. {u.examples(bad)}; fix or drop them"
                         + (", or leave the column out (name the DS columns with {param})" if is_ds else ""),
                         param="ds" if is_ds else None)
    large = v > 1
    small = (v > 0) & (v <= 1)
    if not large.any():
        return "unit" if small.any() else None
    if not small.any():
        return "percent"
    lo, hi = float(v[large].min()), float(v[small].max())
    if lo > MIX_GAP * hi:
        raise InputError(
            f"{u.label} of {src} mixes scales: {int(small.sum())} value(s) in (0, 1], e.g. "
            f"{u.examples(small & (v == hi)) or u.examples(small)}, and {int(large.sum())} in (1, 100], e.g. "
            f"{u.examples(large & (v == lo))}, with nothing between {hi:g} and {lo:g}. As percent the first "
            f"would be accuracies below 1%; as fractions they would sit among the others. Fix the rows, or say "
            f"the column is percent with {{param}}={u.name + '=percent'!r}", param="scale")
    return "percent"


def decide_scales(units: Sequence[_Unit], scale, src: str, other_names: Sequence = ()) -> tuple[dict, dict]:
    """({name: "unit" | "percent"}, {name: basis}) for every unit, by the rules of docs/ANALYSIS.md:

    * a column written with '%' signs is percent (every non-missing value must carry one);
    * a scale given for the whole table or for the column is used;
    * otherwise the column's values decide (:func:`_classify`), and the columns so decided must agree: some
      holding values above 1 and others only values in [0, 1] is an error naming both;
    * a column with no nonzero value follows the others.

    Range: a unit column's values must lie in [0, 1], a percent column's in [0, 100].
    other_names: names of the table that are not read now; a scale given for them is ignored.
    """
    default, overrides = parse_scale(scale)
    names = [u.name for u in units]
    given = {}
    for key, val in overrides.items():
        hit = _try_match(key, names, what="column", where=src, param="scale")
        if hit is None:
            if _try_match(key, list(other_names), what="column", where=src, param="scale") is not None:
                continue
            match_name(key, names, what="accuracy column", where=src, param="scale",
                       label="column or dataset")
        given[hit] = val
    scales, basis, auto = {}, {}, {}
    for u in units:
        want = given.get(u.name, "auto")
        if want == "auto" and default != "auto":
            want = default
        if u.pct.any():
            plain = u.values.notna() & ~u.pct
            if plain.any():
                raise InputError(f"{u.label} of {src} writes some values with '%' and others without, e.g. "
                                 f"{u.examples(u.pct, 2)} and {u.examples(plain, 2)}; write them one way")
            if want == "unit":
                raise InputError(f"{u.label} of {src} writes its values as percentages, e.g. {u.examples(u.pct, 2)}, "
                                 f"but {{param}} reads it as fractions (unit); drop that scale for it",
                                 param="scale")
            scales[u.name], basis[u.name] = "percent", "written with %"
        elif want != "auto":
            scales[u.name], basis[u.name] = want, "given"
        else:
            auto[u.name] = _classify(u, src)
    by = {u.name: u for u in units}
    pct = [n for n, c in auto.items() if c == "percent"]
    frac = [n for n, c in auto.items() if c == "unit"]
    if pct and frac:
        def side(group):
            shown = [f"{n!r} ({by[n].values.min():g} to {by[n].values.max():g})" for n in group[:5]]
            return ", ".join(shown) + (f" and {len(group) - 5} more" if len(group) > 5 else "")
        hi_col = max(frac, key=lambda n: by[n].values.max())
        raise InputError(
            f"the columns of {src} disagree on the scale: {side(pct)} hold values above 1 (percent), while "
            f"{side(frac)} hold only values in [0, 1] (fractions). A fraction column among percent columns would "
            f"be divided by 100, and a percent column whose accuracies are all below 1% looks like fractions: say "
            f"which each is, e.g. {{param}}={hi_col + '=unit'!r} (fractions beside percent columns) or "
            f"{hi_col + '=percent'!r}, or give one scale for the whole table", param="scale")
    consensus = "percent" if pct else "unit" if frac else None
    if consensus is None:
        decided = set(scales.values())
        consensus = decided.pop() if len(decided) == 1 else "unit"
    for n, c in auto.items():
        scales[n] = c or consensus
        basis[n] = "values" if c else "no nonzero value (follows the other columns)"
    for u in units:
        top = 100.0 if scales[u.name] == "percent" else 1.0
        v = u.values
        out = v.notna() & (~np.isfinite(v.where(v.notna(), 0.0)) | (v < 0) | (v > top))
        if out.any():
            raise InputError(f"{u.label} of {src} out of range: {int(out.sum())} value(s) outside [0, {top:g}] "
                             f"for {_SCALE_WORDS[scales[u.name]]}, e.g. {u.examples(out)}; check {{param}} (now "
                             f"{scales[u.name]!r} for it, {basis[u.name]})", param="scale")
    return {n: scales[n] for n in names}, {n: basis[n] for n in names}


# --- ids and duplicates -----------------------------------------------------------------------------------------

def _id_columns(df: pd.DataFrame, id, model_col, src: str, required: bool) -> list:
    if id is not None and model_col is not None:
        raise InputError("give the model id columns once: {param} or model_col, not both", param="id")
    given = _as_list(id if id is not None else model_col)
    if given:
        return match_names(given, list(df.columns), where=src, param="id", label="id column(s)")
    found = _find(df, MODEL_CANDIDATES)
    if found is None and required:
        raise InputError(f"no model id column found in {src} (looked for {', '.join(MODEL_CANDIDATES)}); name it "
                         f"(or several) with {{param}}. Known columns: {_listing(df.columns)}", param="id")
    return [found] if found is not None else []


def _model_ids(df: pd.DataFrame, cols: list, src: str) -> pd.Series:
    """One model id per row: the id column's value, or the values of several joined with ID_SEP."""
    if not cols:
        return pd.Series([f"row{i}" for i in range(len(df))], index=df.index)
    parts = []
    for c in cols:
        s = df[c]
        empty = (s.isna() | (s.astype("string").str.strip() == "").fillna(True)).astype(bool)
        if empty.any():
            rows = np.flatnonzero(empty.to_numpy())
            raise InputError(f"id column {c!r} of {src} is empty in {int(empty.sum())} row(s) (data rows "
                             f"{', '.join(str(r + 1) for r in rows[:5])}{' ...' if len(rows) > 5 else ''}); fill "
                             "them, drop the rows, or name other id columns with {param}", param="id")
        if pd.api.types.is_float_dtype(s) and bool((s % 1 == 0).all()):
            s = s.astype("int64")
        parts.append(s.astype(str))
    ids = parts[0]
    for p in parts[1:]:
        ids = ids + ID_SEP + p
    return ids


def _describe_id(cols: list) -> str:
    if len(cols) == 1:
        return f"the id is column {cols[0]!r}"
    return f"the id joins columns {', '.join(map(repr, cols))} with {ID_SEP!r}"


_POLICY_WORDS = {"first": "kept the first row of each", "best": "kept the row with the highest US accuracy of each",
                 "mean": "took the mean of each accuracy over the rows of each"}
_POLICY_HELP = ("Pass {param}='first' (keep the first row), 'best' (the row with the highest US accuracy) or 'mean' "
                "(average each accuracy over the rows)")


def _check_policy(duplicates: str) -> None:
    if duplicates not in DUPLICATES:
        raise InputError(f"{{param}} must be one of {', '.join(map(repr, DUPLICATES))}; got {duplicates!r}",
                         param="duplicates")


def _key_text(row, key: list, labels: dict) -> str:
    """How a message names one key: "'resnet50', DS 'pets', shots 5"."""
    text = repr(row["model"])
    for k in key[1:]:
        v = row[k]
        if np.isscalar(v) and pd.isna(v):
            continue
        text += f", {labels.get(k, k)} {repr(v) if isinstance(v, str) else _show(v)}"
    return text


def _pick_rows(frame: pd.DataFrame, key: list, policy: str, means: list) -> pd.DataFrame:
    """One row per key: the first, the one with the highest ``us`` (ties: the first), or the mean of ``means``
    (other columns: the first row's). Rows keep the order of each key's first row."""
    if policy == "first":
        return frame.drop_duplicates(key, keep="first")
    if policy == "best":
        order = frame.assign(_pos=np.arange(len(frame)))
        order = order.sort_values(["us", "_pos"], ascending=[False, True], na_position="last", kind="stable")
        return order.drop_duplicates(key, keep="first").sort_values("_pos").drop(columns="_pos")
    agg = {c: ("mean" if c in means else "first") for c in frame.columns if c not in key}
    out = frame.groupby(key, sort=False, dropna=False).agg(agg).reset_index()
    return out[list(frame.columns)]


def _groups(frame: pd.DataFrame, key: list):
    """(rows that share a key with another row, their group number in order of first appearance, the size of
    each group)."""
    dup = frame.duplicated(key, keep=False)
    sub = frame[dup]
    gid = sub.groupby(key, sort=False, dropna=False).ngroup().to_numpy()
    return sub, gid, np.bincount(gid) if len(gid) else np.zeros(0, int)


def _duplicates_wide(frame: pd.DataFrame, key: list, policy: str, id_cols: list, src: str, means: list,
                     other_cols: dict) -> tuple[pd.DataFrame, dict]:
    info = {"n_rows": 0, "ids": []}
    sub, gid, size = _groups(frame, key)
    if sub.empty:
        return frame, info
    firsts = sub[~pd.Series(gid).duplicated().to_numpy()]
    labels = {"shots": "shots"}
    shown = [f"{_key_text(r, key, labels)} ({size[i]} rows)" for i, (_, r) in enumerate(firsts.head(5).iterrows())]
    more = f" and {len(size) - 5} more" if len(size) > 5 else ""
    ids = list(dict.fromkeys(firsts["model"]))
    if policy == "error":
        hint = ""
        if id_cols:
            for name, col in other_cols.items():
                if not frame.assign(_x=col).duplicated([*key, "_x"]).any():
                    hint = f" (here {[*map(str, id_cols), str(name)]!r} tells them apart)"
                    break
        raise InputError(f"{src} has {len(size)} duplicate model id(s) over {len(sub)} rows "
                         f"({_describe_id(id_cols)}): {', '.join(shown)}{more}. {_POLICY_HELP}, or add id columns "
                         f"that tell the rows apart{hint}", param="duplicates")
    out = _pick_rows(frame, key, policy, means)
    info = {"n_rows": int(len(frame) - len(out)), "ids": ids,
            "note": f"{len(size)} model id(s) appear on several rows ({len(sub)} rows): {_POLICY_WORDS[policy]} "
                    f"({', '.join(shown)}{more})."}
    return out.reset_index(drop=True), info


def _duplicates_long(frame: pd.DataFrame, raw_hash: pd.Series, key: list, labels: dict, policy: str,
                     us_is_dataset: bool, src: str, acc_col: str, us_col: Optional[str],
                     means: list) -> tuple[pd.DataFrame, dict]:
    info = {"n_rows": 0, "ids": []}
    sub, gid, size = _groups(frame, key)
    if sub.empty:
        return frame, info
    h = raw_hash[sub.index].to_numpy()
    n_distinct = pd.Series(h).groupby(gid).nunique().to_numpy()
    exact = np.flatnonzero(n_distinct == 1)
    conflict = np.flatnonzero(n_distinct > 1)

    def ex(groups, conflicting):
        out = []
        for g in groups[:3]:
            rows = sub[gid == g]
            text = _key_text(rows.iloc[0], key, labels)
            if conflicting:
                text += f": {acc_col} " + ", ".join(_show(v) for v in rows["acc_raw"])
                if us_col is not None:
                    text += f"; {us_col} " + ", ".join(_show(v) for v in rows["us_raw"])
            else:
                text += f" ({int(size[g])} identical rows)"
            out.append(text)
        return "; ".join(out) + (f"; and {len(groups) - 3} more" if len(groups) > 3 else "")

    parts = []
    if len(exact):
        parts.append(f"{len(exact)} exact duplicate(s), rows identical in every column: {ex(exact, False)}")
    if len(conflict):
        parts.append(f"{len(conflict)} conflicting duplicate(s), same key with different values: "
                     f"{ex(conflict, True)}")
    shown_key = [labels.get(k, k) for k in key if k != "shots" or frame["shots"].notna().any()]
    what = f"({', '.join(shown_key)})"
    if policy == "error" or (policy == "best" and us_is_dataset):
        if policy == "best":
            advice = ("'best' keeps the row with the highest US accuracy, but here the US is a dataset of the "
                      "table, so a repeated row cannot be paired with one US row: pass {param}='first' or 'mean' "
                      "instead")
        else:
            advice = _POLICY_HELP
        raise InputError(f"{src} repeats rows per {what}: {'; '.join(parts)}. {advice}, or remove them; rows that "
                         "differ in a column such as a seed or a learning rate are told apart by adding that column "
                         "to the id columns (each value is then a model of its own)", param="duplicates")
    out = _pick_rows(frame, key, policy, means)
    info = {"n_rows": int(len(frame) - len(out)), "ids": list(dict.fromkeys(sub["model"])),
            "note": f"{len(size)} {what} key(s) repeat over {len(sub)} rows ({len(exact)} exact, {len(conflict)} "
                    f"conflicting duplicates): {_POLICY_WORDS[policy]}."}
    return out.reset_index(drop=True), info


# --- load_table -------------------------------------------------------------------------------------------------

def load_table(source, *, id=None, us: Optional[str] = None, ds=None, shots_col: Optional[str] = None,
               scale="auto", format: Optional[str] = None, nan: str = "drop", layout: str = "auto",
               dataset_col: Optional[str] = None, acc_col: Optional[str] = None, keep: Optional[Sequence[str]] = None,
               duplicates: str = "error", distinct: Optional[Sequence[str]] = None,
               model_col=None) -> AccuracyTable:
    """Load an accuracy table.

    source: DataFrame or a path (csv/tsv/parquet/json/jsonl, by extension or ``format=``). Directories
    (probe runs, timm's results folders) are read by :func:`~plateaulab.analysis.sources.read_source`.
    layout: "wide" (one accuracy column per dataset; ``us`` and ``ds`` name columns) or "long" (a dataset
    column and an accuracy column; ``us`` names either a dataset value, joined per model and shots, or a
    column holding the US accuracy of each row, e.g. checkpoints.parquet's ``upstream_accuracy``). "auto"
    picks long when a dataset column (ds_task, dataset) and an accuracy column (ds, accuracy, acc) exist.
    id: the model id column, or several (list or comma-separated) whose values are joined with "/" (e.g.
    timm's ``model`` and ``img_size``); default: the first of model, checkpoint, model_name, name (a wide
    table without one numbers its rows). ``model_col`` is an alias.
    ds: DS names (list or comma-separated string); None means every other dataset (long) or every other
    numeric column (wide; text columns count when at least half their values are numbers or percentages).
    Names match exactly, else ignoring case and surrounding spaces.
    scale: "auto" (decided per column, see :func:`decide_scales`), "unit" (0-1) or "percent" (0-100) for the
    whole table, or per column: a dict {name: scale} or "NAME=SCALE,..." (the others stay "auto", or take a
    bare scale given with them). Values written as "85.0%" are percent.
    duplicates: what to do with a model id on several rows (per shots; in a long table, several rows per
    model, DS and shots): "error" (default; the error names them), "first", "best" (the row with the highest
    US accuracy: selection on the upstream, which is what one can choose a checkpoint by, never on the DS
    test accuracy being analysed), or "mean" (the mean of each accuracy over the rows, missing values
    skipped). distinct: columns whose values tell such rows apart (e.g. lr and epochs of hyper-parameter
    runs); rows that differ there are not duplicates.
    nan: "drop" drops rows with a missing US or DS accuracy and counts them in ``n_dropped_nan``;
    "raise" raises instead.
    keep: extra columns to carry into ``long`` (default: every non-accuracy column of a wide table, every
    column of a long one).
    """
    parse_scale(scale)
    if nan not in ("drop", "raise"):
        raise InputError(f"{{param}} must be 'drop' or 'raise'; got {nan!r}", param="nan")
    _check_policy(duplicates)
    if not isinstance(source, pd.DataFrame) and Path(source).is_dir():
        raise InputError(f"{source} is a directory: probe runs and timm's results folders are read by "
                         "plateaulab.analysis.sources.read_source (which fit, sensitivity and study use); "
                         "load_table reads one table")
    df, src = read_frame(source, format)
    if df.empty:
        raise InputError(f"accuracy table {src} is empty")
    df = df.reset_index(drop=True)          # rows by position: a DataFrame's index may repeat labels
    if us is None:
        us = _find(df, ("upstream_accuracy",))
    ds_list = _as_list(ds)
    if layout == "auto":
        dcol = _find(df, (dataset_col,) if dataset_col else DATASET_CANDIDATES)
        acol = _find(df, (acc_col,) if acc_col else ACC_CANDIDATES)
        cols = list(df.columns)
        wide_named = (ds_list is not None and us is not None
                      and all(_try_match(d, cols, what="column", where=src, param="ds") is not None for d in ds_list)
                      and _try_match(us, cols, what="column", where=src, param="us") is not None)
        layout = "long" if dcol is not None and acol is not None and not wide_named else "wide"
    if layout not in ("wide", "long"):
        raise InputError(f"{{param}} must be 'auto', 'wide' or 'long'; got {layout!r}", param="layout")
    if us is None:
        raise InputError(f"name the upstream accuracy of {src} with {{param}} (a column or, for long tables, a "
                         f"dataset); known columns: {_listing(df.columns)}", param="us")
    shots_col = _pick(df, shots_col, SHOTS_CANDIDATES, "shots", src, "shots_col", required=False)
    id_cols = _id_columns(df, id, model_col, src, required=layout == "long")
    if layout == "wide":
        long, meta = _wide_to_long(df, src, id_cols, us, ds_list, shots_col, keep, scale, duplicates)
    else:
        long, meta = _long_to_long(df, src, id_cols, us, ds_list, shots_col, dataset_col, acc_col, keep, scale,
                                   duplicates, distinct)
    table = _finish(long, src, meta["us_name"], nan)
    table.scales, table.scale_basis = meta["scales"], meta["basis"]
    values = set(table.scales.values())
    table.scale_detected = values.pop() if len(values) == 1 else "mixed"
    table.id_columns = [str(c) for c in id_cols]
    table.duplicates = duplicates
    table.n_duplicate_rows = meta["dups"]["n_rows"]
    table.duplicate_ids = meta["dups"]["ids"]
    table.layout = layout
    if meta["dups"].get("note"):
        table.notes.append(meta["dups"]["note"])
    if meta.get("left_out"):
        table.notes.append(f"Column(s) {', '.join(map(repr, meta['left_out']))} of {src} hold values outside "
                           "[0, 100] and are not read as accuracies (name DS columns to choose them yourself).")
    return table


def wide_columns(df: pd.DataFrame, *, us, ds=None, id=None, model_col=None, shots_col=None):
    """(US column, DS columns, other columns to keep) of a wide table as :func:`load_table` reads it, or None
    when the table has a dataset column (long layout) or a name does not resolve. For a caller that loads a
    wide table column by column."""
    if _find(df, DATASET_CANDIDATES) is not None:
        return None
    cols = list(df.columns)
    try:
        us_col = match_name(us, cols, param="us")
        shots = _pick(df, shots_col, SHOTS_CANDIDATES, "shots", "the table", "shots_col", required=False)
        ids = _id_columns(df, id, model_col, "the table", required=False)
        reserved = {us_col, shots, *ids} - {None}
        if ds is None:
            cands = [c for c in cols if c not in reserved and _fold(c) not in NOT_DS_COLUMNS
                     and _accuracy_like(df[c])]
        else:
            cands = match_names(_as_list(ds), cols, param="ds")
    except InputError:
        return None
    cands = [c for c in cands if c != us_col]
    return us_col, cands, [c for c in cols if c not in reserved and c not in cands]


def _shots_values(df, shots_col, models, src) -> pd.Series:
    if not shots_col:
        return pd.Series(np.nan, index=df.index)
    u = _unit(str(shots_col), f"shots column {shots_col!r}", df[shots_col], models, src, "shots_col")
    if u.pct.any():
        raise InputError(f"shots column {shots_col!r} of {src} holds percentages, e.g. {u.examples(u.pct)}; shots "
                         "are counts", param="shots_col")
    return u.values


def _wide_to_long(df, src, id_cols, us, ds_list, shots_col, keep, scale, duplicates):
    cols = list(df.columns)
    us_col = match_name(us, cols, where=src, param="us", label="US column")
    reserved = {us_col, *id_cols, shots_col} - {None}
    left_out = []
    if ds_list is None:
        ds_cols = [c for c in cols if c not in reserved and _fold(c) not in NOT_DS_COLUMNS
                   and _accuracy_like(df[c])]
        left_out = _not_accuracy_columns(df, [c for c in cols if c not in reserved and c not in ds_cols])
    else:
        ds_cols = match_names(ds_list, cols, where=src, param="ds", label="DS column(s)")
    named_us = ds_list is not None and us_col in ds_cols
    ds_cols = [c for c in ds_cols if c != us_col]
    if not ds_cols:
        if named_us:
            raise InputError(f"{{param}} names only {us_col!r}, the US column of {src}; a DS task is another "
                             f"column (known columns: {_listing(cols)})", param="ds")
        raise InputError(f"no DS columns in {src}; name them with {{param}}", param="ds")
    models = _model_ids(df, id_cols, src)
    units = [_unit(str(us_col), f"US column {us_col!r}", df[us_col], models, src, "us")]
    units += [_unit(str(c), f"DS column {c!r}", df[c], models, src, "ds") for c in ds_cols]
    scales, basis = decide_scales(units, scale, src, other_names=[str(c) for c in cols])
    shots = _shots_values(df, shots_col, models, src)
    frame = pd.DataFrame({"model": models, "shots": shots}, index=df.index)
    factor = {n: (100.0 if s == "percent" else 1.0) for n, s in scales.items()}
    frame["us"] = units[0].values / factor[units[0].name]
    dnames = [f"_d{j}" for j in range(len(ds_cols))]
    for name, u in zip(dnames, units[1:]):
        frame[name] = u.values / factor[u.name]
    if keep is None:
        keep = [c for c in cols if c not in reserved and c not in ds_cols]
    else:
        keep = match_names(_as_list(keep), cols, where=src, param="keep", label="column(s) to keep")
    knames = [f"_k{j}" for j in range(len(keep))]
    for name, c in zip(knames, keep):
        frame[name] = df[c]
    key = ["model"] + (["shots"] if shots_col else [])
    # columns that could tell repeated ids apart, for the error's hint: text first, then whole numbers
    other = {c: df[c] for c in cols if c not in reserved and c not in ds_cols and not _accuracy_like(df[c])}
    other.update({c: df[c] for c in cols if c not in reserved and c not in ds_cols and c not in other
                  and pd.api.types.is_integer_dtype(df[c])})
    frame, dups = _duplicates_wide(frame.reset_index(drop=True), key, duplicates, id_cols, src,
                                   means=["us", *dnames], other_cols={c: s.to_numpy() for c, s in other.items()})
    parts = []
    for name, d in zip(dnames, ds_cols):
        p = pd.DataFrame({"model": frame["model"], "ds_task": str(d), "ds": frame[name], "us": frame["us"],
                          "shots": frame["shots"]})
        for kname, c in zip(knames, keep):
            if c not in p.columns:
                p[c] = frame[kname].to_numpy()
        parts.append(p)
    long = pd.concat(parts, ignore_index=True)
    return long, {"us_name": str(us_col), "scales": scales, "basis": basis, "dups": dups, "left_out": left_out}


def _long_to_long(df, src, id_cols, us, ds_list, shots_col, dataset_col, acc_col, keep, scale, duplicates,
                  distinct):
    cols = list(df.columns)
    dataset_col = _pick(df, dataset_col, DATASET_CANDIDATES, "dataset", src, "dataset_col")
    acc_col = _pick(df, acc_col, ACC_CANDIDATES, "accuracy", src, "acc_col")
    distinct = match_names(_as_list(distinct) or [], cols, where=src, param="distinct", label="column(s)")
    if df[dataset_col].isna().any():
        rows = np.flatnonzero(df[dataset_col].isna().to_numpy())
        raise InputError(f"dataset column {dataset_col!r} of {src} is empty in {len(rows)} row(s) (data rows "
                         f"{', '.join(str(r + 1) for r in rows[:5])}); fill or drop them")
    datasets = df[dataset_col].astype(str)
    models = _model_ids(df, id_cols, src)
    known = list(dict.fromkeys(datasets))
    colnames = [c for c in cols if c not in (dataset_col, acc_col, *id_cols)]
    us_col = us_ds = None
    exact_col = next((c for c in colnames if c == us or str(c) == str(us)), None)
    exact_ds = next((d for d in known if d == str(us)), None)
    if exact_col is not None:
        us_col = exact_col
    elif exact_ds is not None:
        us_ds = exact_ds
    else:
        us_col = _try_match(us, colnames, what="column", where=src, param="us")
        if us_col is None:
            us_ds = _try_match(us, known, what="dataset", where=src, param="us")
    if us_col is None and us_ds is None:
        close = _close(us, colnames + known)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise InputError(f"{{param}} names {us!r}, neither a column nor a dataset of {src}{hint}; known columns: "
                         f"{_listing(cols)}; known datasets: {_listing(sorted(known))}", param="us")
    ds_known = [d for d in known if d != us_ds]
    if ds_list is not None:
        ds_names = match_names(ds_list, ds_known, what="dataset", where=src, param="ds", label="DS dataset(s)")
    else:
        ds_names = ds_known
    wanted = ([us_ds] if us_ds is not None else []) + ds_names
    sel = datasets.isin(wanted)
    rows, r_models, r_datasets = df[sel], models[sel], datasets[sel]
    acc_vals, acc_pct, acc_bad = parse_values(rows[acc_col])
    if acc_bad.any():
        first = acc_bad[acc_bad].index[:3]
        shown = ", ".join(f"{_show(rows[acc_col].loc[i])} (model {r_models.loc[i]!r}, dataset {r_datasets.loc[i]!r})"
                          for i in first)
        raise InputError(f"accuracy column {acc_col!r} of {src} is not numeric: {int(acc_bad.sum())} value(s) are "
                         f"neither numbers nor percentages such as '85.0%', e.g. {shown}; fix them, or leave the "
                         "cells empty to mark the accuracies missing")
    units = []
    for d in wanted:
        m = r_datasets == d
        label = f"{'US' if d == us_ds else 'DS'} dataset {d!r} (column {acc_col!r})"
        units.append(_Unit(d, label, rows[acc_col][m], acc_vals[m], acc_pct[m], r_models[m]))
    if us_col is not None:
        units.insert(0, _unit(str(us_col), f"US column {us_col!r}", rows[us_col], r_models, src, "us"))
    scales, basis = decide_scales(units, scale, src, other_names=[str(c) for c in cols] + known)
    factor = r_datasets.map(lambda d: 100.0 if scales[d] == "percent" else 1.0)
    frame = pd.DataFrame({"model": r_models, "dataset": r_datasets,
                          "shots": _shots_values(rows, shots_col, r_models, src),
                          "acc": acc_vals / factor, "acc_raw": rows[acc_col]})
    if us_col is not None:
        frame["us"] = units[0].values / (100.0 if scales[str(us_col)] == "percent" else 1.0)
        frame["us_raw"] = rows[us_col]
    for j, c in enumerate(distinct):
        frame[f"_x{j}"] = rows[c]
    reserved = {*id_cols, dataset_col, acc_col, shots_col, us_col} - {None}
    if keep is None:
        keep = [c for c in cols if c not in reserved]
    else:
        keep = match_names(_as_list(keep), cols, where=src, param="keep", label="column(s) to keep")
    keep = list(dict.fromkeys([*keep, *[c for c in distinct if c not in reserved]]))
    for j, c in enumerate(keep):
        frame[f"_k{j}"] = rows[c]
    key = ["model", "dataset", "shots", *[f"_x{j}" for j in range(len(distinct))]]
    labels = {"dataset": "DS", "shots": "shots", **{f"_x{j}": str(c) for j, c in enumerate(distinct)}}
    raw_hash = pd.Series(pd.util.hash_pandas_object(rows, index=False).to_numpy(), index=frame.index)
    frame, dups = _duplicates_long(frame, raw_hash, key, labels, duplicates, us_ds is not None, src, str(acc_col),
                                   None if us_col is None else str(us_col), means=["acc", "us"])
    if us_ds is not None:
        join = ["model", "shots", *key[3:]]
        us_rows = frame.loc[frame["dataset"] == us_ds, join + ["acc"]].rename(columns={"acc": "us"})
        frame = frame[frame["dataset"] != us_ds].merge(us_rows, on=join, how="left")
    out = pd.DataFrame({"model": frame["model"].to_numpy(), "ds_task": frame["dataset"].to_numpy(),
                        "ds": frame["acc"].to_numpy(float), "us": frame["us"].to_numpy(float),
                        "shots": frame["shots"].to_numpy(float)})
    for j, c in enumerate(keep):
        if c not in out.columns:
            out[c] = frame[f"_k{j}"].to_numpy()
    us_name = str(us_col) if us_col is not None else us_ds
    return out, {"us_name": us_name, "scales": scales, "basis": basis, "dups": dups}


def _finish(long: pd.DataFrame, src: str, us_name: str, nan: str) -> AccuracyTable:
    asked = list(dict.fromkeys(long["ds_task"]))
    bad = long["us"].isna() | long["ds"].isna()
    n_bad = int(bad.sum())
    if n_bad:
        if nan == "raise":
            first = long.loc[bad].iloc[0]
            raise InputError(f"{n_bad} row(s) of {src} have a missing US or DS accuracy (first: model "
                             f"{first['model']!r}, DS {first['ds_task']!r}); pass {{param}}='drop' to drop them",
                             param="nan")
        long = long.loc[~bad].reset_index(drop=True)
    if len(long) < 2:
        raise InputError(f"{src} has {len(long)} usable row(s) after dropping missing accuracies; need at least 2")
    models = list(dict.fromkeys(long["model"].astype(str)))
    if len(models) < 2:
        raise InputError(f"{src} has usable accuracies of {len(models)} model ({models[0]!r}) only; relating DS to "
                         "US accuracy needs at least 2 models")
    if long["us"].nunique() < 2:
        raise InputError(f"US column {us_name!r} of {src} is constant; there is no relation to analyse")
    tasks = list(dict.fromkeys(long["ds_task"]))
    const = [t for t, g in long.groupby("ds_task", sort=False)["ds"] if g.nunique() < 2 and len(g) > 1]
    if const:
        raise InputError(f"DS column(s) {', '.join(map(repr, const))} of {src} are constant; leave them out "
                         f"with {{param}}", param="ds")
    return AccuracyTable(long=long, us_name=us_name, ds_tasks=tasks, scale_detected="unit",
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


def load_openclip(path=None, *, scale="auto", duplicates: str = "error") -> AccuracyTable:
    """open_clip's zero-shot results (mlfoundations/open_clip docs/openclip_results.csv, commit 29b90b8d, MIT).

    path None reads the copy shipped in plateaulab/data. Model id is "name/pretrained"; US is
    "ImageNet 1k"; DS is every other classification column. params and FLOPs are kept.
    """
    src = Path(path) if path is not None else _packaged("open_clip/openclip_results.csv")
    df, _ = read_frame(src, "csv")
    missing = [c for c in ("name", "pretrained", OPENCLIP_US) if c not in df.columns]
    if missing:
        raise InputError(f"{src} does not look like openclip_results.csv: missing {', '.join(missing)}")
    ds = [c for c in df.columns if c not in OPENCLIP_NOT_CLASSIFICATION and c != OPENCLIP_US]
    table = load_table(df, id=["name", "pretrained"], us=OPENCLIP_US, ds=ds, scale=scale, layout="wide",
                       keep=["params (M)", "FLOPs (B)"], duplicates=duplicates)
    table.source = str(src)
    return table


def load_clip_benchmark(path=None, *, hyper: str = "best", scale="auto", duplicates: str = "error") -> AccuracyTable:
    """CLIP_benchmark's linear-probe runs (LAION-AI/CLIP_benchmark probe_benchmark/scaling_experiment_data2.json,
    commit b759cf60, MIT): 12 CLIP models x 21 datasets x few-shot k in {10, 25, -1 = full} x lr x epochs.

    Accuracy is ``lp_acc1``; US is "imagenet1k-unverified" at the same k (and, with hyper="all", the same lr
    and epochs). shots = fewshot_k, keeping the source's -1 for the full training set.
    hyper="best" keeps, per (model, dataset, k), the run with the best accuracy over the lr x epochs grid:
    the source selects on test accuracy, so these are optimistic (the selection leaks), as in its paper.
    hyper="all" keeps every run, with lr and epochs columns (for :func:`hyperparam_discrepancy`): rows that
    differ in lr or epochs are distinct runs, not duplicates.
    """
    if hyper not in ("best", "all"):
        raise InputError(f"{{param}} must be 'best' or 'all'; got {hyper!r}", param="hyper")
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
    keep = ["lr", "epochs", "upstream_dataset", "samples_seen", "gmacs_total"]
    if hyper == "best":
        df = df.loc[df.groupby(["model", "dataset", "shots"])["lp_acc1"].idxmax()]
        distinct = None
    else:
        keys += ["lr", "epochs"]
        distinct = ["lr", "epochs"]
    us_rows = df[df["dataset"] == us_name].set_index(keys)["lp_acc1"].rename("us_acc")
    rows = df[df["dataset"] != us_name].join(us_rows, on=keys)
    table = load_table(rows, id="model", us="us_acc", dataset_col="dataset", acc_col="lp_acc1",
                       shots_col="shots", scale=scale, layout="long", keep=keep, distinct=distinct,
                       duplicates=duplicates)
    table.us_name = us_name
    table.scales = {(us_name if k == "us_acc" else k): v for k, v in table.scales.items()}
    table.scale_basis = {(us_name if k == "us_acc" else k): v for k, v in table.scale_basis.items()}
    table.source = src
    return table


#: ImageNet2p is the 2% of ImageNet's train split held out to select soups, not a downstream task.
MODEL_SOUPS_DS = ("ImageNetV2", "ImageNetSketch", "ImageNetR", "ObjectNet", "ImageNetA")


def load_model_soups(path=None, *, scale="auto", duplicates: str = "error") -> AccuracyTable:
    """model-soups' 72 fine-tuned CLIP ViT-B/32 models (mlfoundations/model-soups individual_model_results.jsonl,
    commit 3bb0f409, MIT). US is ImageNet; DS are the five distribution-shift test sets. The US range is very
    narrow (0.75-0.80), so fits on it extrapolate far."""
    df, src = read_frame(path if path is not None else _packaged("model_soups/individual_model_results.jsonl"),
                         "jsonl")
    table = load_table(df, id="model_name", us="ImageNet", ds=[d for d in MODEL_SOUPS_DS if d in df.columns],
                       scale=scale, layout="wide", duplicates=duplicates)
    table.source = src
    return table
