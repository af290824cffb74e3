"""A run's manifest.json (config and its hash, versions, one record per session) and its lock."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import RunError
from ..store import atomic_write_json
from .plan import ProbeConfig

MANIFEST = "manifest.json"
LOCK = ".lock"


def versions() -> dict:
    import numba
    import pandas
    import pyarrow

    from .. import __version__

    return {"plateaulab": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
            "numba": numba.__version__, "pandas": pandas.__version__, "pyarrow": pyarrow.__version__,
            "platform": platform.platform()}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on the run directory; a second process is refused at once."""
    import fcntl

    f = open(run_dir / LOCK, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunError(f"run directory {run_dir} is in use by another plateaulab process; "
                       "wait for it to finish or use another {param}", param="run_dir") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def session_end(t_start, blocks, probes, t_io, t_compute, status) -> dict:
    wall = time.time() - t_start
    return {"finished": now(), "status": status, "blocks": blocks, "probes": probes,
            "seconds": round(wall, 3), "seconds_io": round(t_io, 3), "seconds_compute": round(t_compute, 3),
            "probes_per_second": round(probes / wall, 2) if wall > 0 else None}


def open_manifest(run_dir: Path, cfg: ProbeConfig) -> dict:
    """The manifest of the run in ``run_dir`` if its config is ``cfg``, or a new one for an empty directory."""
    path = run_dir / MANIFEST
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RunError(f"{path} is not valid JSON ({exc}); remove the run directory or pick another "
                           "{param}", param="run_dir") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("sessions"), list):
            raise RunError(f"{path} is not a plateaulab run manifest; remove the run directory or pick another "
                           "{param}", param="run_dir")
        if manifest.get("config_hash") != cfg.digest() and not _holds_results(run_dir):
            # A run that finished no block (e.g. refused while reading its first one) holds nothing
            # to keep: the corrected command starts it afresh instead of being refused.
            warnings.warn(f"{run_dir}: its earlier run finished no block; starting it afresh with the new config",
                          stacklevel=3)
            return _new(cfg)
        if manifest.get("config_hash") != cfg.digest():
            old = manifest.get("config", {})
            diff = [k for k, v in asdict(cfg).items() if old.get(k) != v]
            details = "; ".join(f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in diff)
            raise RunError(f"run directory {run_dir} holds a run with a different config ({details}); "
                           "use a new {param}, or repeat the original options to resume", param="run_dir")
        return manifest
    if any(p for p in run_dir.iterdir() if p.name != LOCK):
        raise RunError(f"{run_dir} is not empty and holds no plateaulab run; pick an empty or new {{param}}",
                       param="run_dir")
    return _new(cfg)


def _new(cfg: ProbeConfig) -> dict:
    return {"format": "plateaulab-probe-run", "version": 1, "config": asdict(cfg),
            "config_hash": cfg.digest(), "versions": versions(), "created": now(), "sessions": []}


def _holds_results(run_dir: Path) -> bool:
    parts = run_dir / "parts"
    return (run_dir / "results.parquet").exists() or (parts.is_dir() and any(parts.rglob("*.parquet")))


def write_manifest(run_dir: Path, manifest: dict) -> None:
    atomic_write_json(run_dir / MANIFEST, manifest, error=RunError)
