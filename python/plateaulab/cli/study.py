"""``plateaulab study``: from a probe run or an accuracy table to a report with the paper's figures."""

from __future__ import annotations

from .inputs import HelpFormatter, add_fit_arguments, add_hparam_argument, add_input_arguments, add_seed_argument, \
    input_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="saturation study: report.html with the paper's figures, fits.json, tables",
        description="Fit eq. (1) of Abnar et al. (ICLR 2022) to the upper hull of DS-vs-US accuracy for every "
                    "downstream task and write a self-contained HTML report with the paper's figures. With no "
                    "INPUT, runs on the open_clip results table shipped with plateaulab "
                    "(mlfoundations/open_clip, docs/openclip_results.csv, commit 29b90b8d).",
        formatter_class=HelpFormatter)
    add_input_arguments(p, optional_input=True)
    add_hparam_argument(p)
    p.add_argument("-o", "--output", required=True, metavar="REPORT_DIR",
                   help="directory for the report: a new or empty one, or an earlier report, which is replaced "
                        "whole (a folder holding anything else is refused; docs/STUDY.md)")
    add_fit_arguments(p, bootstrap_default=300)
    add_seed_argument(p, help="seed of the bootstrap and the sensitivity draws")
    p.add_argument("--axis-scale", default="linear", choices=("linear", "logit", "neglog1m"),
                   help="axis scaling of the DS-vs-US plots (neglog1m is -log(1 - p)); fits are always on 0-1 "
                        "accuracies")
    p.add_argument("--overlay", default=None, metavar="TASK",
                   help="DS task whose hull is drawn over the others (Figure 5); default: the task ranked most "
                        "like US")
    p.add_argument("--layer-tol", type=float, default=0.01, metavar="EPS",
                   help="runs with several layers: a layer counts as good as a checkpoint's best when its accuracy "
                        "is within EPS (0-1) of it (Figure 6 and the earliest-layer table)")
    p.add_argument("--no-sensitivity", action="store_true", help="skip the sample-size sensitivity (Figure 3)")
    p.add_argument("--trials", type=int, default=10, help="trials per sample size in the sensitivity analysis")
    p.add_argument("--quiet", action="store_true", help="print only the report's path")
    p.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..report.study import run_study

    t0 = time.perf_counter()
    bar = None
    found = {}

    def on_result(res):
        found["res"] = res

    def progress(label, done, total):
        nonlocal bar
        if bar is None:      # one step per (task, shots) group, with tqdm's rate and ETA
            bar = tqdm(total=total, unit="group", desc="study: fits", disable=args.quiet, dynamic_ncols=True,
                       leave=False)
        bar.set_postfix_str(label[:40])
        bar.update(1)

    try:
        path = run_study(args.input, args.output, us=args.us, ds=args.ds, n_boot=args.bootstrap, seed=args.seed,
                         axis_scale=args.axis_scale, input_scale=args.input_scale, overlay=args.overlay,
                         sensitivity=not args.no_sensitivity, sensitivity_trials=args.trials, loader=args.loader,
                         layer=args.layer, ci_source=args.ci_source, tail=args.tail, layer_tol=args.layer_tol,
                         progress=progress,
                         on_result=on_result, **input_options(args))
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        _print_summary(found["res"], Path(args.output))
        print(f"study written in {time.perf_counter() - t0:.1f} s")
    print(path)
    return 0


def _print_summary(res, out) -> None:
    """The per-task summary and the tasks not analysed, as the report lists them (same order, same words)."""
    import json

    from ..report.text import identified_count

    summary = out / "tables" / "summary.json"        # absent when no task was fitted (a layer-only report)
    rows = json.loads(summary.read_text()) if summary.exists() else []
    print(identified_count(res.groups))
    for row in rows:
        print(f"{row['label']}: {row['summary']}")
    if res.skipped:
        print(f"not analysed ({len(res.skipped)}):")
        for what, why in res.skipped.items():
            print(f"  {what}: {why}")
