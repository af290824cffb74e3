"""The study's words: flags, the saturation with its interval, the per-task summary sentence, and the
order in which tasks are listed (the same on stdout and in the HTML)."""

from __future__ import annotations

import numpy as np

from ..analysis.groups import shots_order, shots_text

__all__ = ["flags", "saturation_text", "summary_sentence", "ranked", "status", "identified_count", "SCALE_NAMES",
           "shots_text", "shots_tick", "scaleup_sentence", "hparam_sentence", "absent_line", "interval_name",
           "interval_phrase"]

SCALE_NAMES = {"linear": "linear", "logit": "logit", "neglog1m": "-log(1 - p)"}


def shots_tick(s) -> str:
    """A shot count as an axis tick: '5', 'full'."""
    s = float(s)
    return "full" if s < 0 else (f"{int(s)}" if s.is_integer() else f"{s:g}")


def flags(r) -> list[str]:
    """The group's flags: the short sentences of its fit record (analysis.records), the same in fits.json,
    the tables, the figures and the summary."""
    return r.flags


SOURCE_WORDS = {"noise": "measurement noise", "models": "model bootstrap"}


def interval_name(res) -> str | None:
    """The interval the study asked for, as a noun for captions ('its primary interval', 'its model-bootstrap
    interval'), from StudyResult.ci_source; None when no bootstrap ran (n_boot = 0)."""
    if res.n_boot <= 0:
        return None
    return {"models": "model-bootstrap interval", "noise": "measurement-noise interval"}.get(res.ci_source,
                                                                                           "primary interval")


def interval_phrase(res) -> str:
    """Which interval the saturations carry, in words, for the summary: from StudyResult.n_boot and .ci_source."""
    if res.n_boot <= 0:
        return "no interval (the bootstrap was off: --bootstrap 0)"
    if res.ci_source == "models":
        return "its 95% model-bootstrap interval (--ci-source models: the models resampled)"
    if res.ci_source == "noise":
        return ("its 95% measurement-noise interval (--ci-source noise; the model bootstrap, flagged, where the "
                "test-set sizes are unknown)")
    return ("its primary 95% interval (measurement noise where the test-set sizes are known, else the model "
            "bootstrap)")


def saturation_text(r) -> str:
    """'0.78 [0.74, 0.81]': the saturation and its primary interval, with a third decimal when the interval
    is narrower than 0.02 (two decimals would print [0.65, 0.65])."""
    sat = r.fit_hull.saturation
    ci = r.interval
    if ci is not None and not all(np.isfinite(ci)):
        ci = None
    d = 3 if ci is not None and ci[1] - ci[0] < 0.02 else 2
    text = f"{sat:.{d}f}"
    if ci is not None:
        text += f" [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"
    return text


def status(r) -> str:
    """'identified', or 'not identified: <first reason>' (figure titles and tables)."""
    f = r.fit_hull
    if f.identified:
        return "identified"
    if not f.identifiable.get("saturation", False):
        reason = next((x for x in r.flags if "not identified" in x), "")
        return "not identified: " + (reason.split(": ", 1)[-1] if reason else "see flags")
    reason = next((x for x in r.flags if "not identified" in x), "")
    return "saturation identified, " + (reason or "other parameters not identified")


def summary_sentence(r) -> str:
    f = r.fit_hull
    if not f.identifiable.get("saturation", False):
        text = f"saturation not identified (fit gives {saturation_text(r)})"
    else:
        text = f"saturates at {saturation_text(r)}"
        if r.ci_source:
            text += f" ({SOURCE_WORDS[r.ci_source]})"
    text += f"; the fit rests on {int(f.n_points)} of {len(r.us)} models ({int(f.hull_points)} hull points)"
    best = float(np.max(r.ds))
    gap = f.saturation - best
    if gap < -0.01:
        text += f"; the fitted plateau lies below the best model ({best:.2f})"
    elif gap <= 0.01:
        text += f"; the best model ({best:.2f}) is already at the plateau"
    else:
        text += f"; {gap:.2f} above the best model ({best:.2f})"
    fl = flags(r)
    if fl:
        text += " (" + "; ".join(fl) + ")"
    return text


