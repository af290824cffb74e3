"""Probing a list of blocks and writing their parts: the work of one process, the run's own loop or a
Dask worker's task. Everything a block needs besides its features (labels, few-shot tasks, the
backend) is in a ``RunContext``, built once per process."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from .. import protocol as P
from .parts import part_path, part_problems, part_source, rows_for_block, write_part
from .plan import PlannedBlock, ProbeConfig
from .reader import BlockReader


@dataclass
class RunContext:
    store: object            # FeatureStore
    cfg: ProbeConfig
    backend: object          # a backend module
    ds_cache: dict           # dataset name -> Dataset
    task_cache: dict         # dataset name -> few-shot tasks
    labels_fp: dict          # dataset name -> fingerprint of its labels
    verify: bool = True
    prefetch: bool = True

    @property
    def probes_per(self) -> dict:
        return {name: len(tasks) * len(self.cfg.l2) for name, tasks in self.task_cache.items()}


def build_context(store, cfg: ProbeConfig, backend, datasets, verify: bool, prefetch: bool) -> RunContext:
    """The context of ``datasets`` as a worker builds it, from the store alone: the labels and the
    few-shot tasks are recomputed (they are deterministic), not shipped."""
    ds_cache = {name: store.dataset(name) for name in datasets}
    with warnings.catch_warnings():   # shot counts skipped (on_short="skip") were reported by the client
        warnings.simplefilter("ignore")
        task_cache = {name: P.plan_tasks(ds.y_train, ds.num_classes, cfg.shots, cfg.seeds, name, cfg.on_short)
                      for name, ds in ds_cache.items()}
    labels_fp = {name: ds.fingerprint() for name, ds in ds_cache.items()}
    return RunContext(store, cfg, backend, ds_cache, task_cache, labels_fp, verify, prefetch)


@dataclass
class Stats:
    """What a process did: blocks and probes written, seconds reading/writing and computing."""

    blocks: int = 0
    probes: int = 0
    t_io: float = 0.0
    t_compute: float = 0.0
    unverified: int = 0
    skipped: int = 0          # blocks whose current part was found already written (a retried task)
    cpu: float = 0.0          # CPU seconds of the probing process(es) while they probed these blocks
    # [(checkpoint, dataset, layer, probes, t_io, t_compute, verified)] of each block written, when a
    # list is given (a Dask task's few blocks); None keeps no per-block records (a run of 600,000 blocks).
    done: list | None = None


def probe_blocks(ctx: RunContext, blocks: list[PlannedBlock], run_dir, on_block=None, *, skip_done: bool = False,
                 stats: Stats | None = None, legacy_parts: bool = False) -> Stats:
    """Probe ``blocks`` in order (reading one ahead in a thread when ``ctx.prefetch``), writing each
    block's part atomically as soon as it is scored, then calling ``on_block(block, record)``.

    ``stats`` (updated in place, so a caller still has it when a block raises) counts what was
    done. With ``skip_done``, a block whose part is already current is not probed again: a Dask
    task retried after its worker died redoes only the block that was in flight. ``legacy_parts``:
    whether a part that records no config counts as current (``parts.part_problem``'s ``legacy_ok``).
    Each part records the config hash (``cfg.digest()``) beside its block's fingerprint.
    """
    stats = stats if stats is not None else Stats()
    config = ctx.cfg.digest()
    if skip_done:
        keep = [b for b, _ in part_problems(ctx.store, run_dir, blocks, ctx.probes_per, ctx.labels_fp, config,
                                            legacy_parts)]
        stats.skipped += len(blocks) - len(keep)
        blocks = keep
    cfg, be = ctx.cfg, ctx.backend
    loo = cfg.select == "loo"
    use_val = cfg.select == "val"
    reader = BlockReader(ctx.store, ctx.ds_cache, ctx.task_cache, use_val, getattr(be, "stage", None),
                         ctx.prefetch, verify=ctx.verify, labels_fp=ctx.labels_fp)
    cpu0 = time.process_time()
    try:
        for b, got, waited in reader.iterate(blocks):
            ds = ctx.ds_cache[b.dataset]
            tasks = ctx.task_cache[b.dataset]
            t1 = time.perf_counter()
            scores = be.probe_block(got.x_train, ds.y_train, got.x_test, ds.y_test, tasks, cfg.l2,
                                    ds.num_classes, x_val=got.x_val, y_val=ds.y_val if use_val else None, loo=loo)
            t2 = time.perf_counter()
            write_part(part_path(run_dir, b), rows_for_block(b, got.block, tasks, cfg.l2, cfg, scores),
                       part_source(got.fingerprint, config))
            t_io = waited + (time.perf_counter() - t2)
            n = len(tasks) * len(cfg.l2)
            record = (b.checkpoint, b.dataset, b.layer, n, round(t_io, 6), round(t2 - t1, 6), bool(got.verified))
            stats.blocks += 1
            stats.probes += n
            stats.t_io += t_io
            stats.t_compute += t2 - t1
            stats.unverified += not got.verified
            if stats.done is not None:
                stats.done.append(record)
            if on_block is not None:
                on_block(b, record)
    finally:
        reader.close()
        stats.cpu += time.process_time() - cpu0
    return stats

