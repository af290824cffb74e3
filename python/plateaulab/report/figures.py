"""The study's figures, drawn with matplotlib's Agg backend (no display needed).

Each function takes analysis results and returns a ``matplotlib.figure.Figure``; the writer saves it as
PNG and SVG and embeds the PNG in the report. Figure numbers follow Abnar et al. (ICLR 2022).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..analysis.groups import shots_order  # noqa: E402
from .text import SCALE_NAMES, saturation_text, shots_text, shots_tick, status  # noqa: E402

COLORS = {"points": "#6b8fb5", "hull": "#1f3b63", "fit_hull": "#c0392b", "fit_all": "#3d8a7a",
          "band": "#e6a19a", "sat": "#c0392b", "overlay": "#d62728", "unidentified": "#8c8c8c",
          "planted": "#7b3fa0"}
#: the planted saturation in Figure 1: its own colour and dash (the all-points fit is green dash-dot)
PLANTED_STYLE = dict(color=COLORS["planted"], ls="--", lw=1.2)
SCALE_LABEL = {"linear": "{}", "logit": "logit({})", "neglog1m": "-log(1 - {})"}

plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 9,
                     "xtick.labelsize": 8, "ytick.labelsize": 8, "svg.fonttype": "none"})


def _scale(p, scale: str):
    p = np.asarray(p, dtype=float)
    if scale == "linear":
        return p
    from ..analysis import scale_accuracy

    return np.asarray(scale_accuracy(np.clip(p, 1e-6, 1 - 1e-6), scale), dtype=float)


def _dense(us, ds, per_edge: int = 40):
    """A polyline through the points (us, ds), sampled densely along each edge in accuracy space: the hull's
    edges are straight in accuracy space (mixtures of two models), so on a logit or -log(1 - p) axis they are
    curves, and drawing straight lines between transformed vertices would misplace them."""
    us, ds = np.asarray(us, dtype=float), np.asarray(ds, dtype=float)
    if us.size < 2:
        return us, ds
    t = np.linspace(0.0, 1.0, per_edge, endpoint=False)
    xs = np.concatenate([us[i] + t * (us[i + 1] - us[i]) for i in range(us.size - 1)] + [us[-1:]])
    ys = np.concatenate([ds[i] + t * (ds[i + 1] - ds[i]) for i in range(ds.size - 1)] + [ds[-1:]])
    return xs, ys


def _grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, n)
    cols = max(cols, 1)
    return int(math.ceil(n / cols)), cols


def _panel_axes(groups, *, width: float, height: float, extra_top: float):
    """A figure with one panel per group. With several shot counts, one row per task and one column per
    shot count (so a column reads as one shots setting); otherwise a grid of up to 4 columns."""
    shots = sorted({g.shots for g in groups if g.shots is not None}, key=shots_order)
    if 2 <= len(shots) <= 5:
        tasks = list(dict.fromkeys(g.task for g in groups))
        rows, cols = len(tasks), len(shots)
        where = [(tasks.index(g.task), shots.index(g.shots) if g.shots in shots else 0) for g in groups]
    else:
        rows, cols = _grid_shape(len(groups))
        where = [divmod(i, cols) for i in range(len(groups))]
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + extra_top), squeeze=False)
    used = set(where)
    for i in range(rows):
        for j in range(cols):
            if (i, j) not in used:
                axes[i, j].set_visible(False)
    return fig, axes, [axes[i, j] for i, j in where]


def _label_panels(fig, axes, panels, us_name: str, scale: str) -> None:
    """Axis labels on every panel (x) and on the first visible panel of each row (y): a tall grid is read
    by scrolling, so a single label for the whole figure would be out of sight for most panels."""
    us_text = f"US accuracy ({us_name})" if len(str(us_name)) <= 22 else "US accuracy"
    for ax in panels:
        ax.set_xlabel(SCALE_LABEL[scale].format(us_text), fontsize=8.5, labelpad=2)
    for row in axes:
        visible = [ax for ax in row if ax.get_visible()]
        if visible:
            visible[0].set_ylabel(SCALE_LABEL[scale].format("DS accuracy"), fontsize=9)


def _wrap(text: str, width: int = 28) -> str:
    if len(text) <= width:
        return text
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines[:2])


def _curve_grid(r, scale: str) -> np.ndarray:
    """US accuracies at which curves are drawn. Linear axes reach US = 1, where the curve meets its
    saturation; logit and -log(1 - p) axes cannot show 0 or 1, so they stay near the data."""
    if scale == "linear":
        lo, hi = max(0.0, float(np.min(r.us)) - 0.02), 1.0
        return np.linspace(lo, hi, 200)
    lo = max(1e-3, float(np.min(r.us)))
    hi = 1.0 - 0.5 * max(1e-3, 1.0 - float(np.max(r.us)))
    # dense near both ends, where logit and -log(1 - p) stretch the axis
    return np.unique(np.concatenate([np.linspace(lo, hi, 200), np.geomspace(lo, hi, 100),
                                     1.0 - np.geomspace(1.0 - hi, 1.0 - lo, 100)]))


def _panel_title(r) -> str:
    """The group's label, then its saturation and interval, or why the data do not identify it."""
    text = status(r)
    if r.fit_hull.identifiable.get("saturation", False):
        second = "sat. " + saturation_text(r) + ("" if r.fit_hull.identified else " (alpha or k not identified)")
    else:
        second = _wrap(text, 46)
    if r.band_excludes_curve:
        second += "\ncurve leaves its band"
    return f"{_wrap(r.label, 34)}\n{second}"


