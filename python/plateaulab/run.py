"""Probe runs: every block of a store through one backend, streamed, resumable, with a manifest.

A run directory holds::

    manifest.json          config (and its hash), versions, backend, device, sessions with timings
    parts/<ck>/<ds>/<layer>.parquet   one file per finished block, written atomically
    results.parquet        all parts in plan order, one row per (checkpoint, layer, dataset, shots, seed, l2)
    checkpoints.parquet    checkpoint metadata, joinable on `checkpoint`

A block's part file appears only when the block is complete (temporary name, fsync, rename), so a
run killed at any moment restarts with the same command, skips finished blocks and writes the same
table as an uninterrupted run. The config is hashed; pointing a different config at an existing
run directory is refused. Memory holds one block at a time, so peak RSS does not grow with the
number of checkpoints.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import protocol as P
from .errors import PlateaulabError, RunError, StoreError
from .store import FeatureStore, atomic_write_bytes, atomic_write_json, count_nonfinite, encode_name

RESULT_COLUMNS = (
    ("checkpoint", "string"), ("layer", "string"), ("layer_index", "int64"), ("dataset", "string"),
    ("shots", "int64"), ("seed", "int64"), ("l2", "float64"), ("accuracy", "float64"),
    ("correct", "int64"), ("ties", "int64"), ("n_train", "int64"), ("n_test", "int64"), ("dim", "int64"),
    ("selected", "bool"), ("select", "string"), ("loo_accuracy", "float64"), ("loo_mse", "float64"),
    ("val_accuracy", "float64"),
)


def result_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, t)() if t != "bool" else pa.bool_()) for name, t in RESULT_COLUMNS])


@dataclass
class ProbeConfig:
    """Everything that decides the numbers of a run (hashed; the backend is not part of it)."""

    store: str
    datasets: list[str] | None = None
    checkpoints: list[str] | None = None       # glob patterns; None = all
    layers: str | list[str] = "all"            # "all", "last" or layer names
    shots: list[int] = field(default_factory=lambda: list(P.DEFAULT_SHOTS))
    seeds: list[int] = field(default_factory=lambda: list(P.DEFAULT_SEEDS))
    l2: list[float] = field(default_factory=lambda: [P.DEFAULT_L2])
    select: str = "fixed"
    on_short: str = "error"                    # "error" or "skip" for classes with fewer than `shots`

    def normalised(self) -> "ProbeConfig":
        if self.select not in P.SELECT_METHODS:
            raise RunError(f"unknown --select {self.select!r}; expected one of {', '.join(P.SELECT_METHODS)}")
        if self.on_short not in ("error", "skip"):
            raise RunError(f"on_short must be 'error' or 'skip', got {self.on_short!r}")
        shots = [int(s) for s in self.shots]
        if not shots or any(s <= 0 for s in shots):
            raise P.ProtocolError(f"shots must be positive integers, got {self.shots}")
        seeds = [int(s) for s in self.seeds]
        if not seeds or any(s < 0 for s in seeds):
            raise P.ProtocolError(f"seeds must be non-negative integers, got {self.seeds}")
        layers = self.layers if isinstance(self.layers, str) else list(self.layers)
        return ProbeConfig(store=str(Path(self.store).resolve()), datasets=self.datasets and list(self.datasets),
                           checkpoints=self.checkpoints and list(self.checkpoints), layers=layers,
                           shots=sorted(set(shots)), seeds=sorted(set(seeds)), l2=list(P.check_l2s(self.l2)),
                           select=self.select, on_short=self.on_short)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PlannedBlock:
    checkpoint: str
    dataset: str
    layer: str
    layer_index: int


def plan_blocks(store: FeatureStore, cfg: ProbeConfig) -> list[PlannedBlock]:
    """The (checkpoint, dataset, layer) blocks a config asks for, checkpoint-major; unknown names raise."""
    all_ckpts = store.checkpoints()
    all_ds = store.datasets()
    if not all_ckpts or not all_ds:
        raise StoreError(f"store {store.path} is empty ({len(all_ckpts)} checkpoints, {len(all_ds)} datasets); "
                         "add datasets and features first (see docs/STORE_FORMAT.md)")
    datasets = cfg.datasets or all_ds
    unknown = [d for d in datasets if d not in all_ds]
    if unknown:
        raise StoreError(f"unknown dataset {unknown[0]!r} in store {store.path} (known: {', '.join(all_ds)})")
    if cfg.checkpoints:
        ckpts = [c for c in all_ckpts if any(fnmatch.fnmatchcase(c, pat) for pat in cfg.checkpoints)]
        if not ckpts:
            raise StoreError(f"no checkpoint in store {store.path} matches {', '.join(cfg.checkpoints)} "
                             f"({len(all_ckpts)} checkpoints, e.g. {all_ckpts[0]!r})")
    else:
        ckpts = all_ckpts
    plan = []
    for ck in ckpts:
        for ds in datasets:
            infos = store.block_infos(ck, ds)
            if not infos:
                continue
            if cfg.layers == "all":
                chosen = infos
            elif cfg.layers == "last":
                chosen = infos[-1:]
            else:
                by_name = {i["layer"]: i for i in infos}
                missing = [n for n in cfg.layers if n not in by_name]
                if missing:
                    raise StoreError(f"unknown layer {missing[0]!r} for checkpoint {ck!r}, dataset {ds!r} "
                                     f"(layers: {', '.join(by_name)})")
                chosen = [by_name[n] for n in cfg.layers]
            plan += [PlannedBlock(ck, ds, i["layer"], int(i.get("layer_index", 0))) for i in chosen]
    if not plan:
        raise StoreError(f"store {store.path} has no complete feature blocks for the requested "
                         "checkpoints and datasets; run `plateaulab store check` to see why")
    return plan


def _part_path(run_dir: Path, b: PlannedBlock) -> Path:
    return (run_dir / "parts" / encode_name(b.checkpoint, "checkpoint") / encode_name(b.dataset, "dataset")
            / f"{encode_name(b.layer, 'layer')}.parquet")


def _versions() -> dict:
    import numba
    import pandas
    import pyarrow

    from . import __version__

    return {"plateaulab": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
            "numba": numba.__version__, "pandas": pandas.__version__, "pyarrow": pyarrow.__version__,
            "platform": platform.platform()}


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    import fcntl

    f = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunError(f"run directory {run_dir} is in use by another plateaulab process; "
                       "wait for it to finish or use another -o") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _check_block_input(block, ds, x_train_rows_needed: np.ndarray, scan_values: bool = True) -> None:
    """Refuse a block whose features cannot be probed, naming it. With ``scan_values`` False the
    NaN/Inf scan is left to the backend's ``stage`` (see _refuse_nonfinite)."""
    for split, y in (("train", ds.y_train), ("test", ds.y_test), ("val", ds.y_val)):
        x = getattr(block, split)
        if x is None or y is None:
            continue
        if x.shape[0] != y.size:
            raise StoreError(f"{block.where}: {split} features have {x.shape[0]} rows but dataset "
                             f"{ds.name!r} has {y.size} {split} labels")
    if block.test.shape[1] != block.train.shape[1]:
        raise StoreError(f"{block.where}: train features are {block.train.shape[1]} wide, test "
                         f"{block.test.shape[1]}; re-extract the block")
    if not scan_values:
        return
    for split, x in (("train", block.train[x_train_rows_needed] if x_train_rows_needed.size else block.train),
                     ("test", block.test), ("val", block.val)):
        if x is None:
            continue
        _refuse_nonfinite(block, split, count_nonfinite(np.asarray(x)))


