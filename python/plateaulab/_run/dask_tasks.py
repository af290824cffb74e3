"""What runs inside a Dask worker: the thread-limiting plugin and the tasks (a probe unit, an
extraction pair). Imported only where Dask is installed and asked for (see ``distributed``)."""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import time
import warnings
from pathlib import Path

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import PlateaulabError, RunError
from .threads import THREAD_ENV


class SingleThreaded(WorkerPlugin):
    """One BLAS/OpenMP/numba thread in every worker process: the environment for libraries not yet
    loaded, threadpoolctl for a BLAS already loaded (workers this process did not start)."""

    idempotent = True

    def setup(self, worker):
        for k, v in THREAD_ENV.items():
            os.environ[k] = v
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)


def worker_info() -> dict:
    """What the manifest records of a worker: where it runs, plateaulab's version, its BLAS threads."""
    from .. import __version__

    blas = None
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_info

        blas = sorted({int(i.get("num_threads", 0)) for i in threadpool_info()})
    return {"pid": os.getpid(), "host": socket.gethostname(), "plateaulab": __version__, "blas_threads": blas,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


#: This worker process's RunContexts, most recently used last; at most CONTEXTS_MAX are kept (a
#: long-lived cluster serves run after run, and each context holds a dataset's labels and tasks).
_CONTEXTS: "collections.OrderedDict" = collections.OrderedDict()
_CONTEXTS_LOCK = threading.Lock()
CONTEXTS_MAX = 4


def _worker_context(job: dict, dataset: str):
    """This worker process's RunContext for ``dataset`` of the job's run, built once; and the seconds
    this call spent building it (0 when it was built already). The key holds the fingerprint of the
    labels the client planned with, so a dataset relabelled since an earlier run on this cluster
    is read again, never probed with the labels of the earlier run."""
    from ..backends import get_backend
    from ..store import FeatureStore
    from .work import build_context

    cfg = job["cfg"]
    key = (cfg.store, cfg.digest(), job["backend"], job["verify"], job["prefetch"], dataset,
           job["labels_fp"][dataset])
    t0 = time.perf_counter()
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is not None:
            _CONTEXTS.move_to_end(key)
            return ctx, 0.0
        host = socket.gethostname()
        try:
            store = FeatureStore.open(cfg.store)
        except PlateaulabError as exc:
            raise RunError(f"worker on {host}: {exc} (the store must be on a file system shared by the client "
                           "and every worker, at the same path)") from None
        ctx = build_context(store, cfg, get_backend(job["backend"]), [dataset], job["verify"], job["prefetch"])
        if ctx.labels_fp[dataset] != job["labels_fp"][dataset]:
            raise RunError(f"worker on {host} reads other labels for dataset {dataset!r} than the client: the store "
                           f"{cfg.store} must be the same files for the client and every worker (a shared file "
                           "system)")
        _CONTEXTS[key] = ctx
        while len(_CONTEXTS) > CONTEXTS_MAX:
            _CONTEXTS.popitem(last=False)
    return ctx, time.perf_counter() - t0


def probe_unit(job: dict, blocks: list) -> dict:
    """Probe one unit of blocks on this worker, writing their parts; return what it did. Blocks whose
    part is already current (written before this task's worker died) are skipped. A plateaulab error
    is returned (``"error"``) for the client to raise, with the blocks finished before it."""
    from .manifest import MANIFEST
    from .work import Stats, probe_blocks

    run_dir = Path(job["run_dir"])
    worker = get_worker()
    if not (run_dir / MANIFEST).exists():
        return {"worker": worker.address, "done": [], "skipped": 0, "setup": 0.0, "error": RunError(
            f"worker on {socket.gethostname()}: run directory {run_dir} is not there: it must be on a file system "
            "shared by the client and every worker, at the same path")}
    try:
        ctx, setup = _worker_context(job, blocks[0].dataset)
    except PlateaulabError as exc:
        return {"worker": worker.address, "done": [], "skipped": 0, "setup": 0.0, "error": exc}

    def on_block(b, record):
        with contextlib.suppress(Exception):
            worker.log_event(job["topic"], {"record": record, "worker": worker.address})

    stats = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # the client reports unverified blocks from the counts
            stats = Stats(done=[])
            probe_blocks(ctx, blocks, run_dir, on_block, skip_done=True, stats=stats,
                         legacy_parts=job["legacy_parts"])
    except PlateaulabError as exc:
        # A user's error (a bad block, a full disk), not a worker's: returned, not raised, so that
        # Dask neither logs it as a failed computation with a traceback nor treats it as a fault.
        return {"worker": worker.address, "done": stats.done if stats else [], "skipped": 0, "setup": setup,
                "error": exc, "cpu": stats.cpu if stats else 0.0}
    return {"worker": worker.address, "done": stats.done, "skipped": stats.skipped, "setup": setup, "error": None,
            "cpu": stats.cpu}

