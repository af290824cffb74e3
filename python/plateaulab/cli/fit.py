"""``plateaulab fit``: eq. (1) of Abnar et al. (ICLR 2022) fitted to DS-vs-US accuracy, as one JSON object."""

from __future__ import annotations

import argparse

BUILTIN = "builtin:openclip"
LOADERS = ("auto", "table", "openclip", "clip_benchmark", "model_soups")
#: file names of the public tables (shipped in plateaulab/data) that have their own loader
KNOWN_FILES = {"openclip_results.csv": "openclip", "scaling_experiment_data2.json": "clip_benchmark",
               "individual_model_results.jsonl": "model_soups"}


def add_table_arguments(p) -> None:
    """Arguments shared by fit and sensitivity to read the accuracy table."""
    p.add_argument("--loader", default="auto", choices=LOADERS,
                   help="how to read TABLE: the generic load_table, or the loader of a public table (auto: by "
                        f"file name: {', '.join(KNOWN_FILES)})")
    p.add_argument("--scale", default="auto", choices=("auto", "unit", "percent"),
                   help="accuracies on 0-1 (unit) or 0-100 (percent); auto: percent when any value exceeds 1")
    p.add_argument("--model-col", default=None, help="model id column (default: model, checkpoint, model_name, name)")
    p.add_argument("--shots-col", default=None, help="shots column (default: shots, when present)")
    p.add_argument("--format", default=None, help="table format when the extension does not tell")
    p.add_argument("--nan", default="drop", choices=("drop", "raise"),
                   help="rows with a missing accuracy: drop and count them, or stop with an error")


def read_table(args):
    """The AccuracyTable named by args.table, restricted to args.ds when given."""
    from pathlib import Path

    from ..analysis import load_clip_benchmark, load_model_soups, load_openclip, load_table
    from ..errors import InputError

    loader = args.loader
    if args.table == BUILTIN:
        loader = "openclip"
    elif loader == "auto":
        loader = KNOWN_FILES.get(Path(args.table).name, "table")
    if loader == "table":
        return load_table(args.table, model_col=args.model_col, us=args.us, ds=args.ds, shots_col=args.shots_col,
                          scale=args.scale, format=args.format, nan=args.nan)
    if loader == "openclip":
        table = load_openclip(None if args.table == BUILTIN else args.table, scale=args.scale)
    elif loader == "clip_benchmark":
        table = load_clip_benchmark(args.table, scale=args.scale)
    else:
        table = load_model_soups(args.table, scale=args.scale)
    if args.us not in (None, table.us_name):
        raise InputError(f"{args.table} ({loader} loader) has US {table.us_name!r}; got --us {args.us!r}")
    if args.ds:
        keep = [d.strip() for d in args.ds.split(",") if d.strip()]
        unknown = [d for d in keep if d not in table.ds_tasks]
        if unknown:
            raise InputError(f"unknown DS column(s) {', '.join(map(repr, unknown))} in {args.table}; known: "
                             f"{', '.join(table.ds_tasks)}")
        table.ds_tasks = keep
    return table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit", help="fit e_DS = k e_US^alpha + e_IR per DS column; prints JSON",
        description="Fit e_DS = k * e_US^alpha + e_IR (e = 1 - accuracy) to the upper convex hull (or all points) "
                    "of each DS column against the US column, and print one JSON object whose key 'fits' holds "
                    "one object per DS column (and shots value). With --bootstrap, add percentile intervals and "
                    f"the replicate counts. TABLE may be {BUILTIN} for the packaged open_clip results.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("table", metavar="TABLE",
                   help=f"accuracy table (CSV, TSV, Parquet, JSON, JSONL), probe run directory, or {BUILTIN}")
    p.add_argument("--us", default=None, metavar="COL",
                   help="upstream accuracy: a column (wide or long table) or a dataset name (long table)")
    p.add_argument("--ds", default=None, metavar="COL[,COL...]", help="downstream columns/datasets; default: all")
    p.add_argument("--on", default="hull", choices=("hull", "all"), help="fit the upper hull or every point")
    p.add_argument("--loss", default="l2", choices=("l2", "huber", "log"), help="fitting loss")
    p.add_argument("--us-bayes-error", type=float, default=0.0, help="subtracted from e_US before the power")
    p.add_argument("--bootstrap", type=int, default=0, metavar="B", help="bootstrap replicates (0: none)")
    p.add_argument("--m", type=int, default=None,
                   help="models drawn per bootstrap replicate (m-out-of-n; default n). See docs/ANALYSIS.md")
    p.add_argument("--ci", type=float, default=0.95, help="bootstrap interval level")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--shots", type=float, default=None, help="fit only this shots value")
    add_table_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON (the default and only output format)")
    p.add_argument("--indent", type=int, default=None, help="indent the JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import math

    from ..analysis import bootstrap_fit, fit_saturating_power_law
    from ..errors import InputError

    table = read_table(args)
    long = table.long
    fits = []
    for task in table.ds_tasks:
        rows = long[long["ds_task"] == task]
        shot_values = sorted(rows["shots"].dropna().unique().tolist())
        if args.shots is not None:
            if args.shots not in shot_values:
                raise InputError(f"DS {task!r} has no rows with shots={args.shots:g}; known: {shot_values}")
            shot_values = [args.shots]
        for shots in (shot_values or [None]):
            sub = rows if shots is None else rows[rows["shots"] == shots]
            where = task if shots is None else f"{task}, {shots:g} shots"
            us, ds = sub["us"].to_numpy(float), sub["ds"].to_numpy(float)
            fit = fit_saturating_power_law(us, ds, on=args.on, loss=args.loss, us_bayes_error=args.us_bayes_error,
                                           ds=where)
            d = fit.to_dict()
            d["ds"] = task
            if shots is not None:
                d["shots"] = shots
            if args.bootstrap > 0:
                bs = bootstrap_fit(us, ds, args.bootstrap, on=args.on, seed=args.seed, m=args.m, ci=args.ci,
                                   loss=args.loss, us_bayes_error=args.us_bayes_error)
                bd = bs.to_dict()
                d["ci"] = bd.pop("ci")
                d.update({k: v for k, v in bd.items() if k.startswith("n_") or k in ("m", "ci_level", "seed")})
            fits.append(d)
    out = {"table": table.source, "us": table.us_name, "scale_detected": table.scale_detected,
           "n_dropped_nan": table.n_dropped_nan, "fits": fits}

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    print(json.dumps(clean(out), indent=args.indent))
    return 0
