"""Probe-engine throughput: the `cpu` backend against per-probe numpy loops of the same protocol.

Workload (issue 2, defaults): 20 checkpoints x 12 layers x 1 dataset, D = 768, C = 100 classes,
10,000 test rows, 50 train rows per class, fp16 features; shots 1, 5, 10, 25; 3 seeds; 8 l2 values.
That is 240 blocks x 12 tasks x 8 l2 = 23,040 probes.

Baselines, measured in the same run on the same blocks (the first --baseline-blocks blocks; their
time per probe is what the ratio uses, since the loops cost the same for every block):
  loop-f64    big_vision's evaluator as published (fewshot_lsr: per (shots, seed) the cached
              eigendecomposition, then per l2 `_eig_fewshot_acc_fn`: standardise and pad the test
              split, form W, argmax X_test W), transcribed to numpy float64; each block read once.
  loop-f32    the same loop in float32, JAX's default dtype.
  loop-f64-read   loop-f64 where every (shots, seed) probe reads its block from the store again:
              a per-probe loop that shares nothing between probes.
Accuracies are compared probe by probe: cpu against loop-f64 must differ only on counted ties.

    python bench/bench_probe.py                  # the full workload (~5.5 GB store in --workdir)
    python bench/bench_probe.py --checkpoints 2 --layers 3   # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Bench scripts run as `python bench/<script>.py`; the baselines live beside them.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import bigvision_loop_block  # noqa: E402


def build_store(path: Path, n_ckpt: int, n_layers: int, dim: int, C: int, per_class: int, n_test: int):
    from plateaulab import FeatureStore

    if (path / "store.json").exists():
        st = FeatureStore.open(path)
        if len(list(st.iter_blocks())) == n_ckpt * n_layers:
            return st
        shutil.rmtree(path)
    st = FeatureStore.create(path)
    rng = np.random.default_rng(0)
    y_train = np.repeat(np.arange(C), per_class)
    rng.shuffle(y_train)
    y_test = rng.integers(0, C, n_test)
    st.add_dataset("bench", y_train, y_test, num_classes=C)
    # Class means in a low-dimensional subspace plus isotropic noise: accuracies spread over (0, 1).
    basis = rng.normal(size=(64, dim)) / 8.0
    for k in range(n_ckpt):
        ck = f"ckpt-{k:03d}"
        st.set_checkpoint_meta(ck, upstream_accuracy=0.4 + 0.5 * k / max(n_ckpt - 1, 1))
        for layer in range(n_layers):
            sep = 0.3 + 0.05 * k + 0.05 * layer
            means = (rng.normal(size=(C, 64)) @ basis) * sep * 4

            def feats(y):
                x = rng.standard_normal((len(y), dim), dtype=np.float32)
                x += means[y]
                x += 1.5
                return x.astype(np.float16)

            st.add_features(ck, "bench", f"layer{layer:02d}", train=feats(y_train), test=feats(y_test),
                            layer_index=layer)
    return st


def _ops_solve_max_l() -> int:
    from plateaulab.backends import cpu

    return cpu.get_ops().solve_max_l


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=20)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--l2", type=int, default=8, help="number of l2 values (geometric from 2^4 to 2^18)")
    ap.add_argument("--baseline-blocks", type=int, default=3)
    ap.add_argument("--solver", choices=["auto", "eigh"], default="auto",
                    help="eigh: force one eigendecomposition per task even where the engine would "
                         "solve by Cholesky (a single l2), to measure that choice")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "plateaulab-bench"))
    args = ap.parse_args(argv)

    from plateaulab import __version__
    from plateaulab import protocol as P
    from plateaulab.backends import get_backend
    from plateaulab.run import probe_store

    work = Path(args.workdir)
    t0 = time.perf_counter()
    st = build_store(work / "store", args.checkpoints, args.layers, args.dim, args.classes, args.per_class, args.test)
    print(f"store ready in {time.perf_counter() - t0:.1f} s at {st.path}")
    l2s = list(np.geomspace(2.0 ** 4, 2.0 ** 18, args.l2)) if args.l2 > 1 else [1024.0]
    shots, seeds = [1, 5, 10, 25], [0, 1, 2]
    ds = st.dataset("bench")
    tasks = P.plan_tasks(ds.y_train, ds.num_classes, shots, seeds, "bench")
    probes_per_block = len(tasks) * len(l2s)
    blocks = list(st.iter_blocks())

    # Baselines on the first few blocks.
    cpu = get_backend("cpu")
    if args.solver == "eigh":
        cpu.get_ops().solve_max_l = 0
    t_ref = t_bv = t_cpu_sub = t_read = 0.0
    n_equal, n_probes_cmp = 0, 0
    for ck, dsn, layer in blocks[: args.baseline_blocks]:
        b = st.block(ck, dsn, layer)
        s = time.perf_counter()
        r = bigvision_loop_block(b.train, ds.y_train, b.test, ds.y_test, tasks, l2s, ds.num_classes, np.float64)
        t_ref += time.perf_counter() - s
        s = time.perf_counter()
        bigvision_loop_block(b.train, ds.y_train, b.test, ds.y_test, tasks, l2s, ds.num_classes, np.float32)
        t_bv += time.perf_counter() - s
        s = time.perf_counter()
        bigvision_loop_block(None, ds.y_train, b.test, ds.y_test, tasks, l2s, ds.num_classes, np.float64,
                             reload=lambda: st.block(ck, dsn, layer))
        t_read += time.perf_counter() - s
        s = time.perf_counter()
        c = cpu.probe_block(b.train, ds.y_train, b.test, ds.y_test, tasks, l2s, ds.num_classes)
        t_cpu_sub += time.perf_counter() - s
        diff = np.abs(c.correct - r)
        assert np.all(diff <= c.ties), "cpu and the float64 loop differ beyond counted ties"
        n_equal += int(np.count_nonzero(diff == 0))
        n_probes_cmp += diff.size
    nb = args.baseline_blocks
    rate_ref = nb * probes_per_block / t_ref
    rate_bv = nb * probes_per_block / t_bv
    rate_read = nb * probes_per_block / t_read

    # The cpu engine end to end through a run (store reads, parquet parts, consolidation).
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    s = time.perf_counter()
    probe_store(st.path, run_dir, shots=shots, seeds=seeds, l2=l2s, backend="cpu", quiet=True)
    t_run = time.perf_counter() - s
    rate_cpu = len(blocks) * probes_per_block / t_run

    print(f"\nworkload: {args.checkpoints} checkpoints x {args.layers} layers, D={args.dim}, C={args.classes}, "
          f"{args.test} test rows, shots {shots}, 3 seeds, {len(l2s)} l2 -> {len(blocks) * probes_per_block} probes")
    print(f"loop-f64 (big_vision): {rate_ref:9.1f} probes/s  ({t_ref / nb:.2f} s/block over {nb} blocks)")
    print(f"loop-f32 (big_vision): {rate_bv:9.1f} probes/s  ({t_bv / nb:.2f} s/block over {nb} blocks)")
    print(f"loop-f64-read        : {rate_read:9.1f} probes/s  ({t_read / nb:.2f} s/block over {nb} blocks)")
    print(f"cpu backend (blocks): {nb * probes_per_block / t_cpu_sub:9.1f} probes/s  ({t_cpu_sub / nb:.2f} s/block)")
    print(f"cpu engine, full run: {rate_cpu:9.1f} probes/s  ({t_run:.1f} s for {len(blocks)} blocks, "
          f"{t_run / len(blocks):.2f} s/block)")
    print(f"ratio vs loop-f64 : {rate_cpu / rate_ref:.1f}x")
    print(f"ratio vs loop-f32 : {rate_cpu / rate_bv:.1f}x")
    print(f"ratio vs loop-f64-read : {rate_cpu / rate_read:.1f}x")
    print(f"accuracies identical to loop-f64 on {n_equal}/{n_probes_cmp} compared probes "
          "(the rest differ only within counted argmax ties)")
    print(f"solver: {args.solver} (cpu solve_max_l = {_ops_solve_max_l()})")
    print(f"plateaulab {__version__}, numpy {np.__version__}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
