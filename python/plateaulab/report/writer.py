"""Write a study's artefacts: tables (CSV + JSON), figures (PNG + SVG), fits.json and report.html."""

from __future__ import annotations

import datetime as _dt
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import html as H
from .study import StudyResult, fit_record, parameter_table, power_table, summary_sentence

SCALE_NAMES = {"linear": "linear", "logit": "logit", "neglog1m": "-log(1 - p)"}


def planted_saturations(planted: dict | None) -> dict:
    """{task: planted saturation} from a synthetic store's metadata (see plateaulab.synth)."""
    if not planted:
        return {}
    tasks = planted.get("tasks", {})
    return {t: float(v["saturation"]) for t, v in tasks.items() if isinstance(v, dict) and "saturation" in v}


class _Artefacts:
    def __init__(self, out: Path, formats):
        self.out = out
        self.formats = tuple(formats)
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "tables").mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []

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


def write_report(res: StudyResult, out: Path, *, axis_scale: str = "linear", formats=("png", "svg")) -> Path:
    from . import figures as F

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    art = _Artefacts(out, formats)
    inp = res.input
    groups = res.groups
    planted = planted_saturations(inp.planted)
    body: list[str] = []

    # --- tables and fits.json -------------------------------------------------------------
    fits = [fit_record(r) for r in groups]
    (out / "fits.json").write_text(json.dumps({"fits": fits}, indent=2))
    art.files.insert(0, "fits.json")
    params = parameter_table(groups)
    art.table("parameters", params)
    fits_all = pd.DataFrame([{**{"ds_task": r.task, "shots": r.shots}, **_scalars(r.fit_all.to_dict())}
                             for r in groups if r.fit_all is not None])
    if not fits_all.empty:
        art.table("fits_all_points", fits_all)
    power = power_table(groups)
    if not power.empty:
        art.table("prediction_power", power)
    points = inp.points.copy()
    points["on_hull"] = False
    for r in groups:
        sel = (points["ds_task"] == r.task) & (points["shots"].fillna(-999) == (r.shots if r.shots is not None else -999))
        idx = points.index[sel]
        if len(idx) == len(r.us):
            points.loc[idx[r.hull], "on_hull"] = True
    art.table("points", points)
    if res.sensitivity is not None:
        art.table("sensitivity", res.sensitivity)
    if res.shots_table is not None:
        art.table("params_vs_shots", res.shots_table)
    if res.spearman is not None:
        ds_ds, ds_us = res.spearman
        art.table("spearman_ds_ds", ds_ds.rename_axis(index="ds_task", columns=None).reset_index())
        art.table("spearman_ds_us", pd.DataFrame({"ds_task": [str(i) for i in ds_us.index],
                                                  "spearman_with_us": ds_us.to_numpy(float)}))
    if res.layer_table is not None:
        art.table("layer_profile", res.layer_table)
    if inp.layers is not None:
        art.table("layer_accuracy", inp.layers)

    # --- header -----------------------------------------------------------------------------
    from .. import __version__

    n_models = inp.points["model"].nunique()
    tasks = list(dict.fromkeys(r.task for r in groups))
    shots = sorted({r.shots for r in groups if r.shots is not None})
    body.append("<h1>Does better upstream accuracy still buy downstream accuracy?</h1>")
    body.append(
        f'<p class="meta">plateaulab {H.esc(__version__)} study, {H.esc(_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))}. '
        f"Input: {H.esc(inp.source)}. Upstream (x axis): <b>{H.esc(inp.us_name)}</b>. "
        f"{n_models} models, {len(tasks)} downstream tasks"
        + (f", shots: {', '.join(F._shots_tick(s) for s in sorted(shots, key=F._shots_key))}" if shots else "")
        + f". Bootstrap: {res.params['n_boot']} replicates (seed {res.params['seed']}). "
        f"Axis scale: {SCALE_NAMES[axis_scale]}. Analysis time {res.timings.get('total', 0):.1f} s.</p>")
    body.append(
        '<p class="meta">Method: Abnar, Dehghani, Neyshabur and Sedghi, "Exploring the Limits of Large Scale '
        'Pre-training", ICLR 2022. For each downstream (DS) task, eq. (1) e_DS = k &middot; e_US<sup>&alpha;</sup> '
        "+ e_IR (e = 1 &minus; accuracy) is fitted to the upper convex hull of the DS-vs-US points; the saturation "
        "value 1 &minus; e_IR is the DS accuracy predicted for a perfect upstream model.</p>")
    if inp.kind == "openclip":
        body.append('<p class="note">Data: <b>mlfoundations/open_clip, docs/openclip_results.csv, commit 29b90b8d</b> '
                    "(MIT licence), shipped inside plateaulab unchanged.</p>")
    for note in inp.notes:
        body.append(f'<p class="note">{H.esc(note)}</p>')

    # --- what is missing ------------------------------------------------------------------
    missing = dict(inp.skipped)
    missing.update(res.failed)
    if missing:
        body.append("<h2>Not analysed</h2><ul>")
        for k, v in missing.items():
            body.append(f'<li class="warn"><b>{H.esc(k)}</b>: {H.esc(v)}</li>')
        body.append("</ul>")
        art.table("not_analysed", pd.DataFrame({"what": list(missing), "why": list(missing.values())}))

    # --- summary ---------------------------------------------------------------------------
    body.append("<h2>Summary per task</h2>")
    body.append("<p>Saturation value with its 95% bootstrap percentile interval, the number of upper-hull points "
                "the fit rests on, and how far the plateau lies above the best model observed.</p>")
    if planted:
        body.append(_planted_section(groups, planted, art))
    body.append('<ul class="summary">')
    if shots:   # several shot counts: keep each task's shots together, in order
        order = {t: i for i, t in enumerate(tasks)}
        ranked = sorted(groups, key=lambda r: (order[r.task], r.shots if r.shots is not None else -1))
    else:       # one point set per task: highest plateau first
        ranked = sorted(groups, key=lambda r: (-r.fit_hull.saturation, r.task))
    for r in ranked:
        body.append(f"<li><b>{H.esc(r.label)}</b>: {H.esc(summary_sentence(r))}</li>")
    body.append("</ul>")

    # --- Figure 1 ---------------------------------------------------------------------------
    body.append("<h2>DS accuracy against US accuracy (Figure 1)</h2>")
    png = art.figure("fig1_saturation_grid", F.saturation_grid(groups, inp.us_name, axis_scale, planted))
    body.append(H.figure(png, "Each panel: the models (dots), their upper convex hull (dark line), eq. (1) fitted on "
                              "the hull (red) with its 95% pointwise bootstrap band (shaded), eq. (1) fitted on all "
                              "points (grey dashed), and the saturation line 1 &minus; e_IR (red dotted)."
                              + (" Green dash-dots: the saturation planted by construction." if planted else ""),
                         "Figure 1 grid"))

    # --- parameter table ----------------------------------------------------------------------
    body.append("<h2>Parameters of eq. (1) per task</h2>")
    body.append("<p>Fitted on the upper hull (variable projection; global optimum over alpha). Intervals are 2.5/97.5 "
                "bootstrap percentiles: models are resampled with replacement and the hull is recomputed for every "
                "replicate. The hull is an extreme-value statistic, for which the plain n-out-of-n bootstrap is "
                "known to be inconsistent (Bickel &amp; Sakov): read the intervals as indicative. A fit on three "
                "or fewer distinct hull points is not identified; it is flagged.</p>")
    body.append(H.table(_display_parameters(params), text_cols=("DS task", "flags"), flag_col="flags",
                        nowrap_cols=("alpha [95% CI]", "saturation [95% CI]", "sse")))

    # --- prediction power ----------------------------------------------------------------------
    if not power.empty:
        body.append("<h2>How well US accuracy predicts DS accuracy (Table F.3)</h2>")
        body.append("<p>std_residual: standard deviation of DS accuracy minus eq. (1) fitted on all points; std_mean: "
                    "standard deviation around the mean DS accuracy (predicting the mean); ratio = std_residual / "
                    "std_mean. A small ratio means US accuracy alone predicts DS accuracy well.</p>")
        shown = [c for c in ("ds_task", "shots", "n_points", "std_residual", "std_mean", "ratio") if c in power]
        view = power[shown].copy()
        if "n_points" in view:
            view["n_points"] = view["n_points"].astype(int)
        if "shots" in view:
            view["shots"] = view["shots"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
        body.append(H.table(view, text_cols=("ds_task",), digits=4))

    # --- sensitivity ----------------------------------------------------------------------------
    if res.sensitivity is not None:
        body.append("<h2>Sensitivity to the number of models (Figure 3)</h2>")
        png = art.figure("fig3_sensitivity", F.sensitivity_plot(res.sensitivity))
        body.append(H.figure(png, "Models are split by US accuracy at its 0.75 quantile. n models are drawn from the "
                                  "lower range (10 trials per n); eq. (1) is fitted to their hull or to all of them. "
                                  "Fitting error: mean squared error on the points used; prediction error: on the "
                                  "held-out high-US models. Thin lines: single tasks (values below 1e-7, exact interpolation "
                                  "of a short hull, are drawn at 1e-7); thick: mean over tasks.",
                             "Figure 3 sensitivity"))

    # --- shots ------------------------------------------------------------------------------------
    if "shots_long" in res.params:
        body.append("<h2>Parameters against the number of shots (Figure 2)</h2>")
        png = art.figure("fig2_params_vs_shots", F.params_vs_shots_plot(res.params["shots_long"]))
        body.append(H.figure(png, "k, alpha and e_IR of the hull fit for each DS task and shot count.",
                             "Figure 2 parameters vs shots"))
        if res.shots_table is not None:
            body.append(H.table(res.shots_table, text_cols=tuple(c for c in res.shots_table.columns
                                                                 if res.shots_table[c].dtype == object)))

    # --- Spearman -------------------------------------------------------------------------------
    if res.spearman is not None:
        ds_ds, ds_us = res.spearman
        body.append("<h2>Rank correlations over models (Figures F.20, F.21)</h2>")
        from .study import main_shots as _main

        ms = _main(inp.points)
        if ms is not None:
            body.append(f"<p>Accuracies at {H.esc(F._shots_label(ms))}, the shot count that covers the most "
                        "DS tasks.</p>")
        png = art.figure("figF21_spearman_ds_us", F.spearman_us_bars(ds_us, inp.us_name))
        body.append(H.figure(png, "Spearman correlation of each DS task's accuracy with US accuracy, over models.",
                             "Spearman DS vs US"))
        if ds_ds.shape[0] >= 2:
            order = list(ds_us.dropna().sort_values(ascending=False).index)
            png = art.figure("figF20_spearman_ds_ds", F.spearman_heatmap(ds_ds, order))
            body.append(H.figure(png, "Spearman correlation between DS tasks, over models; tasks in order of their "
                                      "correlation with US accuracy.", "Spearman DS vs DS"))

    # --- overlay ----------------------------------------------------------------------------------
    if res.overlay_ref is not None:
        body.append(f"<h2>Hull of {H.esc(res.overlay_ref)} over every task (Figure 5)</h2>")
        png = art.figure("fig5_hull_overlay", F.hull_overlay_grid(groups, res.overlay_ref, inp.us_name, axis_scale))
        body.append(H.figure(png, f"Red: the upper hull of {H.esc(res.overlay_ref)} (the DS task whose ranking "
                                  "agrees most with US accuracy unless chosen with --overlay) drawn on each task's "
                                  "points. Where the red hull lies above a task's own hull, the models best on the "
                                  "reference are not the best on that task.", "Figure 5 hull overlay"))

    # --- layers -----------------------------------------------------------------------------------
    if inp.layers is not None:
        body.append("<h2>Accuracy per layer (Figure 6)</h2>")
        best = _best_layers(res.layer_table)
        from .study import main_shots as _main

        main_shots = _main(inp.layers.rename(columns={"dataset": "ds_task"}))
        lay = inp.layers if main_shots is None else inp.layers[inp.layers["shots"] == main_shots]
        png = art.figure("fig6_layers", F.layer_plot(lay, inp.us_name, best))
        body.append(H.figure(png, "Few-shot accuracy of a probe on each layer's features"
                                  + (f" ({F._shots_label(main_shots)})" if main_shots is not None else "")
                                  + ". One line per checkpoint, coloured by US accuracy.", "Figure 6 layers"))
        summary = _layer_summary(res.layer_table)
        if summary is not None:
            art.table("layer_summary", summary)
            body.append("<p>Per DS task: the mean best layer and the mean earliest layer within 0.01 of the best "
                        "(over checkpoints), and the share of checkpoints whose last layer is not needed.</p>")
            body.append(H.table(summary, text_cols=("dataset",)))

    # --- files ------------------------------------------------------------------------------------
    body.append("<h2>Files</h2><p>Every figure of this page is saved under <code>figures/</code> (PNG and SVG); "
                "every table under <code>tables/</code> (CSV and JSON). <code>fits.json</code> has the schema of "
                "<code>plateaulab fit --json</code>.</p>")
    stems: dict = {}
    for f in art.files:
        folder, _, name = f.rpartition("/")
        stem, _, ext = name.rpartition(".")
        stems.setdefault(folder, {}).setdefault(stem, []).append(ext)
    body.append("<ul>")
    for folder, items in stems.items():
        listed = ", ".join(f"<code>{H.esc(stem)}</code> ({'/'.join(exts)})" for stem, exts in items.items())
        body.append(f"<li><b>{H.esc(folder or '.')}/</b>: {listed}</li>")
    body.append("</ul>")

    path = out / "report.html"
    path.write_text(H.document("plateaulab study", body), encoding="utf-8")
    return path


def _ci_text(row, p: str, digits: int = 3) -> str:
    v = row.get(p)
    if v is None or not np.isfinite(v):
        return ""
    text = f"{v:.{digits}f}"
    lo, hi = row.get(f"{p}_lo"), row.get(f"{p}_hi")
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def _display_parameters(params: pd.DataFrame) -> pd.DataFrame:
    """The parameter table as shown in the report: CIs folded into their parameter's cell."""
    rows = []
    for _, r in params.iterrows():
        r = r.to_dict()
        row = {"DS task": r["ds_task"]}
        if "shots" in r:
            row["shots"] = H.fmt(r["shots"], 0) if r["shots"] is not None else ""
        row.update({"models": r["n_models"], "hull pts": r["hull_points"], "k": r["k"],
                    "alpha [95% CI]": _ci_text(r, "alpha", 2), "e_IR": r["e_ir"],
                    "saturation [95% CI]": _ci_text(r, "saturation", 3)})
        if "saturation_all_points" in r:
            row["sat. (fit on all)"] = r["saturation_all_points"]
        row.update({"best DS": r["best_ds"], "sse": r["sse"], "flags": r["flags"]})
        rows.append(row)
    return pd.DataFrame(rows)


def _scalars(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            out[k] = ",".join(map(str, v))
        elif isinstance(v, (np.generic,)):
            out[k] = v.item()
        else:
            out[k] = v
    return out


def _layer_summary(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """Per dataset: mean best and earliest-near-best layer over checkpoints, and how often the earliest
    near-best layer is below the checkpoint's last layer (the paper's early-saturating tasks)."""
    if table is None or table.empty or not {"dataset", "best_layer", "earliest_layer", "checkpoint"} <= set(table.columns):
        return None
    per_ck = table.groupby(["dataset", "checkpoint"], sort=False).agg(
        best_layer=("best_layer", "first"), earliest_layer=("earliest_layer", "first"),
        deepest=("layer_index", "max")).reset_index()
    per_ck["not_last"] = per_ck["earliest_layer"] < per_ck["deepest"]
    return (per_ck.groupby("dataset", sort=False)
            .agg(checkpoints=("checkpoint", "size"), mean_best_layer=("best_layer", "mean"),
                 mean_earliest_layer=("earliest_layer", "mean"), share_last_layer_not_needed=("not_last", "mean"))
            .reset_index())


def _best_layers(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """Rows of the layer-profile table that mark each checkpoint's earliest near-best layer."""
    if table is None or table.empty:
        return None
    for flag in ("is_earliest", "is_earliest_best", "earliest_best"):
        if flag in table.columns and table[flag].dtype == bool:
            return table[table[flag]]
    need = {"checkpoint", "dataset", "earliest_layer_index", "earliest_accuracy"}
    if need <= set(table.columns):
        return table.rename(columns={"earliest_layer_index": "layer_index", "earliest_accuracy": "accuracy"})
    return None


def _planted_section(groups, planted: dict, art: _Artefacts) -> str:
    rows = []
    for r in groups:
        if r.task not in planted:
            continue
        lo, hi = (np.nan, np.nan)
        if r.boot is not None and "saturation" in r.boot.ci:
            lo, hi = r.boot.ci["saturation"]
        p = planted[r.task]
        rows.append({"ds_task": r.task, "shots": "" if r.shots is None else f"{r.shots:g}", "planted saturation": p,
                     "fitted saturation": r.fit_hull.saturation, "ci_lo": lo, "ci_hi": hi,
                     "planted inside CI": bool(lo <= p <= hi) if np.isfinite(lo) else None})
    if not rows:
        return ""
    df = pd.DataFrame(rows)
    art.table("planted_vs_recovered", df)
    return ("<p>This input comes from <code>plateaulab synth</code>: its saturation values are known by "
            "construction. Recovered against planted:</p>" + H.table(df, text_cols=("ds_task",)))
