"""The study from end to end: read the input, analyse it, write the report.

1. :func:`plateaulab.analysis.sources.read_source` reads the input (a builtin table, a table file or a
   probe run) into (model, DS task, shots, US, DS) points;
2. :func:`plateaulab.analysis.study.analyse` computes every analysis;
3. :func:`plateaulab.report.writer.write_report` writes fits.json, the tables, the figures and report.html.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..analysis.sources import read_source
from ..analysis.study import DEFAULT_BOOTSTRAP, analyse
from ..errors import InputError
from .writer import check_output, write_report

AXIS_SCALES = ("linear", "logit", "neglog1m")


def run_study(source=None, out_dir="study_report", *, us=None, ds=None, n_boot: int = DEFAULT_BOOTSTRAP,
              seed: int = 0, axis_scale: str = "linear", input_scale: str = "auto", overlay: str | None = None,
              sensitivity: bool = True, sensitivity_trials: int = 10, formats=("png", "svg"),
              loader: str = "auto", layer: str | None = None, ci_source: str = "both", tail: bool = False,
              layer_tol: float = 0.01, progress=None, on_result=None, **input_options) -> Path:
    """Run the whole study and write ``out_dir`` (report.html, fits.json, figures/, tables/). Returns the
    path of report.html. ``progress(label, done, total)`` is called after each group's fit; ``on_result(result)``
    receives the :class:`~plateaulab.analysis.study.StudyResult` before the report is written.
    input_options go to :func:`~plateaulab.analysis.sources.read_source` (n_test, n_test_us, min_us,
    exclude, hparams, and the table options). layer_tol: A9's tolerance (accuracy, 0-1).
    ``out_dir`` is replaced whole, so it must be new, empty or an earlier report written by plateaulab
    (:func:`~plateaulab.report.writer.check_output`); anything else is refused before the input is read."""
    if axis_scale not in AXIS_SCALES:
        raise InputError(f"{{param}} {axis_scale!r} is not one of {', '.join(AXIS_SCALES)}", param="axis_scale")
    check_output(out_dir)       # a folder the report may not replace is refused before the analysis, not after
    src = read_source(source, loader=loader, us=us, ds=ds, scale=input_scale, layer=layer, partial=True,
                      **input_options)
    res = analyse(src, n_boot=n_boot, seed=seed, sensitivity=sensitivity, sensitivity_trials=sensitivity_trials,
                  overlay=overlay, ci_source=ci_source, tail=tail, layer_tol=layer_tol,
                  progress=progress)
    if on_result is not None:
        on_result(res)
    return write_report(res, Path(out_dir), axis_scale=axis_scale, formats=formats)


def read_fits(report_dir) -> list[dict]:
    with open(Path(report_dir) / "fits.json") as f:
        return json.load(f)["fits"]
