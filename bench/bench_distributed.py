"""Dask path of `plateaulab probe` (issue 13): 1 against 2 single-threaded workers, and the Dask
overhead per block against a plain run, on the reference workload's block size.

Workload (defaults): 2 checkpoints x 12 layers x 1 dataset (24 blocks) of the reference workload's
block (`plateaulab bench --preset reference`, plateaulab.benchmark): D = 768, C = 100, 5,000 train rows (50 per class), 10,000 test rows, fp16; shots
1, 5, 10, 25; 3 seeds; 8 l2 values (96 probes per block). Each configuration runs in a fresh
process with BLAS (OpenBLAS/OpenMP/MKL) at one thread, so that one worker is one core:

  plain-1t     probe_store in one process, one BLAS thread         (the per-block reference)
  dask-1w      --workers 1  (a local cluster of one worker process)
  dask-2w      --workers 2  (two worker processes), default units (a few blocks of a checkpoint)
  dask-2w-u1   --workers 2 with units of one block each
  plain-2t     a plain run with two BLAS threads (what a user gets without --workers)

Reported per configuration: wall time, the cluster's start, the run after it, consolidation, and
per worker its busy time (sum of its blocks' read + compute + write) and idle time (run - busy).
Derived:
  speed-up            dask-1w / dask-2w, on the run after the cluster's start (and end to end);
  Dask overhead/block (dask-1w run - plain-1t run) / blocks, as % of plain-1t's seconds per block.

    python bench/bench_distributed.py                      # ~5 min on the 2-core machine
    python bench/bench_distributed.py --layers 4 --only dask-2w   # a quick look

Check `uptime` first: the machine is shared; load averages are recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
CONFIGS = {
    "plain-1t": ({}, ONE_THREAD),
    "dask-1w": ({"workers": 1}, ONE_THREAD),
    "dask-2w": ({"workers": 2}, ONE_THREAD),
    "dask-2w-u1": ({"workers": 2, "unit_max_blocks": 1}, ONE_THREAD),
    "plain-2t": ({}, {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}),
}

# Runs one configuration in a fresh process and prints its figures as one JSON line.
CHILD = r"""
import json, sys, time
from pathlib import Path
args = json.loads(sys.argv[1])
from plateaulab.run import probe_store
from plateaulab._run import distributed
if args.get("unit_max_blocks"):
    distributed.UNIT_MAX_BLOCKS = args["unit_max_blocks"]
t0 = time.perf_counter()
run = probe_store(args["store"], args["run"], shots=[1, 5, 10, 25], seeds=3, l2=args["l2"], backend="cpu",
                  quiet=True, workers=args.get("workers"))
wall = time.perf_counter() - t0
import resource
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
m = json.loads((Path(args["run"]) / "manifest.json").read_text())
print(json.dumps({"wall": wall, "session": m["sessions"][-1], "blocks": run.blocks_done_now,
                  "cpu_client": me.ru_utime + me.ru_stime, "cpu_workers": kids.ru_utime + kids.ru_stime,
                  "minflt": me.ru_minflt + kids.ru_minflt}))
"""


# Dask's own cost per task: no-op tasks through the same local cluster, one at a time (the round
# trip a unit pays: submit, schedule, run, report) and all at once (the scheduler's throughput).
NOOP = r"""
import json, time
from distributed import Client
from plateaulab._run.distributed import start_local_cluster
def noop(i):
    return i
if __name__ == "__main__":
    with start_local_cluster(1, "cpu") as cl, Client(cl) as c:
        c.submit(noop, -1, pure=False).result()
        t = time.perf_counter()
        for i in range(100):
            c.submit(noop, i, pure=False).result()
        serial = (time.perf_counter() - t) / 100
        t = time.perf_counter()
        c.gather([c.submit(noop, i, pure=False) for i in range(1000)])
        batch = (time.perf_counter() - t) / 1000
    print(json.dumps({"roundtrip": serial, "throughput": batch}))