def _draw_hull(ax, r, scale: str) -> None:
    """The upper hull: the part the fit uses, solid (all of it with ``tail``), and the descending tail, dotted."""
    h = r.hull
    used = len(r.fit_hull.fit_indices) if r.fit_hull.on == "hull" and not r.fit_hull.tail else len(h)
    xs, ys = _dense(r.us[h[:used]], r.ds[h[:used]])
    label = "upper hull (fitted part)" if used < len(h) else "upper hull (fitted)"
    ax.plot(_scale(xs, scale), _scale(ys, scale), "-", color=COLORS["hull"], lw=1.0, label=label)
    ax.plot(_scale(r.us[h[:used]], scale), _scale(r.ds[h[:used]], scale), "o", color=COLORS["hull"], ms=3.5)
    if used < len(h):
        xs, ys = _dense(r.us[h[used - 1:]], r.ds[h[used - 1:]])
        ax.plot(_scale(xs, scale), _scale(ys, scale), ":", color=COLORS["hull"], lw=1.0,
                label="hull's descending tail (not fitted)")


def _draw_fit(ax, r, grid, scale: str) -> None:
    f = r.fit_hull
    if not np.isfinite(f.k):
        return
    if f.identifiable.get("saturation", False):
        ax.plot(_scale(grid, scale), _scale(f.predict(grid), scale), "-", color=COLORS["fit_hull"], lw=1.6,
                label="eq. (1) fit on the hull")
        ax.axhline(_scale(np.array([f.saturation]), scale)[0], color=COLORS["sat"], ls=":", lw=1.3,
                   label="saturation 1 - e_IR")
    else:
        ax.plot(_scale(grid, scale), _scale(f.predict(grid), scale), "--", color=COLORS["unidentified"], lw=1.4,
                label="eq. (1) fit, saturation not identified")


def _y_limits(ax, r, y_pts, scale: str) -> None:
    ylo, yhi = float(np.min(y_pts)), float(np.max(y_pts))
    sat_y = float(_scale(np.array([r.fit_hull.saturation]), scale)[0])
    # On logit-type axes a saturation of ~1 lies near infinity: keep the axes on the data then (the
    # value is in the panel title).
    if np.isfinite(sat_y) and (scale == "linear" or sat_y <= yhi + 0.5 * (yhi - ylo)):
        ylo, yhi = min(ylo, sat_y), max(yhi, sat_y)
    pad = 0.06 * (yhi - ylo) + 1e-3
    ax.set_ylim(ylo - pad, yhi + pad)


