"""The study's tables: the DataFrames written under tables/ (CSV and JSON) and shown in the report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import html as H
from .text import flags, ranked, status, summary_sentence

PARAMS = ("k", "alpha", "e_ir", "saturation")


def _drop_empty_shots(df: pd.DataFrame) -> pd.DataFrame:
    if not df.empty and "shots" in df and df["shots"].isna().all():
        return df.drop(columns="shots")
    return df


def fit_records(res) -> list[dict]:
    """fits.json: one record per group, in the groups' order (analysis.records's schema)."""
    return [r.record for r in res.groups]


def parameter_table(groups: list) -> pd.DataFrame:
    rows = []
    for r in groups:
        f = r.fit_hull
        row = {"ds_task": r.task, "shots": r.shots, "n_models": len(r.us), "hull_points": int(f.hull_points),
               "fit_points": int(f.n_points), "k": f.k, "alpha": f.alpha, "e_ir": f.e_ir, "saturation": f.saturation,
               "sse": f.sse, "identified": bool(f.identified)}
        row.update({f"{p}_identified": bool(v) for p, v in f.identifiable.items()})
        row["status"] = status(r)
        ci = r.record.get("ci")
        if ci:
            row["ci_source"] = r.ci_source
            for p in PARAMS:
                lo, hi = ci.get(p, (None, None))
                row[f"{p}_lo"] = np.nan if lo is None else float(lo)
                row[f"{p}_hi"] = np.nan if hi is None else float(hi)
        for name, res_ in (("noise", r.noise), ("boot", r.boot)):
            if res_ is not None:
                lo, hi = res_.ci["saturation"]
                row[f"saturation_{name}_lo"], row[f"saturation_{name}_hi"] = float(lo), float(hi)
                row[f"{name}_n"], row[f"{name}_failed"] = int(res_.n_boot), int(res_.n_failed)
        if r.fit_all is not None:
            row["saturation_all_points"] = r.fit_all.saturation
            row["alpha_all_points"] = r.fit_all.alpha
        row["best_ds"] = float(np.max(r.ds))
        row["hull_models"] = "; ".join(r.record.get("hull_models", []))
        row["flags"] = "; ".join(flags(r))
        row["summary"] = summary_sentence(r)
        rows.append(row)
    return _drop_empty_shots(pd.DataFrame(rows))


def summary_table(groups: list) -> pd.DataFrame:
    """The per-task summary in the order of the report (ranked): what stdout and the HTML list."""
    return pd.DataFrame([{"label": r.label, "ds_task": r.task, "shots": r.shots, "summary": summary_sentence(r),
                          "saturation": r.fit_hull.saturation, "identified": bool(r.fit_hull.identified),
                          "saturation_identified": bool(r.fit_hull.identifiable.get("saturation", False))}
                         for r in ranked(groups)])


def influence_table(res) -> pd.DataFrame:
    """Per group and fitted vertex: the saturation refitted without that model (StudyResult.influence)."""
    table = res.influence
    return pd.DataFrame() if table is None or table.empty else _drop_empty_shots(table)


def influence_view(res) -> pd.DataFrame:
    """Per task, the most influential vertex (StudyResult.influence_top), as shown in the report."""
    top = _drop_empty_shots(res.influence_top)
    view = top[[c for c in ("ds_task", "shots", "saturation", "model", "saturation_without", "delta") if c in top]]
    return view.rename(columns={"model": "most influential model"})


def fits_all_table(groups: list) -> pd.DataFrame:
    rows = []
    for r in groups:
        if r.fit_all is None:
            continue
        d = {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in r.fit_all.to_dict().items()}
        rows.append({"ds_task": r.task, "shots": r.shots, **d})
    return pd.DataFrame(rows)


def power_table(groups: list) -> pd.DataFrame:
    rows = []
    for r in groups:
        if r.power is None:
            continue
        row = {"ds_task": r.task, "shots": r.shots}
        row.update({k: (float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else v)
                    for k, v in r.power.items() if np.isscalar(v)})
        rows.append(row)
    return _drop_empty_shots(pd.DataFrame(rows))


def points_table(res) -> pd.DataFrame:
    """Every point of every group with whether it is a vertex of its group's upper hull."""
    frames = []
    for r in res.groups:
        rows = r.group.rows.copy()
        rows["on_hull"] = False
        rows.loc[rows.index[r.hull], "on_hull"] = True
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def not_analysed_table(res) -> pd.DataFrame:
    return pd.DataFrame({"what": list(res.skipped), "why": list(res.skipped.values())})


def planted_table(groups: list, planted: dict) -> pd.DataFrame:
    """Synthetic inputs: the planted saturation against the recovered one and its interval."""
    rows = []
    for r in groups:
        if r.task not in planted:
            continue
        lo, hi = r.interval if r.interval is not None else (np.nan, np.nan)
        p = planted[r.task]
        rows.append({"ds_task": r.task, "shots": "" if r.shots is None else f"{r.shots:g}", "planted saturation": p,
                     "fitted saturation": r.fit_hull.saturation, "ci_lo": lo, "ci_hi": hi,
                     "planted inside CI": bool(lo <= p <= hi) if np.isfinite(lo) else None})
    return pd.DataFrame(rows)


