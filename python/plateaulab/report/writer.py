"""Write a study's artefacts: fits.json, tables (CSV + JSON), figures (PNG + SVG) and report.html.

The report is written into a temporary folder beside the output and renamed into place when complete,
so a study killed at any moment leaves the previous report whole (or none), never a new table beside
an old report.html. Leftovers of a killed study are tidied by the next one on the same output: temporary
folders are removed, and a previous report moved aside but not yet replaced is put back.

A study replaces its output folder whole, so it only replaces a folder that it can tell is one of its
own reports and nothing else: one holding the marker file :data:`MARKER` (written into every report,
with plateaulab's version and the list of files the report consists of) and no file the marker does not
list. Any other non-empty folder, the working directory and the folders that contain it are refused.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from ..errors import InputError
from . import html as H
from .sections import SECTIONS, Page
from .tables import fit_records, planted_saturations

#: the file that marks a folder as a plateaulab report, and lists what the report consists of
MARKER = ".plateaulab-report"


class Artefacts:
    """Writes tables and figures under one report folder and lists what it wrote."""

    FOLDERS = ("figures", "tables")

    def __init__(self, out: Path, formats):
        self.out = out
        self.formats = tuple(formats)
        for folder in self.FOLDERS:
            (out / folder).mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []

    def json(self, name: str, obj) -> None:
        (self.out / name).write_text(json.dumps(obj, indent=2))
        self.files.append(name)

    def table(self, name: str, df: pd.DataFrame) -> None:
        csv = self.out / "tables" / f"{name}.csv"
        df.to_csv(csv, index=False)
        js = self.out / "tables" / f"{name}.json"
        js.write_text(df.to_json(orient="records", indent=1, double_precision=10))
        self.files += [str(csv.relative_to(self.out)), str(js.relative_to(self.out))]

    def figure(self, name: str, fig) -> bytes:
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        png = buf.getvalue()
        if "png" in self.formats:
            (self.out / "figures" / f"{name}.png").write_bytes(png)
            self.files.append(f"figures/{name}.png")
        if "svg" in self.formats:
            fig.savefig(self.out / "figures" / f"{name}.svg", format="svg")
            self.files.append(f"figures/{name}.svg")
        plt.close(fig)
        return png


def _pid_alive(name: str) -> bool:
    """Whether the process whose id ends a leftover's name (``.out.tmp-PID``) is another one still running."""
    try:
        pid = int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # exists, owned by someone else
        return True
    return True


def _tidy_leftovers(out: Path) -> None:
    """Leftovers of studies killed on ``out``: ``.NAME.tmp-PID`` (a report being written) is removed;
    ``.NAME.old-PID`` (the previous report, moved aside between _publish's two renames) is put back when
    ``out`` is missing (a kill between the renames), else removed (a kill while it was being deleted).
    Those of a study still running are left alone."""
    if not out.parent.is_dir():
        return
    olds = sorted((p for p in out.parent.glob(f".{out.name}.old-*") if not _pid_alive(p.name)),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    if olds and not os.path.lexists(out) and olds[0].is_dir() and not olds[0].is_symlink():
        os.replace(olds[0], out)
        olds = olds[1:]
    for old in olds + [p for p in out.parent.glob(f".{out.name}.tmp-*") if not _pid_alive(p.name)]:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _staging_dir(out: Path) -> Path:
    """A fresh temporary folder beside ``out`` (leftovers of killed studies on ``out`` tidied first)."""
    _tidy_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _listed(names, limit: int = 6) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _foreign(out: Path) -> list[str]:
    """The entries under the report folder ``out`` that its marker does not list (all of them when the
    marker is missing or unreadable), as paths relative to ``out``; folders holding a listed file count
    as the report's."""
    try:
        listed = set(json.loads((out / MARKER).read_text())["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        return sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    folders = ({str(Path(f).parent) for f in listed} | set(Artefacts.FOLDERS)) - {"."}
    foreign = []
    for root, dirs, names in os.walk(out):
        rel = Path(root).relative_to(out)
        for d in list(dirs):
            path = rel / d
            if str(path) not in folders or (Path(root) / d).is_symlink():
                foreign.append(f"{path}/")
                dirs.remove(d)
        foreign += [str(rel / n) for n in names if str(rel / n) not in listed or (Path(root) / n).is_symlink()]
    return sorted(foreign)


def check_output(out) -> Path:
    """Refuse, before any work, an output folder the study would have to destroy something else to
    write: the working directory or a folder containing it, a file, or a non-empty folder that is not
    purely a plateaulab report (see the module's docstring). Tidies leftovers of killed studies first."""
    out = Path(out)
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise InputError(f"{{param}} {str(out)!r} is the working directory or contains it ({cwd}); a study "
                         "replaces its output folder whole: give a new folder, e.g. {param} report", param="out_dir")
    _tidy_leftovers(out)
    if os.path.lexists(out) and (out.is_symlink() or not out.is_dir()):
        raise InputError(f"{{param}} {str(out)!r} exists and is not a folder; give a new folder", param="out_dir")
    if out.is_dir() and any(out.iterdir()):
        foreign = _foreign(out)
        if foreign:
            why = (f"has no {MARKER} marker, so it is no plateaulab report (reports written before plateaulab "
                   "marked them have none: delete such a folder yourself)" if not (out / MARKER).is_file()
                   else "is a plateaulab report but also holds files that are not part of it")
            raise InputError(f"{{param}} {str(out)!r} {why}: {_listed(foreign)}. A study replaces its output "
                             "folder whole, so it writes only into a new folder, an empty one or an earlier "
                             "report and nothing else: give another {param} (e.g. a new folder inside this one)",
                             param="out_dir")
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished report into place: out is replaced by tmp in two renames (a kill between them
    leaves the previous report as .NAME.old-PID, which the next study on out puts back)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_marker(art: "Artefacts") -> None:
    """The marker, written last: a folder holding it is a complete report made of the files it lists."""
    from .. import __version__

    files = sorted(set(art.files) | {"report.html"})
    (art.out / MARKER).write_text(json.dumps({"plateaulab": __version__, "what": "plateaulab study report",
                                              "files": files}, indent=1) + "\n")


def write_report(res, out, *, axis_scale: str = "linear", formats=("png", "svg")) -> Path:
    """Write every artefact of the study result ``res`` into the folder ``out``; returns report.html.
    ``out`` must be new, empty or an earlier report (:func:`check_output`); it is replaced whole."""
    out = check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_dir(out)
    try:
        art = Artefacts(tmp, formats)
        art.json("fits.json", {"fits": fit_records(res)})
        page = Page(res=res, art=art, axis_scale=axis_scale, planted=planted_saturations(res.source.planted))
        body = [part for section in SECTIONS for part in section(page)]
        (tmp / "report.html").write_text(H.document("plateaulab study", body), encoding="utf-8")
        _write_marker(art)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "report.html"