def _saturation_panel(ax, r, scale: str, planted: dict | None = None) -> None:
    """One panel of Figure 1: points, hull, band, both fits, the saturation line (and the planted one)."""
    x_pts, y_pts = _scale(r.us, scale), _scale(r.ds, scale)
    grid = _curve_grid(r, scale)
    if r.band is not None and r.fit_hull.identifiable.get("saturation", False):
        bg, blo, bhi = r.band
        keep = (bg >= grid[0] - 1e-12) & (bg <= grid[-1] + 1e-12)
        ax.fill_between(_scale(bg[keep], scale), _scale(blo[keep], scale), _scale(bhi[keep], scale),
                        color=COLORS["band"], alpha=0.45, lw=0, label="95% band of the hull fit")
    ax.scatter(x_pts, y_pts, s=9, color=COLORS["points"], alpha=0.7, lw=0, label="models")
    _draw_hull(ax, r, scale)
    if r.fit_all is not None and np.isfinite(r.fit_all.k):
        ax.plot(_scale(grid, scale), _scale(r.fit_all.predict(grid), scale), "-.", color=COLORS["fit_all"],
                lw=1.0, alpha=0.8, label="eq. (1) fit on all points")
    _draw_fit(ax, r, grid, scale)
    if planted and r.task in planted:
        ax.axhline(_scale(np.array([planted[r.task]]), scale)[0], **PLANTED_STYLE, label="planted saturation")
    ax.grid(alpha=0.25, lw=0.5)
    if scale == "linear":
        ax.set_xlim(grid[0], 1.0)
    _y_limits(ax, r, y_pts, scale)


def saturation_grid(groups, us_name: str, scale: str = "linear", planted: dict | None = None):
    """Figure 1: per (DS task, shots) the points, the upper hull (the fitted part solid: the rising part, or
    all of it for fits with ``tail``; an unfitted tail dotted), eq. (1) fitted on the hull (grey dashed when
    the data do not identify the saturation) and on all points (green dash-dot), the band of the interval
    asked for (when a bootstrap ran), the saturation line 1 - e_IR and, for synthetic inputs, the planted
    saturation (purple dashed)."""
    fig, axes, panels = _panel_axes(groups, width=3.3, height=3.1, extra_top=0.9)
    for ax, r in zip(panels, groups):
        _saturation_panel(ax, r, scale, planted)
        ax.set_title(_panel_title(r), fontsize=8.5,
                     color="black" if r.fit_hull.identifiable.get("saturation", False) else "#6b6b6b")
    _shared_legend(fig, panels)
    _label_panels(fig, axes, panels, us_name, scale)
    top = 1.0 - 0.75 / fig.get_figheight()
    fig.tight_layout(rect=(0.0, 0.0, 1.0, top))
    return fig


def axis_scales_figure(r, us_name: str):
    """Figure F.2: one task's Figure-1 panel on linear, logit and -log(1 - p) axes side by side."""
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.9), squeeze=False)
    for ax, scale in zip(axes[0], ("linear", "logit", "neglog1m")):
        _saturation_panel(ax, r, scale)
        ax.set_title(f"{_wrap(r.label, 40)}: {SCALE_NAMES[scale]} axes", fontsize=9)
    _shared_legend(fig, list(axes[0]))
    _label_panels(fig, axes, list(axes[0]), us_name, "linear")
    for ax, scale in zip(axes[0], ("linear", "logit", "neglog1m")):
        ax.set_xlabel(SCALE_LABEL[scale].format(f"US accuracy ({us_name})"), fontsize=8.5)
        ax.set_ylabel(SCALE_LABEL[scale].format("DS accuracy"), fontsize=9)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.55 / fig.get_figheight()))
    return fig


