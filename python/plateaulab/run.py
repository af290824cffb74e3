"""Probe runs: every block of a store through one backend, streamed, resumable, with a manifest.

A run directory holds::

    manifest.json          config (and its hash), versions, backend, device, sessions with timings
    parts/<ck>/<ds>/<layer>.parquet   one file per finished block, written atomically, recording its
                                      source: block and labels fingerprints, config hash
    results.parquet        all parts in plan order, one row per (checkpoint, layer, dataset, shots, seed, l2)
    checkpoints.parquet    checkpoint metadata, joinable on `checkpoint`
    .lock                  held exclusively by a run (or a Dask client), shared by --shard processes
    shards/K-of-N/         a shard's own lock and record (manifest.json), written by that shard only

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
- ``_run.manifest``: manifest.json and the run directory's lock;
- ``_run.work``: probing a list of blocks and writing their parts (this loop's, and a Dask worker's);
- ``_run.shard``, ``_run.locks``: ``--shard K/N`` (assignment, records, reports) and the flocks;
- ``_run.distributed``, ``_run.dask_tasks``: Dask as the engine (imported only when asked for).

Scaling out is docs/SCALE.md.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import protocol as P
from .errors import PlateaulabError, RunError, StoreError
from .store import FeatureStore, encode_name, remove_temp_files
from ._store.files import TEMP_RE
from ._run.locks import release, try_lock, wait_lock
from ._run.manifest import (LOCK, MANIFEST, MANIFEST_LOCK, now, open_manifest, run_lock, session_end,
                            write_manifest)
from ._run.runjson import read_run_json
from ._run.parts import (RESULT_COLUMNS, STALE, check_part_paths, consolidate, part_path, part_problems,
                         result_schema, write_checkpoint_table)
from ._run.plan import PlannedBlock, ProbeConfig, check_resources, incomplete_blocks, plan_blocks, seed_list
from ._run.shard import (active_shards, all_records, in_shard, label as shard_label, missing_report,
                         parse_shard, read_record, shard_dir, shard_of, write_record)
from ._run.work import RunContext, Stats, probe_blocks

__all__ = ["ProbeConfig", "PlannedBlock", "ProbeRun", "RESULT_COLUMNS", "load_run", "plan_blocks",
           "probe_store", "result_schema"]


def _check_run_dir(run_dir: Path, store: FeatureStore) -> None:
    """Refuse a run directory that is a file, or that lies inside the store (it would read as a checkpoint)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} exists and is not a directory; {{param}} must be a run directory (new or "
                       "earlier)", param="run_dir")
    target, root = run_dir.resolve(), store.path.resolve()
    if target == root or root in target.parents:
        raise RunError(f"run directory {run_dir} lies inside the feature store {store.path}; write the run "
                       "elsewhere ({param})", param="run_dir")


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
                on_short="error", prefetch: bool = True, verify: bool = True, strict: bool = False,
                workers=None, scheduler: str | None = None, scheduler_file=None, shard=None) -> ProbeRun:
    """Probe every requested block of ``store`` and write the run directory ``run_dir``.

    ``seeds`` is a count (seeds 0..n-1, as big_vision) or a list of seeds. Re-running the same call
    on the same directory resumes; a different config is refused. With ``prefetch`` (the default)
    a reader thread opens, verifies, checks and stages block k+1 (store read, checksums, float32
    conversion and, on a GPU, the upload) while block k is probed, so memory holds at most two
    blocks (one without ``prefetch``); results are the same either way. ``verify`` checks each
    block's checksums as it is read. A finished part whose block has changed since (or that cannot
    be read) is recomputed and listed in the manifest; with ``strict`` a changed block, or an
    incomplete block among those asked for, is refused instead.

    Beyond one process (docs/SCALE.md): ``workers`` (a count, or "auto") runs the blocks on a local
    Dask cluster of that many single-threaded worker processes (with ``backend="cuda"``, one per
    visible GPU); ``scheduler`` (an address) or ``scheduler_file`` runs them on an existing Dask
    cluster. This process then holds the run directory, writes the manifest and consolidates; the
    workers write the parts. ``shard`` ("K/N") probes only the checkpoints of shard K of N (by a
    stable hash of their names), beside the other shards writing into the same directory at the
    same time; the last shard to finish consolidates once every part of the run is current (it warns
    and leaves the run incomplete otherwise), and so does a later run without ``shard`` once every
    part exists (it reports what is missing otherwise). The table is the same in every case.

    Everything that can be refused from the store and the options alone (names, metadata, shots,
    seeds, memory, cluster options) is checked before the run directory is touched, so a refused
    call leaves nothing behind that would stand in the way of the corrected one.
    """
    from .backends import get_backend

    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    seeds_list = seed_list(seeds)
    l2_list = [float(v) for v in np.atleast_1d(l2)]
    cfg = ProbeConfig(store=str(store.path), datasets=datasets, checkpoints=checkpoints, layers=layers,
                      shots=list(shots), seeds=seeds_list, l2=l2_list, select=select,
                      on_short=on_short).normalised()
    shard = parse_shard(shard)
    cluster = _cluster_options(workers, scheduler, scheduler_file, backend)
    be = get_backend(backend)
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, store)
    # A shard plans (reads the block.json of) only its own checkpoints: N shards do not each read the
    # metadata of the whole store. Whether the whole run is complete is checked at the end.
    keep = None if shard is None else (lambda ck: in_shard(ck, shard))
    plan, ds_cache, task_cache, incomplete = _prepare(store, cfg, run_dir, strict, keep=keep,
                                                      processes=_local_processes(cluster, be.name))
    labels_fp = {name: ds.fingerprint() for name, ds in ds_cache.items()}
    ctx = RunContext(store, cfg, be, ds_cache, task_cache, labels_fp, verify=verify, prefetch=prefetch)
    probes_per = ctx.probes_per
    mine = plan

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the run directory {run_dir} ({exc.strerror}); pick another {{param}}",
                       param="run_dir") from None
    with run_lock(run_dir, shard):
        if shard is None:
            removed = remove_temp_files(run_dir)
            before = _config_hash_on_disk(run_dir)
            manifest = open_manifest(run_dir, cfg)
            record = manifest
        else:
            removed, manifest, record, before = _open_shard(run_dir, cfg, shard, mine)
        # Parts that record no config (written before parts did) are kept only in a run directory whose
        # manifest recorded this config before this session: not in one just started afresh.
        legacy_ok = before == cfg.digest()
        todo, recomputed = _resume(ctx, run_dir, mine, strict, legacy_ok)
        if shard is None and cluster is None and todo:
            _refuse_missing_shards(run_dir, plan, todo)
        if shard is not None and todo:
            _mark_incomplete(run_dir, cfg)
        t_start = time.time()
        session = {"backend": be.name, "device": be.device(), "started": now(), "pid": os.getpid(),
                   "host": socket.gethostname(), "engine": "dask" if cluster else "local",
                   "verify": bool(verify), "recomputed": recomputed, "temp_files_removed": len(removed)}
        if shard is not None:
            session.update(shard=shard_label(shard), shard_blocks=len(mine))
        record["sessions"].append(session)
        if shard is None:
            manifest["complete"] = False
            manifest["incomplete_blocks"] = len(incomplete)
            write_manifest(run_dir, manifest)
        else:
            write_record(run_dir, shard, record)

        total = sum(probes_per[b.dataset] for b in todo)
        stats = Stats()
        n_workers = f" x {cluster.workers} workers" if cluster and cluster.workers is not None else ""
        desc = f"probe [{be.name}{n_workers}]" + (f" shard {shard_label(shard)}" if shard else "")
        bar = _progress(total, quiet, desc=desc)

        def on_block(b, record_):
            bar.update(record_[3])
            _after_block(b, stats.blocks)

        complete = False
        try:
            if cluster is None:
                probe_blocks(ctx, todo, run_dir, on_block, stats=stats, legacy_parts=legacy_ok)
            elif todo:
                from ._run.distributed import connect, run_probe

                t_connect = time.perf_counter()
                with connect(cluster, be.name) as client:
                    session["scheduler"] = client.scheduler.address
                    session["seconds_cluster_start"] = round(time.perf_counter() - t_connect, 3)
                    run_probe(client, ctx, todo, run_dir, bar, stats, session, legacy_parts=legacy_ok)
            complete = all(part_path(run_dir, b).exists() for b in plan)   # a shard: its own blocks
            if complete and shard is None:
                t_finish = time.perf_counter()
                _finish(run_dir, store, plan, manifest)
                session["seconds_consolidate"] = round(time.perf_counter() - t_finish, 3)
        except (PlateaulabError, KeyboardInterrupt) as exc:
            status = "failed" if isinstance(exc, PlateaulabError) else "interrupted"
            session.update(session_end(t_start, stats.blocks, stats.probes, stats.t_io, stats.t_compute, status),
                           unverified_blocks=stats.unverified)
            if isinstance(exc, PlateaulabError):
                session["error"] = str(exc)
            with contextlib.suppress(PlateaulabError):   # e.g. a full disk: the last record written stays
                write_manifest(run_dir, manifest) if shard is None else write_record(run_dir, shard, record)
            raise
        finally:
            bar.close()
        if verify and stats.unverified:
            warnings.warn(f"{stats.unverified} block(s) record no checksum in block.json for some or all of their "
                          "splits and were probed unverified; re-extract them (new blocks record XXH3-64 for every "
                          "split) to have them checked", stacklevel=2)
        session.update(session_end(t_start, stats.blocks, stats.probes, stats.t_io, stats.t_compute,
                                   "complete" if complete else "stopped"), unverified_blocks=stats.unverified,
                       seconds_cpu=round(stats.cpu, 3))
        if shard is None:
            manifest["complete"] = complete
            manifest["blocks"] = len(plan)
            manifest["probes"] = sum(probes_per[b.dataset] for b in plan)
            write_manifest(run_dir, manifest)
        else:
            write_record(run_dir, shard, record)
    if shard is not None and complete:
        # The last shard to finish consolidates, if no other process holds the directory by then.
        _consolidate_after_shards(run_dir, store, cfg, shard, strict)
    return ProbeRun(run_dir=run_dir, config=cfg, blocks_total=len(plan), blocks_done_now=stats.blocks,
                    probes_done_now=stats.probes, seconds=time.time() - t_start, recomputed=recomputed)


