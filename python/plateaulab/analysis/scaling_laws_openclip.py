"""The controlled scale-up of Cherti et al., "Reproducible scaling laws for contrastive language-image
learning" (CVPR 2023; LAION-AI/scaling-laws-openclip, commit 652b1e74), read as an accuracy table.

zeroshot_results.csv is long: one row per (model, downstream dataset), zero-shot ``acc1``. A model is a
``name`` (the checkpoint file, or ``openai`` for OpenAI's CLIP) together with its ``arch``: the id is
``name/arch``. US is ``imagenet1k``; DS is every other classification dataset except the averages over
datasets (``imagenet_robustness``, ``vtab``, ``vtab+``) and ``voc2007_multilabel`` (scored by mean average
precision, no accuracy); the two retrieval tasks are left out.

Kept per model: ``arch``, ``upstream_dataset``, ``samples_seen`` (exact), ``samples_seen_pretty`` (the nominal
level: 3B, 13B, 34B), ``gmacs``, ``gmacs_total``; joined: ``params`` (arch_info.csv ``mparams`` x 1e6, image
and text towers), ``lr`` (trained_models_info.csv; OpenAI's models have none) and ``data_size``, the number of
image-text pairs of the LAION subset named by ``upstream_dataset`` (LAION-80M 8e7, LAION-400M 4e8, LAION-2B
2e9; NaN for OpenAI's CLIP-WIT, another dataset, so it is not placed on LAION's data-size axis).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .accuracy import AccuracyTable
from .tables import load_table

__all__ = ["load_scaling_laws_openclip", "SCALING_LAWS_US", "SCALING_LAWS_NOT_DS"]

SCALING_LAWS_US = "imagenet1k"
#: classification rows that are no single downstream task: averages over tasks, and a multi-label task
#: without an accuracy
SCALING_LAWS_NOT_DS = ("imagenet_robustness", "vtab", "vtab+", "voc2007_multilabel")
_PACKAGED = Path(__file__).resolve().parent.parent / "data" / "scaling_laws_openclip"
_FILES = ("zeroshot_results.csv", "arch_info.csv", "trained_models_info.csv")
_NEED = ("name", "arch", "downstream_dataset", "acc1", "task", "upstream_dataset", "samples_seen",
         "samples_seen_pretty", "gmacs", "gmacs_total")


def _folder(path) -> Path:
    p = Path(path) if path is not None else _PACKAGED
    return p.parent if p.is_file() else p


def laion_size(dataset) -> float:
    """Image-text pairs of a LAION subset named like 'LAION-400M' or 'LAION-2B'; NaN for anything else."""
    m = re.fullmatch(r"LAION-(\d+(?:\.\d+)?)([MB])", str(dataset).strip(), flags=re.I)
    if not m:
        return float("nan")
    return float(m.group(1)) * (1e6 if m.group(2).upper() == "M" else 1e9)


def _read(folder: Path):
    missing = [f for f in _FILES if not (folder / f).exists()]
    if missing:
        raise InputError(f"{folder} does not hold the scaling-laws-openclip tables: missing {', '.join(missing)} "
                         "beside zeroshot_results.csv; read another file of that name with {param}='table'",
                         param="loader")
    results = pd.read_csv(folder / "zeroshot_results.csv")
    lacking = [c for c in _NEED if c not in results.columns]
    if lacking:
        raise InputError(f"{folder / 'zeroshot_results.csv'} does not look like scaling-laws-openclip's "
                         f"zeroshot_results.csv: missing {', '.join(lacking)}")
    return results, pd.read_csv(folder / "arch_info.csv"), pd.read_csv(folder / "trained_models_info.csv")


def load_scaling_laws_openclip(path=None, *, scale="auto", duplicates: str = "error") -> AccuracyTable:
    """The scale-up grid as an :class:`AccuracyTable` (module docstring). ``path``: the folder holding the
    three files, or zeroshot_results.csv in it; None reads the copy shipped in plateaulab/data."""
    folder = _folder(path)
    results, arch, trained = _read(folder)
    rows = results[results["task"] == "zeroshot_classification"]
    rows = rows[~rows["downstream_dataset"].isin(SCALING_LAWS_NOT_DS)]
    rows = rows.assign(params=rows["arch"].map(arch.drop_duplicates("model").set_index("model")["mparams"]) * 1e6,
                       lr=rows["name"].map(trained.drop_duplicates("name").set_index("name")["lr"]),
                       data_size=rows["upstream_dataset"].map(laion_size))
    unknown = sorted(set(rows.loc[rows["params"].isna(), "arch"]))
    if unknown:
        raise InputError(f"{folder / 'arch_info.csv'} has no parameter count for {', '.join(unknown)}")
    keep = ["arch", "upstream_dataset", "samples_seen", "samples_seen_pretty", "gmacs", "gmacs_total", "params",
            "data_size", "lr"]
    table = load_table(rows.reset_index(drop=True), id=["name", "arch"], us=SCALING_LAWS_US,
                       dataset_col="downstream_dataset", acc_col="acc1", scale=scale, layout="long", keep=keep,
                       duplicates=duplicates)
    table.source = str(folder / "zeroshot_results.csv")
    table.long["lr"] = pd.to_numeric(table.long["lr"], errors="coerce").astype(np.float64)
    return table
