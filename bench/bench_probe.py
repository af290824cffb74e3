"""Probe-engine throughput on the CPU: ``plateaulab bench --preset reference --backend cpu``, with the
flags this script has always had (the harness lives in the package, ``plateaulab.benchmark``).

Workload (issue 2, defaults): 20 checkpoints x 12 layers x 1 dataset, D = 768, C = 100 classes,
10,000 test rows, 50 train rows per class, fp16 features; shots 1, 5, 10, 25; 3 seeds; 8 l2 values.
That is 240 blocks x 12 tasks x 8 l2 = 23,040 probes. The cpu engine runs the whole store end to end
(``probe_store``); big_vision's loop in numpy float64 runs on the first --baseline-blocks blocks of the
same store, in the same run, and the accuracies are compared probe by probe (counted ties apart).

    python bench/bench_probe.py                  # the full workload (~5.5 GB store in --workdir)
    python bench/bench_probe.py --checkpoints 2 --layers 3   # a quick look
    python bench/bench_probe.py --l2 1 --solver eigh        # one l2, eigendecomposition forced
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# Bench scripts run as `python bench/<script>.py`; the baselines module beside them re-exports the package's.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import bigvision_loop_block  # noqa: E402,F401  (the loop the ratio is taken against)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=20)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--l2", type=int, default=8, help="number of l2 values (geometric from 2^4 to 2^18; 1: 1024)")
    ap.add_argument("--baseline-blocks", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--solver", choices=["auto", "eigh"], default="auto",
                    help="eigh: force one eigendecomposition per task even where the engine would "
                         "solve directly (few l2 values), to measure that choice")
    ap.add_argument("--workdir", default=None, help="where the store goes (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the store (reused by the next run with --workdir)")
    ap.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    args = ap.parse_args(argv)

    from plateaulab.backends import get_backend
    from plateaulab.benchmark import make_workload, run_benchmark
    from plateaulab.benchmark.output import format_table, write_json

    l2s = list(np.geomspace(2.0 ** 4, 2.0 ** 18, args.l2)) if args.l2 > 1 else [1024.0]
    wl = make_workload("reference", checkpoints=args.checkpoints, layers=args.layers, dim=args.dim,
                       classes=args.classes, test=args.test, l2=l2s, repeat=args.repeat,
                       baseline_blocks=args.baseline_blocks)
    ops = get_backend("cpu").get_ops()
    saved = ops.solve_max_l
    if args.solver == "eigh":
        ops.solve_max_l = 0
    try:
        result = run_benchmark(wl, backends=["cpu"], workdir=args.workdir, keep=args.keep)
    finally:
        ops.solve_max_l = saved
    if args.json:
        write_json(result, args.json)
    print(format_table(result))
    print(f"solver: {args.solver} (cpu solve_max_l = {result['results'][0]['solve_max_l']})")
    return 0 if all(e["agreement"]["agrees"] for e in result["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
