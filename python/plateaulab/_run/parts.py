"""Writing a run's outputs: one parquet part per finished block, then the results table (every part in
plan order) and the checkpoint table. Every file is written to a temporary name and renamed into place."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from .. import protocol as P
from ..errors import RunError
from ..store import atomic_write_bytes, encode_name
from .plan import PlannedBlock, ProbeConfig

#: Key of a part's parquet metadata that records its source: the fingerprint of the block it was
#: computed from, its dataset's labels' and (``"config"``) the hash of the run config that computed it.
SOURCE_KEY = b"plateaulab.source"

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


def part_path(run_dir: Path, b: PlannedBlock) -> Path:
    return (run_dir / "parts" / encode_name(b.checkpoint, "checkpoint") / encode_name(b.dataset, "dataset")
            / f"{encode_name(b.layer, 'layer')}.parquet")


def check_part_paths(run_dir: Path, plan: list[PlannedBlock]) -> None:
    """Refuse, before any compute, a block whose part file name or path the file system cannot hold."""
    probe = Path(run_dir).resolve()
    while not probe.exists():
        probe = probe.parent
    try:
        name_max = os.pathconf(probe, "PC_NAME_MAX")
        path_max = os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    root = Path(run_dir).resolve()
    for b in plan:
        p = part_path(root, b)
        long = max(p.relative_to(root).parts, key=lambda c: len(c.encode()))
        if len(long.encode()) > name_max or len(str(p).encode()) >= path_max:
            raise RunError(f"checkpoint {b.checkpoint!r}, dataset {b.dataset!r}, layer {b.layer!r}: its part file "
                           f"{p} would have a name of {len(long.encode())} bytes (limit {name_max}) and a path of "
                           f"{len(str(p).encode())} bytes (limit {path_max}) on this file system; rename the "
                           "block in the store or put the run directory higher up")


def missing_parts(run_dir: Path, blocks, wait: float = 0.0) -> list:
    """The blocks of ``blocks`` without a part file. With ``wait``, look again for up to ``wait``
    seconds, listing each directory first: a part another machine has just renamed into place may
    stay invisible here for a while behind a network file system's caches of directory entries
    (NFS: up to acdirmax, 60 s by default)."""
    import time

    missing = [b for b in blocks if not part_path(run_dir, b).exists()]
    deadline = time.monotonic() + wait
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        for d in {part_path(run_dir, b).parent for b in missing}:
            with contextlib.suppress(OSError):
                os.listdir(d)
        missing = [b for b in missing if not part_path(run_dir, b).exists()]
    return missing


def block_fingerprint(store, b: PlannedBlock, labels: str | None) -> dict:
    """What a part records of its source block: the block's fingerprint and its dataset's labels'
    (the part adds the config hash, ``part_source``)."""
    return {**store.block_fingerprint(b.checkpoint, b.dataset, b.layer), "labels": labels}


def part_source(fingerprint: dict, config: str) -> dict:
    """The source a part records: its block's ``fingerprint`` and ``config``, the hash of the run config
    (``ProbeConfig.digest()``, as manifest.json's ``config_hash``) whose numbers it holds."""
    return {**fingerprint, "config": config}


def read_part_source(path: Path) -> tuple[int, dict | None, list[str]]:
    """(rows, recorded source or None, column names) of a part, from its footer; OSError, ValueError
    (a source that is not JSON) or pyarrow's ArrowException when the file cannot be read."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    kv = meta.metadata or {}
    source = kv.get(SOURCE_KEY)
    return meta.num_rows, (json.loads(source) if source else None), list(meta.schema.names)


def part_problem(store, run_dir: Path, b: PlannedBlock, n_rows_expected: int, labels: str | None, config: str,
                 legacy_ok: bool = False) -> str | None:
    """Why the part of block ``b`` cannot be kept: ``"missing"``, or a reason it must be recomputed
    (it cannot be read, lacks a column, holds the wrong number of rows, records no source, was
    computed by another config than ``config``, or came from a block or labels that have changed
    since); None when it is current.

    A part written before parts recorded their config (no ``"config"`` in its source) is of an unknown
    config: it is kept only when ``legacy_ok``, i.e. when the run directory's manifest.json already
    recorded this config before this session (an existing run, resumed), and recomputed otherwise
    (e.g. the directory's run was started afresh with a new config since)."""
    import pyarrow as pa

    p = part_path(run_dir, b)
    if not p.exists():
        return "missing"
    try:
        n_rows, source, columns = read_part_source(p)
    except (OSError, ValueError, pa.ArrowException) as exc:
        return f"its part {p} cannot be read ({exc})"
    lacking = [name for name, _ in RESULT_COLUMNS if name not in columns]
    if lacking:
        return f"its part {p} lacks the column(s) {', '.join(lacking)}"
    if n_rows != n_rows_expected:
        return f"its part holds {n_rows} rows, not {n_rows_expected}"
    if not isinstance(source, dict):
        return "its part records no source fingerprint (written by an older plateaulab)"
    written_by = source.pop("config", None)
    if source != block_fingerprint(store, b, labels):
        return STALE
    if written_by is None and not legacy_ok:
        return ("its part records no config (written by an older plateaulab) and the run directory's config "
                "has changed since")
    if written_by is not None and written_by != config:
        return f"its part was computed by another config (hash {written_by}, not this run's {config})"
    return None


#: The reason ``part_problem`` gives for a part whose block or labels changed after it was written.
STALE = "the block or its dataset's labels changed after its part was written"


def part_problems(store, run_dir: Path, blocks, probes_per: dict, labels_fp: dict, config: str,
                  legacy_ok: bool = False) -> list[tuple[PlannedBlock, str]]:
    """(block, reason) of every block of ``blocks`` whose part is not current (``part_problem``), in
    order. The parts' footers are read by a few threads (latency-bound, more so on a network file
    system; pyarrow reads without the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def problem(b):
        return part_problem(store, run_dir, b, probes_per[b.dataset], labels_fp[b.dataset], config, legacy_ok)

    blocks = list(blocks)
    if len(blocks) < 2 * READ_THREADS:
        reasons = [problem(b) for b in blocks]
    else:
        reasons = []
        with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="plateaulab-parts") as pool:
            for i in range(0, len(blocks), CHECK_CHUNK):   # a bounded number of futures at a time
                reasons += pool.map(problem, blocks[i:i + CHECK_CHUNK])
    return [(b, r) for b, r in zip(blocks, reasons) if r is not None]


#: Parts checked per batch of futures by ``part_problems`` (a run may have 600,000 blocks).
CHECK_CHUNK = 4096


def rows_for_block(b: PlannedBlock, block, tasks, l2s, cfg: ProbeConfig, scores):
    """The result rows of one probed block: one per (task, l2), with the selected l2 marked."""
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


def write_part(path: Path, df, source: dict) -> None:
    """Write one block's rows with the fingerprint of the block they came from (``source``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, schema=result_schema(), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[SOURCE_KEY] = json.dumps(source, sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    atomic_write_bytes(path, lambda f: pq.write_table(table, f), error=RunError)


#: Rows gathered before results.parquet gets a row group (one per part would give a run of 600,000
#: blocks a footer of 600,000 row groups).
ROW_GROUP_ROWS = 1 << 17
#: Parts read at once by consolidate: reading is latency-bound (an open and a footer per file, more
#: so on a network file system) and pyarrow reads without the GIL.
READ_THREADS = 8


def consolidate(run_dir: Path, plan: list[PlannedBlock]) -> Path:
    """Stream every part, in plan order, into results.parquet: read by a few threads, at most a bounded
    window of parts in memory, written in row groups of about ROW_GROUP_ROWS rows."""
    import collections
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = run_dir / "results.parquet"
    schema = result_schema()

    def read(b):
        p = part_path(run_dir, b)
        try:
            table = pq.ParquetFile(p).read(use_threads=False).replace_schema_metadata(None)
            if table.schema.equals(schema):
                return table
            lacking = [name for name in schema.names if name not in table.schema.names]
            if lacking:
                raise ValueError(f"it lacks the column(s) {', '.join(lacking)}")
            return table.select(schema.names).cast(schema)
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
            p.unlink(missing_ok=True)   # unreadable: nothing in it can be kept
            raise RunError(f"part {p} cannot be read ({exc}); it was removed: repeat the same "
                           "command to recompute that block") from None

    def write(f):
        with pq.ParquetWriter(f, schema) as writer, ThreadPoolExecutor(READ_THREADS) as pool:
            window = collections.deque()
            pending, rows = [], 0
            blocks = iter(plan)
            for b in blocks:
                window.append(pool.submit(read, b))
                if len(window) >= 4 * READ_THREADS:
                    break
            while window:
                table = window.popleft().result()
                nxt = next(blocks, None)
                if nxt is not None:
                    window.append(pool.submit(read, nxt))
                pending.append(table)
                rows += table.num_rows
                if rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=rows)
                    pending, rows = [], 0
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=max(rows, 1))

    atomic_write_bytes(out, write, error=RunError)
    return out


def write_checkpoint_table(run_dir: Path, store, checkpoints: list[str]) -> None:
    """checkpoints.parquet: the metadata of every checkpoint of the run, joinable on `checkpoint`."""
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
    atomic_write_bytes(run_dir / "checkpoints.parquet", lambda f: df.to_parquet(f, index=False), error=RunError)