def sensitivity_plot(sens: pd.DataFrame, mean: pd.DataFrame):
    """Figure 3: fitting and prediction error against sample size, fit on the hull vs on all points.
    Thin lines are single tasks; thick lines their mean (``mean``: StudyResult.sensitivity_mean). A hull of <= 3 points is interpolated exactly
    (error ~ 0), which a log axis would stretch over dozens of decades: single-task errors below FLOOR
    are drawn at FLOOR (the tables keep the exact values)."""
    FLOOR = 1e-7
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), squeeze=False)
    style = {"hull": ("-", COLORS["fit_hull"]), "all": ("--", COLORS["fit_all"])}
    for ax, (col, title) in zip(axes.flat, (("fit_error_mean", "Fitting error"),
                                            ("pred_error_mean", "Prediction error (held-out high-US points)"))):
        for on, g in sens.groupby("on"):
            ls, c = style.get(str(on), ("-", None))
            for _, tg in g.groupby(["ds_task", "shots"], dropna=False):
                tg = tg.sort_values("n")
                ax.plot(tg["n"], np.maximum(tg[col], FLOOR), ls, color=c, lw=0.5, alpha=0.25)
            m = mean[mean["on"] == on]
            ax.plot(m["n"].to_numpy(), m[col].to_numpy(), ls, color=c, lw=2.2, marker="o", ms=4,
                    label=f"fit on {'hull' if on == 'hull' else 'all points'} (mean over tasks)")
        ax.set_yscale("log")
        ax.set_ylim(bottom=FLOOR / 2)
        ax.set_xlabel("sample size n (models drawn from the fitting range)")
        ax.set_ylabel("mean squared error (accuracy units)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both", lw=0.5)
        ax.legend(loc="best")
    fig.tight_layout()
    return fig


def params_vs_shots_plot(df: pd.DataFrame):
    """Figure 2 / F.4-F.5: k, alpha and e_IR of the hull fit against the number of shots. Shot counts are
    evenly spaced categories ("full" = -1 last). Hollow markers: fits that are not identified (hull of
    <= 3 points, or k = 0)."""
    tasks = list(dict.fromkeys(df["ds_task"]))
    shots = sorted(df["shots"].unique(), key=shots_order)
    pos = {s: i for i, s in enumerate(shots)}
    n_leg_rows = int(math.ceil(len(tasks) / 4))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9 + 0.22 * n_leg_rows), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(tasks) <= 10 else "tab20")
    for ax, (p, name) in zip(axes.flat, (("k", "k"), ("alpha", "alpha"), ("e_ir", "e_IR"))):
        for i, t in enumerate(tasks):
            g = df[df["ds_task"] == t].sort_values("shots", key=lambda c: c.map(shots_order))
            x = g["shots"].map(pos).to_numpy()
            y = g[p].to_numpy(float)
            color = cmap(i % cmap.N)
            ax.plot(x, y, "-", color=color, label=t)
            ident = g["identified"].astype(bool).to_numpy() if "identified" in g else np.ones(len(g), bool)
            ax.plot(x[ident], y[ident], "o", ms=5, color=color)
            ax.plot(x[~ident], y[~ident], "o", ms=6, mfc="white", mec=color, mew=1.4)
        ax.set_xticks(range(len(shots)), [shots_tick(s) for s in shots])
        ax.set_xlim(-0.3, len(shots) - 0.7)
        vals = df[p].to_numpy(float)
        vals = vals[np.isfinite(vals) & (vals > 0)]
        if p != "e_ir" and vals.size and vals.max() / vals.min() > 100:
            ax.set_yscale("log")
        ax.set_xlabel("shots")
        ax.set_ylabel(name)
        ax.set_title(f"{name} of the hull fit vs shots")
        ax.grid(alpha=0.3, lw=0.5)
    bottom = (0.1 + 0.2 * n_leg_rows) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=min(4, len(tasks)),
               frameon=False, fontsize=8.5, bbox_to_anchor=(0.5, 0.0))
    return fig


