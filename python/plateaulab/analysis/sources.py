"""Where accuracy tables come from: the builtin published tables, table files, and probe runs.

This is the one map from an input to its reader, used by ``fit``, ``sensitivity`` and ``study``:

* ``builtin:NAME`` (or no input, for the study): a published table shipped in ``plateaulab/data``
  (PROVENANCE.md there), read by its own loader; ``loader="table"`` reads the same file with the generic
  :func:`~plateaulab.analysis.tables.load_table` instead.
* a directory: a probe run, read by :func:`~plateaulab.analysis.runs.read_run`, or timm's results folder
  (results-*.csv), read by :func:`~plateaulab.analysis.timm_results.load_timm_results`.
* a file: a published table by its published file name (e.g. a copy of openclip_results.csv; timm's
  results-imagenet.csv names its whole folder), or any other table through
  :func:`~plateaulab.analysis.tables.load_table`.

Every input becomes one :class:`Source`: an :class:`~plateaulab.analysis.tables.AccuracyTable` plus how to
cite it, notes for the reader, the DS tasks left out and why, and, for probe runs, every layer.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from ..errors import InputError, PlateaulabError
from . import tables as T
from .scaling_laws_openclip import load_scaling_laws_openclip
from .runs import DEFAULT_RUN_US, is_run_dir, planted_values, read_run
from .timm_results import TIMM_CITATION, is_timm_results, load_timm_results
from .test_sizes import attach_test_sizes

__all__ = ["Builtin", "BUILTINS", "BUILTIN_PREFIX", "LOADERS", "Source", "read_source", "resolve_builtin",
           "DATA_DIR"]

BUILTIN_PREFIX = "builtin:"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclasses.dataclass(frozen=True)
class Builtin:
    """A published table shipped with plateaulab."""

    name: str
    loader: str                      # key of LOADERS
    file: str                        # path under plateaulab/data
    citation: str                    # source repository, file, commit, licence
    note: str = ""                   # what a reader must know to read the figures right

    @property
    def path(self) -> Path:
        return DATA_DIR / self.file


_CLIP_NOTE = ("For these CLIP models ImageNet is not the pre-training task: as in Kornblith et al. (2019) and "
              "Figure 5 of Abnar et al. (2022), ImageNet 1k accuracy plays the upstream role.")

BUILTINS = {b.name: b for b in (
    Builtin("openclip", "openclip", "open_clip/openclip_results.csv",
            "mlfoundations/open_clip, docs/openclip_results.csv, commit 29b90b8d (MIT licence): zero-shot "
            "accuracies of 121 CLIP models on 38 evaluations",
            _CLIP_NOTE + " Accuracies are zero-shot, not few-shot."),
    Builtin("clip-benchmark", "clip_benchmark", "clip_benchmark/scaling_experiment_data2.json",
            "LAION-AI/CLIP_benchmark, probe_benchmark/scaling_experiment_data2.json, commit b759cf60 (MIT licence): "
            "linear probes of 12 CLIP models, best learning rate and epochs per setting",
            _CLIP_NOTE + " The best learning rate and epochs per setting are chosen on test accuracy by the source "
            "(optimistic)."),
    Builtin("model-soups", "model_soups", "model_soups/individual_model_results.jsonl",
            "mlfoundations/model-soups, individual_model_results.jsonl, commit 3bb0f409 (MIT licence): 72 "
            "fine-tuned CLIP ViT-B/32 models",
            "US accuracy spans a narrow range (0.75-0.80), so every fit extrapolates far."),
    Builtin("scaling-laws-openclip", "scaling_laws_openclip", "scaling_laws_openclip/zeroshot_results.csv",
            "LAION-AI/scaling-laws-openclip, zeroshot_results.csv with arch_info.csv and trained_models_info.csv, "
            "commit 652b1e74 (no licence file; the published results of Cherti et al., \"Reproducible scaling laws "
            "for contrastive language-image learning\", CVPR 2023): zero-shot accuracies of 32 CLIP models",
            _CLIP_NOTE + " A controlled scale-up: ViT-B/32, B/16 and L/14 trained on LAION-80M, 400M and 2B for 3B, "
            "13B and 34B samples seen (27 runs; learning rate and batch size vary between them), plus H/14 and "
            "g/14 on LAION-2B and OpenAI's B/32, B/16 and L/14 (CLIP-WIT, 13B samples). Accuracies are zero-shot."),
)}

#: loader name -> function(path, scale=...) -> AccuracyTable, for the published tables' own formats.
LOADERS: dict[str, Callable] = {
    "openclip": T.load_openclip,
    "clip_benchmark": T.load_clip_benchmark,
    "model_soups": T.load_model_soups,
    "scaling_laws_openclip": load_scaling_laws_openclip,
    "timm": load_timm_results,
}
#: how to cite what a loader reads when no builtin table ships it
LOADER_CITATIONS = {"timm": TIMM_CITATION}
LOADER_CHOICES = ("auto", "table", "run", *LOADERS)
#: published file names that pick their own loader under loader="auto"
PUBLISHED_FILES = {**{Path(b.file).name: b.loader for b in BUILTINS.values()}, "results-imagenet.csv": "timm"}


@dataclasses.dataclass
class Source:
    """An input read for the analysis."""

    table: T.AccuracyTable
    kind: str                                    # "builtin", "table" or "run"
    citation: str
    loader: str
    notes: list = dataclasses.field(default_factory=list)
    skipped: dict = dataclasses.field(default_factory=dict)     # DS task -> why it is left out
    layers: Optional[pd.DataFrame] = None                       # probe runs: every layer's accuracy
    layer_rule: Optional[str] = None                            # probe runs: "last" or the layer's name
    planted: Optional[dict] = None                              # synthetic stores: what was planted
    builtin: Optional[Builtin] = None
    hparams: Optional[pd.DataFrame] = None                      # --hparams: the runs, long, with those columns
    hparam_names: list = dataclasses.field(default_factory=list)

    @property
    def long(self) -> pd.DataFrame:
        return self.table.long


def resolve_builtin(spec: str) -> Builtin:
    """The builtin named by 'builtin:NAME' (case-insensitive; '_' and '-' alike), with a did-you-mean."""
    name = spec[len(BUILTIN_PREFIX):] if spec.lower().startswith(BUILTIN_PREFIX) else spec
    key = name.strip().lower().replace("_", "-")
    if key in BUILTINS:
        return BUILTINS[key]
    close = difflib.get_close_matches(key, list(BUILTINS), n=1, cutoff=0.5)
    hint = f"; did you mean {BUILTIN_PREFIX}{close[0]}?" if close else ""
    raise InputError(f"unknown builtin table {spec!r}{hint} Builtins: "
                     f"{', '.join(BUILTIN_PREFIX + b for b in BUILTINS)}")


def _names(value) -> Optional[list]:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    items = [v.strip() for v in items if v.strip()]
    return items or None


def read_source(source=None, *, loader: str = "auto", us: Optional[str] = None, ds=None, scale: str = "auto",
                layer: Optional[str] = "last", partial: bool = False, n_test=None, n_test_us=None,
                min_us: Optional[float] = None, exclude=None, hparams=None, **table_options) -> Source:
    """See :func:`_read`. Then every row gets the test-set sizes n_test and n_test_us (analysis.test_sizes:
    a column of the input, else ``n_test`` / ``n_test_us``, else a builtin's documented sizes), and the
    models a reader decided do not belong are left out, with a note: those with US accuracy below
    ``min_us``, and those named in ``exclude`` (model ids; an unknown id is an error). The default, as in
    the paper, keeps every model.

    hparams: hyper-parameter columns (list or comma-separated) for App. C/D's analysis: the runs that differ
    in them go to ``Source.hparams`` (see :func:`_hparam_runs`)."""
    src = _read(source, loader=loader, us=us, ds=ds, scale=scale, layer=layer, partial=partial, **table_options)
    src.table.long = attach_test_sizes(src.table.long, src.table.us_name, n_test=n_test, n_test_us=n_test_us,
                                       documented=src.kind == "builtin")
    _leave_out(src, min_us, exclude)
    names = _names(hparams)
    if names:
        src.hparams, src.hparam_names = _hparam_runs(src, names, source, us, ds, scale, table_options)
    return src


def _hparam_runs(src: Source, names: list, source, us, ds, scale, options: dict) -> tuple[pd.DataFrame, list]:
    """The runs that differ in the hyper-parameters ``names``, as a long table with those columns: for
    CLIP_benchmark every run of its lr x epochs grid (its loader's hyper="all"; the study's points keep the
    best run per setting); for a long table whose repeated rows per model were merged by ``duplicates``, the
    table read again with those columns telling runs apart (load_table's ``distinct``); for any other input
    the rows of the table itself (each model with its own values, e.g. scaling-laws-openclip's pre-training
    lr). Models and DS tasks are those of the study."""
    if src.loader == "clip_benchmark":
        runs = T.load_clip_benchmark(src.table.source, hyper="all", scale=scale).long
    elif src.loader == "table" and src.table.n_duplicate_rows:
        if src.table.layout != "long":
            raise InputError(
                f"{src.citation} is a wide table whose repeated model ids were merged ({{param}}); the runs that "
                "differ in the hyper-parameter(s) "f"{', '.join(names)} are among the merged rows. Name those "
                "columns in --id as well (one id per run), or give the runs as a long table (a dataset column)",
                param="duplicates")
        path = src.builtin.path if src.builtin is not None else source
        cols = T.match_names(names, list(T.read_frame(path, options.get("format"))[0].columns), what="column",
                             where=src.citation, param="hparams", label="hyper-parameter column(s)")
        opts = {k: v for k, v in options.items() if k != "duplicates"}
        runs = T.load_table(path, us=us, ds=ds, scale=scale, layout="long", distinct=cols, **opts).long
    else:
        runs = src.table.long
    fixed = {"model", "ds_task", "ds", "us", "shots", "n_test", "n_test_us"}
    known = [c for c in runs.columns if c not in fixed]
    cols = T.match_names(names, known, what="column", where=src.citation, param="hparams",
                         label="hyper-parameter column(s)")
    runs = runs[runs["model"].isin(set(src.long["model"])) & runs["ds_task"].isin(set(src.table.ds_tasks))]
    return runs[["model", "ds_task", "ds", "us", "shots", *cols]].reset_index(drop=True), cols


def _leave_out(src: Source, min_us, exclude) -> None:
    long = src.table.long
    drop = pd.Series(False, index=long.index)
    if exclude is not None:
        names = _names(exclude) or []
        known = set(long["model"].astype(str))
        unknown = [n for n in names if n not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
            raise InputError(f"{{param}} names model(s) not in {src.citation}: {', '.join(map(repr, unknown))}"
                             + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""), param="exclude")
        drop |= long["model"].astype(str).isin(names)
        if names:
            src.notes.append(f"Left out by request: {', '.join(names)}.")
    if min_us is not None:
        if not 0.0 <= float(min_us) <= 1.0:
            raise InputError(f"{{param}} is a US accuracy on 0-1; got {min_us!r}", param="min_us")
        low = long["us"] < float(min_us)
        below = sorted(set(long.loc[low & ~drop, "model"].astype(str)))
        drop |= low
        if below:
            src.notes.append(f"{len(below)} model(s) with US accuracy below {float(min_us):g} left out: "
                             f"{', '.join(below[:10])}" + (" ..." if len(below) > 10 else ""))
    if drop.any():
        kept = long.loc[~drop, "model"].astype(str).unique()
        if len(kept) < 2:
            n_models = long["model"].nunique()
            by_min = min_us is not None and bool((long["us"] < float(min_us)).any())
            raise InputError(f"leaving out models by {{param}} leaves {len(kept)} of the {n_models} models of "
                             f"{src.citation}" + (f" ({kept[0]!r})" if len(kept) else "")
                             + "; a fit needs at least 2: leave out fewer", param="min_us" if by_min else "exclude")
        src.table.long = long[~drop].reset_index(drop=True)
        src.table.ds_tasks = [t for t in src.table.ds_tasks if t in set(src.table.long["ds_task"])]


def _read(source=None, *, loader: str = "auto", us: Optional[str] = None, ds=None, scale: str = "auto",
          layer: Optional[str] = "last", partial: bool = False, **table_options) -> Source:
    """Read ``source`` (None: builtin:openclip; 'builtin:NAME'; a probe run directory; a table file or a
    DataFrame) into a :class:`Source`.

    loader: "auto" (by the rules of the module docstring), "table" (the generic reader), "run", or one
    of the published tables' loaders. us, ds: the upstream column and the DS columns (default: the
    loader's, or every other numeric column). scale: input scale of table accuracies. layer: probe runs
    only. partial: when some DS columns of a generic table cannot be used (constant, out of range,
    empty), leave them out and record why in ``skipped`` instead of refusing the table.
    table_options go to load_table (id, shots_col, format, nan, duplicates; model_col is an alias of id)
    and, where they take them, to the published tables' loaders (timm's takes us, ds, duplicates, nan).
    """
    if loader not in LOADER_CHOICES:
        raise InputError(f"{{param}} {loader!r} is not one of {', '.join(LOADER_CHOICES)}", param="loader")
    ds_list = _names(ds)
    if source is None:
        source = BUILTIN_PREFIX + "openclip"
    builtin = None
    if isinstance(source, str) and source.lower().startswith(BUILTIN_PREFIX):
        builtin = resolve_builtin(source)
        path = builtin.path
    elif isinstance(source, pd.DataFrame):
        path = source
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"input {str(path)!r} does not exist; pass a probe run directory, an accuracy table "
                             f"or one of {', '.join(BUILTIN_PREFIX + b for b in BUILTINS)}")
    if isinstance(path, Path) and path.is_dir() and not is_run_dir(path) and is_timm_results(path):
        if loader not in ("auto", "timm"):
            raise InputError(f"{path} is a timm results folder (results-*.csv); read it with {{param}}='timm' "
                             "(or 'auto'), or point at one file to read it as a table", param="loader")
        loader = "timm"
    elif isinstance(path, Path) and path.is_dir():
        if not is_run_dir(path):
            raise InputError(f"{path} is a directory but neither a probe run (none of manifest.json, "
                             "results.parquet, checkpoints.parquet) nor a timm results folder (no results-*.csv); "
                             "pass a run directory written by `plateaulab probe`, timm's results folder or an "
                             "accuracy table file")
        if loader not in ("auto", "run"):
            raise InputError(f"{path} is a directory (a probe run); {{param}}={loader!r} reads table files",
                             param="loader")
        return _from_run(path, us=us, ds=ds_list, layer=layer)
    if layer not in (None, "last"):
        raise InputError(f"{{param}} applies to probe run directories, not to the table {path}", param="layer")
    if loader == "run":
        raise InputError(f"{{param}}='run' needs a probe run directory; {path} is a file", param="loader")
    if loader == "auto":
        loader = builtin.loader if builtin else PUBLISHED_FILES.get(path.name if isinstance(path, Path) else "",
                                                                    "table")
    if loader == "table":
        table, skipped = _generic(path, us=us, ds=ds_list, scale=scale, partial=partial, **table_options)
        kind = "builtin" if builtin else "table"
        citation = builtin.citation if builtin else T.describe_source(path)
    else:
        table, skipped = _published(path, loader, us=us, ds=ds_list, scale=scale, **table_options), {}
        kind = "builtin" if builtin else "table"
        known = next((b for b in BUILTINS.values() if b.loader == loader), None)
        cite = (builtin or known).citation if (builtin or known) else LOADER_CITATIONS[loader]
        citation = cite + ("" if builtin else f" (read from {path})")
        builtin = builtin or known
    notes = [builtin.note] if builtin is not None and builtin.note and loader != "table" else []
    notes += list(table.notes)
    return Source(table=table, kind=kind, citation=citation, loader=loader, notes=notes, skipped=skipped,
                  builtin=builtin)


def _published(path: Path, loader: str, *, us, ds, scale, **options) -> T.AccuracyTable:
    """A published table by its own loader. Loaders that take us, ds or the table options (duplicates, nan)
    get them; the others' US is fixed and their DS tasks are filtered here."""
    import inspect

    where = str(path)
    accepts = inspect.signature(LOADERS[loader]).parameters
    kwargs = {k: v for k, v in dict(options, us=us, ds=ds).items() if k in accepts and v is not None}
    try:
        table = LOADERS[loader](path, scale=scale, **kwargs)
    except PlateaulabError:
        raise
    except (KeyError, ValueError, OSError) as exc:
        raise InputError(f"{where}: {exc}") from None
    if "us" in kwargs:
        us = None
    if "ds" in kwargs:
        ds = None
    if us is not None and T._fold(us) != T._fold(table.us_name):
        raise InputError(f"{where} is read with the {loader} loader, whose US column is {table.us_name!r}; "
                         f"{{param}}={us!r} does not apply; read the file with the generic table loader to map "
                         "columns yourself",
                         param="us")
    if ds is not None:
        ds = T.match_names(ds, table.ds_tasks, what="DS task", where=where, param="ds", label="DS task(s)")
        table.long = table.long[table.long["ds_task"].isin(ds)].reset_index(drop=True)
        table.ds_tasks = [t for t in ds]
    return table


def _generic(path, *, us, ds, scale, partial: bool, **options) -> tuple[T.AccuracyTable, dict]:
    """load_table on the whole table. With ``partial``, a wide table refused because of some DS columns
    (constant, out of range, empty) is loaded column by column: the bad ones are recorded in ``skipped``
    and the others kept, so that a report covers what it can."""
    kwargs = dict(options, scale=scale)
    if us is not None:
        kwargs["us"] = us
    if ds is not None:
        kwargs["ds"] = ds
    try:
        return T.load_table(path, **kwargs), {}
    except InputError as whole:
        if not partial or us is None:
            raise
        df, _ = T.read_frame(path, options.get("format"))
        split = T.wide_columns(df, us=us, ds=ds, id=options.get("id"), model_col=options.get("model_col"),
                               shots_col=options.get("shots_col"))
        if split is None:
            raise whole from None
        us_col, candidates, keep = split
        good, skipped = [], {}
        for c in candidates:
            try:
                T.load_table(df, **dict(kwargs, us=us_col, ds=[c], keep=keep, layout="wide"))
                good.append(c)
            except InputError as exc:
                skipped[str(c)] = str(exc).replace("<DataFrame>", str(path))
        if not good or not skipped:
            raise whole from None
        table = T.load_table(df, **dict(kwargs, us=us_col, ds=good, keep=keep, layout="wide"))
        table.source = str(path)
        return table, skipped


def _from_run(path: Path, *, us, ds, layer) -> Source:
    run = read_run(path, us=us or DEFAULT_RUN_US, ds=ds, layer=layer)
    notes = list(run.notes)
    if run.layer_rule != "last":
        notes.append(f"Points use layer {run.layer_rule!r} of every checkpoint that has it.")
    elif run.n_layers > 1:
        notes.append("Points use each checkpoint's deepest layer probed on that dataset.")
    return Source(table=run.table, kind="run", citation=str(path), loader="run", notes=notes,
                  layers=run.layers if run.n_layers > 1 else None, layer_rule=run.layer_rule,
                  planted=planted_values(run.manifest))
