"""The sections of report.html, one function each, in the order of the page.

Each section takes the :class:`Page` (the study's result, the artefact writer and the drawing options),
writes its tables and figures through ``page.art`` and returns its HTML. A section with nothing to show
returns an empty list.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt

import pandas as pd

from . import figures as F
from . import html as H
from . import tables as T
from .text import (SCALE_NAMES, absent_line, hparam_sentence, identified_count, interval_name, interval_phrase, ranked,
                   scaleup_sentence, shots_text, shots_tick, summary_sentence)


@dataclasses.dataclass
class Page:
    res: object                 # analysis.study.StudyResult
    art: object                 # writer.Artefacts
    axis_scale: str = "linear"
    planted: dict = dataclasses.field(default_factory=dict)

    @property
    def source(self):
        return self.res.source


#: --ci-source in the header's words
_CI_WORDS = {"both": "measurement noise and model bootstrap", "noise": "measurement noise (model bootstrap where "
             "test-set sizes are unknown)", "models": "model bootstrap"}


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def header(page: Page) -> list[str]:
    from .. import __version__

    res, src = page.res, page.source
    shots = res.shots
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = ["<h1>Does better upstream accuracy still buy downstream accuracy?</h1>",
           f'<p class="meta">plateaulab {H.esc(__version__)} study, {H.esc(now)}. '
           f"Input: {H.esc(src.citation)}. Upstream (x axis): <b>{H.esc(src.table.us_name)}</b>. "
           f"{_count(src.long['model'].nunique(), 'model')}, {_count(len(src.table.ds_tasks), 'downstream task')}"
           + (f", shots: {', '.join(shots_tick(s) for s in shots)}" if shots else "")
           + (f". Bootstrap: {res.n_boot} replicates (seed {res.seed}), intervals: "
              f"{_CI_WORDS.get(res.ci_source, H.esc(res.ci_source))}. "
              if res.n_boot > 0 else ". Bootstrap: off (no intervals). ")
           + ("Fits include the hull's descending tail (--tail). " if res.tail else "")
           + f"Axis scale: {SCALE_NAMES[page.axis_scale]}. Analysis time {res.timings.get('total', 0):.1f} s.</p>",
           '<p class="meta">Method: Abnar, Dehghani, Neyshabur and Sedghi, "Exploring the Limits of Large Scale '
           'Pre-training", ICLR 2022. For each downstream (DS) task, eq. (1) e_DS = k &middot; e_US<sup>&alpha;</sup> '
           "+ e_IR (e = 1 &minus; accuracy) is fitted to the upper convex hull of the DS-vs-US points; the saturation "
           "value 1 &minus; e_IR is the DS accuracy predicted for a perfect upstream model.</p>"]
    if src.kind == "builtin":
        out.append(f'<p class="note">Data: <b>{H.esc(src.citation)}</b>, shipped inside plateaulab unchanged.</p>')
    out += [f'<p class="note">{H.esc(note)}</p>' for note in src.notes]
    return out


def not_analysed(page: Page) -> list[str]:
    skipped = page.res.skipped
    if not skipped:
        return []
    page.art.table("not_analysed", T.not_analysed_table(page.res))
    return (["<h2>Not analysed</h2><ul>"]
            + [f'<li class="warn"><b>{H.esc(k)}</b>: {H.esc(v)}</li>' for k, v in skipped.items()] + ["</ul>"])


def coverage(page: Page) -> list[str]:
    table = page.res.coverage
    if table is None:
        return []
    page.art.table("coverage", table)
    absent = table[~table["in_report"]]
    if absent.empty:
        return []
    lines = [absent_line(g) for _, g in absent.groupby("why", sort=False)]
    return (["<h2>Analyses not in this report</h2>",
             "<p>Of the paper's analyses (A1-A10 of the protocol), these need something this input does not have; "
             "<code>tables/coverage.csv</code> lists all ten.</p><ul>"]
            + [f"<li>{H.esc(line)}</li>" for line in lines] + ["</ul>"])


def summary(page: Page) -> list[str]:
    groups = page.res.groups
    if not groups:
        return []
    out = ["<h2>Summary per task</h2>",
           f"<p><b>{H.esc(identified_count(groups))}</b> A saturation counts as identified when its profile "
           "interval stays inside [0, 1] (docs/ANALYSIS.md); the others are listed after the ranking with the "
           f"reason, and their fitted numbers are not findings. Each saturation is given with "
           f"{H.esc(interval_phrase(page.res))}, the number of models the fit rests on, and how far the plateau "
           "lies above the best model observed.</p>"]
    if page.planted:
        planted = T.planted_table(groups, page.planted)
        if not planted.empty:
            page.art.table("planted_vs_recovered", planted)
            out.append("<p>This input comes from <code>plateaulab synth</code>: its saturation values are known by "
                       "construction. Recovered against planted:</p>" + H.table(planted, text_cols=("ds_task",)))
    page.art.table("summary", T.summary_table(groups))
    out.append('<ul class="summary">')
    for r in ranked(groups):
        cls = "" if r.fit_hull.identifiable.get("saturation", False) else ' class="warn"'
        out.append(f"<li{cls}><b>{H.esc(r.label)}</b>: {H.esc(summary_sentence(r))}</li>")
    out.append("</ul>")
    return out


def saturation_figure(page: Page) -> list[str]:
    if not page.res.groups:
        return []
    png = page.art.figure("fig1_saturation_grid", F.saturation_grid(page.res.groups, page.source.table.us_name,
                                                                    page.axis_scale, page.planted))
    res = page.res
    band = interval_name(res)
    caption = ("Each panel: the models (dots); "
               + ("their upper convex hull, all of it fitted (<code>--tail</code>: the descending tail too); eq. (1) "
                  "fitted on that hull (red)" if res.tail else
                  "their upper convex hull, solid up to its highest vertex (the part the fit uses) and dotted after "
                  "it; eq. (1) fitted on that rising hull (red)")
               + (f" with the 95% pointwise band of its {band} (shaded)" if band else
                  " (no band: the bootstrap was off, <code>--bootstrap 0</code>)")
               + ", or dashed grey with the reason in the title when the data do not identify the saturation; eq. (1) "
               "fitted on all points (green dash-dot); and the saturation line 1 &minus; e_IR (red dotted)"
               + ("; the saturation planted by construction (purple dashed)" if page.planted else "")
               + ". Hull edges and curves are drawn in accuracy space, so on logit or -log(1 - p) axes they bend.")
    return ["<h2>DS accuracy against US accuracy (Figure 1)</h2>", H.figure(png, caption, "Figure 1 grid")]


def axis_scales(page: Page) -> list[str]:
    groups = page.res.groups
    if not groups:
        return []
    ident = [g for g in groups if g.fit_hull.identifiable.get("saturation", False)] or groups
    r = next((g for g in ident if g.task == page.res.overlay_ref), ident[0])
    png = page.art.figure("figF2_axis_scales", F.axis_scales_figure(r, page.source.table.us_name))
    caption = (f"{H.esc(r.label)}'s panel of Figure 1 on three axis scales (App. E): the fits are the same, made on "
               "0-1 accuracies; logit and -log(1 - p) stretch the ends of the range, where saturation shows. Under "
               "-log(1 - p) a pure power law without e_IR is a straight line. <code>--axis-scale</code> redraws "
               "Figures 1 and 5 on either.")
    return ["<h2>Axis scales (Figure F.2)</h2>", H.figure(png, caption, "Figure F.2 axis scales")]


def parameters(page: Page) -> list[str]:
    if not page.res.groups:
        return []
    params = T.parameter_table(page.res.groups)
    page.art.table("parameters", params)
    fits_all = T.fits_all_table(page.res.groups)
    if not fits_all.empty:
        page.art.table("fits_all_points", fits_all)
    page.art.table("points", T.points_table(page.res))
    res = page.res
    fitted = ("Fitted on the whole upper hull, its descending tail included (<code>--tail</code>; by default only "
              "the rising part, from the leftmost vertex to the highest, is fitted, eq. (1) being monotone)"
              if res.tail else
              "Fitted on the rising part of the upper hull, from its leftmost vertex to its highest one (eq. (1) "
              "is monotone; the descending tail is drawn dotted and not fitted)")
    noise = "<i>noise</i> redraws every accuracy from its test-set size (the uncertainty for these models)"
    models = ("<i>models</i> resamples the models (another set of models; the hull is an extreme-value statistic, "
              "for which the n-out-of-n bootstrap is inconsistent, Bickel &amp; Sakov)")
    if res.n_boot <= 0:
        intervals = "No intervals: the bootstrap was off (<code>--bootstrap 0</code>)."
    elif res.ci_source == "models":
        intervals = ("Intervals are 95% percentile intervals of the model bootstrap (<code>--ci-source "
                     f"models</code>): {models}.")
    elif res.ci_source == "noise":
        intervals = (f"Intervals are 95% percentile intervals of the measurement-noise bootstrap (<code>--ci-source "
                     f"noise</code>): {noise}; where the test-set sizes are unknown, of the model bootstrap instead "
                     f"({models}), as the <b>interval</b> column and the flags say.")
    else:
        intervals = (f"Intervals are 95% percentile intervals of one of two bootstraps, named in the <b>interval</b> "
                     f"column: {noise}, {models}. Both are in <code>tables/parameters.csv</code>.")
    return ["<h2>Parameters of eq. (1) per task</h2>",
            f"<p>{fitted}, by variable projection with the global optimum over alpha. <b>identified</b>: whether the "
            "profile of the least-squares objective pins down each parameter (a profile interval that reaches a "
            f"bound means the data cannot tell). {intervals}</p>",
            H.table(T.display_parameters(params), text_cols=("DS task", "flags"), flag_col="flags",
                    nowrap_cols=("alpha [95% CI]", "saturation [95% CI]", "sse"))]


def influence(page: Page) -> list[str]:
    table = T.influence_table(page.res)
    if table.empty:
        return []
    page.art.table("influence", table)
    view = T.influence_view(page.res)
    return ["<h2>How much each fit rests on one model</h2>",
            "<p>Per task, the fitted hull vertex whose removal moves the saturation most: the saturation refitted "
            "without that model (the hull is recomputed). Every model counts in the fits above, as in the paper; "
            "leaving models out is the reader's decision (<code>min_us</code>, <code>exclude</code>). All vertices "
            "are in <code>tables/influence.csv</code>.</p>",
            H.table(view, text_cols=("ds_task", "most influential model"), digits=3)]


def scaleup(page: Page) -> list[str]:
    res, up = page.res, page.res.scaleup
    if up is None:
        return []
    page.art.table("scaleup_lines", up.lines)
    by_label = {r.label: r for r in res.groups}
    shown = [by_label[k] for k in up.shown if k in by_label]
    us_name = page.source.table.us_name
    png = page.art.figure("fig4_scaleup", F.scaleup_grid(shown, up, us_name))
    full = [r for r in res.groups if r.fit_all is not None]
    per_axis = up.lines.groupby("axis", sort=False).agg(lines=("line", "nunique"), models=("model", "nunique"))
    counts = "; ".join(f"{a}: {int(v['lines'])} lines of {int(v['models'])} models" for a, v in per_axis.iterrows())
    caption = (f"{len(shown)} of {len(full)} tasks, chosen to span Table F.3's ratio from the best predicted to the "
               "worst (Table F.3 below covers every task; Figure 1 shows every task's points). Each column varies "
               "one axis: a line joins models whose other axes are the same ("
               f"{H.esc(counts)}), points are coloured by the varied axis's level, grey models lie on no line of "
               "that axis, and the green dash-dot curve is eq. (1) fitted on all the task's models (pooled over the "
               "axes). The model axis is ordered by compute per sample (GMACs).")
    return ["<h2>Controlled scale-up (Figure 4)</h2>",
            "<p>Abnar et al. (Section 3) find that increasing model size, data size or compute moves a model along "
            "the same DS-vs-US curve: given US accuracy, these axes tell nothing more about DS accuracy. Below, "
            "that is looked at per axis (Figure 4), and tested in Table F.3's last columns.</p>",
            H.figure(png, caption, "Figure 4 controlled scale-up")]


def prediction_power(page: Page) -> list[str]:
    res = page.res
    table = T.tableF3(res)
    if table.empty:
        return []
    page.art.table("tableF3_prediction_power", table)
    axes = res.scaleup.axes if res.scaleup is not None else []
    out = ["<h2>How well US accuracy predicts DS accuracy (Table F.3)</h2>",
           "<p>std_residual: standard deviation of DS accuracy minus eq. (1) fitted on all points (the pooled fit); "
           "std_mean: standard deviation around the mean DS accuracy (predicting the mean); ratio = std_residual / "
           "std_mean. A small ratio means US accuracy alone predicts DS accuracy well.</p>"]
    if axes:
        out.append("<p>Residual vs an axis: Spearman correlation, over the models, of the residual with the axis "
                   "(model GMACs, data size, samples seen), and its permutation p-value (2,000 permutations; * p &lt; "
                   f"0.05). {H.esc(scaleup_sentence(res.prediction_summary))}</p>")
    return out + [H.table(T.display_tableF3(table, axes), text_cols=("ds_task",), digits=4)]


def sensitivity(page: Page) -> list[str]:
    sens = page.res.sensitivity
    if sens is None:
        return []
    page.art.table("sensitivity", sens)
    mean = page.res.sensitivity_mean
    page.art.table("sensitivity_mean", mean)
    png = page.art.figure("fig3_sensitivity", F.sensitivity_plot(sens, mean))
    hull = "whole upper hull" if page.res.tail else "rising hull"
    caption = ("Models are split by US accuracy at its 0.75 quantile. n models are drawn from the lower range; eq. (1) "
               f"is fitted to their {hull}" + (" (<code>--tail</code>)" if page.res.tail else "") + " or to all of "
               "them. Fitting error: mean squared error on the points used. Prediction error: each mode against what "
               f"it claims to predict, the hull fit against the {hull} of the held-out high-US models (the frontier), "
               "the all-points fit against every held-out model "
               "(the average model); docs/ANALYSIS.md discusses the paper's ambiguous wording. Thin lines: single "
               "tasks (values below 1e-7, exact interpolation of a short hull, are drawn at 1e-7); thick: mean over "
               "tasks (<code>tables/sensitivity_mean.csv</code>).")
    return ["<h2>Sensitivity to the number of models (Figure 3)</h2>", H.figure(png, caption, "Figure 3 sensitivity")]


def shots(page: Page) -> list[str]:
    res = page.res
    if res.shots_long is None:
        return []
    png = page.art.figure("fig2_params_vs_shots", F.params_vs_shots_plot(res.shots_long))
    out = ["<h2>Parameters against the number of shots (Figure 2)</h2>",
           H.figure(png, "k, alpha and e_IR of the hull fit for each DS task and shot count.",
                    "Figure 2 parameters vs shots")]
    if res.shots_table is not None:
        page.art.table("params_vs_shots", res.shots_table)
        text_cols = tuple(c for c in res.shots_table.columns if res.shots_table[c].dtype == object)
        out.append(H.table(res.shots_table, text_cols=text_cols))
    return out


def spearman(page: Page) -> list[str]:
    res = page.res
    if res.spearman is None:
        return []
    ds_ds, ds_us = res.spearman
    page.art.table("spearman_ds_ds", ds_ds.rename_axis(index="ds_task", columns=None).reset_index())
    page.art.table("spearman_ds_us", pd.DataFrame({"ds_task": [str(i) for i in ds_us.index],
                                                   "spearman_with_us": ds_us.to_numpy(float)}))
    out = ["<h2>Rank correlations over models (Figures F.20, F.21)</h2>"]
    if res.main_shots is not None:
        out.append(f"<p>Accuracies at {H.esc(shots_text(res.main_shots))}, the shot count that covers the most "
                   "DS tasks.</p>")
    png = page.art.figure("figF21_spearman_ds_us", F.spearman_us_bars(ds_us, page.source.table.us_name))
    out.append(H.figure(png, "Spearman correlation of each DS task's accuracy with US accuracy, over models.",
                        "Spearman DS vs US"))
    if ds_ds.shape[0] >= 2:
        order = list(ds_us.dropna().sort_values(ascending=False).index)
        png = page.art.figure("figF20_spearman_ds_ds", F.spearman_heatmap(ds_ds, order))
        out.append(H.figure(png, "Spearman correlation between DS tasks, over models; tasks in order of their "
                                 "correlation with US accuracy.", "Spearman DS vs DS"))
    return out


def overlay(page: Page) -> list[str]:
    ref = page.res.overlay_ref
    if ref is None:
        return []
    png = page.art.figure("fig5_hull_overlay", F.hull_overlay_grid(page.res.groups, ref, page.source.table.us_name,
                                                                   page.axis_scale))
    caption = (f"Red: the upper hull of {H.esc(ref)}'s own DS-vs-US points ({H.esc(ref)} accuracy on the y axis; "
               "the DS task whose ranking agrees most with US accuracy unless another is chosen), drawn on each "
               "task's axes over that task's models and hull (dark). It compares accuracy levels: where the two hulls "
               f"are close, the best accuracy reachable on that task at a given US accuracy is about the best "
               f"reachable on {H.esc(ref)}. It does not show which models are best on which task.")
    return [f"<h2>Hull of {H.esc(ref)} over every task (Figure 5)</h2>", H.figure(png, caption, "Figure 5 hull overlay")]


def layers(page: Page) -> list[str]:
    res, lay = page.res, page.source.layers
    if lay is None:
        return []
    page.art.table("layer_accuracy", lay)
    if res.layer_table is not None:
        page.art.table("layer_profile", res.layer_table)
    shown = lay if res.layer_shots is None else lay[lay["shots"] == res.layer_shots]
    tol = res.layer_tol
    png = page.art.figure("fig6_layers", F.layer_plot(shown, page.source.table.us_name,
                                                      T.earliest_layers(res.layer_table), tol))
    out = ["<h2>Accuracy per layer (Figure 6)</h2>",
           H.figure(png, "Few-shot accuracy of a probe on each layer's features"
                    + (f" ({shots_text(res.layer_shots)})" if res.layer_shots is not None else "")
                    + f". One line per checkpoint, coloured by US accuracy; stars: the earliest layer within {tol:g} "
                    "(accuracy) of the checkpoint's best layer.", "Figure 6 layers")]
    early = T.earliest_table(res.layer_table)
    if early is not None:
        page.art.table("layer_earliest", early)
        summary_ = res.layer_summary
        page.art.table("layer_summary", summary_)
        out += [f"<p>Per DS task: the mean best layer and the mean earliest layer within &epsilon; = {tol:g} of the "
                "best (over checkpoints; <code>--layer-tol</code> sets &epsilon;), and the share of checkpoints whose "
                "last layer is not needed. Per checkpoint in <code>tables/layer_earliest.csv</code>"
                + (", and below" if len(early) <= 24 else "") + ".</p>",
                H.table(summary_, text_cols=("dataset",))]
        if len(early) <= 24:
            out.append(H.table(early, text_cols=("dataset", "checkpoint", "best layer", "earliest near-best layer")))
    return out


def hparams(page: Page) -> list[str]:
    table, summary_ = page.res.hparams, page.res.hparam_summary
    if table is None:
        return []
    page.art.table("hparams", table)
    page.art.table("hparams_summary", summary_)
    us_name = page.source.table.us_name
    runs = page.source.hparams
    grid = {h: runs[h].dropna().unique().tolist() for h in page.source.hparam_names}
    d3 = page.art.figure("figD3_hparam_optimum", F.hparam_optimum_plot(table, us_name, grid))
    d4 = page.art.figure("figD4_hparam_vs_rank", F.hparam_rank_plot(table, us_name, grid))
    names = ", ".join(page.source.hparam_names)
    return ([f"<h2>Hyper-parameters on which US and DS disagree (App. C, D): {H.esc(names)}</h2>",
            "<p>For each declared hyper-parameter, the value with the best mean accuracy over the runs that have it, "
            f"for US ({H.esc(us_name)}) and for each DS task; the DS accuracy lost by taking the US optimum; and the "
            "task's optimum against the Spearman correlation of its accuracy with US accuracy over the runs (the "
            "paper finds that tasks ranking models like US want US-like values). All rows in "
            "<code>tables/hparams.csv</code>.</p><ul>"]
            + [f"<li>{H.esc(hparam_sentence(row))}</li>" for _, row in summary_.iterrows()]
            + ["</ul>",
               H.figure(d3, "Figure D.3: dots, the best value for each task; dotted lines, the best for US; one colour "
                            "per shot count.", "Figure D.3 optimum per task"),
               H.figure(d4, "Figure D.4: each task's best value against its US/DS rank correlation; dotted: the US "
                            "optimum.", "Figure D.4 optimum vs rank correlation")])


def files(page: Page) -> list[str]:
    stems: dict = {}
    for f in page.art.files + ["report.html"]:
        folder, _, name = f.rpartition("/")
        stem, _, ext = name.rpartition(".")
        stems.setdefault(folder, {}).setdefault(stem, []).append(ext)
    out = ["<h2>Files</h2><p>Every figure of this page is saved under <code>figures/</code> (PNG and SVG); "
           "every table under <code>tables/</code> (CSV and JSON). <code>fits.json</code> is "
           "<code>{\"fits\": [...]}</code>: the records that <code>plateaulab fit --json</code> prints under its key "
           "<code>fits</code> (one per task and shot count), without that command's "
           "other keys (table, us, notes). <code>.plateaulab-report</code> marks the folder as a report and lists its "
           "files: a later study may replace such a folder, and only such a folder.</p>", "<ul>"]
    for folder, items in stems.items():
        listed = ", ".join(f"<code>{H.esc(stem)}</code> ({'/'.join(exts)})" for stem, exts in items.items())
        out.append(f"<li><b>{H.esc(folder or '.')}/</b>: {listed}</li>")
    return out + ["</ul>"]


#: The page, top to bottom.
SECTIONS = (header, not_analysed, coverage, summary, saturation_figure, axis_scales, parameters, influence, scaleup,
            prediction_power, sensitivity, shots, spearman, overlay, layers, hparams, files)