def planted_saturations(planted: dict | None) -> dict:
    """{task: planted saturation} from a synthetic store's metadata (see plateaulab.synth)."""
    if not planted:
        return {}
    tasks = planted.get("tasks", {})
    return {t: float(v["saturation"]) for t, v in tasks.items() if isinstance(v, dict) and "saturation" in v}


def _ci_text(row, p: str, digits: int = 3) -> str:
    v = row.get(p)
    if v is None or not np.isfinite(v):
        return ""
    text = f"{v:.{digits}f}"
    lo, hi = row.get(f"{p}_lo"), row.get(f"{p}_hi")
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def display_parameters(params: pd.DataFrame) -> pd.DataFrame:
    """The parameter table as shown in the report: CIs folded into their parameter's cell."""
    rows = []
    for _, r in params.iterrows():
        r = r.to_dict()
        row = {"DS task": r["ds_task"]}
        if "shots" in r:
            row["shots"] = H.fmt(r["shots"], 0) if r["shots"] is not None else ""
        row.update({"models": r["n_models"], "fit pts": r["fit_points"], "k": r["k"],
                    "alpha [95% CI]": _ci_text(r, "alpha", 2), "e_IR": r["e_ir"],
                    "saturation [95% CI]": _ci_text(r, "saturation", 3), "interval": r.get("ci_source", ""),
                    "identified": r["status"]})
        if "saturation_all_points" in r:
            row["sat. (fit on all)"] = r["saturation_all_points"]
        row.update({"best DS": r["best_ds"], "sse": r["sse"], "flags": r["flags"]})
        rows.append(row)
    return pd.DataFrame(rows)


def earliest_layers(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """Rows of the layer-profile table that mark each checkpoint's earliest near-best layer."""
    if table is None or table.empty:
        return None
    return table[table["is_earliest"]]


def earliest_table(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """Per (dataset, checkpoint): the best layer and its accuracy, the earliest layer within the tolerance
    of it and its accuracy (A9's table), layers by name (when the input names them) and index."""
    if table is None or table.empty:
        return None
    keys = ["dataset", "checkpoint"]
    named = "layer" in table.columns
    cols = (["layer"] if named else []) + ["layer_index", "accuracy"]

    def pick(rows, label, index_label, acc_label):
        names = {"layer": label, "layer_index": index_label, "accuracy": acc_label}
        return rows[keys + cols].rename(columns=names)

    out = pick(table[table["layer_index"] == table["best_layer"]], "best layer", "best index", "best accuracy")
    out = out.merge(pick(table[table["is_earliest"]], "earliest near-best layer", "earliest index", "its accuracy"),
                    on=keys)
    out.insert(2, "layers", out["checkpoint"].map(table.groupby("checkpoint")["layer_index"].nunique()))
    return out.reset_index(drop=True)


def tableF3(res) -> pd.DataFrame:
    """Table F.3: per group the prediction power of eq. (1) fitted on all points; with a scale-up (A6), per
    axis the Spearman correlation of the residual with the axis and its permutation p-value."""
    power = power_table(res.groups)
    up = getattr(res, "scaleup", None)
    if power.empty or up is None or up.residuals.empty:
        return power
    wide = up.residuals.pivot_table(index=["ds_task", "shots"], columns="axis", values=["spearman", "p_value"],
                                    dropna=False, sort=False)
    wide.columns = [f"{'resid_spearman' if stat == 'spearman' else 'resid_p'}_{axis.replace(' ', '_')}"
                    for stat, axis in wide.columns]
    wide = wide.reset_index()
    key = ["ds_task"] + (["shots"] if "shots" in power else [])
    wide = wide.drop(columns=[c for c in ("shots",) if c not in key])
    order = [f"resid_{s}_{a.name.replace(' ', '_')}" for a in up.axes for s in ("spearman", "p")]
    return power.merge(wide[key + [c for c in order if c in wide]], on=key, how="left")


def display_tableF3(table: pd.DataFrame, axes) -> pd.DataFrame:
    """Table F.3 as shown: the prediction power, then per scale axis 'rho (p)' of the residual."""
    cols = [c for c in ("ds_task", "shots", "n_points", "std_residual", "std_mean", "ratio") if c in table]
    view = table[cols].copy()
    if "n_points" in view:
        view["n_points"] = view["n_points"].astype(int)
    if "shots" in view:
        view["shots"] = view["shots"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
    for a in axes or []:
        key = a.name.replace(" ", "_")
        rho, p = table.get(f"resid_spearman_{key}"), table.get(f"resid_p_{key}")
        if rho is None:
            continue
        view[f"residual vs {a.name}: rho (p)"] = [
            "" if not np.isfinite(r) else f"{r:+.2f} ({q:.3f})" + (" *" if q < 0.05 else "")
            for r, q in zip(rho.to_numpy(float), p.to_numpy(float))]
    return view
