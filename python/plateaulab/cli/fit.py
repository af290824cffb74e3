"""``plateaulab fit``: eq. (1) of Abnar et al. (ICLR 2022) fitted to DS-vs-US accuracy, one record per task."""

from __future__ import annotations

import argparse

from .inputs import BUILTIN_LIST, add_input_arguments, read_input


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit", help="fit e_DS = k e_US^alpha + e_IR per DS task; prints JSON",
        description="Fit e_DS = k * e_US^alpha + e_IR (e = 1 - accuracy) to the upper convex hull (or all points) "
                    "of each DS task against the US accuracy, and print one JSON object whose key 'fits' holds "
                    "one record per DS task (and shots value). With --bootstrap, add percentile intervals and "
                    f"the replicate counts. INPUT may be a builtin table: {BUILTIN_LIST}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_input_arguments(p)
    p.add_argument("--on", default="hull", choices=("hull", "all"), help="fit the upper hull or every point")
    p.add_argument("--loss", default="l2", choices=("l2", "huber", "log"), help="fitting loss")
    p.add_argument("--us-bayes-error", type=float, default=0.0, help="subtracted from e_US before the power")
    p.add_argument("--bootstrap", type=int, default=0, metavar="B", help="bootstrap replicates (0: none)")
    p.add_argument("--m", type=int, default=None,
                   help="models drawn per bootstrap replicate (m-out-of-n; default n). See docs/ANALYSIS.md")
    p.add_argument("--ci", type=float, default=0.95, help="bootstrap interval level")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--shots", type=float, default=None, help="fit only this shots value")
    p.add_argument("--json", action="store_true", help="print JSON (the default and only output format)")
    p.add_argument("--indent", type=int, default=None, help="indent the JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..analysis import bootstrap_fit, fit_saturating_power_law
    from ..analysis.groups import iter_groups
    from ..analysis.records import fit_record, jsonable

    src = read_input(args)
    extra = {} if src.layer_rule is None else {"layer": src.layer_rule}
    fits = []
    for g in iter_groups(src.long, tasks=src.table.ds_tasks, shots=args.shots):
        fit = fit_saturating_power_law(g.us, g.ds, on=args.on, loss=args.loss, us_bayes_error=args.us_bayes_error,
                                       ds=g.label)
        boot = None
        if args.bootstrap > 0:
            boot = bootstrap_fit(g.us, g.ds, args.bootstrap, on=args.on, seed=args.seed, m=args.m, ci=args.ci,
                                 loss=args.loss, us_bayes_error=args.us_bayes_error)
        fits.append(fit_record(fit, task=g.task, shots=g.shots, boot=boot, extra=extra))
    table = src.table
    out = {"table": table.source, "us": table.us_name, "scale_detected": table.scale_detected,
           "n_dropped_nan": table.n_dropped_nan, "fits": fits}
    print(json.dumps(jsonable(out), indent=args.indent))
    return 0
