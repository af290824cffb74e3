"""Cost of verifying a block's checksum as it is read, against the time to probe that block.

Reference workload (bench/bench_probe.py, bench/RESULTS.md): D = 768, C = 100, 5,000 train rows (50
per class), 10,000 test rows, fp16; shots 1, 5, 10, 25 x 3 seeds x 8 l2 values = 96 probes per block.
For each of a few such blocks this script times, on the memory-mapped arrays the run reads:

- ``probe``: the `cpu` backend's stage + probe_block of the block (what the run loop does per block);
- each candidate checksum over the block's train and test arrays (every byte, as the reader thread
  verifies them): zlib CRC-32 (the format's original), CRC-32C (``crc32c`` package, SSE4.2) and
  XXH3-64 (``xxhash`` package), warm (arrays in the page cache, as right after extraction or on a
  second pass) and cold (pages dropped with posix_fadvise(DONTNEED) first, so the hash pays the read;
  on a virtual machine whose disk the host caches, "cold" reads may still come from memory: compare
  with the ``read only`` line to see whether they did);
- ``read only (cold)``: touching one element per page of the same arrays after the same drop, without
  hashing: the I/O any reader pays.

    python bench/bench_checksum.py                 # 3 blocks of the reference workload
    python bench/bench_checksum.py --blocks 5 --repeat 5

A candidate whose package is not installed is reported as missing, not measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np


def _candidates():
    out = {"crc32 (zlib)": lambda mv: zlib.crc32(mv)}
    try:
        import crc32c

        out["crc32c"] = lambda mv: crc32c.crc32c(mv)
    except ImportError:
        out["crc32c"] = None
    try:
        import xxhash

        out["xxh3_64"] = lambda mv: xxhash.xxh3_64_intdigest(mv)
    except ImportError:
        out["xxh3_64"] = None
    return out


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _bytes(a: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(a)).cast("B")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="timings per (block, method); the median is kept")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--l2", type=int, default=8)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "plateaulab-bench-checksum"))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_probe import build_store

    from plateaulab import protocol as P
    from plateaulab.backends import get_backend

    work = Path(args.workdir)
    st = build_store(work / "store", 1, args.blocks, args.dim, args.classes, args.per_class, args.test)
    ds = st.dataset("bench")
    l2s = list(np.geomspace(2.0 ** 4, 2.0 ** 18, args.l2)) if args.l2 > 1 else [1024.0]
    tasks = P.plan_tasks(ds.y_train, ds.num_classes, [1, 5, 10, 25], [0, 1, 2], "bench")
    rows = np.unique(np.concatenate([t.indices for t in tasks]))
    cpu = get_backend("cpu")
    cands = _candidates()
    med = lambda xs: float(np.median(xs))  # noqa: E731
    results = {"probe": [], "read only (cold)": []}
    for name, f in cands.items():
        if f is not None:
            results[f"{name} warm"] = []
            results[f"{name} cold"] = []
    nbytes = 0
    for ck, dsn, layer in st.iter_blocks():
        b = st.block(ck, dsn, layer)
        files = [b.path / "train.npy", b.path / "test.npy"]
        nbytes = b.train.nbytes + b.test.nbytes
        t = []
        for _ in range(args.repeat):
            s = time.perf_counter()
            xt, xe, xv = cpu.stage(b.train, rows, b.test, None)
            cpu.probe_block(xt, ds.y_train, xe, ds.y_test, tasks, l2s, ds.num_classes)
            t.append(time.perf_counter() - s)
        results["probe"].append(med(t))
        t = []
        for _ in range(args.repeat):
            for p in files:
                _drop_cache(p)
            fresh = st.block(ck, dsn, layer)
            s = time.perf_counter()
            for a in (fresh.train, fresh.test):
                int(np.asarray(a).reshape(-1)[:: 4096 // a.itemsize].sum())  # one element per page
            t.append(time.perf_counter() - s)
        results["read only (cold)"].append(med(t))
        for name, f in cands.items():
            if f is None:
                continue
            for mode in ("warm", "cold"):
                t = []
                for _ in range(args.repeat):
                    fresh = st.block(ck, dsn, layer)
                    if mode == "cold":
                        for p in files:
                            _drop_cache(p)
                    else:
                        for a in (fresh.train, fresh.test):
                            _bytes(a).tobytes()[:1]
                    s = time.perf_counter()
                    for a in (fresh.train, fresh.test):
                        f(_bytes(a))
                    t.append(time.perf_counter() - s)
                results[f"{name} {mode}"].append(med(t))

    probe = med(results["probe"])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    print(f"workload: {args.blocks} blocks, D={args.dim}, C={args.classes}, {args.classes * args.per_class} train + "
          f"{args.test} test rows fp16 ({nbytes / 2**20:.1f} MiB hashed per block), {len(tasks)} tasks x "
          f"{len(l2s)} l2 = {len(tasks) * len(l2s)} probes per block")
    print(f"\n| method | ms per block | GB/s | % of the block's probe time |\n|---|---|---|---|")
    for name, ts in results.items():
        m = med(ts)
        rate = "" if name == "probe" else f"{nbytes / m / 1e9:.2f}"
        share = "" if name == "probe" else f"{100 * m / probe:.2f} %"
        print(f"| {name} | {1e3 * m:.1f} | {rate} | {share} |")
    for name, f in cands.items():
        if f is None:
            print(f"| {name} | not installed | | |")
    if os.environ.get("PLATEAULAB_BENCH_KEEP") != "1":
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
