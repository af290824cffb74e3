"""``plateaulab sensitivity``: fitting and prediction error of eq. (1) against sample size (App. F.1.1, Fig. 3)."""

from __future__ import annotations

from .inputs import (BUILTIN_LIST, HelpFormatter, add_input_arguments, add_seed_argument, check_output_file,
                     read_input, write_table)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sensitivity", help="sample-size sensitivity of the eq. (1) fit (hull vs all points)",
        description="Split the models at a US accuracy cut, fit eq. (1) on random samples of each size from the "
                    "lower range (to their upper hull and to all sampled points) and measure the fitting error "
                    "and the prediction error on the held-out upper range, as in App. F.1.1 of Abnar et al. "
                    "(ICLR 2022). Prints (or writes) a tidy table of mean and std per sample size. The metric "
                    f"defaults to the mean squared error in accuracy units. INPUT may be a builtin: {BUILTIN_LIST}.",
        formatter_class=HelpFormatter)
    add_input_arguments(p)
    p.add_argument("--cut", type=float, default=None, help="US accuracy separating fit (<) and held-out (>=) points")
    p.add_argument("--cut-quantile", type=float, default=0.75, help="quantile of US accuracy used when --cut is absent")
    p.add_argument("--sizes", default=None, metavar="N[,N...]",
                   help="sample sizes (default: 100..1000 step 100 plus all, scaled down for small tables)")
    p.add_argument("--trials", type=int, default=10, help="samples per size")
    p.add_argument("--on", default="hull,all", help="hull, all, or both (comma-separated)")
    p.add_argument("--metric", default="mse", choices=("mse", "rmse", "mae"), help="error metric")
    p.add_argument("--target", default="own", choices=("own", "all"),
                   help="prediction target: own = each mode against what it predicts (hull fits: the held-out "
                        "points' rising hull; all-point fits: every held-out point); all = every held-out point")
    p.add_argument("--tail", action="store_true", help="hull fits include the hull's descending tail")
    add_seed_argument(p, help="seed of the draws")
    p.add_argument("--shots", type=float, default=None, help="use only this shots value")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a text table")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write the table (.csv, .json or .parquet)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import pandas as pd

    from ..analysis import sample_size_sensitivity
    from ..analysis.groups import iter_groups

    sizes = _sizes(args.sizes)
    if args.output:              # a file that cannot be written is refused before the draws, not after
        check_output_file(args.output)
    src = read_input(args)
    on = tuple(s.strip() for s in args.on.split(",") if s.strip())
    parts = []
    for g in iter_groups(src.long, tasks=src.table.ds_tasks, shots=args.shots):
        df = sample_size_sensitivity(g.us, g.ds, cut=args.cut, cut_quantile=args.cut_quantile, sizes=sizes,
                                     trials=args.trials, on=on, metric=args.metric, seed=args.seed,
                                     target=args.target, tail=args.tail)
        df.insert(0, "ds", g.task)
        if g.shots is not None:
            df.insert(1, "shots", g.shots)
        parts.append(df)
    out = pd.concat(parts, ignore_index=True)
    if args.output:
        print(write_table(out, args.output))
    elif args.json:
        rows = json.loads(out.to_json(orient="records"))
        print(json.dumps({"table": src.table.source, "us": src.table.us_name, "rows": rows}))
    else:
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(out.to_string(index=False))
    return 0


def _sizes(text):
    """--sizes: None (the default sizes), or at least one integer."""
    from ..errors import InputError

    if text is None:
        return None
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"{{param}} must be comma-separated integers; got {text!r}", param="sizes") from None
    if not sizes:
        raise InputError(f"{{param}} names no sample size ({text!r}); give one or more, e.g. {{param}} 10,20,40, "
                         "or leave it out for the default sizes", param="sizes")
    return sizes
