"""Which of the paper's analyses (shared PROTOCOL §2, A1-A10) a study holds, and for each one it does not,
what its input lacks. The report lists the absent ones in one section; tables/coverage.csv has all ten."""

from __future__ import annotations

import pandas as pd

__all__ = ["ANALYSES", "coverage"]

#: id -> (what it is, where in Abnar et al. 2022)
ANALYSES = {
    "A1": ("DS-vs-US scatter with the upper convex hull", "Fig. 1"),
    "A2": ("eq. (1) fitted to the hull and to all points, with the saturation line", "Fig. 1, Table F.3"),
    "A3": ("k, alpha and e_IR against the number of shots", "Fig. 2, Tables F.1, F.2"),
    "A4": ("sample-size sensitivity, hull vs all points", "Fig. 3"),
    "A5": ("axis scalings: linear, logit, -log(1 - p)", "Fig. F.2"),
    "A6": ("controlled scale-up: model size, data size, samples seen", "Fig. 4, Table F.3"),
    "A7": ("one task's hull over every task", "Fig. 5"),
    "A8": ("Spearman rank correlations DS x DS and DS x US", "Figs. F.20, F.21"),
    "A9": ("accuracy per layer and the earliest layer near the best", "Fig. 6"),
    "A10": ("hyper-parameters on which US and DS disagree", "App. C, D; Figs. D.3, D.4"),
}


def _why_absent(res, min_models: int, min_sensitivity: int) -> dict:
    """{id: what the input lacks} for every analysis the result does not hold."""
    if not res.groups:
        lacking = (f"the input lacks a DS task with {min_models} or more models that have both a US and a DS "
                   "accuracy")
        why = {a: lacking for a in ANALYSES if a not in ("A9", "A10")}
    else:
        why = _why_absent_fitted(res, min_sensitivity)
    if res.layer_table is None:
        why["A9"] = res.skipped.get("layer profile", "the input lacks accuracies of several layers per checkpoint "
                                                     "(a probe run over several layers)")
    if res.hparams is None:
        why["A10"] = res.absent.get("A10", "the input lacks declared hyper-parameter columns (--hparams)")
    return why


def _why_absent_fitted(res, min_sensitivity: int) -> dict:
    """A2-A8 for a result with fitted groups."""
    why = {}
    if res.shots_long is None:
        why["A3"] = "the input lacks several shot counts (it has one, or none)"
    if res.sensitivity is None:
        why["A4"] = ("it was turned off (--no-sensitivity)" if not res.sensitivity_asked else
                     f"the input lacks a task with {min_sensitivity} or more models to draw samples from")
    if res.scaleup is None:
        why["A6"] = res.absent.get("A6", "the input lacks models on a scale-up grid")
    if res.overlay_ref is None:
        why["A7"] = "the input lacks a second DS task to draw a hull over"
    if res.spearman is None:
        why["A8"] = res.skipped.get("Spearman matrices (Figures F.20, F.21)",
                                    "the input lacks a second DS task to rank models against")
    return why


def coverage(res, *, min_models: int = 3, min_sensitivity: int = 12) -> pd.DataFrame:
    """One row per analysis A1-A10 of the study result ``res`` (analysis.study.StudyResult): id, analysis,
    paper, in_report, why (empty when it is in the report). min_models, min_sensitivity: the models a fit and
    the sensitivity analysis need (the study passes its own)."""
    why = _why_absent(res, min_models, min_sensitivity)
    return pd.DataFrame([{"id": a, "analysis": what, "paper": paper, "in_report": a not in why,
                          "why": why.get(a, "")} for a, (what, paper) in ANALYSES.items()])
