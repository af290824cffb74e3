"""Names of checkpoints, datasets and layers, and the directory names that hold them.

A name is stored as its percent-encoding with every character except ``A-Z a-z 0-9 _ . - ~``
escaped (``urllib.parse.quote(name, safe="")``). Only that canonical encoding is accepted when a
store is read: ``a%2fb`` (lower-case hex) or ``ckpt%2D00`` (an escaped unreserved character) would
decode to a name whose own encoding is another directory, so two directories could hold one name.

Names the store could not give back unchanged are refused when they are written: empty, ``.``,
``..``, a leading ``.`` (hidden, and the prefix of plateaulab's temporary files), control
characters or lone surrogates, and names longer than ``MAX_ENCODED_BYTES`` once encoded (file
systems allow 255 bytes per path component; the rest is kept for the ``.parquet`` of a run's part).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from urllib.parse import quote, unquote

from ..errors import StoreError

#: Longest accepted encoded name, in bytes: a run's part file is ``<encoded layer>.parquet``.
MAX_ENCODED_BYTES = 240


def encode_name(name: str, what: str) -> str:
    """Directory name for a checkpoint, dataset or layer name (percent-encoded, reversible); refuses
    names the store cannot round-trip, saying why."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise StoreError(f"invalid {what} name {name!r}: expected a non-empty string other than '.' or '..'")
    if name.startswith("."):
        raise StoreError(f"invalid {what} name {name!r}: a name may not start with '.' (it would be hidden, "
                         "and '.' starts plateaulab's temporary files); rename it")
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise StoreError(f"invalid {what} name {name!r}: it contains the control character {bad!r} "
                         f"(U+{ord(bad):04X}); remove it")
    encoded = quote(name, safe="")
    if len(encoded.encode()) > MAX_ENCODED_BYTES:
        raise StoreError(f"invalid {what} name {name[:40]!r}... ({len(name)} characters): its directory name "
                         f"would be {len(encoded)} bytes once percent-encoded, more than the "
                         f"{MAX_ENCODED_BYTES} a store allows (file systems allow 255 per component); "
                         "use a shorter name")
    return encoded


def decode_name(dirname: str) -> str:
    return unquote(dirname)


def is_canonical(dirname: str) -> bool:
    return quote(unquote(dirname), safe="") == dirname


def scan_entries(root: Path, what: str, where: str, marker: str | None = None):
    """{name: directory} of the entries under ``root`` and a list of problems (non-canonical or
    colliding directory names, each naming both directories). Hidden entries and plain files are not
    entries; with ``marker``, only directories holding that file are."""
    entries: dict[str, Path] = {}
    problems: list[str] = []
    if not root.is_dir():
        if root.is_symlink() or root.exists():   # a file, or a dangling symlink, where a directory belongs
            problems.append(f"{where}: {root} is {_not_a_directory(root)}, where the directory of its "
                            f"{what}s belongs; remove it or put the directory back")
        return entries, problems
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if not p.is_dir():
            # Nothing but directories lives here: a file or a dangling symlink in place of an entry would
            # otherwise drop that entry without a word.
            problems.append(f"{where}: {p} is {_not_a_directory(p)}, not a {what} directory; a store holds only "
                            f"{what} directories here: remove it, or restore the {what}")
            continue
        if marker is not None and not (p / marker).exists():
            continue
        name = decode_name(p.name)
        canonical = quote(name, safe="")
        invalid = _refusal(name, what)
        if invalid is not None and canonical != p.name:
            problems.append(f"{where}: directory {p} decodes to {what} name {name!r}, which a store cannot hold "
                            f"({invalid}); rename it")
            continue
        if canonical != p.name:
            twin = root / canonical
            if twin.is_dir():
                problems.append(f"{where}: directories {twin} and {p} both decode to {what} {name!r}; "
                                f"{canonical!r} is its encoding: merge or remove {p.name!r}")
            else:
                problems.append(f"{where}: directory {p} is not the canonical encoding of {what} {name!r} "
                                f"(expected {canonical!r}); rename it")
            continue
        entries[name] = p
    return entries, problems


def _not_a_directory(p: Path) -> str:
    if p.is_symlink() and not p.exists():
        return f"a symlink to {os.readlink(p)!r}, which does not exist"
    return "a file" if p.is_file() else "not a directory"


def _refusal(name: str, what: str):
    """Why ``encode_name`` refuses ``name`` (its message after the name), or None."""
    try:
        encode_name(name, what)
    except StoreError as exc:
        return str(exc).split(": ", 1)[-1]
    return None


def list_entries(root: Path, what: str, where: str, marker: str | None = None) -> dict[str, Path]:
    """``scan_entries``, raising its first problem."""
    entries, problems = scan_entries(root, what, where, marker)
    if problems:
        raise StoreError(problems[0])
    return entries
