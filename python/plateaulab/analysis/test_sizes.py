"""Test-set sizes behind the accuracies: what the measurement-noise interval and the identifiability
profile need (an accuracy on n test examples has binomial standard error sqrt(p (1 - p) / n)).

Where a size comes from, first match wins:

1. a column of the table: ``n_test`` (DS) and ``n_test_us`` (US); a probe run records ``n_test`` itself;
2. the sizes given by the caller (``n_test``; ``n_test_us`` defaults to ``n_test``);
3. for the builtin tables, the documented size of the dataset's standard test split
   (plateaulab/data/test_set_sizes.csv: dataset, aliases, n_test, split and the source it comes from);
   datasets whose evaluation split we could not pin down are left unknown rather than guessed.

Unknown sizes are NaN; the analyses then fall back to the model bootstrap and say so.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["documented_size", "attach_test_sizes", "SIZES_FILE"]

SIZES_FILE = Path(__file__).resolve().parent.parent / "data" / "test_set_sizes.csv"


def _key(name) -> str:
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


@functools.lru_cache(maxsize=1)
def _documented() -> dict:
    df = pd.read_csv(SIZES_FILE)
    out = {}
    for _, row in df.iterrows():
        for name in [row["dataset"], *str(row["aliases"]).split("|")]:
            out[_key(name)] = int(row["n_test"])
    return out


def documented_size(dataset) -> float:
    """The documented test-split size of a dataset (by name or alias, case-insensitive), or NaN."""
    return float(_documented().get(_key(dataset), np.nan))


def _check(value, name: str):
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{{param}} must be a whole number of test examples; got {value!r}", param=name) from None
    if not (np.isfinite(v) and v >= 1 and v == round(v)):
        raise InputError(f"{{param}} must be a whole number of test examples >= 1; got {value!r}", param=name)
    return v


def attach_test_sizes(long: pd.DataFrame, us_name: str, *, n_test=None, n_test_us=None,
                      documented: bool = False) -> pd.DataFrame:
    """``long`` with float columns n_test (DS) and n_test_us (US) filled by the rules of the module."""
    n_test, n_test_us = _check(n_test, "n_test"), _check(n_test_us, "n_test_us")
    out = long.copy()
    ds_sizes = pd.to_numeric(out["n_test"], errors="coerce") if "n_test" in out else pd.Series(np.nan, index=out.index)
    if n_test is not None:
        ds_sizes = ds_sizes.fillna(n_test)
    if documented:
        ds_sizes = ds_sizes.fillna(out["ds_task"].map(documented_size))
    us_sizes = (pd.to_numeric(out["n_test_us"], errors="coerce") if "n_test_us" in out
                else pd.Series(np.nan, index=out.index))
    fallback = n_test_us if n_test_us is not None else n_test
    if fallback is not None:
        us_sizes = us_sizes.fillna(fallback)
    if documented:
        us_sizes = us_sizes.fillna(documented_size(us_name))
    out["n_test"] = ds_sizes.astype(float)
    out["n_test_us"] = us_sizes.astype(float)
    return out
