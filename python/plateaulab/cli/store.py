"""`plateaulab store check|info PATH`."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("store", help="inspect a feature store", description="Inspect a feature store.")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION")
    ssub.required = True
    c = ssub.add_parser("check", help="validate a store and list every problem")
    c.add_argument("path", help="feature store directory")
    c.add_argument("--deep", action="store_true", help="also read every array as probe does: checksums (XXH3-64 or CRC-32) and NaN/Inf")
    c.set_defaults(func=_check)
    i = ssub.add_parser("info", help="summarise a store")
    i.add_argument("path", help="feature store directory")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.set_defaults(func=_info)


def _check(args) -> int:
    from ..store import FeatureStore

    store = FeatureStore.open(args.path)
    problems = store.check(deep=args.deep)
    if not problems:
        print(f"{args.path}: ok ({len(store.checkpoints())} checkpoints, {len(store.datasets())} datasets"
              f"{', deep check' if args.deep else ''})")
        return 0
    print(f"{args.path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
    for p in problems:
        print(f"  - {p}")
    return 1


def _info(args) -> int:
    from ..store import FeatureStore

    s = FeatureStore.open(args.path).summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"store        {s['path']}")
    print(f"checkpoints  {s['checkpoints']}")
    print(f"blocks       {s['blocks']}  ({s['feature_bytes'] / 2**20:.1f} MiB of features, "
          f"dtypes {', '.join(s['dtypes']) or '-'}, dims {', '.join(map(str, s['dims'])) or '-'})")
    lo, hi = s["layers_per_checkpoint"]
    print(f"layers       {lo}" + (f"-{hi}" if hi != lo else "") + " per checkpoint and dataset"
          + (f"; {s['incomplete_blocks']} incomplete block(s) (no block.json)" if s["incomplete_blocks"] else ""))
    print(f"metadata     {', '.join(s['metadata_keys']) or '-'}")
    print("datasets")
    for name, d in s["datasets"].items():
        val = f", {d['n_val']} val" if d["n_val"] is not None else ""
        print(f"  {name}: {d['num_classes']} classes, {d['n_train']} train, {d['n_test']} test{val}")
    return 0