def spearman_heatmap(ds_ds: pd.DataFrame, order=None):
    """Figure F.20: Spearman rank correlation between DS tasks over models, rows and columns in ``order``
    (the report passes the tasks sorted by their correlation with US, so similar tasks sit together)."""
    if order is not None:
        order = [t for t in order if t in ds_ds.index] + [t for t in ds_ds.index if t not in set(order)]
        ds_ds = ds_ds.loc[order, order]
    n = ds_ds.shape[0]
    size = max(5.0, min(10.5, 0.26 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(ds_ds.to_numpy(float), vmin=-1, vmax=1, cmap="RdBu_r")
    fs = 8.5 if n <= 20 else 7.5
    ax.set_xticks(range(n), [str(c) for c in ds_ds.columns], rotation=90, fontsize=fs)
    ax.set_yticks(range(n), [str(c) for c in ds_ds.index], fontsize=fs)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                v = ds_ds.iat[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="Spearman rank correlation")
    ax.set_title("DS x DS Spearman correlation over models")
    fig.tight_layout()
    return fig


def spearman_us_bars(ds_us: pd.Series, us_name: str):
    """Figure F.21: Spearman rank correlation of each DS task with US accuracy."""
    s = ds_us.dropna().sort_values()
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.24 * len(s) + 1.2)))
    colors = ["#c0392b" if v < 0 else "#1f77b4" for v in s.values]
    ax.barh(range(len(s)), s.values, color=colors)
    ax.set_yticks(range(len(s)), [str(i) for i in s.index], fontsize=8)
    ax.set_xlim(min(-0.05, float(s.min()) - 0.05), 1.0)
    ax.set_ylim(-0.6, len(s) - 0.4)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel(f"Spearman correlation with US accuracy ({us_name})")
    ax.set_title("DS x US rank correlation over models")
    ax.grid(axis="x", alpha=0.3, lw=0.5)
    fig.tight_layout()
    return fig


def hull_overlay_grid(groups, ref: str, us_name: str, scale: str = "linear"):
    """Figure 5: the upper hull of the reference DS task (its GroupResult's own hull) drawn over every task's
    points."""
    by_shots = {r.shots: r for r in groups if r.task == ref}
    fig, axes, panels = _panel_axes(groups, width=3.3, height=2.9, extra_top=0.8)
    for ax, r in zip(panels, groups):
        ref_r = by_shots.get(r.shots)
        ax.scatter(_scale(r.us, scale), _scale(r.ds, scale), s=8, color=COLORS["points"], alpha=0.7, lw=0,
                   label="task's models")
        h = r.hull
        xs, ys = _dense(r.us[h], r.ds[h])
        ax.plot(_scale(xs, scale), _scale(ys, scale), "-", color=COLORS["hull"], lw=1.0, label="task's upper hull")
        if ref_r is not None:
            hu, hd = ref_r.us[ref_r.hull], ref_r.ds[ref_r.hull]
            xs, ys = _dense(hu, hd)
            ax.plot(_scale(xs, scale), _scale(ys, scale), "-", color=COLORS["overlay"], lw=1.4,
                    label=f"upper hull of {ref} (its own DS accuracy)")
            ax.plot(_scale(hu, scale), _scale(hd, scale), "o", color=COLORS["overlay"], ms=3)
        ax.set_title(_wrap(r.label, 34), fontsize=8.5)
        ax.grid(alpha=0.25, lw=0.5)
    _shared_legend(fig, panels)
    _label_panels(fig, axes, panels, us_name, scale)
    fig.tight_layout(rect=(0, 0, 1, 1.0 - 0.6 / fig.get_figheight()))
    return fig


