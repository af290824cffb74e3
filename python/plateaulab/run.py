"""Probe runs: every block of a store through one backend, streamed, resumable, with a manifest.

A run directory holds::

    manifest.json          config (and its hash), versions, backend, device, sessions with timings
    parts/<ck>/<ds>/<layer>.parquet   one file per finished block, written atomically
    results.parquet        all parts in plan order, one row per (checkpoint, layer, dataset, shots, seed, l2)
    checkpoints.parquet    checkpoint metadata, joinable on `checkpoint`

A block's part file appears only when the block is complete (temporary name, fsync, rename), so a
run killed at any moment restarts with the same command, skips finished blocks and writes the same
table as an uninterrupted run. The config is hashed; pointing a different config at an existing
run directory is refused. Memory holds at most two blocks: the one being probed and the one the
reader thread reads ahead (one without read-ahead), so peak RSS does not grow with the number of
checkpoints.

This module is the run loop (``probe_store``) and the public face of runs; each concept it uses
lives in a module of ``plateaulab._run``:

- ``_run.plan``: the config, its hash, and the blocks it asks for (``plan_blocks``);
- ``_run.reader``: opening, checking and staging blocks one ahead in a worker thread;
- ``_run.parts``: the rows of a block, its parquet part, the results and checkpoint tables;
- ``_run.manifest``: manifest.json and the run directory's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import protocol as P
from .errors import PlateaulabError, RunError, StoreError
from .store import FeatureStore, remove_temp_files
from ._run.manifest import MANIFEST, now, open_manifest, run_lock, session_end, write_manifest
from ._run.parts import (RESULT_COLUMNS, block_fingerprint, check_part_paths, consolidate, part_path,
                         read_part_source, result_schema, rows_for_block, write_checkpoint_table, write_part)
from ._run.plan import PlannedBlock, ProbeConfig, check_resources, incomplete_blocks, plan_blocks, seed_list
from ._run.reader import BlockReader

__all__ = ["ProbeConfig", "PlannedBlock", "ProbeRun", "RESULT_COLUMNS", "load_run", "plan_blocks",
           "probe_store", "result_schema"]


def _after_block(b: PlannedBlock, done_blocks: int) -> None:
    """Called after each block's part is written (``done_blocks`` so far in this session). Does
    nothing; the tests replace it to interrupt a run at a chosen block, as a crash would."""


@dataclass
class ProbeRun:
    run_dir: Path
    config: ProbeConfig
    blocks_total: int
    blocks_done_now: int
    probes_done_now: int
    seconds: float
    recomputed: list = field(default_factory=list)   # finished parts recomputed this session, with why

    @property
    def results_path(self) -> Path:
        return self.run_dir / "results.parquet"

    def results(self):
        import pandas as pd

        return pd.read_parquet(self.results_path)


def probe_store(store, run_dir, *, datasets=None, checkpoints=None, layers="all", shots=P.DEFAULT_SHOTS,
                seeds=3, l2=(P.DEFAULT_L2,), select="fixed", backend="auto", quiet=False,
                on_short="error", prefetch: bool = True, verify: bool = True, strict: bool = False) -> ProbeRun:
    """Probe every requested block of ``store`` and write the run directory ``run_dir``.

    ``seeds`` is a count (seeds 0..n-1, as big_vision) or a list of seeds. Re-running the same call
    on the same directory resumes; a different config is refused. With ``prefetch`` (the default)
    a reader thread opens, verifies, checks and stages block k+1 (store read, checksums, float32
    conversion and, on a GPU, the upload) while block k is probed, so memory holds at most two
    blocks (one without ``prefetch``); results are the same either way. ``verify`` checks each
    block's checksums as it is read. A finished part whose block has changed since (or that cannot
    be read) is recomputed and listed in the manifest; with ``strict`` a changed block, or an
    incomplete block among those asked for, is refused instead.

    Everything that can be refused from the store and the options alone (names, metadata, shots,
    seeds, memory) is checked before the run directory is touched, so a refused call leaves nothing
    behind that would stand in the way of the corrected one.
    """
    from .backends import get_backend

    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    seeds_list = seed_list(seeds)
    l2_list = [float(v) for v in np.atleast_1d(l2)]
    cfg = ProbeConfig(store=str(store.path), datasets=datasets, checkpoints=checkpoints, layers=layers,
                      shots=list(shots), seeds=seeds_list, l2=l2_list, select=select,
                      on_short=on_short).normalised()
    be = get_backend(backend)
    run_dir = Path(run_dir)
    plan, ds_cache, task_cache, incomplete = _prepare(store, cfg, run_dir, strict)
    probes_per = {name: len(task_cache[name]) * len(cfg.l2) for name in ds_cache}
    labels_fp = {name: ds.fingerprint() for name, ds in ds_cache.items()}

    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        removed = remove_temp_files(run_dir)
        manifest = open_manifest(run_dir, cfg)
        todo, recomputed = _resume(store, run_dir, plan, probes_per, labels_fp, strict)
        t_start = time.time()
        session = {"backend": be.name, "device": be.device(), "started": now(), "pid": os.getpid(),
                   "verify": bool(verify), "recomputed": recomputed, "temp_files_removed": len(removed)}
        manifest["sessions"].append(session)
        manifest["complete"] = False
        manifest["incomplete_blocks"] = len(incomplete)
        write_manifest(run_dir, manifest)

        total = sum(probes_per[b.dataset] for b in todo)
        done_blocks = done_probes = unverified = 0
        t_io = t_compute = 0.0
        bar = _progress(total, quiet, desc=f"probe [{be.name}]")
        loo = cfg.select == "loo"
        use_val = cfg.select == "val"
        reader = BlockReader(store, ds_cache, task_cache, use_val, getattr(be, "stage", None), prefetch,
                             verify=verify, labels_fp=labels_fp)
        try:
            for b, got, waited in reader.iterate(todo):
                ds = ds_cache[b.dataset]
                tasks = task_cache[b.dataset]
                t1 = time.perf_counter()
                scores = be.probe_block(got.x_train, ds.y_train, got.x_test, ds.y_test, tasks, cfg.l2,
                                        ds.num_classes, x_val=got.x_val, y_val=ds.y_val if use_val else None,
                                        loo=loo)
                t2 = time.perf_counter()
                write_part(part_path(run_dir, b), rows_for_block(b, got.block, tasks, cfg.l2, cfg, scores),
                           got.fingerprint)
                t_io += waited + (time.perf_counter() - t2)
                t_compute += t2 - t1
                done_blocks += 1
                done_probes += probes_per[b.dataset]
                unverified += not got.verified
                bar.update(probes_per[b.dataset])
                _after_block(b, done_blocks)
            complete = all(part_path(run_dir, b).exists() for b in plan)
            if complete:
                consolidate(run_dir, plan)
                write_checkpoint_table(run_dir, store, sorted({b.checkpoint for b in plan}))
        except PlateaulabError:
            session.update(session_end(t_start, done_blocks, done_probes, t_io, t_compute, "failed"),
                           unverified_blocks=unverified)
            with contextlib.suppress(PlateaulabError):   # e.g. a full disk: the last manifest written stays
                write_manifest(run_dir, manifest)
            raise
        finally:
            reader.close()
            bar.close()
        if verify and unverified:
            warnings.warn(f"{unverified} block(s) record no checksum in block.json and were probed unverified; "
                          "re-extract them (new blocks record XXH3-64) to have them checked", stacklevel=2)
        session.update(session_end(t_start, done_blocks, done_probes, t_io, t_compute,
                                   "complete" if complete else "stopped"), unverified_blocks=unverified)
        manifest["complete"] = complete
        manifest["blocks"] = len(plan)
        manifest["probes"] = sum(probes_per[b.dataset] for b in plan)
        write_manifest(run_dir, manifest)
    return ProbeRun(run_dir=run_dir, config=cfg, blocks_total=len(plan), blocks_done_now=done_blocks,
                    probes_done_now=done_probes, seconds=time.time() - t_start, recomputed=recomputed)


def _prepare(store, cfg: ProbeConfig, run_dir: Path, strict: bool):
    """Every check that needs only the store and the options, before the run directory is touched:
    the plan, incomplete blocks, checkpoint metadata, labels, shots against class sizes, memory
    and the part files' names. Returns (plan, datasets, tasks per dataset, incomplete blocks)."""
    plan = plan_blocks(store, cfg)
    incomplete = incomplete_blocks(store, cfg)
    if incomplete:
        ck, ds, layer = incomplete[0]
        msg = (f"{len(incomplete)} requested block(s) are incomplete (a directory without block.json), e.g. "
               f"checkpoint {ck!r}, dataset {ds!r}, layer {layer!r}")
        if strict:
            raise StoreError(msg + "; re-extract them, or run without {param} to skip them", param="strict")
        warnings.warn(msg + "; they are skipped (re-extract them to include them)", stacklevel=3)
    for ck in sorted({b.checkpoint for b in plan}):
        store.checkpoint_meta(ck)             # validated now, not after every block has been probed
    datasets_used = sorted({b.dataset for b in plan})
    ds_cache = {name: store.dataset(name) for name in datasets_used}
    for name, ds in ds_cache.items():
        if cfg.select == "val" and ds.y_val is None:
            raise RunError("{param} 'val' needs validation labels, and dataset " f"{name!r} has none; "
                           "select by 'loo' or add y_val to the dataset", param="select")
    check_resources(cfg, plan, {name: (ds.num_classes, np.bincount(ds.y_train, minlength=ds.num_classes))
                                for name, ds in ds_cache.items()})
    task_cache = {name: P.plan_tasks(ds.y_train, ds.num_classes, cfg.shots, cfg.seeds, name, cfg.on_short)
                  for name, ds in ds_cache.items()}
    # A dataset whose every shot count was skipped (on_short="skip") has nothing to probe.
    plan = [b for b in plan if task_cache[b.dataset]]
    if not plan:
        raise RunError("every requested shot count was skipped for every dataset (classes too small); "
                       "lower {param}", param="shots")
    ds_cache = {name: ds for name, ds in ds_cache.items() if task_cache[name]}
    task_cache = {name: task_cache[name] for name in ds_cache}
    check_part_paths(run_dir, plan)
    return plan, ds_cache, task_cache, incomplete


