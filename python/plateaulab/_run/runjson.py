"""A run directory's own JSON files (manifest.json, shard records), read through the store's checks of
a metadata file. A module of its own so that the manifest and the shard records share it without
importing each other."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RunError
from .._store.files import MAX_JSON_BYTES, regular_file


#: What to do about a run manifest that is not one (plateaulab writes it whole, atomically).
MANIFEST_ADVICE = "it was changed outside plateaulab: remove the run directory or pick another {param}"


def read_run_json(path: Path, run_dir: Path, what: str = "run manifest", advice: str = MANIFEST_ADVICE):
    """The parsed JSON of ``path``, one of a run directory's own JSON files (manifest.json, a shard's
    record), through the store's checks of a metadata file: refused with a RunError naming the file
    and ``run_dir`` (and saying ``advice``) unless it is a regular file (a FIFO would block the
    reader forever, a directory fails to read) of at most MAX_JSON_BYTES holding valid JSON. Any
    JSON value is returned; the caller checks its shape."""
    path = Path(path)

    def error(message: str) -> RunError:
        return RunError(f"{message}; {advice}", param="run_dir")

    where = f"run directory {run_dir}"
    try:
        st = regular_file(path, where, what, error=_NotRegular)
    except _NotRegular as exc:
        # regular_file's message, less its advice to replace a store's file (see docs/STORE_FORMAT.md)
        raise error(str(exc).split("; replace it with")[0]) from None
    if st.st_size > MAX_JSON_BYTES:
        raise error(f"{where}: {path} is {st.st_size:,} bytes, more than the {MAX_JSON_BYTES >> 20} MiB a "
                    f"{what} may hold")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise error(f"{where}: cannot read {path} ({exc.strerror or exc})") from None
    if len(data) > MAX_JSON_BYTES:
        raise error(f"{where}: {path} holds more than the {MAX_JSON_BYTES >> 20} MiB a {what} may hold")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{where}: {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise error(f"{where}: {path} nests JSON too deeply to be a plateaulab {what}") from None


class _NotRegular(Exception):
    pass