def identified_count(groups) -> str:
    n = sum(bool(r.fit_hull.identifiable.get("saturation", False)) for r in groups)
    return f"The data identify the saturation of {n} of {len(groups)} task{'s' if len(groups) != 1 else ''}."


def ranked(groups: list) -> list:
    """The order in which tasks are listed, here and on stdout: with several shot counts, each task's shots
    together and in order; with one point set per task, the tasks whose saturation is identified first,
    highest plateau first, then the others (their numbers are no finding, so they are not ranked)."""
    if any(r.shots is not None for r in groups):
        order = {t: i for i, t in enumerate(dict.fromkeys(r.task for r in groups))}
        return sorted(groups, key=lambda r: (order[r.task], shots_order(r.shots)))
    ident = [r for r in groups if r.fit_hull.identifiable.get("saturation", False)]
    rest = [r for r in groups if not r.fit_hull.identifiable.get("saturation", False)]
    return sorted(ident, key=lambda r: (-r.fit_hull.saturation, r.task)) + rest


def scaleup_sentence(summary) -> str:
    """Table F.3's finding in words, from StudyResult.prediction_summary (analysis.study.prediction_summary):
    the ratio's range, and how many (task, axis) residual correlations are significant at 5% against the
    number expected by chance."""
    if summary is None:
        return ""
    text = (f"Across {summary['n_tasks']} tasks the residual of eq. (1) has {summary['ratio_median']:.2f} times the "
            f"spread of DS accuracy around its mean (median; {summary['ratio_min']:.2f} to "
            f"{summary['ratio_max']:.2f}).")
    tests = summary.get("tests")
    if tests is not None and summary.get("n_pairs"):
        parts = [f"{t['axis']} {t['n_significant']} of {t['n_pairs']}, {t['n_significant_positive']} positive"
                 for _, t in tests.iterrows()]
        text += (f" Given US accuracy, the residual correlates with a scale axis at p < {summary['level']:g} in "
                 f"{summary['n_significant']} of {summary['n_pairs']} (task, axis) pairs ({'; '.join(parts)}); about "
                 f"{summary['expected_by_chance']:.0f} would by chance if the axes carried no information beyond US "
                 "accuracy. Positive: larger values of the axis give more DS accuracy than eq. (1) predicts from US "
                 "accuracy.")
    return text


def hparam_sentence(row) -> str:
    """One line of the A10 summary: the US optimum, how many DS tasks share it, what taking it costs."""
    where = f"{row['hparam']}" + ("" if row["shots"] is None or row["shots"] != row["shots"]
                                  else f" ({shots_text(row['shots'])})")
    text = (f"{where}: best for US is {float(row['us_best']):g}; {row['n_agree']} of {row['n_tasks']} DS tasks "
            f"share it")
    if row["n_agree"] < row["n_tasks"]:
        text += (f"; taking the US optimum costs {row['mean_loss']:.3f} DS accuracy on average, at most "
                 f"{row['max_loss']:.3f} ({row['max_loss_task']})")
    rho = row["spearman_optimum_vs_rank"]
    if rho == rho:
        text += f"; Spearman over tasks of the optimum with the US/DS rank correlation: {rho:+.2f}"
    if not row["crossed"]:
        text += (". Not crossed with the models (each model has its own value), so the means compare different "
                 "models: confounded")
    return text + "."


def absent_line(rows) -> str:
    """'A6 controlled scale-up (Fig. 4): not in this report because the input lacks ...', for the rows of
    tables/coverage.csv that share one reason (several analyses: 'A1 ... (Fig. 1); A2 ...: not ...')."""
    what = "; ".join(f"{r['id']} {r['analysis']} ({r['paper']})" for _, r in rows.iterrows())
    return f"{what}: not in this report because {rows['why'].iloc[0]}."