def _refuse_nonfinite(block, split: str, n_bad: int) -> None:
    if n_bad:
        raise StoreError(f"{block.where}: {split} features contain {n_bad} NaN/Inf values; "
                         "fix or re-extract this block (fp16 overflow is a common cause)")


class _BlockReader:
    """Opens, checks and stages the blocks of a run in order, one block ahead in a worker thread.

    ``iterate`` yields (planned block, (block, x_train, x_test, x_val), seconds waited for it). A block whose
    check fails raises its StoreError when the loop reaches it, so every earlier block is probed
    and written first, exactly as without read-ahead.
    """

    def __init__(self, store, ds_cache, task_cache, use_val: bool, stage, prefetch: bool):
        self.store, self.ds_cache = store, ds_cache
        self.use_val, self.stage = use_val, stage
        # The train rows any task of a dataset uses: the same for every block of that dataset.
        self.needed = {name: np.unique(np.concatenate([t.indices for t in tasks]))
                       for name, tasks in task_cache.items() if tasks}
        self.pool = None
        if prefetch:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plateaulab-reader")

    def load(self, b: PlannedBlock):
        """Open and check one block; where the backend stages, stage it (it counts NaN/Inf on the
        device as it goes, so the host does not scan the splits a second time)."""
        ds = self.ds_cache[b.dataset]
        block = self.store.block(b.checkpoint, b.dataset, b.layer)
        needed = self.needed[b.dataset]
        _check_block_input(block, ds, needed, scan_values=self.stage is None)
        if self.use_val and block.val is None:
            raise StoreError(f"{block.where}: --select val needs val features, and this block has none")
        x_train, x_test, x_val = block.train, block.test, (block.val if self.use_val else None)
        if self.stage is not None:
            x_train, x_test, x_val = self.stage(x_train, needed, x_test, x_val)
            for split, staged in (("train", x_train), ("test", x_test), ("val", x_val)):
                _refuse_nonfinite(block, split, getattr(staged, "nonfinite", 0))
            if not self.use_val and block.val is not None:   # not staged, still checked
                _refuse_nonfinite(block, "val", count_nonfinite(np.asarray(block.val)))
        return block, x_train, x_test, x_val

    def iterate(self, todo):
        if self.pool is None:
            for b in todo:
                t0 = time.perf_counter()
                loaded = self.load(b)
                yield b, loaded, time.perf_counter() - t0
            return
        ahead = self.pool.submit(self.load, todo[0]) if todo else None
        for i, b in enumerate(todo):
            t0 = time.perf_counter()
            loaded = ahead.result()               # re-raises this block's StoreError here
            waited = time.perf_counter() - t0
            ahead = self.pool.submit(self.load, todo[i + 1]) if i + 1 < len(todo) else None
            yield b, loaded, waited

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _rows_for_block(b: PlannedBlock, block, tasks, l2s, cfg: ProbeConfig, scores):
    import pandas as pd

    T, L = len(tasks), len(l2s)
    chosen = np.zeros((T, L), dtype=bool)
    for t in range(T):
        j = P.select_l2(l2s, cfg.select,
                        loo_acc=None if scores.loo_acc is None else scores.loo_acc[t],
                        loo_mse=None if scores.loo_mse is None else scores.loo_mse[t],
                        val_acc=None if scores.val_correct is None else scores.val_correct[t] / max(scores.n_val, 1))
        chosen[t, j] = True
    nan = np.full((T, L), np.nan)
    shots = np.repeat([tk.shots for tk in tasks], L)
    return pd.DataFrame({
        "checkpoint": b.checkpoint, "layer": b.layer, "layer_index": b.layer_index, "dataset": b.dataset,
        "shots": shots, "seed": np.repeat([tk.seed for tk in tasks], L),
        "l2": np.tile(np.asarray(l2s, dtype=np.float64), T),
        "accuracy": (scores.correct / scores.n_test).ravel(), "correct": scores.correct.ravel(),
        "ties": scores.ties.ravel(), "n_train": np.repeat([tk.n_train for tk in tasks], L),
        "n_test": scores.n_test, "dim": int(block.dim), "selected": chosen.ravel(), "select": cfg.select,
        "loo_accuracy": (scores.loo_acc if scores.loo_acc is not None else nan).ravel(),
        "loo_mse": (scores.loo_mse if scores.loo_mse is not None else nan).ravel(),
        "val_accuracy": (scores.val_correct / max(scores.n_val, 1) if scores.val_correct is not None else nan).ravel(),
    })


