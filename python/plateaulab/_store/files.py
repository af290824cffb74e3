"""Writing files so that a crash never leaves one half-written, and reading them with errors that
name the file.

Every file is written to a temporary name in its own directory (``.plateaulab-XXXXXXXX.tmp``,
created with ``O_EXCL`` and mode 0666 so the umask applies, as for any file the user creates),
fsynced and renamed into place. The temporary names have one fixed length, so a long final name
never overflows the file system's limit on a name, and one pattern (``TEMP_RE``), so the next run
can remove what a killed one left (``remove_temp_files``) without touching anything else.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
from pathlib import Path

import numpy as np

from ..errors import StoreError

TEMP_PREFIX = ".plateaulab-"
TEMP_SUFFIX = ".tmp"
#: Temporary files of this module, and of plateaulab before 0.2 (``.<final name>.<8 chars>.tmp``).
TEMP_RE = re.compile(r"^\.plateaulab-[0-9a-f]{16}\.tmp$|^\..+\.(?:parquet|json|npy)\.[A-Za-z0-9_]{8}\.tmp$")
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_temp(directory: Path) -> tuple[int, Path]:
    for _ in range(100):
        tmp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))


def atomic_write_bytes(path: Path, write, *, error=StoreError) -> None:
    """Write a file through ``write(fileobj)`` to a temporary name, fsync it, rename it into place.

    An OSError (a full disk, a read-only file system, no permission) is raised as ``error`` naming
    ``path``; the temporary file is removed and whatever was at ``path`` before is left as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if exc.errno in _FULL:
            hint = ("no space left on the device; free some and repeat the same command (everything "
                    "finished so far is kept)")
        else:
            hint = f"{exc.strerror or exc}; check the path and its permissions"
        raise error(f"cannot write {path}: {hint}") from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _fsync_dir(path.parent)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serialisable")


def atomic_write_json(path: Path, obj, *, error=StoreError) -> None:
    data = json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode()
    atomic_write_bytes(path, lambda f: f.write(data), error=error)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, lambda f: np.save(f, array, allow_pickle=False))


def remove_temp_files(root: Path) -> list[Path]:
    """Remove the temporary files plateaulab's writers left under ``root`` (a killed run); nothing else."""
    removed = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if TEMP_RE.match(name):
                p = Path(dirpath) / name
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
    return removed


#: Largest metadata file read (bytes). A store's JSON files are a few kB; this bound keeps a file that
#: is not one (``/dev/zero`` behind a symlink, a multi-GB dump) from exhausting memory.
MAX_JSON_BYTES = 64 << 20


def regular_file(path: Path, what: str, kind: str = "file", error=StoreError) -> os.stat_result:
    """``os.stat`` of ``path``, refusing anything but a regular file (a directory, a FIFO, which would
    block the reader forever, a device such as /dev/zero, a dangling symlink), naming it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        link = f" (a symlink to {os.readlink(path)!r}, which does not exist)" if os.path.islink(path) else ""
        raise error(f"{what}: missing {kind} {path}{link}") from None
    except OSError as exc:
        raise error(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        found = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                 else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                 else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise error(f"{what}: {path} is {found}, not a regular file; replace it with the {kind} "
                    "(see docs/STORE_FORMAT.md)")
    return st


def parse_json_bytes(data: bytes, path, what: str, error=StoreError):
    """``json.loads`` with the errors a hostile or broken file can cause named as ``error``."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what}: {path} is not valid JSON ({exc}); rewrite it or remove the entry") from None
    except RecursionError:
        raise error(f"{what}: {path} nests JSON arrays or objects too deeply to be read; it is not a "
                    "metadata file this format writes: rewrite it") from None


def read_json(path: Path, what: str):
    """The parsed JSON of ``path`` (any JSON value; the schema checks its shape)."""
    path = Path(path)
    st = regular_file(path, what, "file")
    if st.st_size > MAX_JSON_BYTES:
        raise StoreError(f"{what}: {path} is {st.st_size:,} bytes, more than the {MAX_JSON_BYTES >> 20} MiB a "
                         "metadata file may hold; it is not a metadata file this format writes: rewrite it")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise StoreError(f"{what}: missing file {path}") from None
    except OSError as exc:
        raise StoreError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
    if len(data) > MAX_JSON_BYTES:
        raise StoreError(f"{what}: {path} holds more than the {MAX_JSON_BYTES >> 20} MiB a metadata file may "
                         "hold; rewrite it")
    return parse_json_bytes(data, path, what)


def load_npy(path: Path, what: str, mmap: bool = True) -> np.ndarray:
    """Open an .npy file, memory-mapped by default, with errors that name the file."""
    regular_file(Path(path), what, "array file")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise StoreError(f"{what}: missing array file {path}") from None
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        raise StoreError(
            f"{what}: array file {path} is truncated or corrupt ({exc}); re-extract this block"
        ) from None
    if not isinstance(arr, np.ndarray):   # np.load opens a .npz (zip) archive whatever the file is called
        close = getattr(arr, "close", None)
        if close is not None:
            close()
        raise StoreError(f"{what}: array file {path} is a .npz archive ({type(arr).__name__}), not a .npy array; "
                         "write each array with numpy.save, or re-extract this block")
    return arr
