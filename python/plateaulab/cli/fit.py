"""``plateaulab fit``: eq. (1) of Abnar et al. (ICLR 2022) fitted to DS-vs-US accuracy, one record per task."""

from __future__ import annotations

from .inputs import (BUILTIN_LIST, HelpFormatter, add_fit_arguments, add_input_arguments, add_seed_argument,
                     check_output_file, read_input, write_json, write_table)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit", help="fit e_DS = k e_US^alpha + e_IR per DS task: a table on stdout, JSON, or a file",
        description="Fit e_DS = k * e_US^alpha + e_IR (e = 1 - accuracy) to the rising part of the upper convex hull "
                    "(or all points) of each DS task against the US accuracy. Prints a table, or with --json one JSON "
                    "object whose key 'fits' holds one record per DS task (and shots value): parameters, whether "
                    "the data identify each of them, flags, the models the fit rests on and, with --bootstrap, the "
                    f"intervals. -o writes the records as .json, .csv or .parquet. INPUT may be a builtin table: "
                    f"{BUILTIN_LIST}.",
        formatter_class=HelpFormatter)
    add_input_arguments(p)
    p.add_argument("--on", default="hull", choices=("hull", "all"), help="fit the upper hull or every point")
    p.add_argument("--loss", default="l2", choices=("l2", "huber", "log"), help="fitting loss")
    p.add_argument("--us-bayes-error", type=float, default=0.0, help="subtracted from e_US before the power")
    add_fit_arguments(p, bootstrap_default=0)
    p.add_argument("--m", type=int, default=None,
                   help="models drawn per model-bootstrap replicate (m-out-of-n; default n). See docs/ANALYSIS.md")
    p.add_argument("--ci", type=float, default=0.95, help="interval level")
    add_seed_argument(p, help="bootstrap seed")
    p.add_argument("--shots", type=float, default=None, help="fit only this shots value")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of a table")
    p.add_argument("--indent", type=int, default=None, help="indent the JSON")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write the fit records to FILE (.json: the JSON object; .csv / .parquet: one row per fit)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..analysis.groups import iter_groups
    from ..analysis.records import jsonable
    from ..analysis.study import analyse_group, check_bootstrap

    if args.output:              # a file that cannot be written is refused before the fits, not after
        check_output_file(args.output)
    src = read_input(args)
    check_bootstrap(args.bootstrap, len(src.long))
    extra = {} if src.layer_rule is None else {"layer": src.layer_rule}
    fits = []
    for g in iter_groups(src.long, tasks=src.table.ds_tasks, shots=args.shots):
        r = analyse_group(g, n_boot=args.bootstrap, seed=args.seed, on=args.on, loss=args.loss,
                          us_bayes_error=args.us_bayes_error, tail=args.tail, ci_source=args.ci_source, m=args.m,
                          ci=args.ci, on_all=False, extra=extra)
        fits.append(r.record)
    table = src.table
    out = jsonable({"table": table.source, "us": table.us_name, "scale_detected": table.scale_detected,
                    "n_dropped_nan": table.n_dropped_nan, "notes": src.notes, "fits": fits})
    if args.output and args.output.lower().endswith(".json"):
        print(write_json(out, args.output))
    elif args.output:
        print(write_table(_flat(fits), args.output))
    elif args.json:
        print(json.dumps(out, indent=args.indent))
    else:
        _print_table(fits, out)
    return 0


def _flat(fits):
    """One row per fit: scalars as they are, lists joined, intervals as <param>_lo / <param>_hi."""
    import pandas as pd

    rows = []
    for f in fits:
        row = {}
        for key, value in f.items():
            if key == "ci":
                for p, (lo, hi) in value.items():
                    row[f"{p}_lo"], row[f"{p}_hi"] = lo, hi
            elif key == "identifiable":
                row.update({f"{p}_identified": v for p, v in value.items()})
            elif key in ("intervals", "profile"):
                continue
            elif isinstance(value, list):
                row[key] = "; ".join(map(str, value))
            elif isinstance(value, dict):
                continue
            else:
                row[key] = value
        rows.append(row)
    return pd.DataFrame(rows)


def _print_table(fits, out) -> None:
    import pandas as pd

    df = _flat(fits)
    cols = [c for c in ("ds", "shots", "saturation", "saturation_lo", "saturation_hi", "ci_source", "alpha", "k",
                        "e_ir", "n_points", "identified", "flags") if c in df]
    print(f"{out['table']}: US {out['us']}")
    for note in out["notes"]:
        print(f"note: {note}")
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 120,
                           "display.float_format", "{:.4g}".format):
        print(df[cols].to_string(index=False))