"""


def run_noop() -> dict:
    out = subprocess.run([sys.executable, "-c", NOOP], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **ONE_THREAD})
    if out.returncode:
        raise SystemExit(f"noop failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_config(name: str, store: Path, workdir: Path, l2: list[float]) -> dict:
    kw, env = CONFIGS[name]
    load_before = os.getloadavg()
    run = Path(tempfile.mkdtemp(dir=workdir, prefix=f"run-{name}-"))
    args = {"store": str(store), "run": str(run / "r"), "l2": l2, **kw}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    s = res["session"]
    start = s.get("seconds_cluster_start", 0.0)
    res.update(name=name, load_before=load_before, load=os.getloadavg(), run=s["seconds"] - start, start=start,
               consolidate=s.get("seconds_consolidate"), cpu=res["cpu_client"] + res["cpu_workers"],
               probe_cpu=s.get("seconds_cpu"))
    res["setup"] = s.get("seconds_worker_setup")
    if s.get("seconds_busy_per_worker"):
        res["busy"] = sorted(s["seconds_busy_per_worker"].values())
    else:
        res["busy"] = [round(s["seconds_io"] + s["seconds_compute"], 3)]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=1, help="repeat every configuration, interleaved")
    ap.add_argument("--only", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "plateaulab-bench-dist")
    ap.add_argument("--out", type=Path, help="append the figures as JSON lines here")
    a = ap.parse_args(argv)
    import dataclasses

    import numpy as np

    import distributed

    import plateaulab
    from plateaulab.benchmark.synthetic import build_store
    from plateaulab.benchmark.workloads import L2_GRID, PRESETS

    a.workdir.mkdir(parents=True, exist_ok=True)
    wl = dataclasses.replace(PRESETS["reference"], checkpoints=a.checkpoints, layers=a.layers)
    store, _, _ = build_store(wl, a.workdir / "store")
    l2 = list(L2_GRID)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, {os.cpu_count()} CPUs; "
          f"Python {platform.python_version()}, numpy {np.__version__}, distributed {distributed.__version__}, "
          f"plateaulab {plateaulab.__version__}; load before {os.getloadavg()}")
    print(f"# {a.checkpoints * a.layers} blocks: D=768, C=100, 5,000 train / 10,000 test rows, shots 1/5/10/25 x 3 "
          "seeds x 8 l2 = 96 probes per block; cpu backend")
    noop = run_noop()
    print(f"Dask per task, no-op tasks on one local worker: {noop['roundtrip'] * 1000:.2f} ms round trip one at a "
          f"time; {noop['throughput'] * 1000:.2f} ms each when 1,000 are submitted together; load "
          f"{tuple(round(v, 2) for v in os.getloadavg())}", flush=True)
    results = []
    for r in range(a.rounds):
        for name in a.only:
            res = run_config(name, store.path, a.workdir, l2)
            res["round"] = r
            results.append(res)
            idle = [round(res["run"] - b, 2) for b in res["busy"]]
            print(f"{name:11s} round {r}: wall {res['wall']:6.1f} s = start {res['start']:4.1f} + run {res['run']:6.1f} "
                  f"(consolidate {res['consolidate']}) ; busy/worker {res['busy']} ; idle/worker {idle} ; "
                  f"worker setup {res['setup']} ; "
                  f"s/block {res['run'] / res['blocks']:.3f} ; probing CPU s/block {res['probe_cpu'] / res['blocks']:.3f} ; "
                  f"all CPU s/block {res['cpu'] / res['blocks']:.3f} "
                  f"(client {res['cpu_client']:.1f} s, workers {res['cpu_workers']:.1f} s) ; "
                  f"page faults/block {res['minflt'] / res['blocks']:.0f} ; units {res['session'].get('units')} ; load before "
                  f"{round(res['load_before'][0], 2)} after {tuple(round(v, 2) for v in res['load'])} (this run's own "
                  "processes included)",
                  flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(res) + "\n")

    def med(name, key):
        vals = [x[key] for x in results if x["name"] == name]
        return float(np.median(vals)) if vals else None

    n = a.checkpoints * a.layers
    if med("dask-1w", "run") and med("dask-2w", "run"):
        print(f"speed-up 2 workers vs 1 (run after cluster start): {med('dask-1w', 'run') / med('dask-2w', 'run'):.2f}x; "
              f"end to end: {med('dask-1w', 'wall') / med('dask-2w', 'wall'):.2f}x")
    if med("dask-2w-u1", "run") and med("dask-1w", "run"):
        print(f"speed-up with one-block units: {med('dask-1w', 'run') / med('dask-2w-u1', 'run'):.2f}x")
    if med("plain-1t", "run") and med("dask-1w", "run"):
        per_block = med("plain-1t", "run") / n
        over = (med("dask-1w", "run") - med("plain-1t", "run")) / n
        print(f"Dask overhead per block (1 worker vs plain, one thread each), wall: {over * 1000:.1f} ms = "
              f"{100 * over / per_block:.2f} % of a block's {per_block:.3f} s")
        cpu_block = med("plain-1t", "probe_cpu") / n
        cpu_over = (med("dask-1w", "probe_cpu") - med("plain-1t", "probe_cpu")) / n
        print(f"  in CPU time while probing (plain: the run's loop; Dask: the worker's units): {cpu_over * 1000:.1f} ms "
              f"= {100 * cpu_over / cpu_block:.2f} % of a block's {cpu_block:.3f} CPU s")
        tot_over = (med("dask-1w", "cpu") - med("plain-1t", "cpu")) / n
        print(f"  in CPU time of all processes over their lifetimes (start-up of the cluster included): "
              f"{tot_over * 1000:.1f} ms per block")
    print(f"# load after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
