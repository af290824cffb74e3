"""``plateaulab study``: from a probe run or an accuracy table to a report with the paper's figures."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="saturation study: report.html with the paper's figures, fits.json, tables",
        description="Fit eq. (1) of Abnar et al. (ICLR 2022) to the upper hull of DS-vs-US accuracy for every "
                    "downstream task and write a self-contained HTML report with the paper's figures. With no "
                    "INPUT, runs on the open_clip results table shipped with plateaulab "
                    "(mlfoundations/open_clip, docs/openclip_results.csv, commit 29b90b8d).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", nargs="?", default=None, metavar="INPUT",
                   help="probe run directory (from `plateaulab probe`) or accuracy table (CSV, Parquet, JSONL); "
                        "default: the packaged open_clip table")
    p.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="directory for the report")
    p.add_argument("--us", default=None, metavar="COL",
                   help="upstream accuracy: a table column, or a checkpoint-metadata column of a probe run "
                        "(default for runs: upstream_accuracy; for the packaged table: ImageNet 1k)")
    p.add_argument("--ds", default=None, metavar="COLS",
                   help="comma-separated downstream tasks (table columns or run datasets); default: all")
    p.add_argument("--bootstrap", type=int, default=300, metavar="B",
                   help="bootstrap replicates per task (0 turns the bootstrap off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the sensitivity draws")
    p.add_argument("--scale", default="linear", choices=("linear", "logit", "neglog1m"),
                   help="axis scaling of the DS-vs-US plots (neglog1m is -log(1 - p)); fits are always on 0-1 "
                        "accuracies")
    p.add_argument("--input-scale", default="auto", choices=("auto", "unit", "percent"),
                   help="whether table accuracies are on 0-1 (unit) or 0-100 (percent)")
    p.add_argument("--loader", default="auto",
                   choices=("auto", "table", "openclip", "clip_benchmark", "model_soups"),
                   help="how to read a table: auto recognises the published tables by their "
                        "file names (openclip_results.csv, scaling_experiment_data2.json, "
                        "individual_model_results.jsonl); table is the generic reader")
    p.add_argument("--layer", default="last", metavar="NAME",
                   help="probe runs: the layer used by the main figures (Figure 6 always shows every layer)")
    p.add_argument("--overlay", default=None, metavar="TASK",
                   help="DS task whose hull is drawn over the others (Figure 5); default: the task ranked most "
                        "like US")
    p.add_argument("--no-sensitivity", action="store_true", help="skip the sample-size sensitivity (Figure 3)")
    p.add_argument("--trials", type=int, default=10, help="trials per sample size in the sensitivity analysis")
    p.add_argument("--quiet", action="store_true", help="print only the report's path")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import time

    from ..report.study import read_fits, run_study

    t0 = time.perf_counter()
    path = run_study(args.input, args.output, us=args.us, ds=args.ds, n_boot=args.bootstrap, seed=args.seed,
                     axis_scale=args.scale, input_scale=args.input_scale, overlay=args.overlay,
                     sensitivity=not args.no_sensitivity, sensitivity_trials=args.trials, loader=args.loader,
                     layer=args.layer)
    if not args.quiet:
        from pathlib import Path

        fits = read_fits(args.output)
        planted = {}
        pfile = Path(args.output) / "tables" / "planted_vs_recovered.json"
        if pfile.exists():
            planted = {(r["ds_task"], str(r["shots"])): r["planted saturation"] for r in json.loads(pfile.read_text())}
        if any("shots" in f for f in fits):
            ordered = fits   # task by task, shots in order
        else:
            ordered = sorted(fits, key=lambda f: -(f.get("saturation") or 0))
        for f in ordered:
            ci = f.get("ci", {}).get("saturation")
            ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""
            shots = f" ({f['shots']}-shot)" if "shots" in f else ""
            flag = "" if f.get("identified") else "  (not identified)"
            truth = planted.get((f["ds"], f"{f['shots']:g}" if "shots" in f else ""))
            truth_text = f"; planted {truth:.3f}" if truth is not None else ""
            print(f"{f['ds']}{shots}: saturation {f['saturation']:.3f}{ci_text}, {f['hull_points']} hull points"
                  f"{truth_text}{flag}")
        print(f"study written in {time.perf_counter() - t0:.1f} s")
    print(path)
    return 0
