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

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import protocol as P
from .errors import PlateaulabError, RunError
from .store import FeatureStore, atomic_write_json
from ._run.manifest import MANIFEST, now, open_manifest, run_lock, session_end
from ._run.parts import (RESULT_COLUMNS, consolidate, part_path, result_schema, rows_for_block,
                         write_checkpoint_table, write_part)
from ._run.plan import PlannedBlock, ProbeConfig, plan_blocks
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

    @property
    def results_path(self) -> Path:
        return self.run_dir / "results.parquet"

    def results(self):
        import pandas as pd

        return pd.read_parquet(self.results_path)


def probe_store(store, run_dir, *, datasets=None, checkpoints=None, layers="all", shots=P.DEFAULT_SHOTS,
                seeds=3, l2=(P.DEFAULT_L2,), select="fixed", backend="auto", quiet=False,
                on_short="error", prefetch: bool = True) -> ProbeRun:
    """Probe every requested block of ``store`` and write the run directory ``run_dir``.

    ``seeds`` is a count (seeds 0..n-1, as big_vision) or a list of seeds. Re-running the same call
    on the same directory resumes; a different config is refused. With ``prefetch`` (the default)
    a reader thread opens, checks and stages block k+1 (store read, float32 conversion and, on a
    GPU, the upload) while block k is probed, so memory holds at most two blocks (one without
    ``prefetch``); results are the same either way.
    """
    from .backends import get_backend

    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    seeds_list = list(range(int(seeds))) if np.isscalar(seeds) else [int(s) for s in seeds]
    l2_list = [float(v) for v in np.atleast_1d(l2)]
    cfg = ProbeConfig(store=str(store.path), datasets=datasets, checkpoints=checkpoints, layers=layers,
                      shots=list(shots), seeds=seeds_list, l2=l2_list, select=select,
                      on_short=on_short).normalised()
    be = get_backend(backend)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        manifest = open_manifest(run_dir, cfg)
        plan = plan_blocks(store, cfg)
        t_start = time.time()
        session = {"backend": be.name, "device": be.device(), "started": now(), "pid": os.getpid()}
        manifest["sessions"].append(session)
        manifest["complete"] = False
        atomic_write_json(run_dir / MANIFEST, manifest)

        datasets_used = sorted({b.dataset for b in plan})
        ds_cache, task_cache = {}, {}
        for name in datasets_used:
            ds = store.dataset(name)
            ds_cache[name] = ds
            task_cache[name] = P.plan_tasks(ds.y_train, ds.num_classes, cfg.shots, cfg.seeds, name, cfg.on_short)
            if cfg.select == "val" and ds.y_val is None:
                raise RunError("{param} 'val' needs validation labels, and dataset " f"{name!r} has none; "
                               "select by 'loo' or add y_val to the dataset", param="select")
        # A dataset whose every shot count was skipped (on_short="skip") has nothing to probe.
        plan = [b for b in plan if task_cache[b.dataset]]
        if not plan:
            raise RunError("every requested shot count was skipped for every dataset (classes too small); "
                           "lower {param}", param="shots")
        todo = [b for b in plan if not part_path(run_dir, b).exists()]
        probes_per = {name: len(task_cache[name]) * len(cfg.l2) for name in datasets_used}
        total = sum(probes_per[b.dataset] for b in todo)
        done_blocks = done_probes = 0
        t_io = t_compute = 0.0
        bar = _progress(total, quiet, desc=f"probe [{be.name}]")
        loo = cfg.select == "loo"
        use_val = cfg.select == "val"
        reader = BlockReader(store, ds_cache, task_cache, use_val, getattr(be, "stage", None), prefetch)
        try:
            for b, (block, x_train, x_test, x_val), waited in reader.iterate(todo):
                ds = ds_cache[b.dataset]
                tasks = task_cache[b.dataset]
                t1 = time.perf_counter()
                scores = be.probe_block(x_train, ds.y_train, x_test, ds.y_test, tasks, cfg.l2,
                                        ds.num_classes, x_val=x_val, y_val=ds.y_val if use_val else None,
                                        loo=loo)
                t2 = time.perf_counter()
                write_part(part_path(run_dir, b), rows_for_block(b, block, tasks, cfg.l2, cfg, scores))
                t_io += waited + (time.perf_counter() - t2)
                t_compute += t2 - t1
                done_blocks += 1
                done_probes += probes_per[b.dataset]
                bar.update(probes_per[b.dataset])
                _after_block(b, done_blocks)
        except PlateaulabError:
            session.update(session_end(t_start, done_blocks, done_probes, t_io, t_compute, "failed"))
            atomic_write_json(run_dir / MANIFEST, manifest)
            raise
        finally:
            reader.close()
            bar.close()
        complete = all(part_path(run_dir, b).exists() for b in plan)
        if complete:
            consolidate(run_dir, plan)
            write_checkpoint_table(run_dir, store, sorted({b.checkpoint for b in plan}))
        session.update(session_end(t_start, done_blocks, done_probes, t_io, t_compute,
                                   "complete" if complete else "stopped"))
        manifest["complete"] = complete
        manifest["blocks"] = len(plan)
        manifest["probes"] = sum(probes_per[b.dataset] for b in plan)
        atomic_write_json(run_dir / MANIFEST, manifest)
    return ProbeRun(run_dir=run_dir, config=cfg, blocks_total=len(plan), blocks_done_now=done_blocks,
                    probes_done_now=done_probes, seconds=time.time() - t_start)


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
    manifest = json.loads(mpath.read_text())
    res = run_dir / "results.parquet"
    if not manifest.get("complete") or not res.exists():
        raise RunError(f"run {run_dir} is incomplete (results.parquet missing); rerun the same "
                       "`plateaulab probe` command to finish it")
    results = pd.read_parquet(res)
    ck = run_dir / "checkpoints.parquet"
    checkpoints = pd.read_parquet(ck) if ck.exists() else pd.DataFrame({"checkpoint": results["checkpoint"].unique()})
    return results, checkpoints, manifest
