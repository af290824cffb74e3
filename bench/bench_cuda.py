"""GPU benchmark of the probe engine: the issue's four workloads, their baselines and the roofline.

    python bench/bench_cuda.py --workload i|ii|iii|iv|ceilings|all --backend cuda --out DIR
    python bench/bench_cuda.py --workload all --backend cpu --tiny --out DIR   # seconds, no GPU

Each workload builds its synthetic feature store under --workdir (local disk; reused when present
and complete, resumed when a build was interrupted), warms the engine up on one checkpoint of it
(CuPy kernel compilation, cuBLAS/cuSOLVER handles and the memory pool stay out of the timing), then
probes the whole store end to end through ``plateaulab.run.probe_store`` (store reads, NaN checks,
parquet parts, consolidation), timed by the wall clock. The baselines run on a subset of the same
blocks, in the same process, after a warm-up block each, and are compared per probe.

Workloads (full size; --tiny shrinks every one to seconds on a CPU):
  i    reference workload: 20 checkpoints x 12 layers x 1 dataset, D = 768, C = 100, 5,000 train
       rows (50 per class), 10,000 test rows, fp16; shots 1/5/10/25, seeds 0-2, 8 l2 (2^4 ... 2^18).
  ii   paper protocol: 5 datasets shaped like Flowers102 (102 classes, 6,149 test rows), Cars196
       (196, 8,041), CIFAR-100 (100, 10,000), DTD (47, 1,880), Pets (37, 3,669); D = 768, 30 train
       rows per class (only the few-shot rows are read); shots 1/5/10/25, seeds 0-2, l2 = 1024;
       10 checkpoints, last layer.
  iii  layer sweep: all 12 layers of (ii)'s store.
  iv   I/O bound: 1-shot, D = 4096, 50,000 test rows, C = 100, seeds 0-2, l2 = 1024; 16 checkpoints
       x 1 layer (6.6 GB of features).
  ceilings   the device's own ceilings only (also measured once in every run and stored with it).

Baselines (bench/baselines.py), on the first --baseline-blocks blocks of each dataset:
  (a) naive_port      the straightforward CuPy port, float32 (xp = numpy with --backend cpu)
  (b) cpu_engine      plateaulab's `cpu` backend on this machine's cores
  (c) bigvision_jax   big_vision's fewshot_lsr in JAX on JAX's default device, float32
  ref                 big_vision's loop in numpy float64 (--ref-blocks blocks per dataset): accuracy only
Ratios are the engine's full-run probes/s over each baseline's probes/s on its blocks (the cost of
a block does not depend on which checkpoint or layer it belongs to; every dataset contributes the
same number of blocks to the subset as to the full run, so the mix is the same). Targets: >= 10x
against (a), >= 100x against (b); on (iv), end-to-end feature GB/s >= 70% of pinned H2D.

Agreement. Per probe, excess = max(|correct_baseline - correct_engine| - ties_engine, 0): rows that
differ beyond the engine's counted arg-max ties. The float64 reference must have excess 0. The
float32 baselines (and JAX with TF32) may move rows whose logits are close but outside the tie
tolerance; their slack is that of tests/test_baselines.py: 1% of the test rows per probe (2% at
l2 < 1). Reported: identical, within ties, within ties + slack, max and mean excess.

FLOP model ("FLOPs the method needs", counted from the engine's decisions; see block_flops).
Per (shots, seed) task with n few-shot rows, D' = D + 1, s = min(n, D'), primal when n >= D',
L l2 values, C classes, m test rows:
  Gram           primal X^T X: 2 n D'^2      dual X X^T: 2 n^2 D'                          fp64
  rhs            primal X^T Y: 2 n D' C                                                   fp64
  factorisation  eigh (one, shared by every l2): 9 s^3, then Q^T R 2 s^2 C + Q [..] 2 s^2 L C
                 Cholesky (one per l2, used when L <= the backend's solve_max_l; on cuda small
                 dual systems go to the fused shared-memory kernel, counted the same):
                 s^3 / 3 + two triangular solves 2 s^2 C + the backward-error check 2 s^2 C  fp64
  weights        primal: fold 2 D L C; dual W form: X^T A 2 D' n L C + fold; kernel form: 2 n D
  test scoring   primal / W form: 2 m D L C;  kernel form (n D + n L C < L C D): 2 m D n + 2 m n L C   fp32
Standardisation, gathers, arg-max and counting are not counted (O(n D + m L C) compares), nor
work the engine does beyond these products (the small kernel's W of kernel-form tasks, fallbacks).
Feature bytes: the whole test split plus the distinct train rows some task uses, at the stored width.

Solver sweep (workload i, skipped by --no-sweep): the block's probe_block time with the solver
forced each way, to place the engine's thresholds on this device: one eigh for all l2 against one
Cholesky per l2 at L = 1, 2, 4, 8 (ops.solve_max_l), and on cuda the shared-memory small-system
kernel against batched Cholesky for 1-shot dual blocks of n = 16 ... 256 rows (ops.small_max_n).

Output: DIR/<workload>.json (every number) and DIR/<workload>.md (a fragment for bench/RESULTS.md
with a header naming device, date (UTC), CUDA runtime and driver, versions and TF32 settings).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# JAX would otherwise take 75% of the GPU's memory at its first use, leaving CuPy (the engine) short.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

# The harness logic shared with `plateaulab bench` lives in the package (plateaulab.benchmark).
from plateaulab.benchmark.agreement import FP32_SLACK, agreement, excess_rows  # noqa: E402,F401
from plateaulab.benchmark.ceilings import event_seconds as _event_seconds, measure_h2d, wall_seconds  # noqa: E402,F401
from plateaulab.benchmark.flops import block_feature_bytes, block_flops, task_flops  # noqa: E402,F401
from plateaulab.benchmark.machine import cpu_name, ram_gib, tf32_settings  # noqa: E402,F401
from plateaulab.benchmark.synthetic import FeatureSynth, dataset_labels, write_blocks  # noqa: E402,F401
from plateaulab.benchmark.synthetic import build_store as synthetic_store  # noqa: E402
from plateaulab.benchmark.workloads import L2_GRID, PAPER_DATASETS, DatasetSpec  # noqa: E402,F401

GENERATOR_VERSION = 1          # bump when the synthetic features change: stores are rebuilt

# Dense datasheet peaks (TFLOP/s) of the SXM parts; the H200's arithmetic is the H100's. FP64 is the
# tensor-core rate (cuBLAS DGEMM uses it on Hopper); the vector FP64 rate is half of it.
DATASHEET_PEAKS = {
    "H100": {"fp64": 67.0, "fp64_vector": 34.0, "fp32": 67.0, "tf32": 495.0, "fp16": 989.0},
    "H200": {"fp64": 67.0, "fp64_vector": 34.0, "fp32": 67.0, "tf32": 495.0, "fp16": 989.0},
}

# --------------------------------------------------------------------------- workloads

@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    datasets: tuple[DatasetSpec, ...]
    checkpoints: int
    layers: int                 # stored per checkpoint and dataset
    probe_layers: str           # "all" or "last"
    dim: int
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    l2s: tuple[float, ...]
    store_key: str              # workloads with equal store specs share a store (ii probes iii's last layer)
    baseline_blocks: int = 3    # per dataset
    ref_blocks: int = 1         # per dataset, float64 reference loop
    dtype: str = "float16"      # of the stored features

    @property
    def preset(self) -> str:    # the name plateaulab.benchmark.synthetic.build_store's messages use
        return self.key

    def store_bytes(self) -> int:
        rows = sum(d.classes * d.train_per_class + d.n_test for d in self.datasets)
        return rows * self.dim * np.dtype(self.dtype).itemsize * self.checkpoints * self.layers

    def store_spec(self) -> dict:
        return {"generator": GENERATOR_VERSION, "datasets": [asdict(d) for d in self.datasets],
                "checkpoints": self.checkpoints, "layers": self.layers, "dim": self.dim, "dtype": self.dtype}

    def store_dir(self, workdir: Path) -> Path:
        digest = hashlib.sha256(json.dumps(self.store_spec(), sort_keys=True).encode()).hexdigest()[:8]
        return workdir / "stores" / f"{self.store_key}-{digest}"


def workloads(tiny: bool = False) -> dict[str, Workload]:
    """The issue's workloads. ``tiny`` keeps their structure at CPU-second sizes: D = 32 still has
    primal (n >= 33) and dual tasks, and the kernel form for the 1-shot ones."""
    if tiny:
        ref = (DatasetSpec("bench", 6, 240, 26),)
        paper = tuple(DatasetSpec(n, c, m, 26) for n, c, m in
                      (("flowers102", 6, 150), ("cars196", 8, 200), ("cifar100", 5, 240), ("dtd", 4, 60),
                       ("pets", 3, 100)))
        io = (DatasetSpec("io", 5, 2000, 2),)
        size = {"i": dict(checkpoints=2, layers=2, dim=32), "paper": dict(checkpoints=2, layers=2, dim=32),
                "iv": dict(checkpoints=2, layers=1, dim=128)}
        blocks = {"i": 1, "paper": 1, "iv": 1}
    else:
        ref = (DatasetSpec("bench", 100, 10_000, 50),)
        paper = tuple(DatasetSpec(n, c, m, 30) for n, c, m in PAPER_DATASETS)
        io = (DatasetSpec("io", 100, 50_000, 2),)
        size = {"i": dict(checkpoints=20, layers=12, dim=768), "paper": dict(checkpoints=10, layers=12, dim=768),
                "iv": dict(checkpoints=16, layers=1, dim=4096)}
        blocks = {"i": 3, "paper": 2, "iv": 3}
    protocol = dict(shots=(1, 5, 10, 25), seeds=(0, 1, 2))
    return {
        "i": Workload("i", "reference workload", ref, **size["i"], probe_layers="all", l2s=L2_GRID,
                      store_key="ref", baseline_blocks=blocks["i"], **protocol),
        "ii": Workload("ii", "paper protocol (5 datasets, last layer)", paper, **size["paper"], probe_layers="last",
                       l2s=(1024.0,), store_key="paper", baseline_blocks=blocks["paper"], **protocol),
        "iii": Workload("iii", "layer sweep (every layer of ii)", paper, **size["paper"], probe_layers="all",
                        l2s=(1024.0,), store_key="paper", baseline_blocks=blocks["paper"], **protocol),
        "iv": Workload("iv", "I/O bound (1-shot, D = 4096, 50,000 test rows)", io, **size["iv"], probe_layers="all",
                       l2s=(1024.0,), store_key="io", baseline_blocks=blocks["iv"], shots=(1,), seeds=(0, 1, 2)),
    }


# --------------------------------------------------------------------------- synthetic features

def build_store(wl: Workload, workdir: Path, xp, workers: int | None = None, quiet: bool = False):
    """The workload's store under ``workdir`` (plateaulab.benchmark.synthetic.build_store: reused when
    complete, resumed when partial, refused when the disk is too small).
    Returns (store, seconds spent building now, feature bytes written now)."""
    st, seconds, written = synthetic_store(wl, wl.store_dir(workdir), xp, workers=workers)
    if written and not quiet:
        print(f"[{wl.key}] store {st.path}: {written / 1e9:.2f} GB written in {seconds:.1f} s", flush=True)
    return st, seconds, written


def probe_blocks(st, wl: Workload) -> list[tuple[str, str, str]]:
    """(checkpoint, dataset, layer) of every block the workload probes, checkpoint-major."""
    out = []
    for ck in st.checkpoints():
        for ds in (d.name for d in wl.datasets):
            layers = st.layers(ck, ds)
            out += [(ck, ds, layer) for layer in (layers[-1:] if wl.probe_layers == "last" else layers)]
    return out


# --------------------------------------------------------------------------- models: FLOPs and bytes

def solve_max_l(backend: str) -> int:
    """How many l2 values the backend still solves directly, one solve each (its ops' knob)."""
    ops = engine_ops(backend)
    return int(ops.solve_max_l) if ops is not None else 0


def workload_model(st, wl: Workload, blocks, backend: str) -> dict:
    """FLOPs and feature bytes of the whole workload, summed over its blocks."""
    from plateaulab import protocol as P

    chol = solve_max_l(backend)
    per_ds = {}
    for d in wl.datasets:
        ds = st.dataset(d.name)
        tasks = P.plan_tasks(ds.y_train, ds.num_classes, wl.shots, wl.seeds, d.name)
        per_ds[d.name] = {"tasks": tasks, "flops": block_flops(tasks, wl.dim, ds.num_classes, len(wl.l2s),
                                                               ds.y_test.size, chol),
                          "bytes": block_feature_bytes(tasks, wl.dim, ds.y_test.size)}
    total = {"fp64": 0.0, "fp32": 0.0, "total": 0.0, "stages": {}}
    nbytes = probes = 0
    for _, dsn, _ in blocks:
        e = per_ds[dsn]
        for k in ("fp64", "fp32", "total"):
            total[k] += e["flops"][k]
        for stage, v in e["flops"]["stages"].items():
            total["stages"][stage] = total["stages"].get(stage, 0.0) + v
        nbytes += e["bytes"]
        probes += len(e["tasks"]) * len(wl.l2s)
    factors = sorted({e["flops"]["factorisation"] for e in per_ds.values()})
    return {"flops": total, "feature_bytes": nbytes, "probes": probes, "factorisation": factors,
            "solve_max_l": chol, "per_dataset": per_ds}


# --------------------------------------------------------------------------- environment

def array_module(backend: str):
    if backend == "cuda":
        import cupy

        return cupy
    return np


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def engine_digest() -> str:
    """sha256 of the engine's sources: names the code measured where no git checkout exists."""
    import plateaulab.backends as b

    h = hashlib.sha256()
    for f in sorted(Path(b.__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def environment(backend: str, with_jax: bool = True) -> dict:
    import plateaulab

    env = {"date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "backend": backend, "plateaulab": plateaulab.__version__, "engine_sha256": engine_digest(),
           "git_commit": _run(["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"]) or "unknown (no git)",
           "python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform(),
           "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "ram_gib": ram_gib(), "tf32": tf32_settings(with_jax)}
    try:
        import threadpoolctl

        env["blas"] = [f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                       for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        pass
    try:
        import jax

        env["jax"] = jax.__version__
        if with_jax:
            env["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as exc:  # ImportError, or a broken CUDA plugin
        env["jax"] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        import cupy as cp

        env["cupy"] = cp.__version__
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        env["device"] = {"name": name, "memory_gib": round(props["totalGlobalMem"] / 2 ** 30, 1),
                         "multiprocessors": props.get("multiProcessorCount"),
                         "compute_capability": f"{props.get('major')}.{props.get('minor')}",
                         "l2_cache_mb": round(props.get("l2CacheSize", 0) / 2 ** 20, 1),
                         "cuda_runtime": _cuda_version(cp.cuda.runtime.runtimeGetVersion()),
                         "cuda_driver_api": _cuda_version(cp.cuda.runtime.driverGetVersion())}
        smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,pci.bus_id,clocks.max.sm,power.limit",
                    "--format=csv,noheader"])
        if smi:
            env["device"]["nvidia_smi"] = smi.splitlines()[0]
            env["device"]["driver"] = smi.splitlines()[0].split(",")[1].strip()
    except Exception as exc:
        env.setdefault("cupy", f"unavailable ({type(exc).__name__})")
        env["device"] = {"name": f"cpu only ({env['cpu']})"}
    return env


def peaks_for(env: dict) -> dict | None:
    name = env.get("device", {}).get("name", "")
    for key, peaks in DATASHEET_PEAKS.items():
        if key in name:
            note = "SXM datasheet" + ("; this is not an SXM part: its peaks are lower" if
                                      any(s in name for s in ("PCIe", "NVL")) else "")
            return {**peaks, "source": note}
    return None


# --------------------------------------------------------------------------- memory watching

def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last reset_peak_rss (VmHWM), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryWatch:
    """Peak GPU memory while it runs: CuPy's pool (bytes it holds) and the device's used memory
    (total - free from cudaMemGetInfo, every context included), polled every ``interval`` s."""

    def __init__(self, xp, interval: float = 0.02):
        self.xp, self.interval = xp, interval
        self.peak_pool = self.peak_used = 0
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        cp = self.xp
        free, total = cp.cuda.runtime.memGetInfo()
        self.peak_used = max(self.peak_used, total - free)
        self.peak_pool = max(self.peak_pool, cp.get_default_memory_pool().total_bytes())

    def _loop(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        if self.xp is not np:
            self._sample()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()

    def result(self) -> dict:
        if self.xp is np:
            return {"peak_gpu_pool_bytes": None, "peak_gpu_used_bytes": None}
        return {"peak_gpu_pool_bytes": int(self.peak_pool), "peak_gpu_used_bytes": int(self.peak_used)}


# --------------------------------------------------------------------------- device ceilings

def measure_ceilings(cp) -> dict:
    """What the device itself sustains, measured here: H2D (pinned, pageable), a device-to-device
    copy, fp32 (TF32 off unless CUPY_TF32=1) and fp64 GEMMs, and the float64 factorisations the
    engine relies on. Each measurement that fails is reported as such; the others still run."""
    out = {}

    def attempt(key, fn):
        try:
            out.update(fn())
        except Exception as exc:
            out[f"{key}_error"] = f"{type(exc).__name__}: {exc}"
        cp.get_default_memory_pool().free_all_blocks()

    attempt("h2d", lambda: {"h2d": measure_h2d(cp)})
    cp.get_default_pinned_memory_pool().free_all_blocks()

    def copy():
        a = cp.random.standard_normal(1 << 28, dtype=cp.float32)          # 1 GiB, random
        b = cp.empty_like(a)
        t = _event_seconds(cp, lambda: cp.copyto(b, a), 10)
        return {"d2d_copy_gbps_median": round(2 * a.nbytes / float(np.median(t)) / 1e9, 1)}   # read + write

    def gemm(dtype, name, k=8192):
        x = cp.random.standard_normal((k, k)).astype(dtype)
        y = cp.random.standard_normal((k, k)).astype(dtype)
        t = _event_seconds(cp, lambda: x @ y, 5)
        return {f"{name}_8192_tflops_median": round(2 * k ** 3 / float(np.median(t)) / 1e12, 1)}

    attempt("d2d_copy", copy)
    attempt("sgemm", lambda: gemm(cp.float32, "sgemm"))
    attempt("dgemm", lambda: gemm(cp.float64, "dgemm"))
    for s_, batch in ENGINE_SYSTEMS:
        attempt(f"factorisations_{s_}x{batch}",
                lambda: {"factorisations": {**out.get("factorisations", {}),
                                            f"{s_}x{batch}": factorisation_timings(cp, s_, batch)}})
    return out


# The engine's float64 systems, s x batch: primal (D = 768, s = 769) batches of the 10- and 25-shot
# tasks (3 seeds each, or 6 together), 5-shot dual (n = 500, C = 100), 1-shot dual (n = C = 100).
ENGINE_SYSTEMS = ((769, 1), (769, 6), (500, 3), (100, 3))


def seconds_each(xp, fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` runs of fn() after one warm-up: CUDA events for CuPy, the wall
    clock for numpy."""
    return _event_seconds(xp, fn, repeats) if xp is not np else wall_seconds(fn, repeats)


def _ms(xp, fn, repeats: int) -> float:
    return round(1e3 * float(np.median(seconds_each(xp, fn, repeats))), 3)


def factorisation_timings(xp, s: int, batch: int, n_rhs: int = 100, repeats: int = 3) -> dict:
    """float64 eigh, Cholesky and the two triangular solves of a batch of s x s SPD matrices, each
    as one batched call and as a loop over the matrices (ms, median of ``repeats``). On CuPy a
    3-D eigh is cuSOLVER's Jacobi syevjBatched and a matrix syevd; a 3-D Cholesky is potrfBatched.
    The triangular solves are timed on CuPy only (cupyx.scipy.linalg.solve_triangular)."""
    x = xp.asarray(np.random.default_rng([s, batch]).standard_normal((batch, s, s + 10)))
    g = x @ xp.swapaxes(x, 1, 2)
    rhs = xp.asarray(np.random.default_rng(s).standard_normal((batch, s, n_rhs)))
    out = {"s": s, "batch": batch,
           "eigh_batched_ms": _ms(xp, lambda: xp.linalg.eigh(g), repeats),
           "eigh_looped_ms": _ms(xp, lambda: [xp.linalg.eigh(m) for m in g], repeats),
           "cholesky_batched_ms": _ms(xp, lambda: xp.linalg.cholesky(g), repeats),
           "cholesky_looped_ms": _ms(xp, lambda: [xp.linalg.cholesky(m) for m in g], repeats)}
    if xp is not np:
        import cupyx.scipy.linalg as csl

        factor = xp.linalg.cholesky(g)
        out["trsm_batched_ms"] = _ms(xp, lambda: csl.solve_triangular(factor, rhs, lower=True), repeats)
        out["trsm_looped_ms"] = _ms(xp, lambda: [csl.solve_triangular(f, r, lower=True)
                                                 for f, r in zip(factor, rhs)], repeats)
    return out


def recommend_eigh_batched_max_n(rows: list[dict]) -> dict:
    """The largest measured size s up to which one batched eigh beat the loop at every measured size
    (batches of more than one matrix): the value for CupyOps.eigh_batched_max_n, with the evidence."""
    rows = sorted((r for r in rows if r["batch"] > 1), key=lambda r: r["s"])
    best = 0
    for r in rows:
        if r["eigh_batched_ms"] > r["eigh_looped_ms"]:
            break
        best = r["s"]
    return {"eigh_batched_max_n": best, "measured_sizes": [r["s"] for r in rows],
            "note": "largest measured s where the batched call was faster at it and at every smaller size"}


_CEILINGS: dict | None = None


def ceilings(backend: str) -> dict:
    global _CEILINGS
    if _CEILINGS is None:
        if backend != "cuda":
            _CEILINGS = {"status": "not measured: no GPU (backend cpu)"}
        else:
            try:
                _CEILINGS = measure_ceilings(array_module("cuda"))
            except Exception as exc:           # report, don't lose the workload for it
                _CEILINGS = {"status": f"failed: {type(exc).__name__}: {exc}"}
    return _CEILINGS


# --------------------------------------------------------------------------- running

def run_engine(st, wl: Workload, backend: str, workdir: Path, xp, time_budget: float | None = None) -> dict:
    """Warm-up on the first checkpoint, then the workload through probe_store, wall-timed.

    With ``time_budget`` (seconds), a run the warm-up predicts to be longer probes only the first
    checkpoints that fit (the warm-up's time per checkpoint, compilation included, over-predicts, so
    this errs short); the result says how many. Rates stay per probe; the total is what shrinks."""
    from plateaulab.backends import get_backend
    from plateaulab.run import probe_store

    kw = dict(layers="last" if wl.probe_layers == "last" else "all", shots=list(wl.shots),
              seeds=list(wl.seeds), l2=list(wl.l2s), backend=backend, quiet=True)
    checkpoints = st.checkpoints()
    warm = workdir / "runs" / f"warmup-{wl.key}"
    shutil.rmtree(warm, ignore_errors=True)
    t0 = time.perf_counter()
    probe_store(st, warm, checkpoints=checkpoints[:1], **kw)
    warmup_s = time.perf_counter() - t0
    shutil.rmtree(warm, ignore_errors=True)
    if time_budget and warmup_s * len(checkpoints) > time_budget:
        checkpoints = checkpoints[: max(1, int(time_budget / warmup_s))]

    run_dir = workdir / "runs" / wl.key
    shutil.rmtree(run_dir, ignore_errors=True)
    reset_peak_rss()
    with MemoryWatch(xp) as mem:
        t0 = time.perf_counter()
        run = probe_store(st, run_dir, checkpoints=checkpoints, **kw)
        wall = time.perf_counter() - t0
    session = json.loads((run_dir / "manifest.json").read_text())["sessions"][-1]
    be = get_backend(backend)
    ops = engine_ops(backend)
    return {"wall_s": wall, "warmup_s": warmup_s, "blocks": run.blocks_total, "probes": run.probes_done_now,
            "checkpoints_probed": checkpoints, "checkpoints_in_store": len(st.checkpoints()),
            "seconds_io": session.get("seconds_io"), "seconds_compute": session.get("seconds_compute"),
            "device": be.device(), "solve_fallbacks": getattr(ops, "solve_fallbacks", None),
            "peak_rss_bytes": peak_rss_bytes(), **mem.result(), "run_dir": str(run_dir)}


def baseline_subset(blocks, wl: Workload, per_dataset: int):
    out = []
    for d in wl.datasets:
        out += [b for b in blocks if b[1] == d.name][:per_dataset]
    return out


def run_baselines(st, wl: Workload, blocks, backend: str, xp, which: set[str], n_blocks: int, n_ref: int) -> dict:
    """The engine (``probe_block`` alone) and every baseline on the first blocks of each dataset:
    probes/s and, against the engine's counts and ties, agreement. Each method first runs one
    untimed block per dataset (JAX and CuPy compile, handles are created, the pool grows)."""
    import baselines as B
    from plateaulab import protocol as P
    from plateaulab.backends import get_backend

    avail = B.available_baselines()
    engine = get_backend(backend)
    # name: (--baselines key, float32?, blocks per dataset, function of the block's arguments)
    methods = {
        "engine_subset": (None, False, max(n_blocks, n_ref), lambda a: engine.probe_block(*a)),
        "naive_port": ("port", True, n_blocks, lambda a: B.naive_port_block(xp, *a, dtype=np.float32)),
        "cpu_engine": ("cpu", False, n_blocks, lambda a: get_backend("cpu").probe_block(*a).correct),
        "bigvision_jax": ("jax", True, n_blocks, lambda a: B.bigvision_jax_block(*a)),
        "ref_f64": ("ref", False, n_ref, lambda a: B.bigvision_loop_block(*a, np.float64)),
    }

    def skip_reason(name, key):
        if key is not None and key not in which:
            return "not requested (--baselines)"
        if name == "bigvision_jax" or (name == "naive_port" and backend == "cuda"):
            return None if avail[name] == "available" else avail[name]
        return None

    tasks = {}
    for d in wl.datasets:
        ds = st.dataset(d.name)
        tasks[d.name] = (ds, P.plan_tasks(ds.y_train, ds.num_classes, wl.shots, wl.seeds, d.name))

    def args(block_id):
        ck, dsn, layer = block_id
        b = st.block(ck, dsn, layer)
        ds, tk = tasks[dsn]
        return (b.train, ds.y_train, b.test, ds.y_test, tk, list(wl.l2s), ds.num_classes)

    results, engine_scores = {}, {}
    for name, (key, fp32, per_dataset, fn) in methods.items():
        reason = skip_reason(name, key)
        if reason:
            results[name] = {"status": f"skipped: {reason}"}
            continue
        subset = baseline_subset(blocks, wl, per_dataset)
        try:
            if name != "ref_f64":
                for d in wl.datasets:                              # warm-up
                    fn(args(next(b for b in subset if b[1] == d.name)))
            seconds, probes, pairs = 0.0, 0, []
            for block_id in subset:
                a = args(block_id)
                t0 = time.perf_counter()
                got = fn(a)
                seconds += time.perf_counter() - t0
                probes += len(a[4]) * len(a[5])
                if name == "engine_subset":
                    engine_scores[block_id] = got
                else:
                    pairs.append((engine_scores[block_id], got, a[5]))
            results[name] = {"status": "ran", "blocks": len(subset), "probes": probes, "seconds": seconds,
                             "probes_per_s": probes / seconds}
            if pairs:
                results[name]["agreement"] = agreement(pairs, fp32)
        except Exception as exc:                                   # report, don't lose the workload
            if name == "engine_subset":
                raise
            results[name] = {"status": f"failed: {type(exc).__name__}: {exc}"}
        if xp is not np:
            xp.get_default_memory_pool().free_all_blocks()
    return results


def engine_ops(backend: str):
    """The ops object the backend uses (its public ``get_ops()``), or None for a backend without."""
    from plateaulab.backends import get_backend

    be = get_backend(backend)
    return be.get_ops() if hasattr(be, "get_ops") else None


def _median_seconds(fn, repeats: int = 2) -> float:
    fn()                                                           # warm-up: this shape's first call
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def solver_sweep(st, block_id, backend: str) -> dict:
    """Where the engine's two solver thresholds should sit on this device, measured.

    solve_max_l: ``probe_block`` seconds on one block of workload (i) with L = 1, 2, 4, 8 l2
    values, forced through one eigh shared by every l2 (ops.solve_max_l = 0) and through one
    Cholesky per l2 (ops.solve_max_l = 10^6); the largest L where Cholesky is faster is the value
    the device wants. small_max_n (cuda): generated 1-shot dual blocks (n = C classes, D = 768,
    2,000 test rows, l2 = 1024) with the shared-memory kernel (ops.small_max_n = device limit) and
    without it (0). The knobs are public attributes of the backend's ops; they are restored
    afterwards."""
    from plateaulab import protocol as P
    from plateaulab.backends import get_backend

    be = get_backend(backend)
    ops = engine_ops(backend)
    if ops is None:
        return {"status": "this backend has no ops object to tune"}
    saved = {k: getattr(ops, k) for k in ("solve_max_l", "small_max_n")}
    out = {"solve_max_l_now": ops.solve_max_l, "small_max_n_now": ops.small_max_n}
    try:
        b = st.block(*block_id)
        ds = st.dataset(block_id[1])
        tasks = P.plan_tasks(ds.y_train, ds.num_classes, (1, 5, 10, 25), (0, 1, 2))
        rows = []
        for L in (1, 2, 4, 8):
            l2s = list(np.geomspace(2.0 ** 4, 2.0 ** 18, L)) if L > 1 else [1024.0]
            row = {"l2_values": L}
            for path, value in (("eigh_s", 0), ("cholesky_s", 1 << 20)):
                ops.solve_max_l = value
                row[path] = _median_seconds(lambda: be.probe_block(b.train, ds.y_train, b.test, ds.y_test, tasks,
                                                                   l2s, ds.num_classes))
            rows.append(row)
        out["cholesky_vs_eigh"] = rows
        out["cholesky_faster_up_to_l"] = max((r["l2_values"] for r in rows if r["cholesky_s"] < r["eigh_s"]),
                                             default=0)
        limit = be.small_ridge_limit() if hasattr(be, "small_ridge_limit") else 0
        if limit:
            ops.solve_max_l = 1 << 20
            rng = np.random.default_rng(0)
            rows = []
            for n in sorted({16, 32, 64, 96, 128, 160, 192, 256, limit} & set(range(2, limit + 1))):
                y_train = np.repeat(np.arange(n), 2)
                y_test = rng.integers(0, n, 2000)
                x_train = rng.standard_normal((y_train.size, 768), dtype=np.float32).astype(np.float16)
                x_test = rng.standard_normal((y_test.size, 768), dtype=np.float32).astype(np.float16)
                tk = P.plan_tasks(y_train, n, (1,), (0, 1, 2))
                row = {"n": n}
                for path, value in (("small_kernel_s", limit), ("batched_cholesky_s", 0)):
                    ops.small_max_n = value
                    row[path] = _median_seconds(lambda: be.probe_block(x_train, y_train, x_test, y_test, tk,
                                                                       [1024.0], n))
                rows.append(row)
            out["small_kernel_vs_batched"] = rows
            out["small_kernel_faster_up_to_n"] = max(
                (r["n"] for r in rows if r["small_kernel_s"] < r["batched_cholesky_s"]), default=0)
            out["small_ridge_device_limit_n"] = limit
    except Exception as exc:                                       # report, don't lose the workload
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for k, v in saved.items():
            setattr(ops, k, v)
        out["solve_max_l_after"] = ops.solve_max_l
    return out


TARGETS = {"naive_port": 10.0, "cpu_engine": 100.0}
IO_TARGET = 0.70


def io_breakdown(st, block_id, xp, backend: str) -> dict:
    """Where one block's bytes go on their way to the device: read from the page cache into RAM,
    the engine's own staging of the test split (for cuda: through its two pinned buffers to the
    device, float32 conversion and the NaN/Inf count, as its reader thread does it), and a pageable
    and a pinned upload of the whole split."""
    b = st.block(*block_id)
    nbytes = b.test.nbytes
    t0 = time.perf_counter()
    host = np.array(b.test)
    out = {"bytes": nbytes, "read_gbps": nbytes / (time.perf_counter() - t0) / 1e9}
    ops = engine_ops(backend)
    if ops is not None and hasattr(ops, "to_f32"):
        t0 = time.perf_counter()
        ops.count_nonfinite(ops.to_f32(b.test))      # returns a host int: the device work is done
        out["engine_stage_gbps"] = nbytes / (time.perf_counter() - t0) / 1e9
    if xp is not np:
        import cupyx

        dev = xp.empty(host.shape, host.dtype)
        t = _event_seconds(xp, lambda: dev.set(host), 3)
        out["h2d_pageable_gbps"] = nbytes / float(np.median(t)) / 1e9
        pinned = cupyx.empty_pinned(host.shape, host.dtype)
        t0 = time.perf_counter()
        pinned[...] = b.test
        out["staging_into_pinned_gbps"] = nbytes / (time.perf_counter() - t0) / 1e9
        stream = xp.cuda.Stream(non_blocking=True)
        t = _event_seconds(xp, lambda: dev.set(pinned, stream=stream), 3, stream)
        out["h2d_pinned_gbps"] = nbytes / float(np.median(t)) / 1e9
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in out.items()}


def run_workload(wl: Workload, args, env: dict) -> dict:
    xp = array_module(args.backend)
    workdir = Path(args.workdir)
    st, build_s, built_bytes = build_store(wl, workdir, xp, quiet=args.quiet)
    engine = run_engine(st, wl, args.backend, workdir, xp, args.time_budget)
    probed = set(engine.pop("checkpoints_probed"))
    blocks = [b for b in probe_blocks(st, wl) if b[0] in probed]
    model = workload_model(st, wl, blocks, args.backend)
    if engine["probes"] != model["probes"]:
        raise SystemExit(f"workload {wl.key}: the run did {engine['probes']} probes, the model counts "
                         f"{model['probes']}; is {engine['run_dir']} a stale run?")
    base = run_baselines(st, wl, blocks, args.backend, xp, set(args.baselines.split(",")),
                         args.baseline_blocks or wl.baseline_blocks, args.ref_blocks if args.ref_blocks is not None
                         else wl.ref_blocks)
    ceil = ceilings(args.backend)
    rate = engine["probes"] / engine["wall_s"]
    for name, r in base.items():
        if r.get("status") == "ran":
            r["ratio"] = rate / r["probes_per_s"]
            if name in TARGETS:
                r["target"], r["target_met"] = TARGETS[name], r["ratio"] >= TARGETS[name]
    flops = model["flops"]
    wall = engine["wall_s"]
    peaks = peaks_for(env)
    roof = {"feature_bytes": model["feature_bytes"], "gbps": model["feature_bytes"] / wall / 1e9,
            "tflops": flops["total"] / wall / 1e12, "fp64_tflops": flops["fp64"] / wall / 1e12,
            "fp32_tflops": flops["fp32"] / wall / 1e12, "flops": flops, "factorisation": model["factorisation"],
            "solve_max_l": model["solve_max_l"], "peaks_tflops": peaks}
    pinned = ceil.get("h2d", {}).get("pinned_gbps_best")
    if peaks:
        tf32 = env["tf32"]["cupy_tf32"]
        roof["fp64_fraction_of_peak"] = roof["fp64_tflops"] / peaks["fp64"]
        roof["fp32_fraction_of_peak"] = roof["fp32_tflops"] / peaks["tf32" if tf32 else "fp32"]
        floor = flops["fp64"] / (peaks["fp64"] * 1e12) + flops["fp32"] / (peaks["tf32" if tf32 else "fp32"] * 1e12)
        if pinned:
            floor = max(floor, model["feature_bytes"] / (pinned * 1e9))
        roof["floor_s"] = floor
        roof["floor_fraction_of_wall"] = floor / wall
    if pinned:
        roof["fraction_of_pinned_h2d"] = roof["gbps"] / pinned
    result = {"workload": wl.key, "title": wl.title, "tiny": args.tiny, "env": env,
              "spec": {**asdict(wl), "l2s": list(wl.l2s)},
              "store": {"path": str(st.path), "build_s": build_s, "built_bytes": built_bytes,
                        "blocks_probed": len(blocks), "checkpoints_probed": sorted(probed)},
              "engine": {**engine, "probes_per_s": rate}, "roofline": roof, "baselines": base, "ceilings": ceil,
              "model_per_dataset": {k: {"probes_per_block": len(v["tasks"]) * len(wl.l2s),
                                        "flops_per_block": v["flops"], "feature_bytes_per_block": v["bytes"]}
                                    for k, v in model["per_dataset"].items()}}
    if wl.key == "i" and not args.no_sweep:
        result["solver_sweep"] = solver_sweep(st, blocks[0], args.backend)
    if wl.key == "iv":
        try:
            result["io"] = io_breakdown(st, blocks[0], xp, args.backend)
        except Exception as exc:                                   # report, don't lose the workload
            result["io"] = {"error": f"{type(exc).__name__}: {exc}"}
        if pinned:
            result["io_target"] = {"target": IO_TARGET, "fraction": roof["fraction_of_pinned_h2d"],
                                   "met": roof["fraction_of_pinned_h2d"] >= IO_TARGET}
    return result


# --------------------------------------------------------------------------- reporting

def _g(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def header_md(env: dict, command: str) -> str:
    """Who measured what where: device, date, CUDA runtime and driver, versions, TF32 settings."""
    dev, tf = env.get("device", {}), env["tf32"]
    where = f"Measured {env['date_utc']} on **{dev.get('name')}**"
    if "cuda_runtime" in dev:
        where += (f" ({dev['memory_gib']} GiB, {dev['multiprocessors']} SMs, compute capability "
                  f"{dev['compute_capability']}), driver {dev.get('driver', '?')} (CUDA driver API "
                  f"{dev['cuda_driver_api']}), CUDA runtime {dev['cuda_runtime']}")
    jax = f"JAX {env.get('jax')}" + (f" (devices {', '.join(env['jax_devices'])})" if env.get("jax_devices") else "")
    blas = f", BLAS {'; '.join(env['blas'])}" if env.get("blas") else ""
    where += (f"; host: {env['cpu']}, {env['cpu_cores']} cores, {env['ram_gib']} GiB. plateaulab {env['plateaulab']} "
              f"(engine sources sha256 {env['engine_sha256']}, commit {env['git_commit']}), CuPy {env.get('cupy')}, "
              f"{jax}, numpy {env['numpy']}, Python {env['python']}{blas}.")
    tf32 = (f"TF32: engine and port (CuPy): {tf['cupy_fp32_matmul']}; JAX: {tf.get('jax_fp32_matmul')}; "
            f"NVIDIA_TF32_OVERRIDE={tf['NVIDIA_TF32_OVERRIDE'] or 'unset'}.")
    return f"{where}\n{tf32}\n\n    {command}\n"


BASELINE_LABELS = {
    "engine_subset": "engine, `probe_block` alone on the baseline blocks",
    "naive_port": "(a) straightforward CuPy port (`naive_port_block`, float32)",
    "cpu_engine": "(b) `cpu` engine on the host's cores",
    "bigvision_jax": "(c) big_vision `fewshot_lsr` in JAX (float32)",
    "ref_f64": "big_vision loop in numpy float64 (accuracy reference)",
}


def _setup_md(r: dict) -> str:
    wl, e, store = r["spec"], r["engine"], r["store"]
    datasets = ", ".join(f"{d['name']} ({d['classes']} classes, {d['n_test']:,} test)" for d in wl["datasets"])
    short = len(store["checkpoints_probed"]) < wl["checkpoints"]
    return (f"{wl['checkpoints']} checkpoints × {wl['layers']} layers stored, layers probed: {wl['probe_layers']}"
            + (f", **checkpoints probed: {len(store['checkpoints_probed'])} of {wl['checkpoints']} (--time-budget)**"
               if short else "")
            + f"; D = {wl['dim']}, fp16; {datasets}; shots {', '.join(map(str, wl['shots']))}; seeds "
            f"{', '.join(map(str, wl['seeds']))}; l2 {', '.join(_g(v) for v in wl['l2s'])} → "
            f"{store['blocks_probed']:,} blocks, {e['probes']:,} probes. Warm-up (one checkpoint, untimed): "
            f"{e['warmup_s']:.1f} s. "
            f"Factorisation: {', '.join(r['roofline']['factorisation'])}.")


def _rates_md(r: dict) -> str:
    e = r["engine"]
    rows = ["| method | blocks | probes | s | probes/s | engine full run ÷ this | target |",
            "|---|---|---|---|---|---|---|",
            f"| **{r['env']['backend']} engine, full run through `probe_store`** | {r['store']['blocks_probed']:,} | "
            f"{e['probes']:,} | {e['wall_s']:.2f} | **{_g(e['probes_per_s'])}** | — | |"]
    for name, b in r["baselines"].items():
        label = BASELINE_LABELS.get(name, name)
        if b.get("status") != "ran":
            rows.append(f"| {label} | | | | | {b['status']} | |")
            continue
        target = f"≥ {b['target']:.0f}×: **{'met' if b['target_met'] else 'missed'}**" if "target" in b else ""
        rows.append(f"| {label} | {b['blocks']} | {b['probes']:,} | {b['seconds']:.2f} | {_g(b['probes_per_s'])} | "
                    f"**{b['ratio']:.1f}×** | {target} |")
    return "\n".join(rows)


def _roofline_md(r: dict) -> str:
    e, roof = r["engine"], r["roofline"]
    fl = roof["flops"]
    stages = ", ".join(f"{k} {v / 1e9:,.0f}" for k, v in fl["stages"].items())
    text = (f"End to end: {roof['feature_bytes'] / 1e9:.2f} GB of features in {e['wall_s']:.2f} s = "
            f"**{roof['gbps']:.2f} GB/s**")
    if "fraction_of_pinned_h2d" in roof:
        text += f" ({roof['fraction_of_pinned_h2d']:.0%} of the pinned H2D bandwidth measured in this run)"
    text += (f". FLOPs the method needs (GFLOP): {stages}; fp64 {fl['fp64'] / 1e9:,.0f}, fp32 {fl['fp32'] / 1e9:,.0f} "
             f"→ **{roof['tflops']:.2f} TFLOP/s** overall, fp64 {roof['fp64_tflops']:.2f}, "
             f"fp32 {roof['fp32_tflops']:.2f}")
    if roof.get("peaks_tflops"):
        p = roof["peaks_tflops"]
        text += (f" ({roof['fp64_fraction_of_peak']:.1%} of the fp64 peak {p['fp64']:.0f}, "
                 f"{roof['fp32_fraction_of_peak']:.1%} of the fp32 peak {p['fp32']:.0f}; {p['source']}). Floor (the "
                 f"FLOPs at their peaks, or the bytes at pinned H2D, whichever is longer): {roof['floor_s']:.3f} s, "
                 f"{roof['floor_fraction_of_wall']:.1%} of the wall time")
    text += (f". Inside the run: {e['seconds_io']:.2f} s store reads, checks and parquet, {e['seconds_compute']:.2f} s "
             f"`probe_block`. Peak RSS {e['peak_rss_bytes'] / 2 ** 30:.2f} GiB")
    if e.get("peak_gpu_used_bytes"):
        text += (f", peak GPU memory {e['peak_gpu_used_bytes'] / 2 ** 30:.2f} GiB used on the device "
                 f"({e['peak_gpu_pool_bytes'] / 2 ** 30:.2f} GiB in CuPy's pool)")
    if e.get("solve_fallbacks"):
        text += f"; Cholesky solves redone by eigh: {e['solve_fallbacks']}"
    return text + "."


def _agreement_md(r: dict) -> str | None:
    rows = [(BASELINE_LABELS[n], b["agreement"]) for n, b in r["baselines"].items() if "agreement" in b]
    if not rows:
        return None
    out = ["Agreement with the engine, per probe (excess = rows differing beyond the engine's counted ties):", "",
           "| baseline | probes | identical | within ties | within ties + fp32 slack | max / mean excess rows |",
           "|---|---|---|---|---|---|"]
    for label, a in rows:
        out.append(f"| {label} | {a['probes']} | {a['identical']} | {a['within_ties']} | {a['within_slack']} "
                   f"({a['fraction_within_slack']:.1%}; slack {a['slack']}) | {a['max_excess_rows']} / "
                   f"{a['mean_excess_rows']:.2f} |")
    return "\n".join(out)


def _io_md(r: dict) -> str | None:
    io = r.get("io")
    if io is None:
        return None
    if "error" in io:
        return f"I/O breakdown failed: {io['error']}."
    text = (f"One block's test split ({io['bytes'] / 1e9:.2f} GB) on its way to the device: "
            + ", ".join(f"{k.removesuffix('_gbps').replace('_', ' ')} {v:.1f} GB/s"
                        for k, v in io.items() if k.endswith("_gbps")) + ".")
    if "io_target" in r:
        t = r["io_target"]
        text += (f" **Target ≥ {t['target']:.0%} of pinned H2D: {'met' if t['met'] else 'missed'} "
                 f"({t['fraction']:.1%}).**")
    return text


def _sweep_md(r: dict) -> str | None:
    sw = r.get("solver_sweep")
    if not sw or "cholesky_vs_eigh" not in sw:
        return None if not sw else f"Solver sweep: {sw.get('status') or sw.get('error')}."
    pairs = ", ".join(f"L = {x['l2_values']}: {x['eigh_s']:.3f} / {x['cholesky_s']:.3f}"
                      for x in sw["cholesky_vs_eigh"])
    text = ("Solver sweep, `probe_block` seconds on one block (median of 2 after a warm-up), one eigh for every l2 "
            f"against one Cholesky per l2: {pairs}"
            + f". Cholesky is faster up to L = {sw['cholesky_faster_up_to_l']} (the engine's `solve_max_l` is "
            f"{sw['solve_max_l_now']}).")
    if "small_kernel_vs_batched" in sw:
        text += (" Shared-memory kernel against batched Cholesky on 1-shot dual blocks (n = classes, D = 768, 2,000 "
                 "test rows, 3 seeds): " + ", ".join(f"n = {x['n']}: {1e3 * x['small_kernel_s']:.1f} / "
                                                    f"{1e3 * x['batched_cholesky_s']:.1f} ms"
                                                    for x in sw["small_kernel_vs_batched"])
                 + f"; the kernel is faster up to n = {sw['small_kernel_faster_up_to_n']} (the engine's "
                 f"`small_max_n` is {sw['small_max_n_now']}, the device allows {sw['small_ridge_device_limit_n']}).")
    if "error" in sw:
        text += f" Sweep stopped: {sw['error']}."
    return text


def workload_md(r: dict, command: str) -> str:
    title = f"### Workload ({r['workload']}): {r['title']}"
    if r["tiny"]:
        title += " — TINY (smoke test, not a measurement)"
    parts = [title, header_md(r["env"], command).rstrip(), _setup_md(r), _rates_md(r), _roofline_md(r),
             _agreement_md(r), _sweep_md(r), _io_md(r)]
    return "\n\n".join(p for p in parts if p) + "\n"


def ceilings_md(c: dict, env: dict, command: str) -> str:
    out = ["### Device ceilings", header_md(env, command).rstrip()]
    if "status" in c:
        return "\n\n".join(out + [c["status"]]) + "\n"
    if "h2d" in c:
        h = c["h2d"]
        out.append(f"Host to device, {h['bytes'] / 2 ** 30:.0f} GiB, cudaMemcpyAsync on a non-blocking stream, "
                   f"CUDA events, best / median of {h['repeats']}: pinned (cupyx.empty_pinned) "
                   f"**{h['pinned_gbps_best']} / {h['pinned_gbps_median']} GB/s**, pageable {h['pageable_gbps_best']} "
                   f"/ {h['pageable_gbps_median']} GB/s.")
    out.append(f"Device-to-device copy {c.get('d2d_copy_gbps_median', '—')} GB/s (read + write). GEMM 8192³ "
               f"(random data): fp32 {c.get('sgemm_8192_tflops_median', '—')} TFLOP/s, fp64 "
               f"{c.get('dgemm_8192_tflops_median', '—')} TFLOP/s.")
    if c.get("factorisations"):
        out.append(factorisations_md(list(c["factorisations"].values())))
    errors = {k: v for k, v in c.items() if k.endswith("_error")}
    if errors:
        out.append("Failed: " + "; ".join(f"{k.removesuffix('_error')}: {v}" for k, v in errors.items()) + ".")
    return "\n\n".join(out) + "\n"


def factorisations_md(rows: list[dict]) -> str:
    """The batched-against-looped table of ``factorisation_timings`` rows."""
    cols = [("eigh", "eigh"), ("cholesky", "Cholesky"), ("trsm", "trsm")]
    head = "| s × batch | " + " | ".join(f"{label} batched / looped ms" for _, label in cols) + " |"
    lines = ["float64 factorisations at the engine's sizes, one batched call (CuPy: syevjBatched, potrfBatched, "
             "batched trsm) against a loop over the matrices (syevd, potrf, trsm); median ms:", "", head,
             "|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[f'{k}_batched_ms']} / {r[f'{k}_looped_ms']}" if f"{k}_batched_ms" in r else "—"
                 for k, _ in cols]
        lines.append(f"| {r['s']} × {r['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def write_outputs(out: Path, key: str, result: dict, md: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{key}.json").write_text(json.dumps(result, indent=2, default=_json_default))
    (out / f"{key}.md").write_text(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="all",
                    help="i, ii, iii, iv, ceilings, all, or a comma list (i,iv); ceilings are measured in every run")
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", required=True, help="directory for <workload>.json and <workload>.md")
    ap.add_argument("--workdir", default=None,
                    help="stores and runs (local disk; default: a plateaulab-bench-cuda folder in the temp dir)")
    ap.add_argument("--tiny", action="store_true", help="every workload shrunk to seconds (smoke test; allows cpu)")
    ap.add_argument("--checkpoints", type=int, default=None, help="override the workload's checkpoint count")
    ap.add_argument("--layers", type=int, default=None, help="override the workload's stored layers per checkpoint")
    ap.add_argument("--ceilings-json", default=None,
                    help="reuse the ceilings of an earlier run (its ceilings.json) instead of measuring them again")
    ap.add_argument("--baselines", default="port,cpu,jax,ref", help="comma list of port, cpu, jax, ref")
    ap.add_argument("--baseline-blocks", type=int, default=None, help="blocks per dataset for the baselines")
    ap.add_argument("--ref-blocks", type=int, default=None, help="blocks per dataset for the float64 loop")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds for each workload's engine run: probe only the checkpoints that fit (see run_engine)")
    ap.add_argument("--no-sweep", action="store_true", help="skip workload (i)'s solver-threshold sweep")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.backend == "cpu" and not args.tiny:
        ap.error("--backend cpu is for --tiny runs (the full workloads are sized for a GPU)")
    if args.workdir is None:
        args.workdir = os.path.join(tempfile.gettempdir(), "plateaulab-bench-cuda" + ("-tiny" if args.tiny else ""))
    command = "python bench/bench_cuda.py " + " ".join("DIR" if a.startswith("/") else a
                                                          for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    env = environment(args.backend)
    keys = ["i", "ii", "iii", "iv"] if args.workload == "all" else args.workload.split(",")
    if not set(keys) <= {"i", "ii", "iii", "iv", "ceilings"}:
        ap.error(f"unknown workload in {args.workload!r}; expected i, ii, iii, iv, ceilings or all")
    summary = {}
    if args.ceilings_json:
        global _CEILINGS
        _CEILINGS = json.loads(Path(args.ceilings_json).read_text())["ceilings"]
    for key in ["ceilings"] + [k for k in keys if k != "ceilings"]:
        if key == "ceilings":
            c = ceilings(args.backend)
            write_outputs(out, "ceilings", {"env": env, "ceilings": c}, ceilings_md(c, env, command))
            summary["ceilings"] = {"pinned_h2d_gbps": c.get("h2d", {}).get("pinned_gbps_best"),
                                   "sgemm_tflops": c.get("sgemm_8192_tflops_median"),
                                   "dgemm_tflops": c.get("dgemm_8192_tflops_median")}
            continue
        wl = workloads(args.tiny)[key]
        if args.checkpoints:
            wl = replace(wl, checkpoints=args.checkpoints)
        if args.layers:
            wl = replace(wl, layers=args.layers)
        t0 = time.perf_counter()
        r = run_workload(wl, args, env)
        r["harness_seconds"] = time.perf_counter() - t0
        write_outputs(out, key, r, workload_md(r, command))
        summary[key] = {"probes_per_s": round(r["engine"]["probes_per_s"], 1), "gbps": round(r["roofline"]["gbps"], 2),
                        "tflops": round(r["roofline"]["tflops"], 3),
                        **{f"ratio_{n}": round(b["ratio"], 1) for n, b in r["baselines"].items() if "ratio" in b},
                        "seconds": round(r["harness_seconds"], 1)}
        if not args.quiet:
            print(f"[{key}] " + json.dumps(summary[key]), flush=True)
    print(json.dumps({"out": str(out), "device": env.get("device", {}).get("name"), "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
