"""One benchmark run: a workload's store, every backend end to end, the baselines on the same blocks,
the machine's ceilings, all in one process; the result is the JSON object ``plateaulab bench`` prints.

Order of work:

1. the store is generated (or reused from ``workdir``), untimed;
2. each backend and the CuPy port probe the first block of each dataset once, untimed (kernel
   compilation, BLAS/cuBLAS handles, memory pools stay out of the timing);
3. the ceilings of each device the backends run on are measured (``ceilings``);
4. ``repeat`` times, interleaved (engines first on even repeats, baselines first on odd ones): every
   backend probes the whole store end to end through ``plateaulab.run.probe_store`` (store reads,
   checksums, validation, parquet parts, consolidation), wall-timed; the per-probe numpy loop of
   big_vision's protocol (float64) runs on the first ``baseline_blocks`` blocks of each dataset, timed
   block by block including the block's read; on a GPU the CuPy port runs on the same blocks;
5. accuracies: each backend's results on those blocks (read back from its run's results.parquet)
   against the loop's, probe by probe, counted ties apart (``agreement``).

Ratios pair each repeat's engine rate with the same repeat's baseline rate; medians and min-max
over repeats are reported. The cost of a block does not depend on which checkpoint or layer it
belongs to, and every dataset contributes the same number of blocks to the baseline subset, so a
baseline's probes/s on its subset compares with the engine's probes/s on the whole store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import ceilings as _ceilings
from .agreement import agreement, agrees
from .baselines import available_baselines, bigvision_loop_block, naive_port_block
from .flops import FLOP_MODEL, block_feature_bytes, block_flops, scoring_gemm_shape
from .machine import load_average, machine_info
from .synthetic import build_store, probe_order
from .workloads import Workload

ENGINES = ("cpu", "cuda")          # the default: every one of these that is available


def resolve_backends(names=None) -> tuple[dict, dict]:
    """({name: backend module} to run, {name: why not} of the default ones skipped). ``names`` None:
    every available engine of ENGINES (numpy, the float64 reference, runs only when named: it is the
    per-probe loop the baselines already measure). A named backend that cannot run is an error."""
    from ..backends import BACKENDS, available_backends, get_backend

    if names is None:
        run, skipped = {}, {}
        status = available_backends()
        for name in ENGINES:
            if status[name] == "available":
                run[name] = get_backend(name)
            else:
                skipped[name] = f"not available: {status[name]}"
        if not run:
            raise InputError("no probe backend is available here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        return run, skipped
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise InputError(f"unknown {{param}} {', '.join(unknown) or '(none)'}; expected some of {', '.join(BACKENDS)}",
                         param="backend")
    return {n: get_backend(n) for n in dict.fromkeys(names)}, {}


def _ops(be):
    return be.get_ops() if hasattr(be, "get_ops") else None


def _stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


class _Phases:
    """Progress: a tqdm bar per long phase (stderr) and one line per finished phase, or nothing."""

    def __init__(self, show: bool, log=None):
        self.show = show
        self.log = log if log is not None else (lambda msg: print(msg, file=sys.stderr, flush=True))

    def bar(self, total: int, desc: str, unit: str = "block"):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=not self.show, leave=False, dynamic_ncols=True)

    def say(self, msg: str) -> None:
        if self.show:
            self.log(msg)


def _workdir(workdir) -> tuple[Path, bool]:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="plateaulab-bench-")), True
    root = Path(workdir)
    if root.exists() and not root.is_dir():
        raise InputError(f"{{param}} {str(root)!r} is a file; give a folder", param="workdir")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    return root, created


def _models(st, wl: Workload, backends: dict) -> tuple[dict, dict]:
    """Per dataset: (dataset, tasks); per backend: FLOPs and feature bytes of the whole store."""
    from .. import protocol as P

    per_ds = {}
    for d in wl.datasets:
        ds = st.dataset(d.name)
        per_ds[d.name] = (ds, P.plan_tasks(ds.y_train, ds.num_classes, wl.shots, wl.seeds, d.name))
    L = len(wl.l2s)
    models = {}
    for name, be in backends.items():
        ops = _ops(be)
        chol = int(ops.solve_max_l) if ops is not None else 0
        total = {"fp64": 0.0, "fp32": 0.0, "total": 0.0, "stages": {}}
        factors, nbytes = set(), 0
        for ds, tasks in per_ds.values():
            f = block_flops(tasks, wl.dim, ds.num_classes, L, ds.y_test.size, chol)
            factors.add(f["factorisation"])
            n = wl.checkpoints * wl.layers
            for k in ("fp64", "fp32", "total"):
                total[k] += n * f[k]
            for stage, v in f["stages"].items():
                total["stages"][stage] = total["stages"].get(stage, 0.0) + n * v
            nbytes += n * block_feature_bytes(tasks, wl.dim, ds.y_test.size, wl.itemsize)
        models[name] = {"flops": total, "factorisation": sorted(factors), "solve_max_l": chol,
                        "feature_bytes": nbytes}
    return per_ds, models


def _shapes(per_ds: dict, wl: Workload) -> tuple[list, list | None]:
    """The largest test-scoring GEMM and the largest Gram product of the workload."""
    L = len(wl.l2s)
    gemm = max((scoring_gemm_shape(tasks, wl.dim, ds.num_classes, L, ds.y_test.size) for ds, tasks in per_ds.values()),
               key=lambda s: s[0] * s[1] * s[2])
    Dp = wl.dim + 1
    n = max(t.n_train for _, tasks in per_ds.values() for t in tasks)
    gram = [Dp, n, Dp] if n >= Dp else [n, Dp, n]
    return list(gemm), gram


def _engine_counts(run_dir: Path, subset, per_ds: dict, l2s) -> dict:
    """{block: (correct, ties) as (T, L) arrays in task and l2 order} from a run's results.parquet."""
    import pandas as pd

    df = pd.read_parquet(run_dir / "results.parquet",
                         columns=["checkpoint", "layer", "dataset", "shots", "seed", "l2", "correct", "ties", "n_test"])
    out = {}
    l2_arr = np.asarray(l2s, dtype=float)
    for ck, dsn, layer in subset:
        rows = df[(df.checkpoint == ck) & (df.dataset == dsn) & (df.layer == layer)]
        tasks = per_ds[dsn][1]
        t_index = {(t.shots, t.seed): i for i, t in enumerate(tasks)}
        correct = np.full((len(tasks), len(l2s)), -1, np.int64)
        ties = np.zeros_like(correct)
        for r in rows.itertuples(index=False):
            j = int(np.argmin(np.abs(l2_arr - r.l2)))
            i = t_index[(int(r.shots), int(r.seed))]
            correct[i, j], ties[i, j] = r.correct, r.ties
        if (correct < 0).any():
            raise RuntimeError(f"{run_dir}: results.parquet lacks probes of block {ck}/{dsn}/{layer}")
        out[(ck, dsn, layer)] = (correct, ties, int(rows.n_test.iloc[0]))
    return out


