"""``plateaulab synth``: a synthetic feature store whose downstream saturation is planted."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="generate a feature store with planted downstream saturation (for synth -> probe -> study)",
        description="Write a feature store of N synthetic checkpoints: per-layer features whose class separation "
                    "grows with checkpoint quality, upstream_accuracy metadata, and downstream tasks in which a "
                    "fixed fraction e_IR of test examples carries another class's features, so that accuracy "
                    "saturates at 1 - e_IR by construction. The planted values go to OUT_STORE/synth.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_store", metavar="OUT_STORE", help="new (or empty) directory for the store")
    p.add_argument("--checkpoints", type=int, default=24, help="number of checkpoints")
    p.add_argument("--layers", type=int, default=3, help="layers per checkpoint")
    p.add_argument("--dim", type=int, default=16, help="feature width")
    p.add_argument("--e-ir", default="0.08,0.20,0.35", metavar="LIST",
                   help="planted irreducible DS error of each task (one task per value)")
    p.add_argument("--classes", type=int, default=5, help="classes per downstream task")
    p.add_argument("--train-per-class", type=int, default=30, help="train examples per class (>= the largest shots)")
    p.add_argument("--test-per-class", type=int, default=200, help="test examples per class")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..synth import SynthConfig, default_tasks, make_synth_store

    try:
        e_irs = [float(v) for v in args.e_ir.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--e-ir must be a comma-separated list of numbers, got {args.e_ir!r}") from None
    if not e_irs:
        raise InputError("--e-ir needs at least one value")
    SynthConfig(n_checkpoints=args.checkpoints, n_layers=args.layers, dim=args.dim,
                n_train_per_class=args.train_per_class,
                n_test_per_class=args.test_per_class).validate_sizes(len(e_irs), args.classes)
    base = default_tasks(args.layers)
    tasks = []
    for i, e in enumerate(e_irs):
        t = base[i % len(base)]
        name = t.name if i < len(base) else f"task{i}"
        tasks.append(dict(name=name, e_ir=e, transfer=t.transfer, num_classes=args.classes,
                          layer_gain=t.layer_gain))
    cfg = SynthConfig(n_checkpoints=args.checkpoints, n_layers=args.layers, dim=args.dim,
                      n_train_per_class=args.train_per_class, n_test_per_class=args.test_per_class,
                      seed=args.seed, tasks=tasks)
    store = make_synth_store(args.out_store, cfg)
    print(f"wrote {len(store.checkpoints())} checkpoints x {len(store.datasets())} tasks x {args.layers} layers "
          f"to {args.out_store}; planted saturation: "
          + ", ".join(f"{t['name']} {1 - t['e_ir']:.2f}" for t in tasks))
    return 0