def _layer_ticks(ax, g: pd.DataFrame) -> None:
    """Layer names as ticks when every index has one name (up to 12 layers), else integer indices."""
    names = g.groupby("layer_index")["layer"].unique() if "layer" in g else None
    if names is not None and len(names) <= 12 and all(len(v) == 1 for v in names):
        ax.set_xticks(list(names.index), [str(v[0]) for v in names], rotation=30, ha="right", fontsize=7.5)
        ax.set_xlabel("layer")
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("layer index (0 = first probed layer)")


def layer_plot(layers: pd.DataFrame, us_name: str, best: pd.DataFrame | None = None, tol: float = 0.01):
    """Figure 6: few-shot DS accuracy from each layer's representation, one line per checkpoint coloured
    by US accuracy; stars mark each checkpoint's earliest layer within ``tol`` of its best."""
    datasets = list(dict.fromkeys(layers["dataset"]))
    n = len(datasets)
    rows, cols = _grid_shape(n, max_cols=4)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.0, 3.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    lo, hi = float(layers["us"].min()), float(layers["us"].max())
    norm = matplotlib.colors.Normalize(vmin=lo - (0.01 if hi == lo else 0), vmax=hi + (0.01 if hi == lo else 0))
    cmap = plt.get_cmap("viridis")
    for ax, d in zip(axes.flat, datasets):
        g = layers[layers["dataset"] == d]
        for ck, cg in g.groupby("checkpoint"):
            cg = cg.sort_values("layer_index")
            ax.plot(cg["layer_index"], cg["accuracy"], "-o", color=cmap(norm(cg["us"].iloc[0])), lw=1.0, ms=2.5,
                    alpha=0.8)
        if best is not None and not best.empty and "dataset" in best.columns:
            b = best[best["dataset"] == d]
            ax.scatter(b["layer_index"], b["accuracy"], marker="*", s=60, color="#d62728", zorder=3,
                       label=f"earliest layer within {tol:g} of the checkpoint's best")
        ax.set_title(_wrap(str(d), 34))
        ax.set_ylabel("DS accuracy")
        _layer_ticks(ax, g)
        ax.grid(alpha=0.3, lw=0.5)
    top = 1.0 - 0.45 / fig.get_figheight()
    if hi > lo:
        fig.tight_layout(rect=(0, 0, 0.9, top))
        cax = fig.add_axes((0.92, 0.15, 0.015, 0.7 * top))
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, label=f"US accuracy ({us_name})")
    else:     # one US value (one checkpoint): a colour scale would have no range
        fig.tight_layout(rect=(0, 0, 1, top))
    h, lab = axes.flat[0].get_legend_handles_labels()
    if h:
        fig.legend(h[:1], lab[:1], loc="upper center", frameon=False, bbox_to_anchor=(0.45, 1.0))
    return fig


def _level_colours(lines: pd.DataFrame) -> dict:
    """{level: colour}: an axis's levels from smallest to largest along plasma (dark blue to yellow-orange)."""
    levels = lines.drop_duplicates("level").sort_values(["value", "level"])["level"].tolist()
    cmap = plt.get_cmap("plasma")
    return {lv: cmap(0.88 * i / max(1, len(levels) - 1)) for i, lv in enumerate(levels)}


def _scaleup_panel(ax, r, lines: pd.DataFrame, colours: dict) -> None:
    """One task, one axis: grey models on no line of the axis, each line joined, points coloured by the
    axis's level, and eq. (1) fitted on all points (pooled over the axes)."""
    pos = {str(m): i for i, m in enumerate(r.models)}
    grey = [i for m, i in pos.items() if m not in set(lines["model"])]
    if grey:
        ax.scatter(r.us[grey], r.ds[grey], s=12, color="#c4c4c4", lw=0, label="on no line of this axis")
    for _, line in lines.groupby("line"):
        idx = [pos[m] for m in line["model"] if m in pos]
        ax.plot(r.us[idx], r.ds[idx], "-", color="#6b6b6b", lw=0.7, alpha=0.7)
    for level, colour in colours.items():
        idx = [pos[m] for m in lines.loc[lines["level"] == level, "model"].unique() if m in pos]
        ax.scatter(r.us[idx], r.ds[idx], s=20, color=colour, edgecolor="white", lw=0.4, zorder=3, label=level)
    lo, hi = float(np.min(r.us)), float(np.max(r.us))
    pad = 0.04 * (hi - lo) + 1e-3
    if r.fit_all is not None and np.isfinite(r.fit_all.k):
        grid = np.linspace(lo - pad, hi + pad, 100)
        ax.plot(grid, r.fit_all.predict(grid), "-.", color=COLORS["fit_all"], lw=1.3,
                label="eq. (1) on all points (pooled)")
    ax.set_xlim(lo - pad, hi + pad)
    ax.grid(alpha=0.25, lw=0.5)


