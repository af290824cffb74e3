"""Shards: ``--shard K/N`` splits a run (or an extraction) over N independent processes, e.g. a SLURM
array of N jobs, that write into one run directory (or one store) at the same time, without Dask.

Assignment is by checkpoint: a checkpoint belongs to shard ``stable_hash(name) % N``, where the hash
is the first 8 bytes of the SHA-256 of the name's UTF-8 bytes (not Python's ``hash``, which is
salted per process). It depends on nothing but the name and N, so every job of an array, on any
node, at any time, agrees on it, and checkpoints added to the store later do not move the others.
All blocks of a checkpoint go to one shard, so a part directory ``parts/<checkpoint>/`` is only
ever written by one shard (its temporary files can be cleaned up by that shard alone).

In a run directory a shard keeps its own record, ``shards/K-of-N/manifest.json`` (its sessions,
written atomically by that shard only, under its own lock ``shards/K-of-N/.lock``), so shards never
rewrite each other's records. The run's ``manifest.json`` is created once, by whichever process
comes first, under ``.manifest.lock``; shards check their config against it and do not rewrite it.
A plain run on the directory folds the shard records into ``manifest.json`` when it consolidates.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..errors import RunError
from ..store import atomic_write_json
from .locks import describe_holder, is_held, read_holder
from .runjson import read_run_json

SHARDS_DIR = "shards"
SHARD_MANIFEST = "manifest.json"
SHARD_LOCK = ".lock"
_DIR_RE = re.compile(r"^(\d+)-of-(\d+)$")


def parse_shard(value) -> tuple[int, int] | None:
    """(K, N) from ``"K/N"`` (or a (K, N) pair); None stays None. Refused unless 0 <= K < N."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not m:
            raise RunError("{param} must look like K/N with 0 <= K < N (e.g. 0/8 for the first of 8 shards); "
                           f"got {value!r}", param="shard")
        k, n = int(m.group(1)), int(m.group(2))
    else:
        try:
            k, n = (int(v) for v in value)
        except (TypeError, ValueError):
            raise RunError("{param} must be 'K/N' or a (K, N) pair; " f"got {value!r}", param="shard") from None
    if not (n >= 1 and 0 <= k < n):
        raise RunError("{param} must look like K/N with 0 <= K < N; " f"got {k}/{n}", param="shard")
    return k, n


def stable_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def shard_of(checkpoint: str, n: int) -> int:
    """The shard (0..n-1) that owns ``checkpoint`` among n."""
    return stable_hash(checkpoint) % n


def in_shard(checkpoint: str, shard: tuple[int, int] | None) -> bool:
    return shard is None or shard_of(checkpoint, shard[1]) == shard[0]


def label(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"


def shard_dir(run_dir: Path, shard: tuple[int, int]) -> Path:
    return Path(run_dir) / SHARDS_DIR / f"{shard[0]}-of-{shard[1]}"


def recorded_shards(run_dir: Path) -> list[tuple[int, int]]:
    """The shards that have a directory (a lock or a record) in ``run_dir``, in order."""
    root = Path(run_dir) / SHARDS_DIR
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        m = _DIR_RE.match(d.name)
        if m and d.is_dir():
            out.append((int(m.group(1)), int(m.group(2))))
    return sorted(out, key=lambda s: (s[1], s[0]))


def active_shards(run_dir: Path) -> list[tuple[tuple[int, int], dict | None]]:
    """The shards whose lock is held right now, with who holds it."""
    out = []
    for s in recorded_shards(run_dir):
        lock = shard_dir(run_dir, s) / SHARD_LOCK
        if is_held(lock):
            out.append((s, read_holder(lock)))
    return out


def describe_active(active) -> str:
    return ", ".join(f"shard {label(s)} ({describe_holder(info)})" for s, info in active)


def read_record(run_dir: Path, shard: tuple[int, int]) -> dict | None:
    """A shard's record, or None if it has none yet (or it cannot be read: it is rewritten whole,
    atomically, so an unreadable one, e.g. not a regular file or not JSON, was damaged outside
    plateaulab and is treated as absent; the shard's next session replaces it)."""

    path = shard_dir(run_dir, shard) / SHARD_MANIFEST
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        rec = read_run_json(path, run_dir, "shard record")
    except RunError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("sessions"), list) else None


def write_record(run_dir: Path, shard: tuple[int, int], record: dict) -> None:
    atomic_write_json(shard_dir(run_dir, shard) / SHARD_MANIFEST, record, error=RunError)


def all_records(run_dir: Path) -> dict[str, dict]:
    """{"K/N": record} of every shard that has written one."""
    out = {}
    for s in recorded_shards(run_dir):
        rec = read_record(run_dir, s)
        if rec is not None:
            out[label(s)] = rec
    return out


def remove_records(run_dir: Path) -> None:
    """Drop every shard's record (a run started afresh with a new config). Lock files stay: a lock
    that is held must keep its file, or a second holder could lock a new one of the same name."""
    for s in recorded_shards(run_dir):
        (shard_dir(run_dir, s) / SHARD_MANIFEST).unlink(missing_ok=True)


def missing_report(run_dir: Path, missing, records: dict[str, dict]) -> str:
    """Which shards the blocks without a part belong to, and what their last sessions said."""
    by_shard: dict[str, list] = {}
    sizes = sorted({int(lbl.split("/")[1]) for lbl in records}) or [1]
    n = sizes[-1] if len(sizes) == 1 else None
    for b in missing:
        key = label((shard_of(b.checkpoint, n), n)) if n else "?"
        by_shard.setdefault(key, []).append(b)
    lines = []
    for key, blocks in sorted(by_shard.items()):
        rec = records.get(key)
        if rec and rec["sessions"]:
            last = rec["sessions"][-1]
            who = f"pid {last.get('pid')} on {last.get('host')}, started {last.get('started')}"
            state = f"its last session ({who}) " + (f"ended '{last['status']}'" if last.get("status")
                                                     else "was killed before it finished")
            if last.get("error"):
                state += f": {last['error']}"
        elif key != "?":
            state = "it has not run"
        else:
            state = f"shards of several sizes ran ({', '.join(sorted(records))})"
        b = blocks[0]
        lines.append(f"shard {key}: {len(blocks)} block(s) missing, e.g. checkpoint {b.checkpoint!r}, dataset "
                     f"{b.dataset!r}, layer {b.layer!r}; {state}")
    return "; ".join(lines)