def _resume(store, run_dir: Path, plan, probes_per, labels_fp, strict: bool):
    """The blocks still to probe, and the finished parts that must be recomputed (with why): a part
    that cannot be read, holds the wrong number of rows, records no source, or came from a block or
    labels that have changed since. With ``strict`` a changed block is refused instead."""
    import pyarrow as pa

    todo, recomputed = [], []
    for b in plan:
        p = part_path(run_dir, b)
        if not p.exists():
            todo.append(b)
            continue
        where = f"checkpoint {b.checkpoint!r}, dataset {b.dataset!r}, layer {b.layer!r}"
        try:
            n_rows, source = read_part_source(p)
        except (OSError, pa.ArrowException) as exc:
            reason = f"its part {p} cannot be read ({exc})"
        else:
            if n_rows != probes_per[b.dataset]:
                reason = f"its part holds {n_rows} rows, not {probes_per[b.dataset]}"
            elif source is None:
                reason = "its part records no source fingerprint (written by an older plateaulab)"
            elif source != block_fingerprint(store, b, labels_fp[b.dataset]):
                reason = "the block or its dataset's labels changed after its part was written"
                if strict:
                    raise RunError(f"{where}: {reason}; the finished result is stale. Run without {{param}} "
                                   "to recompute it, or restore the block", param="strict")
            else:
                continue
        warnings.warn(f"{where}: {reason}; recomputing it", stacklevel=3)
        recomputed.append({"checkpoint": b.checkpoint, "dataset": b.dataset, "layer": b.layer, "reason": reason})
        todo.append(b)
    return todo, recomputed


def _progress(total: int, quiet: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="probe", desc=desc, disable=quiet, smoothing=0.1, dynamic_ncols=True)


def load_run(run_dir):
    """(results, checkpoints, manifest) of a finished run directory."""
    import pandas as pd

    run_dir = Path(run_dir)
    mpath = run_dir / MANIFEST
    if not mpath.exists():
        raise RunError(f"{run_dir} is not a plateaulab run directory: manifest.json is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{mpath} is not valid JSON ({exc}); rerun the `plateaulab probe` command that made "
                       "the run, in a new directory") from None
    if not isinstance(manifest, dict):
        raise RunError(f"{mpath} is not a plateaulab run manifest (a JSON object)")
    res = run_dir / "results.parquet"
    if not manifest.get("complete") or not res.exists():
        raise RunError(f"run {run_dir} is incomplete (results.parquet missing); rerun the same "
                       "`plateaulab probe` command to finish it")
    results = pd.read_parquet(res)
    ck = run_dir / "checkpoints.parquet"
    checkpoints = pd.read_parquet(ck) if ck.exists() else pd.DataFrame({"checkpoint": results["checkpoint"].unique()})
    return results, checkpoints, manifest