def _write_parquet(path: Path, df) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, schema=result_schema(), preserve_index=False)
    atomic_write_bytes(path, lambda f: pq.write_table(table, f))


def _consolidate(run_dir: Path, plan: list[PlannedBlock]) -> Path:
    """Stream every part, in plan order, into results.parquet (one part in memory at a time)."""
    import pyarrow.parquet as pq

    out = run_dir / "results.parquet"

    def write(f):
        with pq.ParquetWriter(f, result_schema()) as writer:
            for b in plan:
                writer.write_table(pq.read_table(_part_path(run_dir, b), schema=result_schema()))

    atomic_write_bytes(out, write)
    return out


def _write_checkpoint_table(run_dir: Path, store: FeatureStore, checkpoints: list[str]) -> None:
    import pandas as pd

    records = []
    for ck in checkpoints:
        meta = store.checkpoint_meta(ck)
        rec = {"checkpoint": ck}
        for k, v in meta.items():
            rec[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col].dropna()}
            if len(kinds) > 1:
                df[col] = df[col].map(lambda v: v if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    atomic_write_bytes(run_dir / "checkpoints.parquet", lambda f: df.to_parquet(f, index=False))


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
                on_short="error", prefetch: bool = True, _stop_after_blocks: int | None = None) -> ProbeRun:
    """Probe every requested block of ``store`` and write the run directory ``run_dir``.

    ``seeds`` is a count (seeds 0..n-1, as big_vision) or a list of seeds. Re-running the same call
    on the same directory resumes; a different config is refused. With ``prefetch`` (the default)
    a reader thread opens, checks and stages block k+1 (store read, float32 conversion and, on a
    GPU, the upload) while block k is probed; results are the same either way.
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
    with _run_lock(run_dir):
        manifest = _open_manifest(run_dir, cfg)
        plan = plan_blocks(store, cfg)
        t_start = time.time()
        session = {"backend": be.name, "device": be.device(), "started": _now(), "pid": os.getpid()}
        manifest["sessions"].append(session)
        manifest["complete"] = False
        atomic_write_json(run_dir / "manifest.json", manifest)

        datasets_used = sorted({b.dataset for b in plan})
        ds_cache, task_cache = {}, {}
        for name in datasets_used:
            ds = store.dataset(name)
            ds_cache[name] = ds
            task_cache[name] = P.plan_tasks(ds.y_train, ds.num_classes, cfg.shots, cfg.seeds, name, cfg.on_short)
            if cfg.select == "val" and ds.y_val is None:
                raise RunError(f"--select val needs validation labels, and dataset {name!r} has none; "
                               "use --select loo or add y_val to the dataset")
        # A dataset whose every shot count was skipped (on_short="skip") has nothing to probe.
        plan = [b for b in plan if task_cache[b.dataset]]
        if not plan:
            raise RunError("every requested shot count was skipped for every dataset (classes too small); "
                           "lower --shots")
        todo = [b for b in plan if not _part_path(run_dir, b).exists()]
        probes_per = {name: len(task_cache[name]) * len(cfg.l2) for name in datasets_used}
        total = sum(probes_per[b.dataset] for b in todo)
        done_blocks = done_probes = 0
        t_io = t_compute = 0.0
        bar = _progress(total, quiet, desc=f"probe [{be.name}]")
        loo = cfg.select == "loo"
        use_val = cfg.select == "val"
        reader = _BlockReader(store, ds_cache, task_cache, use_val, getattr(be, "stage", None), prefetch)
        try:
            todo_now = todo if _stop_after_blocks is None else todo[:_stop_after_blocks]
            for b, (block, x_train, x_test, x_val), waited in reader.iterate(todo_now):
                ds = ds_cache[b.dataset]
                tasks = task_cache[b.dataset]
                t1 = time.perf_counter()
                scores = be.probe_block(x_train, ds.y_train, x_test, ds.y_test, tasks, cfg.l2,
                                        ds.num_classes, x_val=x_val, y_val=ds.y_val if use_val else None,
                                        loo=loo)
                t2 = time.perf_counter()
                df = _rows_for_block(b, block, tasks, cfg.l2, cfg, scores)
                _write_parquet(_part_path(run_dir, b), df)
                t_io += waited + (time.perf_counter() - t2)
                t_compute += t2 - t1
                done_blocks += 1
                done_probes += probes_per[b.dataset]
                bar.update(probes_per[b.dataset])
        except PlateaulabError:
            session.update(_session_end(t_start, done_blocks, done_probes, t_io, t_compute, "failed"))
            atomic_write_json(run_dir / "manifest.json", manifest)
            raise
        finally:
            reader.close()
            bar.close()
        complete = all(_part_path(run_dir, b).exists() for b in plan)
        if complete:
            _consolidate(run_dir, plan)
            _write_checkpoint_table(run_dir, store, sorted({b.checkpoint for b in plan}))
        session.update(_session_end(t_start, done_blocks, done_probes, t_io, t_compute,
                                    "complete" if complete else "stopped"))
        manifest["complete"] = complete
        manifest["blocks"] = len(plan)
        manifest["probes"] = sum(probes_per[b.dataset] for b in plan)
        atomic_write_json(run_dir / "manifest.json", manifest)
    return ProbeRun(run_dir=run_dir, config=cfg, blocks_total=len(plan), blocks_done_now=done_blocks,
                    probes_done_now=done_probes, seconds=time.time() - t_start)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _session_end(t_start, blocks, probes, t_io, t_compute, status) -> dict:
    wall = time.time() - t_start
    return {"finished": _now(), "status": status, "blocks": blocks, "probes": probes,
            "seconds": round(wall, 3), "seconds_io": round(t_io, 3), "seconds_compute": round(t_compute, 3),
            "probes_per_second": round(probes / wall, 2) if wall > 0 else None}


def _open_manifest(run_dir: Path, cfg: ProbeConfig) -> dict:
    path = run_dir / "manifest.json"
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RunError(f"{path} is not valid JSON ({exc}); remove the run directory or pick another -o") from None
        if manifest.get("config_hash") != cfg.digest():
            old = manifest.get("config", {})
            diff = [k for k, v in asdict(cfg).items() if old.get(k) != v]
            details = "; ".join(f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in diff)
            raise RunError(f"run directory {run_dir} holds a run with a different config ({details}); "
                           "use a new -o, or repeat the original options to resume")
        return manifest
    if any(p for p in run_dir.iterdir() if p.name != ".lock"):
        raise RunError(f"{run_dir} is not empty and holds no plateaulab run; pick an empty or new -o")
    return {"format": "plateaulab-probe-run", "version": 1, "config": asdict(cfg),
            "config_hash": cfg.digest(), "versions": _versions(), "created": _now(), "sessions": []}


def _progress(total: int, quiet: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="probe", desc=desc, disable=quiet, smoothing=0.1, dynamic_ncols=True)


def load_run(run_dir):
    """(results, checkpoints, manifest) of a finished run directory."""
    import pandas as pd

    run_dir = Path(run_dir)
    mpath = run_dir / "manifest.json"
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
