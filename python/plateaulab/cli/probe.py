"""`plateaulab probe STORE -o RUN_DIR ...`: few-shot ridge probes over every block of a store."""

from __future__ import annotations

from argparse import ArgumentTypeError


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _seeds(text: str):
    if "," in text:
        return _int_list(text)
    try:
        return int(text)
    except ValueError:
        raise ArgumentTypeError(f"expected a number of seeds or comma-separated seeds, got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "probe", help="run few-shot ridge probes over a feature store",
        description="Run big_vision's few-shot ridge probe for every (checkpoint, layer, dataset, shots, seed, l2) "
                    "of a store. Resumable: rerun the same command after a crash.")
    p.add_argument("store", help="feature store directory")
    p.add_argument("-o", "--output", required=True, help="run directory (created; reused to resume)")
    p.add_argument("--datasets", nargs="+", help="dataset names (default: all)")
    p.add_argument("--checkpoints", nargs="+", metavar="GLOB", help="checkpoint name patterns (default: all)")
    p.add_argument("--layers", nargs="+", default=["all"], help="all, last, or layer names (default: all)")
    p.add_argument("--shots", type=_int_list, default=[1, 5, 10, 25], help="comma-separated (default: 1,5,10,25)")
    p.add_argument("--seeds", type=_seeds, default=3,
                   help="number of seeds (0..N-1, default 3) or a comma-separated list")
    p.add_argument("--l2", type=_float_list, default=[1024.0], help="l2 value or comma-separated list (default: 1024)")
    p.add_argument("--select", choices=["fixed", "loo", "val"], default="fixed",
                   help="l2 choice per probe: fixed = first --l2 value; loo = exact leave-one-out on the few-shot "
                        "set; val = validation split (never the test split)")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "cpu", "cuda"])
    p.add_argument("--skip-short-classes", action="store_true",
                   help="skip, with a warning, shot counts that some class cannot fill (default: error)")
    p.add_argument("--no-prefetch", action="store_true",
                   help="read each block only when it is probed (default: the next block is read, checked "
                        "and staged in a reader thread while the current one computes)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not check each block's checksums as it is read (default: checked in the reader thread)")
    p.add_argument("--strict", action="store_true",
                   help="refuse incomplete blocks among those asked for, and finished parts whose block has "
                        "changed since (default: warn and skip, or recompute)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_scale_arguments(p, unit="a few blocks of one checkpoint")
    p.set_defaults(func=_run)


def add_scale_arguments(p, unit: str) -> None:
    """--workers / --scheduler / --scheduler-file / --shard, shared by probe and extract (docs/SCALE.md).
    ``unit``: the unit of work one task does, in words."""
    g = p.add_argument_group("beyond one process (docs/SCALE.md; --workers/--scheduler need plateaulab[cluster])")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--workers", metavar="N", default=None,
                       help=f"run on a local Dask cluster of N single-threaded worker processes, each task {unit} "
                            "('auto': one worker per core; with --backend cuda / --device cuda: one per visible GPU)")
    where.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="run on an existing Dask cluster (e.g. tcp://host:8786); store and output on a shared "
                            "file system")
    where.add_argument("--scheduler-file", metavar="PATH", default=None,
                       help="run on the existing Dask cluster whose scheduler wrote PATH (dask-jobqueue, "
                            "`dask scheduler --scheduler-file`)")
    g.add_argument("--shard", metavar="K/N", default=None,
                   help="do only shard K of N (0 <= K < N; checkpoints assigned by a stable hash of their name), "
                        "beside the other shards of a SLURM array writing into the same directory")


def _run(args) -> int:
    from ..run import probe_store

    layers = args.layers[0] if len(args.layers) == 1 and args.layers[0] in ("all", "last") else args.layers
    run = probe_store(args.store, args.output, datasets=args.datasets, checkpoints=args.checkpoints,
                      layers=layers, shots=args.shots, seeds=args.seeds, l2=args.l2, select=args.select,
                      backend=args.backend, quiet=args.quiet, prefetch=not args.no_prefetch,
                      verify=not args.no_verify, strict=args.strict,
                      on_short="skip" if args.skip_short_classes else "error", workers=args.workers,
                      scheduler=args.scheduler, scheduler_file=args.scheduler_file, shard=args.shard)
    recomputed = run.recomputed
    if recomputed:
        print(f"{run.run_dir}: {len(recomputed)} finished block(s) recomputed (listed in manifest.json)")
    status = "complete" if run.results_path.exists() else "incomplete"
    if args.shard and status == "incomplete":
        status += (" (other shards still to finish; the last one, or `plateaulab probe` without --shard, "
                   "consolidates)")
    shard = f"shard {args.shard}: " if args.shard else ""
    print(f"{run.run_dir}: {shard}{run.blocks_total} blocks, {run.blocks_done_now} probed now "
          f"({run.probes_done_now} probes in {run.seconds:.1f} s); run {status}; results in {run.results_path}")
    return 0
