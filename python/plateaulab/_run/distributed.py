"""Dask as the engine of a probe run or an extraction (``--workers N``, ``--scheduler``, ``--scheduler-file``).

Needs ``dask.distributed`` (``pip install 'plateaulab[cluster]'``); nothing else in plateaulab imports
this module, so ``import plateaulab`` and a run without those options never import Dask.

Roles. The client (the ``plateaulab probe`` process) plans the run, holds the run directory's lock,
writes manifest.json, submits the work and consolidates. Workers only write parts: each task probes
a *unit* (a few blocks of one checkpoint and dataset, in plan order, with the usual read-ahead
inside it) and writes each block's part atomically, as a plain run does, the moment it is scored.
The store and the run directory must be on a file system that the client and every worker share.

Faults. A worker that dies (kill -9 included) takes with it only the block it was probing: the
scheduler re-runs its unfinished tasks elsewhere, and a re-run task skips the blocks whose part is
already current (``work.probe_blocks(skip_done=True)``). A part is written whole or not at all and
one file per block holds it, so a table consolidated from the parts can never hold a block twice. A
client that dies releases its lock (a ``flock``); the same command then resumes like a plain run.

Progress. Every written block is reported to the client as a Dask event (``log_event``), which
feeds one tqdm bar for the whole run (probes/s); the task results carry the same records, so none
is lost when an event is.

Threads. Each local worker is one process with one task thread, and BLAS (OpenBLAS/MKL/OpenMP),
numexpr and numba are limited to one thread in it: the environment of the worker processes says so
before numpy loads, and a worker plugin limits any BLAS already loaded (threadpoolctl) on workers
this process did not start (``--scheduler``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import RunError
from .threads import THREAD_ENV


#: Largest unit of work, in blocks (all of one checkpoint and dataset: a ViT-B's 12 blocks + pre-logits).
#: Chosen by measurement (bench/bench_distributed.py, bench/RESULTS.md, issue 13): a Dask task costs
#: ~12 ms against a reference block's ~2.7 s on one core, yet one-block units ran 8.8 % slower than
#: 6-block ones on 2 workers, as each unit's first block is read without read-ahead. Larger units
#: keep the read-ahead across a checkpoint's blocks (more so where a block takes milliseconds, on a
#: GPU) and still cost at most one block on a worker's death (finished parts are kept).
UNIT_MAX_BLOCKS = 13
#: Seconds the client waits for parts that workers on other machines reported written to show up
#: here (a network file system's directory caches; see parts.missing_parts).
PART_VISIBLE_WAIT = 60.0
#: Seconds to reach a scheduler (an address that does not answer is an error, not a wait).
CONNECT_TIMEOUT = 30.0
#: Units per worker at least, for balance at the end of a run (units shrink towards one block to reach it).
UNITS_PER_WORKER = 2


# --------------------------------------------------------------------------- options and clusters

@dataclass
class ClusterOptions:
    workers: object = None          # int >= 1 or "auto": a local cluster of that many worker processes
    scheduler: str | None = None    # address of a running scheduler
    scheduler_file: str | None = None
    backend: str = "auto"

    def checked(self) -> "ClusterOptions":
        """Refuse inconsistent options, and a missing Dask, before anything is touched."""
        given = [p for p in ("workers", "scheduler", "scheduler_file") if getattr(self, p) is not None]
        if len(given) > 1:
            raise RunError("{param} " f"and {given[1]} exclude each other: a local cluster (workers), or an existing "
                           "one (scheduler or scheduler_file)", param=given[0])
        workers = self.workers
        if workers is not None and workers != "auto":
            try:
                ok = int(workers) == float(workers) and int(workers) >= 1
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise RunError("{param} must be a positive number of worker processes or 'auto'; " f"got {workers!r}",
                               param="workers")
            workers = int(workers)
        if self.scheduler_file is not None and not Path(self.scheduler_file).is_file():
            raise RunError("{param} " f"{self.scheduler_file} does not exist (a scheduler writes it when started with "
                           "`dask scheduler --scheduler-file PATH`)", param="scheduler_file")
        if given:
            require_dask(given[0])
        return ClusterOptions(workers, self.scheduler, self.scheduler_file, self.backend)


def require_dask(param: str) -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise RunError("{param} runs on Dask, which is not installed: pip install 'plateaulab[cluster]' "
                       "(dask[distributed])", param=param) from None


def cuda_devices() -> list[str]:
    """The GPUs a local cluster may use: CUDA_VISIBLE_DEVICES's entries, else every device CUDA sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import cupy

        return [str(i) for i in range(cupy.cuda.runtime.getDeviceCount())]
    except Exception:   # no CuPy, no driver, no device: none visible
        return []


