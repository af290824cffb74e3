"""``plateaulab sensitivity``: fitting and prediction error of eq. (1) against sample size (App. F.1.1, Fig. 3)."""

from __future__ import annotations

import argparse

from .fit import BUILTIN, add_table_arguments, read_table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sensitivity", help="sample-size sensitivity of the eq. (1) fit (hull vs all points)",
        description="Split the models at a US accuracy cut, fit eq. (1) on random samples of each size from the "
                    "lower range (to their upper hull and to all sampled points) and measure the fitting error "
                    "and the prediction error on the held-out upper range, as in App. F.1.1 of Abnar et al. "
                    "(ICLR 2022). Prints (or writes) a tidy table of mean and std per sample size. The metric "
                    "defaults to the mean squared error in accuracy units.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("table", metavar="TABLE",
                   help=f"accuracy table (CSV, TSV, Parquet, JSON, JSONL), probe run directory, or {BUILTIN}")
    p.add_argument("--us", default=None, metavar="COL", help="upstream accuracy column (or dataset of a long table)")
    p.add_argument("--ds", default=None, metavar="COL[,COL...]", help="downstream columns; default: all")
    p.add_argument("--cut", type=float, default=None, help="US accuracy separating fit (<) and held-out (>=) points")
    p.add_argument("--cut-quantile", type=float, default=0.75, help="quantile of US accuracy used when --cut is absent")
    p.add_argument("--sizes", default=None, metavar="N[,N...]",
                   help="sample sizes (default: 100..1000 step 100 plus all, scaled down for small tables)")
    p.add_argument("--trials", type=int, default=10, help="samples per size")
    p.add_argument("--on", default="hull,all", help="hull, all, or both (comma-separated)")
    p.add_argument("--metric", default="mse", choices=("mse", "rmse", "mae"), help="error metric")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--shots", type=float, default=None, help="use only this shots value")
    add_table_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON records instead of a text table")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write the table (.csv, .json or .parquet)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from ..analysis import sample_size_sensitivity
    from ..errors import InputError

    table = read_table(args)
    try:
        sizes = None if args.sizes is None else [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--sizes must be comma-separated integers; got {args.sizes!r}") from None
    on = tuple(s.strip() for s in args.on.split(",") if s.strip())
    parts = []
    for task in table.ds_tasks:
        rows = table.long[table.long["ds_task"] == task]
        shot_values = sorted(rows["shots"].dropna().unique().tolist())
        if args.shots is not None:
            shot_values = [args.shots]
        for shots in (shot_values or [None]):
            sub = rows if shots is None else rows[rows["shots"] == shots]
            if sub.empty:
                raise InputError(f"DS {task!r} has no rows with shots={shots:g}")
            df = sample_size_sensitivity(sub["us"].to_numpy(float), sub["ds"].to_numpy(float), cut=args.cut,
                                         cut_quantile=args.cut_quantile, sizes=sizes, trials=args.trials, on=on,
                                         metric=args.metric, seed=args.seed)
            df.insert(0, "ds", task)
            if shots is not None:
                df.insert(1, "shots", shots)
            parts.append(df)
    out = pd.concat(parts, ignore_index=True)
    if args.output:
        path = Path(args.output)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            out.to_csv(path, index=False)
        elif suffix == ".json":
            out.to_json(path, orient="records", indent=1)
        elif suffix in (".parquet", ".pq"):
            out.to_parquet(path, index=False)
        else:
            raise InputError(f"--output {str(path)!r}: use a .csv, .json or .parquet file name")
        print(path)
    elif args.json:
        rows = json.loads(out.to_json(orient="records"))
        print(json.dumps({"table": table.source, "us": table.us_name, "rows": rows}))
    else:
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(out.to_string(index=False))
    return 0