class _Scores:
    def __init__(self, correct, ties, n_test):
        self.correct, self.ties, self.n_test = correct, ties, n_test


def run_benchmark(wl: Workload, *, backends=None, workdir=None, keep: bool = False, progress: bool | None = None,
                  log=None) -> dict:
    """Run the benchmark of ``wl`` (module docstring) and return its result (the JSON contract of
    ``plateaulab bench``: machine, workload, results, baselines, ceilings, flop_model, ...).

    backends: names (default: every available engine). workdir: where stores and runs go (default:
    a new temporary folder); what this run generated there is removed unless ``keep``. progress:
    bars and phase lines on stderr (default: for the long presets)."""
    from ..run import probe_store

    t_all = time.perf_counter()
    run, skipped = resolve_backends(backends)
    phases = _Phases(wl.long if progress is None else progress, log)
    root, created_root = _workdir(workdir)
    digest = hashlib.sha256(json.dumps(wl.store_spec(), sort_keys=True).encode()).hexdigest()[:10]
    store_dir = root / "bench-stores" / f"{wl.preset}-{digest}"
    runs_dir = root / "bench-runs"
    load_before = load_average()
    try:
        with phases.bar(wl.blocks, "store") as bar:
            st, build_s, written = build_store(wl, store_dir, on_block=lambda: bar.update(1))
        phases.say(f"store: {wl.blocks} blocks ({wl.store_bytes() / 1e9:.2f} GB) "
                   + (f"written in {build_s:.1f} s" if written else "reused"))
        blocks = probe_order(st, wl)
        per_ds, models = _models(st, wl, run)
        subset = [b for d in wl.datasets for b in [x for x in blocks if x[1] == d.name][:wl.baseline_blocks]]
        l2s = list(wl.l2s)

        def block_args(block_id):
            ck, dsn, layer = block_id
            b = st.block(ck, dsn, layer)
            ds, tasks = per_ds[dsn]
            return (b.train, ds.y_train, b.test, ds.y_test, tasks, l2s, ds.num_classes)

        port_reason = available_baselines()["naive_port"] if "cuda" in run else "needs a GPU (runs with the cuda backend)"
        baselines = {"loop_f64": {"what": "big_vision's fewshot_lsr, per probe, numpy float64 (CPU)",
                                  "seconds": []}}
        if port_reason == "available":
            import cupy

            baselines["cupy_port"] = {"what": "straightforward CuPy port, float32, batched eigh per shot count",
                                      "seconds": [], "xp": cupy}
        else:
            baselines["cupy_port"] = {"what": "straightforward CuPy port", "status": f"not available: {port_reason}"}

        # 2. warm-up, untimed
        first = [next(b for b in blocks if b[1] == d.name) for d in wl.datasets]
        for name, be in run.items():
            for block_id in first:
                be.probe_block(*block_args(block_id))
        if "xp" in baselines["cupy_port"]:
            for block_id in first:
                naive_port_block(baselines["cupy_port"]["xp"], *block_args(block_id), dtype=np.float32)

        # 3. ceilings, once per (device, precision)
        gemm_shape, gram_shape = _shapes(per_ds, wl)
        ceilings, ceiling_of = {}, {}
        for name in run:
            device = "cuda" if name == "cuda" else "cpu"
            dtype = "float64" if name == "numpy" else "float32"
            key = f"{device}-{dtype}"
            if key not in ceilings:
                phases.say(f"ceilings: {device}, {dtype} GEMM at {gemm_shape[0]} x {gemm_shape[1]} x {gemm_shape[2]}")
                ceilings[key] = _ceilings.measure(device, gemm_shape, gram_shape, dtype)
            ceiling_of[name] = key

        # 4. repeats, interleaved
        engine_runs = {name: [] for name in run}
        engine_scores = {name: [] for name in run}
        loop_counts, port_counts = {}, {}

        def run_engine(name, r):
            run_dir = runs_dir / f"{name}-{r}"
            shutil.rmtree(run_dir, ignore_errors=True)
            t0 = time.perf_counter()
            res = probe_store(st, run_dir, shots=list(wl.shots), seeds=list(wl.seeds), l2=l2s, backend=name,
                              quiet=not phases.show)
            wall = time.perf_counter() - t0
            if res.probes_done_now != wl.probes:
                raise RuntimeError(f"the {name} run did {res.probes_done_now} probes; the workload has {wl.probes}")
            engine_runs[name].append(wall)
            engine_scores[name].append(_engine_counts(run_dir, subset, per_ds, l2s))
            if not keep:
                shutil.rmtree(run_dir, ignore_errors=True)
            phases.say(f"repeat {r + 1}/{wl.repeat}: {name} {wl.blocks} blocks in {wall:.1f} s")

        def run_baseline(key, r):
            spec = baselines[key]
            seconds = 0.0
            with phases.bar(len(subset), f"{key} {r + 1}/{wl.repeat}") as bar:
                for block_id in subset:
                    t0 = time.perf_counter()
                    a = block_args(block_id)
                    if key == "loop_f64":
                        got = bigvision_loop_block(*a, np.float64)
                    else:
                        got = naive_port_block(spec["xp"], *a, dtype=np.float32)
                    seconds += time.perf_counter() - t0
                    (loop_counts if key == "loop_f64" else port_counts).setdefault(block_id, got)
                    bar.update(1)
            spec["seconds"].append(seconds)
            phases.say(f"repeat {r + 1}/{wl.repeat}: {key} {len(subset)} block(s) in {seconds:.1f} s")

        base_keys = [k for k, v in baselines.items() if "seconds" in v]
        for r in range(wl.repeat):
            steps = [("e", n) for n in run] + [("b", k) for k in base_keys]
            for kind, name in (steps if r % 2 == 0 else steps[::-1]):
                run_engine(name, r) if kind == "e" else run_baseline(name, r)
        load_after = load_average()
    finally:
        if not keep:
            if created_root:
                shutil.rmtree(root, ignore_errors=True)
            else:
                shutil.rmtree(store_dir, ignore_errors=True)
                shutil.rmtree(runs_dir, ignore_errors=True)
                try:
                    store_dir.parent.rmdir()            # only when no other store is left there
                except OSError:
                    pass

    # 5. figures
    probes_sub = sum(len(per_ds[b[1]][1]) * len(l2s) for b in subset)
    base_out = {}
    for key, spec in baselines.items():
        if "seconds" not in spec:
            base_out[key] = {"what": spec["what"], "status": spec["status"]}
            continue
        rates = [probes_sub / s for s in spec["seconds"]]
        base_out[key] = {"what": spec["what"], "status": "ran", "blocks": len(subset), "probes": probes_sub,
                         "seconds": spec["seconds"], "probes_per_s": _stats(rates)["median"],
                         "probes_per_s_range": [min(rates), max(rates)], "rates": rates}
    results = []
    for name, be in run.items():
        m = models[name]
        ceil = ceilings[ceiling_of[name]]
        walls = engine_runs[name]
        reps = []
        for r, wall in enumerate(walls):
            rep = {"wall_s": wall, "probes_per_s": wl.probes / wall, "blocks_per_s": wl.blocks / wall,
                   "gb_per_s": m["feature_bytes"] / wall / 1e9, "gflop_per_s": m["flops"]["total"] / wall / 1e9}
            for key, b in base_out.items():
                if b["status"] == "ran":
                    rep[f"{key}_probes_per_s"] = b["rates"][r]
                    rep[f"ratio_vs_{key}"] = rep["probes_per_s"] / b["rates"][r]
            reps.append(rep)
        med = {k: _stats([rep[k] for rep in reps]) for k in reps[0]}
        entry = {"backend": name, "device": be.device(), "status": "ran", "blocks": wl.blocks, "probes": wl.probes,
                 "wall_s": med["wall_s"]["median"], "probes_per_s": med["probes_per_s"]["median"],
                 "blocks_per_s": med["blocks_per_s"]["median"], "gb_per_s": med["gb_per_s"]["median"],
                 "gflop_per_s": med["gflop_per_s"]["median"],
                 "gflop_per_s_fp32": m["flops"]["fp32"] / med["wall_s"]["median"] / 1e9,
                 "gflop_per_s_fp64": m["flops"]["fp64"] / med["wall_s"]["median"] / 1e9,
                 "ratio_vs_loop": med.get("ratio_vs_loop_f64", {}).get("median"),
                 "ratio_vs_cupy_port": med.get("ratio_vs_cupy_port", {}).get("median"),
                 "flops": m["flops"], "factorisation": m["factorisation"], "solve_max_l": m["solve_max_l"],
                 "feature_bytes": m["feature_bytes"], "ceilings": ceiling_of[name],
                 "spread": {k: [v["min"], v["max"]] for k, v in med.items()}, "repeats": reps}
        entry.update(_percentages(entry, ceil, m["flops"]))
        entry["agreement"] = _agreement(engine_scores[name], loop_counts, port_counts, l2s)
        results.append(entry)
    for b in base_out.values():
        b.pop("rates", None)
    return {"machine": {**machine_info(run), "load_average": {"before": load_before, "after": load_after}},
            "workload": wl.to_dict(), "results": results, "skipped": skipped, "baselines": base_out,
            "baseline_blocks": [list(b) for b in subset], "ceilings": ceilings,
            "shapes": {"scoring_gemm": gemm_shape, "gram": gram_shape}, "flop_model": FLOP_MODEL,
            "store": {"seconds_built": build_s, "bytes_written": written, "kept": str(root) if keep else None},
            "seconds_total": time.perf_counter() - t_all}