def local_worker_count(workers, backend: str) -> int:
    if backend == "cuda":
        n_gpu = len(cuda_devices())
        if n_gpu == 0:
            raise RunError("{param} with the cuda backend starts one worker per visible GPU, and none is visible "
                           "(CUDA_VISIBLE_DEVICES, or no device)", param="workers")
        if workers == "auto":
            return n_gpu
        if workers > n_gpu:
            raise RunError("{param} " f"= {workers} with the cuda backend: one worker per GPU, and {n_gpu} are visible",
                           param="workers")
        return workers
    return (os.cpu_count() or 1) if workers == "auto" else workers


def gpu_spec_cluster(devices: list[str], **kw):
    """One worker process per GPU without dask-cuda: a Nanny per device with CUDA_VISIBLE_DEVICES set
    to that device alone (so the backend's device 0 is that GPU), one task thread each."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {f"gpu-{d}": {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": 0, "host": "127.0.0.1",
                                                      "env": {**THREAD_ENV, "CUDA_VISIBLE_DEVICES": d},
                                                      "dashboard": False}}
               for d in devices}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False, "dashboard_address": None}}
    import dask

    with dask.config.set(NANNY_ENV_UNSET):
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR, **kw)


#: Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers, which also turns off glibc's
#: adaptive mmap threshold: every large temporary of a block (float32 splits, weights, logit chunks)
#: is then mapped and unmapped afresh, ~4x the page faults of a plain run and ~0.15 s more per
#: reference block (bench/RESULTS.md, issue 13). The workers started here keep glibc's default.
#: The statistical profiler of a Dask worker samples every thread's stack every 10 ms; a probe worker
#: has nothing to gain from it (bench/RESULTS.md, issue 13).
NANNY_ENV_UNSET = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                   "distributed.worker.profile.enabled": False}


def start_local_cluster(n: int, backend: str):
    import dask
    from distributed import LocalCluster

    with dask.config.set(NANNY_ENV_UNSET):
        if backend == "cuda":
            devices = cuda_devices()[:n]
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                return gpu_spec_cluster(devices)
            return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(devices), threads_per_worker=1,
                                    dashboard_address=None, silence_logs=logging.ERROR)
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                            host="127.0.0.1", memory_limit=0, env=dict(THREAD_ENV), silence_logs=logging.ERROR)


@contextlib.contextmanager
def connect(opts: ClusterOptions, backend: str, timeout: float = 60.0):
    """A Dask client on the cluster ``opts`` asks for (started here and closed after, when local),
    with at least one worker connected and every worker limited to one BLAS thread."""
    # Dask logs its own view of a lost connection, with tracebacks, from the client; plateaulab
    # reports what happened (and what to do) in one line instead. Restored when the run ends.
    names = ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        with _connected(opts, backend, timeout) as client:
            yield client
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def _connected(opts: ClusterOptions, backend: str, timeout: float):
    from distributed import Client

    cluster = None
    if opts.workers is not None:
        cluster = start_local_cluster(local_worker_count(opts.workers, backend), backend)
        client = Client(cluster)
    else:
        try:
            if opts.scheduler_file is not None:
                client = Client(scheduler_file=str(opts.scheduler_file), timeout=CONNECT_TIMEOUT)
            else:
                client = Client(opts.scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            param = "scheduler_file" if opts.scheduler_file is not None else "scheduler"
            raise RunError(f"cannot reach the Dask scheduler {opts.scheduler or opts.scheduler_file} ({exc}); "
                           "check the {param}", param=param) from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise RunError(f"the Dask scheduler {client.scheduler.address} has had no worker for {timeout:.0f} s; "
                           "start workers (`dask worker ADDRESS`) and repeat the command") from None
        from .dask_tasks import SingleThreaded

        client.register_plugin(SingleThreaded(), name="plateaulab-single-threaded")
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


def cluster_info(client) -> dict:
    """{worker address: worker_info()}, refusing workers of another plateaulab version."""
    from .. import __version__
    from .dask_tasks import worker_info

    info = client.run(worker_info)
    other = {a: i["plateaulab"] for a, i in info.items() if i["plateaulab"] != __version__}
    if other:
        addr, v = next(iter(other.items()))
        raise RunError(f"Dask worker {addr} runs plateaulab {v}, this client {__version__}; every worker must run "
                       "the same plateaulab (install it in the workers' environment)")
    return info


# --------------------------------------------------------------------------- probe runs

def make_units(todo, n_workers: int, max_blocks: int | None = None) -> list[list]:
    """The blocks to probe, in plan order, cut into units of consecutive blocks of one (checkpoint,
    dataset), of at most ``max_blocks`` (UNIT_MAX_BLOCKS) and small enough that every worker gets
    UNITS_PER_WORKER."""
    max_blocks = UNIT_MAX_BLOCKS if max_blocks is None else max_blocks
    size = max(1, min(max_blocks, math.ceil(len(todo) / max(1, UNITS_PER_WORKER * n_workers))))
    units, cur = [], []
    for b in todo:
        if cur and ((b.checkpoint, b.dataset) != (cur[0].checkpoint, cur[0].dataset) or len(cur) >= size):
            units.append(cur)
            cur = []
        cur.append(b)
    if cur:
        units.append(cur)
    return units


def run_probe(client, ctx, todo, run_dir: Path, bar, stats, session: dict, legacy_parts: bool = False) -> None:
    """Probe ``todo`` on the cluster of ``client``; fill ``stats`` (and the bar) as blocks are written,
    and ``session`` with the workers and units. The first failing task's error is raised (the other
    tasks are cancelled; every part written so far stays). ``legacy_parts``: whether a retried task
    may keep a part that records no config (``parts.part_problem``'s ``legacy_ok``)."""
    from concurrent.futures import CancelledError

    from distributed import as_completed
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    from .dask_tasks import probe_unit

    workers = cluster_info(client)
    units = make_units(todo, len(workers))
    topic = f"plateaulab-probe-{uuid.uuid4().hex[:12]}"
    seen: set = set()
    per_worker: dict = {}
    busy: dict = {}
    lock = threading.Lock()

    def add(record, worker):
        key = tuple(record[:3])
        with lock:
            if key in seen:
                return
            seen.add(key)
            per_worker[worker] = per_worker.get(worker, 0) + 1
            busy[worker] = busy.get(worker, 0.0) + record[4] + record[5]
            stats.blocks += 1
            stats.probes += record[3]
            stats.t_io += record[4]
            stats.t_compute += record[5]
            stats.unverified += not record[6]
            bar.update(record[3])

    def on_event(event):
        _, msg = event
        add(msg["record"], msg["worker"])

    job = {"cfg": ctx.cfg, "backend": ctx.backend.name, "verify": ctx.verify, "prefetch": ctx.prefetch,
           "run_dir": str(Path(run_dir).resolve()), "topic": topic, "labels_fp": ctx.labels_fp,
           "legacy_parts": bool(legacy_parts)}
    session.update(workers={a: {k: v for k, v in i.items() if k != "plateaulab"} for a, i in workers.items()},
                   units=len(units), unit_blocks=max(len(u) for u in units) if units else 0)
    client.subscribe_topic(topic, on_event)
    futures = [client.submit(probe_unit, job, unit, pure=False,
                             key=f"plateaulab-probe-{topic[-12:]}-{i:06d}") for i, unit in enumerate(units)]
    skipped, setup = 0, {}
    try:
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except KilledWorker as exc:
                raise RunError(f"a unit of {len(units[futures.index(fut)])} block(s) was running on a Dask worker "
                               f"each of the times one died ({exc}); the blocks finished so far are kept: find why the "
                               "workers die (memory?) and repeat the command") from None
            for record in res["done"]:
                add(record, res["worker"])
            if res["error"] is not None:
                raise res["error"]
            skipped += res["skipped"]
            stats.cpu += res.get("cpu", 0.0)
            setup[res["worker"]] = setup.get(res["worker"], 0.0) + res["setup"]
    except (CommClosedError, CancelledError) as exc:
        # The scheduler went away (or cancelled the run's tasks): what the workers wrote is kept.
        with contextlib.suppress(Exception):
            client.cancel(futures, force=True)
        why = " ".join(str(exc).split())
        raise RunError(f"lost the Dask cluster {session.get('scheduler', '')} mid-run ({type(exc).__name__}: {why}); "
                       "every block finished so far is kept: repeat the command to resume") from None
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(futures, force=True)
        raise
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic)
        session["blocks_per_worker"] = dict(per_worker)
        session["seconds_busy_per_worker"] = {w: round(t, 3) for w, t in busy.items()}
        session["blocks_found_done_on_retry"] = skipped
        session["seconds_worker_setup"] = {w: round(t, 3) for w, t in setup.items()}
        with contextlib.suppress(Exception):
            session["workers_at_end"] = len(client.scheduler_info().get("workers", {}))
    from .parts import missing_parts

    lost = missing_parts(run_dir, todo, wait=PART_VISIBLE_WAIT)
    if lost:
        b = lost[0]
        raise RunError(f"{len(lost)} block(s) were reported done by Dask workers but have no part in {run_dir}, e.g. "
                       f"checkpoint {b.checkpoint!r}, dataset {b.dataset!r}, layer {b.layer!r}: the run directory must "
                       "be on a file system shared by the client and every worker, at the same path")


