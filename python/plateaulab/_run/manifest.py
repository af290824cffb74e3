"""A run's manifest.json (config and its hash, versions, one record per session) and its lock."""

from __future__ import annotations

import contextlib
import platform
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import RunError
from ..store import atomic_write_json
from .runjson import read_run_json
from .plan import ProbeConfig

MANIFEST = "manifest.json"
LOCK = ".lock"
#: Held while a shard reads, creates or checks manifest.json (shards run side by side).
MANIFEST_LOCK = ".manifest.lock"


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
def run_lock(run_dir: Path, shard: tuple[int, int] | None = None):
    """Hold the run directory: exclusively (a plain run, a Dask client), or, for ``shard`` K/N,
    shared with the other shards plus that shard's own lock exclusively. A process that cannot have
    what it asks for is refused at once, naming who holds it."""
    from .locks import describe_holder, read_holder, release, try_lock
    from .shard import active_shards, describe_active, label, shard_dir, SHARD_LOCK

    lock = run_dir / LOCK
    held = []
    try:
        if shard is None:
            f = try_lock(lock, exclusive=True)
            if f is None:
                active = active_shards(run_dir)
                if active:
                    raise RunError(f"run directory {run_dir} is being written by {describe_active(active)}; a run "
                                   "without shards consolidates once every shard has finished: repeat this command "
                                   "then (or use another {param})", param="run_dir")
                raise RunError(f"run directory {run_dir} is in use by another plateaulab process "
                               f"({describe_holder(read_holder(lock))}); wait for it to finish or use another "
                               "{param}", param="run_dir")
            held.append(f)
        else:
            f = try_lock(lock, exclusive=False)
            if f is None:
                raise RunError(f"run directory {run_dir} is in use by a run without shards "
                               f"({describe_holder(read_holder(lock))}); shards run only beside other shards: "
                               "wait for it to finish", param="shard")
            held.append(f)
            sdir = shard_dir(run_dir, shard)
            try:
                sdir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunError(f"cannot create the shard directory {sdir} ({exc.strerror or exc}); it and "
                               f"{run_dir / 'shards'} must be directories this process can write: remove a file "
                               "in their place, or check the permissions") from None
            g = _lock_own_shard(sdir / SHARD_LOCK)
            if g is None:
                raise RunError(f"shard {label(shard)} of run directory {run_dir} is already running "
                               f"({describe_holder(read_holder(sdir / SHARD_LOCK))}); each {{param}} runs once "
                               "at a time", param="shard")
            held.append(g)
        yield
    finally:
        for f in reversed(held):
            release(f)


#: Seconds a shard keeps trying to take its own lock before it is refused as already running: another
#: process may be holding it for an instant only, to see whether it is held (``locks.is_held``).
OWN_LOCK_WAIT = 1.0
OWN_LOCK_POLL = 0.02


def _lock_own_shard(path: Path):
    """A shard's own lock, taken exclusively, or None when another process holds it for longer than
    OWN_LOCK_WAIT seconds (a second copy of the shard; not another process's probe of it)."""
    from .locks import try_lock

    deadline = time.monotonic() + OWN_LOCK_WAIT
    while True:
        f = try_lock(path, exclusive=True)
        if f is not None or time.monotonic() >= deadline:
            return f
        time.sleep(OWN_LOCK_POLL)


def session_end(t_start, blocks, probes, t_io, t_compute, status) -> dict:
    wall = time.time() - t_start
    return {"finished": now(), "status": status, "blocks": blocks, "probes": probes,
            "seconds": round(wall, 3), "seconds_io": round(t_io, 3), "seconds_compute": round(t_compute, 3),
            "probes_per_second": round(probes / wall, 2) if wall > 0 else None}


def open_manifest(run_dir: Path, cfg: ProbeConfig, *, may_restart: bool = True) -> dict:
    """The manifest of the run in ``run_dir`` if its config is ``cfg``, or a new one for an empty directory.

    A directory whose run finished no block is started afresh with ``cfg`` when ``may_restart`` (a
    shard may not while other shards are running: they are writing blocks of the old config)."""
    path = run_dir / MANIFEST
    if path.exists() or path.is_symlink():
        manifest = read_run_json(path, run_dir)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("sessions"), list):
            raise RunError(f"{path} is not a plateaulab run manifest; remove the run directory or pick another "
                           "{param}", param="run_dir")
        if manifest.get("config_hash") != cfg.digest() and may_restart and not _holds_results(run_dir):
            # A run that finished no block (e.g. refused while reading its first one) holds nothing
            # to keep: the corrected command starts it afresh instead of being refused.
            warnings.warn(f"{run_dir}: its earlier run finished no block; starting it afresh with the new config",
                          stacklevel=3)
            from .shard import remove_records

            remove_records(run_dir)   # records of shards of the old config
            return _new(cfg)
        if manifest.get("config_hash") != cfg.digest():
            old = manifest.get("config", {})
            diff = [k for k, v in asdict(cfg).items() if old.get(k) != v]
            details = "; ".join(f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in diff)
            raise RunError(f"run directory {run_dir} holds a run with a different config ({details}); "
                           "use a new {param}, or repeat the original options to resume", param="run_dir")
        return manifest
    if any(p for p in run_dir.iterdir() if p.name not in (LOCK, MANIFEST_LOCK, "shards")):
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