def _percentages(entry: dict, ceil: dict, flops: dict) -> dict:
    """Each figure as % of its ceiling; the compute floor is the time the FLOPs would take at the GEMM
    ceilings (fp32 work at the scoring GEMM's rate, fp64 work at the Gram GEMM's)."""
    out = {"pct_of_gemm_ceiling": None, "pct_of_memory_bandwidth": None, "pct_of_h2d_pinned": None,
           "compute_floor_s": None, "pct_of_compute_floor": None}
    gemm, gemm64 = ceil.get("gemm", {}), ceil.get("gemm_fp64", {})
    if "gflops_best" in gemm:
        out["pct_of_gemm_ceiling"] = 100.0 * entry["gflop_per_s"] / gemm["gflops_best"]
        if "gflops_best" in gemm64:
            floor = flops["fp32"] / gemm["gflops_best"] / 1e9 + flops["fp64"] / gemm64["gflops_best"] / 1e9
            out["compute_floor_s"] = floor
            out["pct_of_compute_floor"] = 100.0 * floor / entry["wall_s"]
    if "gbps_best" in ceil.get("memory", {}):
        out["pct_of_memory_bandwidth"] = 100.0 * entry["gb_per_s"] / ceil["memory"]["gbps_best"]
    if "pinned_gbps_best" in ceil.get("h2d_pinned", {}):
        out["pct_of_h2d_pinned"] = 100.0 * entry["gb_per_s"] / ceil["h2d_pinned"]["pinned_gbps_best"]
    return out


def _agreement(scores_per_repeat: list, loop_counts: dict, port_counts: dict, l2s) -> dict:
    """The engine's first repeat against each baseline (counted ties apart), and whether every repeat
    gave the same counts."""
    first = scores_per_repeat[0]
    out = {"deterministic": all(set(s) == set(first) and all(np.array_equal(s[b][0], first[b][0]) and
                                                             np.array_equal(s[b][1], first[b][1]) for b in first)
                                for s in scores_per_repeat[1:])}
    for key, counts, fp32 in (("loop_f64", loop_counts, False), ("cupy_port", port_counts, True)):
        if not counts:
            continue
        pairs = [(_Scores(*first[b]), counts[b], l2s) for b in first if b in counts]
        a = agreement(pairs, fp32)
        a["agrees"] = agrees(a)
        out[key] = a
    out["agrees"] = all(v["agrees"] for k, v in out.items() if isinstance(v, dict))
    return out


__all__ = ["run_benchmark", "resolve_backends", "ENGINES"]
