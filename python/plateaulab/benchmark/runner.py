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


class _Workspace:
    """The folder stores and runs go to, and what this run made there: removed on exit unless ``keep``
    (a temporary or newly made folder as a whole; in a given folder only the store and runs)."""

    def __init__(self, wl: Workload, workdir, keep: bool):
        self.keep = keep
        if workdir is None:
            self.root, self.created = Path(tempfile.mkdtemp(prefix="plateaulab-bench-")), True
        else:
            self.root = Path(workdir)
            if self.root.exists() and not self.root.is_dir():
                raise InputError(f"{{param}} {str(self.root)!r} is a file; give a folder", param="workdir")
            self.created = not self.root.exists()
            self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(json.dumps(wl.store_spec(), sort_keys=True).encode()).hexdigest()[:10]
        self.store = self.root / "bench-stores" / f"{wl.preset}-{digest}"
        self.runs = self.root / "bench-runs"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.keep:
            return
        if self.created:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        shutil.rmtree(self.store, ignore_errors=True)
        shutil.rmtree(self.runs, ignore_errors=True)
        try:
            self.store.parent.rmdir()            # only when no other store is left there
        except OSError:
            pass


class _Session:
    """Steps 2-4 of the module docstring on one generated store; what they measured stays on it."""

    def __init__(self, wl: Workload, st, run: dict, phases: _Phases, ws: _Workspace):
        self.wl, self.st, self.run, self.phases, self.ws = wl, st, run, phases, ws
        self.l2s = list(wl.l2s)
        self.blocks = probe_order(st, wl)
        self.per_ds, self.models = _models(st, wl, run)
        self.subset = [b for d in wl.datasets for b in [x for x in self.blocks if x[1] == d.name][:wl.baseline_blocks]]
        self.engine_walls = {name: [] for name in run}
        self.engine_scores = {name: [] for name in run}
        self.counts = {"loop_f64": {}, "cupy_port": {}}
        self.baselines = {"loop_f64": {"what": "big_vision's fewshot_lsr, per probe, numpy float64 (CPU)",
                                       "seconds": []}}
        why = available_baselines()["naive_port"] if "cuda" in run else "needs a GPU (runs with the cuda backend)"
        if why == "available":
            import cupy

            self.baselines["cupy_port"] = {"what": "straightforward CuPy port, float32, batched eigh per shot count",
                                           "seconds": [], "xp": cupy}
        else:
            self.baselines["cupy_port"] = {"what": "straightforward CuPy port", "status": f"not available: {why}"}

    def block_args(self, block_id):
        ck, dsn, layer = block_id
        b = self.st.block(ck, dsn, layer)
        ds, tasks = self.per_ds[dsn]
        return (b.train, ds.y_train, b.test, ds.y_test, tasks, self.l2s, ds.num_classes)

    def _probe_store(self, name: str, run_dir: Path, **kw) -> float:
        from ..run import probe_store

        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        res = probe_store(self.st, run_dir, shots=list(self.wl.shots), seeds=list(self.wl.seeds), l2=self.l2s,
                          backend=name, quiet=not self.phases.show, **kw)
        wall = time.perf_counter() - t0
        self.last_probes = res.probes_done_now
        return wall

    def warm_up(self) -> None:
        """Each backend through probe_store on the first block of each dataset, and the CuPy port on
        the same blocks: compilation, handles, pools and lazy imports stay out of the timing."""
        first = [next(b for b in self.blocks if b[1] == d.name) for d in self.wl.datasets]
        for name in self.run:
            self._probe_store(name, self.ws.runs / f"warm-up-{name}", checkpoints=[first[0][0]], layers=[first[0][2]])
            shutil.rmtree(self.ws.runs / f"warm-up-{name}", ignore_errors=True)
        if "xp" in self.baselines["cupy_port"]:
            for block_id in first:
                naive_port_block(self.baselines["cupy_port"]["xp"], *self.block_args(block_id), dtype=np.float32)

    def ceilings(self) -> tuple[dict, dict]:
        """({device-precision: ceilings}, {backend: its key}): every ceiling measured once per device and
        precision here; the GEMM ceiling again in every repeat (``gemm_again``), beside the engines."""
        gemm_shape, gram_shape = _shapes(self.per_ds, self.wl)
        self.shapes = {"scoring_gemm": gemm_shape, "gram": gram_shape}
        out, of = {}, {}
        for name in self.run:
            device = "cuda" if name == "cuda" else "cpu"
            dtype = "float64" if name == "numpy" else "float32"
            key = f"{device}-{dtype}"
            if key not in out:
                self.phases.say(f"ceilings: {device}, {dtype} GEMM at {' x '.join(map(str, gemm_shape))}")
                out[key] = _ceilings.measure(device, gemm_shape, gram_shape, dtype)
                out[key]["gemm_per_repeat"] = []
            of[name] = key
        self.ceiling_table, self.ceiling_of = out, of
        return out, of

    def gemm_again(self, key: str, r: int) -> None:
        """The GEMM ceiling of ``key`` measured again in repeat r: the machine's speed drifts (turbo,
        neighbours on a shared host) between the engine's repeats, so each repeat's % is of its own."""
        c = self.ceiling_table[key]
        if "gflops_best" not in c["gemm"]:
            return
        xp = np
        if c["device"] == "cuda":
            import cupy as xp
        g = _ceilings.gemm(xp, c["gemm"]["requested_shape"], c["gemm"]["dtype"])
        c["gemm_per_repeat"].append(g["gflops_best"])
        c["gemm"]["gflops_best"] = max(c["gemm"]["gflops_best"], g["gflops_best"])

    def engine(self, name: str, r: int) -> None:
        run_dir = self.ws.runs / f"{name}-{r}"
        wall = self._probe_store(name, run_dir)
        if self.last_probes != self.wl.probes:
            raise RuntimeError(f"the {name} run did {self.last_probes} probes; the workload has {self.wl.probes}")
        self.engine_walls[name].append(wall)
        self.engine_scores[name].append(_engine_counts(run_dir, self.subset, self.per_ds, self.l2s))
        if not self.ws.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        self.phases.say(f"repeat {r + 1}/{self.wl.repeat}: {name} {self.wl.blocks} blocks in {wall:.1f} s")

    def baseline(self, key: str, r: int) -> None:
        spec, seconds = self.baselines[key], 0.0
        with self.phases.bar(len(self.subset), f"{key} {r + 1}/{self.wl.repeat}") as bar:
            for block_id in self.subset:
                t0 = time.perf_counter()
                a = self.block_args(block_id)            # the block's read is part of the loop's time
                if key == "loop_f64":
                    got = bigvision_loop_block(*a, np.float64)
                else:
                    got = naive_port_block(spec["xp"], *a, dtype=np.float32)
                seconds += time.perf_counter() - t0
                self.counts[key].setdefault(block_id, got)
                bar.update(1)
        spec["seconds"].append(seconds)
        self.phases.say(f"repeat {r + 1}/{self.wl.repeat}: {key} {len(self.subset)} block(s) in {seconds:.1f} s")

    def repeats(self) -> None:
        """Engines first on even repeats, baselines first on odd ones."""
        steps = ([(self.gemm_again, k) for k in self.ceiling_table] + [(self.engine, n) for n in self.run]
                 + [(self.baseline, k) for k, v in self.baselines.items() if "seconds" in v])
        for r in range(self.wl.repeat):
            for step, name in (steps if r % 2 == 0 else steps[::-1]):
                step(name, r)


