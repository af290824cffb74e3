"""Write a study's artefacts: fits.json, tables (CSV + JSON), figures (PNG + SVG) and report.html.

The report is written into a temporary folder beside the output and renamed into place when complete,
so a study killed at any moment leaves the previous report whole (or none), never a new table beside
an old report.html. A temporary folder left by a killed study is removed by the next one.
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

#: files that mark a directory as a plateaulab report (so that replacing it loses nothing else)
REPORT_MARKERS = ("report.html", "fits.json")


class Artefacts:
    """Writes tables and figures under one report folder and lists what it wrote."""

    def __init__(self, out: Path, formats):
        self.out = out
        self.formats = tuple(formats)
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "tables").mkdir(parents=True, exist_ok=True)
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


def _staging_dir(out: Path) -> Path:
    """A fresh temporary folder beside ``out``; leftovers of killed studies on ``out`` are removed."""
    for old in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    return tmp


def _check_replaceable(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                                and not any((out / m).exists() for m in REPORT_MARKERS))):
        raise InputError(f"{out} exists and is not a plateaulab report (no report.html or fits.json); "
                         "{param} must be a new folder, an empty one, or an earlier report to replace",
                         param="out_dir")


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished report into place: out is replaced by tmp in two renames."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_report(res, out, *, axis_scale: str = "linear", formats=("png", "svg")) -> Path:
    """Write every artefact of the study result ``res`` into the folder ``out``; returns report.html."""
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_dir(out)
    try:
        art = Artefacts(tmp, formats)
        art.json("fits.json", {"fits": fit_records(res)})
        page = Page(res=res, art=art, axis_scale=axis_scale, planted=planted_saturations(res.source.planted))
        body = [part for section in SECTIONS for part in section(page)]
        (tmp / "report.html").write_text(H.document("plateaulab study", body), encoding="utf-8")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "report.html"
