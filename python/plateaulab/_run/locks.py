"""Advisory file locks (``flock``) for run directories and stores shared by several processes.

Three kinds are used:

- a run directory's ``.lock``: held *exclusively* by a plain run or a Dask client for its whole
  session, and *shared* by every ``--shard K/N`` process, so shards run together but never beside a
  plain run (which would probe their blocks too, or consolidate a table they are still writing);
- a shard's own ``shards/K-of-N/.lock``: exclusive, so one shard runs once at a time;
- short critical sections (``.manifest.lock``, a store's ``.datasets.lock``): exclusive, waited for,
  held only while a small file is read and rewritten.

Each holder writes ``{"pid", "host", "since"}`` into the lock file it holds exclusively, so a
refused process can say who holds it. ``flock`` locks are released by the kernel when their
process dies, kill -9 included, so a crashed holder never leaves a stale lock behind. On NFS,
Linux emulates ``flock`` with whole-file POSIX locks through the lock manager (see docs/SCALE.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import RunError


def holder_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def read_holder(path: Path) -> dict | None:
    try:
        info = json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def describe_holder(info: dict | None) -> str:
    if not info:
        return "a process"
    return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('since')})"


def try_lock(path: Path, exclusive: bool = True, record: bool = True):
    """The open lock file of ``path`` locked at once, or None if another process holds it.
    An exclusive holder records who it is in the file (``record``)."""
    try:
        f = open(path, "a+")
    except OSError as exc:
        raise RunError(f"cannot open the lock file {path} ({exc.strerror}); it must be a file this process can "
                       "write: remove what is there, or check the directory's permissions") from None
    try:
        fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except OSError as exc:
        f.close()
        if exc.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise RunError(f"cannot lock {path}: the file system does not support flock ({exc.strerror}); runs, "
                           "shards and extraction into a shared store need it (Lustre: mount with -o flock; "
                           "NFS: lockd, not local_lock; see docs/SCALE.md)") from None
        raise RunError(f"cannot lock {path} ({exc.strerror or exc}); it must be a lock file on a file system this "
                       "process can lock: check the file, its directory and the file system (see "
                       "docs/SCALE.md)") from None
    if exclusive and record:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(holder_info()))
        f.flush()
    return f


def release(f) -> None:
    if f is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def is_held(path: Path) -> bool:
    """Whether some process holds ``path`` (probed by taking it exclusively for an instant)."""
    if not Path(path).exists():
        return False
    f = try_lock(path, exclusive=True, record=False)
    if f is None:
        return True
    release(f)
    return False


@contextlib.contextmanager
def wait_lock(path: Path, what: str, timeout: float = 120.0, poll: float = 0.02):
    """Hold ``path`` exclusively, waiting up to ``timeout`` seconds (the holders of these locks
    only read and rewrite a small file, so a long wait means a hung process or a broken lock
    manager, and is reported instead of waited out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        f = try_lock(path, exclusive=True)
        if f is not None:
            break
        if time.monotonic() > deadline:
            raise RunError(f"{what}: {path} has been locked for over {timeout:.0f} s by "
                           f"{describe_holder(read_holder(path))}; if that process is hung, end it "
                           "(a lock of a dead process is released by the system)")
        time.sleep(poll)
    try:
        yield
    finally:
        release(f)