def _cluster_options(workers, scheduler, scheduler_file, backend):
    """The Dask options, checked (and Dask's presence) before anything is touched; None for a run in
    this process."""
    if workers is None and scheduler is None and scheduler_file is None:
        return None
    from ._run.distributed import ClusterOptions

    return ClusterOptions(workers, scheduler, scheduler_file, backend).checked()


def _open_shard(run_dir: Path, cfg: ProbeConfig, shard, mine):
    """A shard's start, under the short manifest lock (other shards may be starting too): remove the
    temporary files only this shard can have left (in its checkpoints' part directories, in its own
    directory, and the manifest's in the run directory itself), create manifest.json if this is the
    first process here or check the config against it, and read this shard's own record. Returns
    (temporary files removed, manifest, record, the config hash manifest.json recorded before)."""
    with wait_lock(run_dir / MANIFEST_LOCK, f"run directory {run_dir}"):
        others = [s for s, _ in active_shards(run_dir) if s != shard]
        if any(s[1] != shard[1] for s in others):
            other = next(s for s in others if s[1] != shard[1])
            raise RunError(f"run directory {run_dir} is being written by shard {shard_label(other)}; the shards "
                           f"running at one time must split the run the same way (N = {other[1]}, not {shard[1]}): "
                           "use the same N in {param}, or wait for them to finish", param="shard")
        removed = remove_temp_files(shard_dir(run_dir, shard))
        for p in run_dir.iterdir():
            if p.is_file() and TEMP_RE.match(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
        for ck in sorted({b.checkpoint for b in mine}):
            d = run_dir / "parts" / encode_name(ck, "checkpoint")
            if d.is_dir():
                removed += remove_temp_files(d)
        before = _config_hash_on_disk(run_dir)
        manifest = open_manifest(run_dir, cfg, may_restart=not others)
        if before != cfg.digest():     # a new run directory, or one started afresh with this config
            write_manifest(run_dir, manifest)
    record = read_record(run_dir, shard) or {"format": "plateaulab-probe-shard", "version": 1,
                                              "shard": shard_label(shard), "config_hash": cfg.digest(),
                                              "sessions": []}
    if record.get("config_hash") != cfg.digest():
        record = {**record, "config_hash": cfg.digest(), "sessions": []}
    return removed, manifest, record, before


def _mark_incomplete(run_dir: Path, cfg: ProbeConfig) -> None:
    """A shard with blocks to (re)compute: the run is not complete any more (its results.parquet, if
    any, no longer holds what its parts will), so manifest.json says so, under the manifest lock."""
    with wait_lock(run_dir / MANIFEST_LOCK, f"run directory {run_dir}"):
        manifest = open_manifest(run_dir, cfg, may_restart=False)
        if manifest.get("complete"):
            manifest["complete"] = False
            write_manifest(run_dir, manifest)


def _config_hash_on_disk(run_dir: Path):
    """The config hash manifest.json records, or None (no manifest, or one that is not a run's:
    ``open_manifest`` then says what is wrong with it)."""
    path = run_dir / MANIFEST
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        manifest = read_run_json(path, run_dir)
    except RunError:
        return None
    return manifest.get("config_hash") if isinstance(manifest, dict) else None


def _refuse_missing_shards(run_dir: Path, plan, todo) -> None:
    """A run without shards on a directory that shards have written only consolidates: it names
    the shards whose blocks are missing instead of probing a share of the run in one process."""
    records = all_records(run_dir)
    if not records:
        return
    raise RunError(f"run directory {run_dir} was written by shards ({', '.join(sorted(records))}) and "
                   f"{len(todo)} of its {len(plan)} blocks have no current part: {missing_report(run_dir, todo, records)}. "
                   "Rerun those shards with the same options (they resume), then repeat this command to consolidate; "
                   "or compute every missing block in this process with {param} 0/1", param="shard")


def _finish(run_dir: Path, store, plan, manifest: dict) -> None:
    """Consolidate every part into results.parquet, write checkpoints.parquet, and fold the shards'
    records (if shards wrote this run) into the manifest."""
    consolidate(run_dir, plan)
    write_checkpoint_table(run_dir, store, sorted({b.checkpoint for b in plan}))
    records = all_records(run_dir)
    if records:
        manifest["shards"] = records


def _consolidate_after_shards(run_dir: Path, store, cfg: ProbeConfig, shard, strict: bool) -> bool:
    """Consolidate the run if every shard of this N says it is complete, every part of the whole run
    is current (exists, and was computed from the blocks and labels as they are now, by this config:
    the check a resumed run makes) and this process can hold the run directory alone now (no other
    shard still running, no other process); True if it did. The records are read first, so only the
    last shard to finish plans the whole run. A run some of whose parts are not current is left
    incomplete (manifest.json says so) and reported in a warning naming the shards to rerun."""
    records = all_records(run_dir)
    n = shard[1]
    for k in range(n):
        rec = records.get(shard_label((k, n)))
        if not rec or not rec["sessions"] or rec["sessions"][-1].get("status") != "complete":
            return False
    f = try_lock(run_dir / LOCK, exclusive=True)
    if f is None:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # each shard has warned about its own blocks
            plan, ds_cache, task_cache, _ = _prepare(store, cfg, run_dir, strict)
        ctx = RunContext(store, cfg, None, ds_cache, task_cache, {name: ds.fingerprint() for name, ds in ds_cache.items()})
        manifest = open_manifest(run_dir, cfg, may_restart=False)   # its config is cfg's, or this raises
        problems = part_problems(store, run_dir, plan, ctx.probes_per, ctx.labels_fp, cfg.digest(), legacy_ok=True)
        if problems:
            if manifest.get("complete"):
                manifest["complete"] = False
                write_manifest(run_dir, manifest)
            b, reason = problems[0]
            owners = ", ".join(shard_label((k, n)) for k in sorted({shard_of(p.checkpoint, n) for p, _ in problems}))
            warnings.warn(f"run directory {run_dir} is not consolidated: {len(problems)} of its {len(plan)} blocks "
                          f"have no current part, e.g. checkpoint {b.checkpoint!r}, dataset {b.dataset!r}, layer "
                          f"{b.layer!r} ({reason}); rerun shard(s) {owners} with the same options (they recompute "
                          "those blocks, and the last to finish consolidates)", stacklevel=3)
            return False
        _finish(run_dir, store, plan, manifest)
        manifest["complete"] = True
        manifest["blocks"] = len(plan)
        manifest["probes"] = sum(ctx.probes_per[b.dataset] for b in plan)
        manifest["consolidated"] = {"by": f"shard {shard_label(shard)}, the last to finish", "pid": os.getpid(),
                                    "host": socket.gethostname(), "at": now()}
        write_manifest(run_dir, manifest)
        return True
    finally:
        release(f)


def _local_processes(cluster, backend: str) -> int:
    """How many worker processes of this run share this machine's memory: a local cluster's count
    (``--workers``; ``auto`` is a process per core, or per visible GPU), else one (a plain run, or an
    existing cluster whose workers run elsewhere)."""
    if cluster is None or cluster.workers is None:
        return 1
    if cluster.workers != "auto":
        return int(cluster.workers)
    if backend == "cuda":
        from ._run.distributed import cuda_devices

        return max(1, len(cuda_devices()))
    return os.cpu_count() or 1


def _prepare(store, cfg: ProbeConfig, run_dir: Path, strict: bool, keep=None, processes: int = 1):
    """Every check that needs only the store and the options, before the run directory is touched:
    the plan, incomplete blocks, checkpoint metadata, labels, shots against class sizes, memory
    and the part files' names. Returns (plan, datasets, tasks per dataset, incomplete blocks).
    ``keep`` (a shard's) restricts all of it to the checkpoints it accepts; that plan may be empty."""
    plan = plan_blocks(store, cfg, keep=keep)
    incomplete = incomplete_blocks(store, cfg, keep=keep)
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
    check_resources(cfg, plan, {name: (ds.num_classes, np.bincount(ds.y_train, minlength=ds.num_classes),
                                       len(ds.y_test), 0 if ds.y_val is None else len(ds.y_val))
                                for name, ds in ds_cache.items()}, processes=processes)
    task_cache = {name: P.plan_tasks(ds.y_train, ds.num_classes, cfg.shots, cfg.seeds, name, cfg.on_short)
                  for name, ds in ds_cache.items()}
    # A dataset whose every shot count was skipped (on_short="skip") has nothing to probe.
    plan = [b for b in plan if task_cache[b.dataset]]
    if not plan and (keep is None or task_cache):
        raise RunError("every requested shot count was skipped for every dataset (classes too small); "
                       "lower {param}", param="shots")
    ds_cache = {name: ds for name, ds in ds_cache.items() if task_cache[name]}
    task_cache = {name: task_cache[name] for name in ds_cache}
    check_part_paths(run_dir, plan)
    return plan, ds_cache, task_cache, incomplete


def _resume(ctx: RunContext, run_dir: Path, plan, strict: bool, legacy_ok: bool):
    """The blocks still to probe, and the finished parts that must be recomputed (with why): a part
    that cannot be read, lacks a column, holds the wrong number of rows, records no source, was
    computed by another config, or came from a block or labels that have changed since
    (``parts.part_problem``; ``legacy_ok`` as there). With ``strict`` a changed block is refused
    instead."""
    todo, recomputed = [], []
    for b, reason in part_problems(ctx.store, run_dir, plan, ctx.probes_per, ctx.labels_fp, ctx.cfg.digest(),
                                   legacy_ok):
        todo.append(b)
        if reason == "missing":
            continue
        where = f"checkpoint {b.checkpoint!r}, dataset {b.dataset!r}, layer {b.layer!r}"
        if reason == STALE and strict:
            raise RunError(f"{where}: {reason}; the finished result is stale. Run without {{param}} "
                           "to recompute it, or restore the block", param="strict")
        warnings.warn(f"{where}: {reason}; recomputing it", stacklevel=3)
        recomputed.append({"checkpoint": b.checkpoint, "dataset": b.dataset, "layer": b.layer, "reason": reason})
    return todo, recomputed


def _progress(total: int, quiet: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="probe", desc=desc, disable=quiet, smoothing=0.1, dynamic_ncols=True)


def load_run(run_dir):
    """(results, checkpoints, manifest) of a finished run directory."""
    import pandas as pd

    run_dir = Path(run_dir)
    mpath = run_dir / MANIFEST
    if not (mpath.exists() or mpath.is_symlink()):
        raise RunError(f"{run_dir} is not a plateaulab run directory: manifest.json is missing")
    manifest = read_run_json(mpath, run_dir, advice="rerun the `plateaulab probe` command that made the run, "
                                                    "in a new directory")
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