def run_benchmark(wl: Workload, *, backends=None, workdir=None, keep: bool = False, progress: bool | None = None,
                  log=None) -> dict:
    """Run the benchmark of ``wl`` (module docstring) and return its result (the JSON contract of
    ``plateaulab bench``: machine, workload, results, baselines, ceilings, flop_model, ...).

    backends: names (default: every available engine). workdir: where stores and runs go (default:
    a new temporary folder); what this run generated there is removed unless ``keep``. progress:
    bars and phase lines on stderr (default: for the long presets); ``log`` receives the lines."""
    t_all = time.perf_counter()
    run, skipped = resolve_backends(backends)
    phases = _Phases(wl.long if progress is None else progress, log)
    load_before = load_average()
    with _Workspace(wl, workdir, keep) as ws:
        with phases.bar(wl.blocks, "store") as bar:
            st, build_s, written = build_store(wl, ws.store, on_block=lambda: bar.update(1))
        phases.say(f"store: {wl.blocks} blocks ({wl.store_bytes() / 1e9:.2f} GB) "
                   + (f"written in {build_s:.1f} s" if written else "reused"))
        s = _Session(wl, st, run, phases, ws)
        s.warm_up()
        ceilings, ceiling_of = s.ceilings()
        s.repeats()
        load_after = load_average()
    base_out = _baseline_figures(s)
    results = [_backend_figures(s, name, be, ceilings[ceiling_of[name]], ceiling_of[name], base_out)
               for name, be in run.items()]
    return {"machine": {**machine_info(run), "load_average": {"before": load_before, "after": load_after}},
            "workload": wl.to_dict(), "results": results, "skipped": skipped,
            "baselines": {k: {kk: vv for kk, vv in v.items() if kk != "rates"} for k, v in base_out.items()},
            "baseline_blocks": [list(b) for b in s.subset], "ceilings": ceilings, "shapes": s.shapes,
            "flop_model": FLOP_MODEL,
            "store": {"seconds_built": build_s, "bytes_written": written, "kept": str(ws.root) if keep else None},
            "seconds_total": time.perf_counter() - t_all}