def scaleup_grid(groups, scaleup, us_name: str):
    """Figure 4: per task a row of panels, one per scale axis (model size, data size, samples seen), on the
    same DS-vs-US axes: every line of the axis (models whose other axes are fixed) joined, points coloured by
    the axis's level, grey the models on no line of it, and the pooled fit."""
    axes_ = scaleup.axes
    n_rows, n_cols = len(groups), len(axes_)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.3 * n_cols, 2.9 * n_rows + 1.4), squeeze=False)
    colours = {a.name: _level_colours(scaleup.lines[scaleup.lines["axis"] == a.name]) for a in axes_}
    for row, r in enumerate(groups):
        for j, a in enumerate(axes_):
            ax = axes[row, j]
            _scaleup_panel(ax, r, scaleup.lines[scaleup.lines["axis"] == a.name], colours[a.name])
            ax.set_title(f"{_wrap(r.label, 40)}\nvarying {a.name}", fontsize=8.5)
            ax.set_xlabel(f"US accuracy ({us_name})", fontsize=8)
            if j == 0:
                ax.set_ylabel("DS accuracy", fontsize=8.5)
    fig.tight_layout(rect=(0, 0, 1, 1.0 - 1.1 / fig.get_figheight()))
    for j in range(n_cols):
        handles, labels = axes[0, j].get_legend_handles_labels()
        keep = [i for i, lab in enumerate(labels) if not lab.startswith("eq. (1)")]
        axes[0, j].legend([handles[i] for i in keep], [labels[i] for i in keep], loc="lower center",
                          bbox_to_anchor=(0.5, 1.2), ncol=3, fontsize=7.5, frameon=False, columnspacing=0.8,
                          handletextpad=0.2, title=f"varying {axes_[j].name}", title_fontsize=8.5)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fits = [i for i, lab in enumerate(labels) if lab.startswith("eq. (1)")]
    if fits:
        fig.legend([handles[fits[0]]], [labels[fits[0]]], loc="upper center", frameon=False, fontsize=8.5,
                   bbox_to_anchor=(0.5, 1.0))
    return fig


def _hparam_layout(table: pd.DataFrame, grid: dict | None):
    """Hyper-parameters, shot counts (sorted, "full" last; [None] without shots) and each hyper-parameter's
    values in increasing order (``grid``: {name: every value run}, else the optima), for Figures D.3, D.4."""
    hps = list(dict.fromkeys(table["hparam"]))
    shots = sorted(table["shots"].dropna().unique(), key=shots_order) if table["shots"].notna().any() else [None]
    values = {}
    for h in hps:
        g = table[table["hparam"] == h]
        seen = set(g["best_param"]) | set(g["us_best_param"]) | set((grid or {}).get(h, []))
        values[h] = sorted({float(v) for v in seen if pd.notna(v)})
    return hps, shots, values


def _shots_rows(g: pd.DataFrame, shots) -> pd.DataFrame:
    return g[g["shots"].isna()] if shots is None else g[g["shots"] == shots]


def _shots_label(shots) -> str:
    return "all runs" if shots is None else shots_text(shots)


