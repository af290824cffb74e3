"""Names given by a user matched to the names of a table: exactly, else ignoring case and surrounding
spaces, with "did you mean" suggestions in the error (difflib)."""

from __future__ import annotations

import difflib
from typing import Optional

from ..errors import InputError

__all__ = ["match_name", "match_names"]


def _fold(name) -> str:
    return str(name).strip().casefold()


def _listing(names, limit: int = 40) -> str:
    names = [str(n) for n in names]
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f", ... ({more} more)" if more > 0 else "")


def _try_match(name, known: list, *, what: str, where: str, param: Optional[str]):
    """The element of ``known`` that ``name`` names exactly, else the one it names ignoring case and
    surrounding spaces, else None. Several of the latter is an error."""
    for k in known:
        if k == name or str(k) == str(name):
            return k
    hits = [k for k in known if _fold(k) == _fold(name)]
    if len(hits) > 1:
        raise InputError(f"{{param}} names {name!r}, which matches several {what}s of {where} once case and "
                         f"surrounding spaces are ignored ({', '.join(map(repr, hits))}); give the exact name",
                         param=param)
    return hits[0] if hits else None


def _close(name, known: list) -> list:
    folded = {}
    for k in known:
        folded.setdefault(_fold(k), k)
    return [folded[c] for c in difflib.get_close_matches(_fold(name), list(folded), n=3, cutoff=0.6)]


def match_names(names, known, *, what: str = "column", where: str = "the table", param: Optional[str] = None,
                label: Optional[str] = None) -> list:
    """The elements of ``known`` that ``names`` name (exactly, else ignoring case and surrounding spaces), in
    the order given, without repeats. Unknown names are one InputError listing them with "did you mean"
    suggestions and the known names."""
    known = list(known)
    out, unknown = [], []
    for n in names:
        hit = _try_match(n, known, what=what, where=where, param=param)
        if hit is None:
            unknown.append(n)
        elif hit not in out:
            out.append(hit)
    if unknown:
        hints = []
        for u in unknown:
            close = _close(u, known)
            if close:
                hints.append(f"{', '.join(map(repr, close))}" + (f" for {u!r}" if len(unknown) > 1 else ""))
        hint = f" (did you mean {'; '.join(hints)}?)" if hints else ""
        label = label or f"{what}(s)"
        raise InputError(f"{{param}} names unknown {label} {', '.join(map(repr, unknown))} of {where}{hint}; "
                         f"known {what}s: {_listing(known)}", param=param)
    return out


def match_name(name, known, *, what: str = "column", where: str = "the table", param: Optional[str] = None,
               label: Optional[str] = None):
    """The element of ``known`` that ``name`` names; see :func:`match_names`."""
    return match_names([name], known, what=what, where=where, param=param, label=label)[0]


def _as_list(v) -> Optional[list]:
    if v is None:
        return None
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return list(v)