def _baseline_figures(s: _Session) -> dict:
    probes = sum(len(s.per_ds[b[1]][1]) * len(s.l2s) for b in s.subset)
    out = {}
    for key, spec in s.baselines.items():
        if "seconds" not in spec:
            out[key] = {"what": spec["what"], "status": spec["status"]}
            continue
        rates = [probes / sec for sec in spec["seconds"]]
        out[key] = {"what": spec["what"], "status": "ran", "blocks": len(s.subset), "probes": probes,
                    "seconds": spec["seconds"], "probes_per_s": float(np.median(rates)),
                    "probes_per_s_range": [min(rates), max(rates)], "rates": rates}
    return out


def _backend_figures(s: _Session, name: str, be, ceil: dict, ceil_key: str, base_out: dict) -> dict:
    """One entry of ``results``: per-repeat figures, their medians and min-max, the percentages of the
    ceilings and the agreement with the baselines."""
    wl, m = s.wl, s.models[name]
    gemm_r = ceil.get("gemm_per_repeat", [])
    reps = []
    for r, wall in enumerate(s.engine_walls[name]):
        rep = {"wall_s": wall, "probes_per_s": wl.probes / wall, "blocks_per_s": wl.blocks / wall,
               "gb_per_s": m["feature_bytes"] / wall / 1e9, "gflop_per_s": m["flops"]["total"] / wall / 1e9}
        if r < len(gemm_r):
            rep["gemm_ceiling_gflop_per_s"] = gemm_r[r]
            rep["pct_of_gemm_ceiling"] = 100.0 * rep["gflop_per_s"] / gemm_r[r]
        for key, b in base_out.items():
            if b["status"] == "ran":
                rep[f"{key}_probes_per_s"] = b["rates"][r]
                rep[f"ratio_vs_{key}"] = rep["probes_per_s"] / b["rates"][r]
        reps.append(rep)
    med = {k: _stats([rep[k] for rep in reps]) for k in reps[0]}
    wall = med["wall_s"]["median"]
    entry = {"backend": name, "device": be.device(), "status": "ran", "blocks": wl.blocks, "probes": wl.probes,
             "wall_s": wall, "probes_per_s": med["probes_per_s"]["median"],
             "blocks_per_s": med["blocks_per_s"]["median"], "gb_per_s": med["gb_per_s"]["median"],
             "gflop_per_s": med["gflop_per_s"]["median"],
             "gflop_per_s_fp32": m["flops"]["fp32"] / wall / 1e9, "gflop_per_s_fp64": m["flops"]["fp64"] / wall / 1e9,
             "ratio_vs_loop": med.get("ratio_vs_loop_f64", {}).get("median"),
             "ratio_vs_cupy_port": med.get("ratio_vs_cupy_port", {}).get("median"),
             "flops": m["flops"], "factorisation": m["factorisation"], "solve_max_l": m["solve_max_l"],
             "feature_bytes": m["feature_bytes"], "ceilings": ceil_key,
             "spread": {k: [v["min"], v["max"]] for k, v in med.items()}, "repeats": reps}
    entry.update(_percentages(entry, ceil, m["flops"]))
    entry["pct_of_best_gemm_ceiling"] = entry["pct_of_gemm_ceiling"]   # against the best GEMM of the whole run
    if "pct_of_gemm_ceiling" in med:              # each repeat against the GEMM measured beside it
        entry["pct_of_gemm_ceiling"] = med["pct_of_gemm_ceiling"]["median"]
    entry["agreement"] = _agreement(s.engine_scores[name], s.counts["loop_f64"], s.counts["cupy_port"], s.l2s)
    return entry


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