def hparam_optimum_plot(table: pd.DataFrame, us_name: str, grid: dict | None = None):
    """Figure D.3: per hyper-parameter, the value with the best mean accuracy for each DS task (dots) and for
    US (top row, and a dotted line), one colour per shot count."""
    hps, shots, values = _hparam_layout(table, grid)
    tasks = ["US"] + list(dict.fromkeys(t for t in table["target"] if t != "US"))
    fig, axes = plt.subplots(1, len(hps), figsize=(5.6 * len(hps), 0.27 * len(tasks) + 2.0), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, h in zip(axes[0], hps):
        pos = {v: i for i, v in enumerate(values[h])}
        for si, sh in enumerate(shots):
            g = _shots_rows(table[table["hparam"] == h], sh)
            if g.empty:
                continue
            off = (si - (len(shots) - 1) / 2) * 0.22
            ax.scatter([pos[float(v)] for v in g["best_param"]], [tasks.index(t) + off for t in g["target"]], s=28,
                       color=cmap(si), zorder=3, label=_shots_label(sh))
            ax.axvline(pos[float(g["us_best_param"].iloc[0])] + off / 5, color=cmap(si), ls=":", lw=1.4)
        ax.set_yticks(range(len(tasks)), [f"US ({us_name})" if t == "US" else _wrap(str(t), 40) for t in tasks],
                      fontsize=8)
        ax.set_ylim(len(tasks) - 0.5, -0.5)
        ax.set_xticks(range(len(values[h])), [f"{float(v):g}" for v in values[h]])
        ax.set_xlim(-0.6, len(values[h]) - 0.4)
        ax.set_xlabel(f"{h} with the best mean accuracy")
        ax.set_title(f"Best {h} per task; dotted: best for US")
        ax.grid(axis="x", alpha=0.3, lw=0.5)
    fig.tight_layout(rect=(0, 0.06 if len(shots) > 1 else 0, 1, 1))
    if len(shots) > 1:
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=len(shots), frameon=False)
    return fig


def hparam_rank_plot(table: pd.DataFrame, us_name: str, grid: dict | None = None):
    """Figure D.4: per hyper-parameter, each DS task's best value against the Spearman correlation of its
    accuracy with US accuracy over the runs; dotted: the value best for US."""
    hps, shots, values = _hparam_layout(table, grid)
    fig, axes = plt.subplots(1, len(hps), figsize=(5.4 * len(hps), 3.9), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, h in zip(axes[0], hps):
        pos = {v: i for i, v in enumerate(values[h])}
        for si, sh in enumerate(shots):
            g = _shots_rows(table[table["hparam"] == h], sh)
            ds = g[g["target"] != "US"]
            if ds.empty:
                continue
            off = (si - (len(shots) - 1) / 2) * 0.06
            ax.scatter(ds["spearman_with_us"], [pos[float(v)] + off for v in ds["best_param"]], s=26, color=cmap(si),
                       alpha=0.85, zorder=3, label=_shots_label(sh))
            ax.axhline(pos[float(g["us_best_param"].iloc[0])] + off / 3, color=cmap(si), ls=":", lw=1.4)
        ax.set_yticks(range(len(values[h])), [f"{float(v):g}" for v in values[h]])
        ax.set_ylim(-0.6, len(values[h]) - 0.4)
        ax.set_xlim(-1.02, 1.02)
        ax.set_xlabel("Spearman correlation of DS and US accuracy over runs", fontsize=8.5)
        ax.set_ylabel(f"best {h} for the DS task")
        ax.set_title(f"Best {h} against the US/DS rank correlation")
        ax.grid(alpha=0.3, lw=0.5)
    fig.tight_layout(rect=(0, 0.07 if len(shots) > 1 else 0, 1, 1))
    if len(shots) > 1:
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=len(shots), frameon=False)
    return fig


def _shared_legend(fig, panels) -> None:
    """One legend above a grid of panels: every distinct label once, in order of appearance."""
    handles, labels = [], []
    for ax in panels:
        for hnd, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(hnd)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 3), frameon=False,
               bbox_to_anchor=(0.5, 1.0))