# --------------------------------------------------------------------------- extraction

def run_extract(cluster: ClusterOptions, task, specs, store, inputs: dict, opt, metadata, device) -> list[dict]:
    """Run ``task(job, spec, dataset, inputs)`` (the extract package's per-pair unit) as one Dask task
    per (checkpoint, dataset) pair of ``specs`` x ``inputs``; return every pair's report (a dict), in
    pair order. Workers write the store's blocks (atomically, as a plain extraction does); a pair
    whose worker dies is re-run elsewhere and writes only its missing blocks."""
    import dataclasses

    from distributed import as_completed
    from distributed.scheduler import KilledWorker
    from tqdm.auto import tqdm

    from ..errors import InputError

    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if cluster.workers is not None and kind == "cuda":
        opt = dataclasses.replace(opt, device="cuda")   # each local worker sees its one GPU as cuda:0
    show = opt.progress
    opt = dataclasses.replace(opt, progress=False)      # one bar, here, for the whole extraction
    reports = []
    with connect(cluster, kind) as client:
        cluster_info(client)
        token = uuid.uuid4().hex[:12]
        job = {"token": token, "store": str(Path(store.path).resolve()), "opt": opt, "metadata": metadata}
        pairs = [(spec, name) for spec in specs for name in inputs]
        futures = [client.submit(task, job, spec, name, inputs[name], pure=False,
                                 key=f"plateaulab-extract-{token}-{i:06d}") for i, (spec, name) in enumerate(pairs)]
        bar = tqdm(total=len(futures), unit="pair", desc=f"extract [{len(client.scheduler_info()['workers'])} workers]",
                   disable=not show, dynamic_ncols=True)
        rows = secs = 0.0
        try:
            for fut in as_completed(futures):
                try:
                    got = fut.result()
                except KilledWorker as exc:
                    spec, name = pairs[futures.index(fut)]
                    raise InputError(f"checkpoint {spec.name!r}, dataset {name!r} was being extracted on a Dask worker "
                                     f"each of the times one died ({exc}); the pairs finished so far are kept: find "
                                     "why the workers die (memory?) and repeat the command") from None
                if got["error"] is not None:
                    raise got["error"]
                for r in got["pairs"]:
                    reports.append(r)
                    if r["status"] == "extracted":
                        rows += r["rows"]
                        secs += r["seconds"]
                bar.update(1)
                if secs > 0:
                    bar.set_postfix_str(f"{rows / secs:.0f} images/s per worker")
        except BaseException:
            with contextlib.suppress(Exception):
                client.cancel(futures, force=True)
            raise
        finally:
            bar.close()
    order = {(s.name, n): i for i, (s, n) in enumerate(pairs)}
    reports.sort(key=lambda r: order.get((r["checkpoint"], r["dataset"]), len(order)))
    return reports
