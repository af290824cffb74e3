"""``plateaulab bench``: probe-engine throughput on this machine, against big_vision's loop and the
machine's own ceilings, measured in one run."""

from __future__ import annotations

import argparse
import sys

from .probe import _float_list, _int_list, _seeds

PRESET_HELP = {
    "quick": "the reference shape at 5,000 test rows, 4 blocks, 3 repeats: under a minute on 2 cores",
    "reference": "issue 2's 240 blocks: 20 checkpoints x 12 layers, D 768, C 100, 10,000 test rows, 8 l2",
    "paper": "5 datasets (102, 196, 100, 47, 37 classes), D 768, l2 1024, 10 checkpoints",
    "layers": "12 layers of paper",
    "io": "1-shot, D 4096, 50,000 test rows, 16 checkpoints",
}


def _backends(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected backend names, e.g. cpu or cpu,cuda")
    return names


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmark the probe engine on this machine (throughput, baselines, ceilings)",
        description="Generate a synthetic feature store, probe it end to end with every available backend, and "
                    "report probes/s, blocks/s, feature GB/s and GFLOP/s (with the FLOP model), each against the "
                    "machine's own ceilings measured in the same run (a GEMM at the workload's shape, memory "
                    "bandwidth, on a GPU pinned host-to-device copies), and the ratio to big_vision's per-probe "
                    "numpy loop run on the same blocks (and on a GPU the CuPy port), whose accuracies must agree "
                    "counted ties apart. Engine and baselines are interleaved over --repeat repeats; medians and "
                    "min-max are reported. Presets: " + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()) + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", choices=list(PRESET_HELP), help="workload (default: quick)")
    shape = p.add_argument_group("shape (each overrides the preset's value)")
    shape.add_argument("--dim", type=int, help="feature width D")
    shape.add_argument("--classes", type=_int_list, metavar="C[,C...]",
                       help="classes: one value for every dataset, or one per dataset")
    shape.add_argument("--test", type=_int_list, metavar="M[,M...]",
                       help="test rows: one value for every dataset, or one per dataset")
    shape.add_argument("--shots", type=_int_list, metavar="LIST", help="comma-separated shot counts")
    shape.add_argument("--seeds", type=_seeds, help="number of seeds (0..N-1) or a comma-separated list")
    shape.add_argument("--l2", type=_float_list, metavar="LIST", help="l2 value or comma-separated list")
    shape.add_argument("--dtype", choices=["float16", "float32"], help="stored feature dtype")
    shape.add_argument("--checkpoints", type=int, help="checkpoints in the store")
    shape.add_argument("--layers", type=int, help="layers per checkpoint (every one is probed)")
    p.add_argument("--backend", type=_backends, metavar="NAME[,NAME...]",
                   help="backends to measure: numpy, cpu, cuda (default: cpu and cuda, those available)")
    p.add_argument("--repeat", type=int, help="repeats of engine and baselines (default: 3 for quick, else 1)")
    p.add_argument("--baseline-blocks", type=int, metavar="N",
                   help="blocks per dataset the baselines run on (default: the preset's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("-o", "--output", metavar="FILE.json", help="also write the JSON object to this file")
    p.add_argument("--workdir", metavar="DIR",
                   help="where the store and runs are generated (default: a temporary folder); a store of the same "
                        "shape left there by --keep is reused")
    p.add_argument("--keep", action="store_true", help="keep the generated store and runs (default: removed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or phase lines on stderr")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..benchmark import make_workload, run_benchmark
    from ..benchmark.output import format_table, to_json, write_json

    wl = make_workload(args.preset, dim=args.dim, classes=args.classes, test=args.test, shots=args.shots,
                       seeds=args.seeds, l2=args.l2, dtype=args.dtype, checkpoints=args.checkpoints,
                       layers=args.layers, repeat=args.repeat, baseline_blocks=args.baseline_blocks)
    progress = False if args.quiet else None
    result = run_benchmark(wl, backends=args.backend, workdir=args.workdir, keep=args.keep, progress=progress)
    if args.output:
        write_json(result, args.output)
    print(to_json(result) if args.json else format_table(result))
    bad = [e["backend"] for e in result["results"] if not e["agreement"]["agrees"]]
    if bad:
        print(f"plateaulab bench: error: the accuracies of {', '.join(bad)} disagree with the baselines beyond "
              "counted ties (see 'agreement'); this is a bug, please report it", file=sys.stderr)
        return 1
    return 0
