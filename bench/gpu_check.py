"""One command for a GPU session: validate, measure and tune the cuda backend in about 7 minutes.

    python3 bench/gpu_check.py --out $OUT                          # the whole check (H200: ~7 min)
    python3 bench/gpu_check.py --out $OUT --only tests,sanitize    # rerun some steps (results append)
    python bench/gpu_check.py --tiny --out DIR                     # everything on the CPU, < 1 min (CI)

Every step runs in a child process with its own time cap (shrunk to what is left of --budget), and
writes its results as it goes, so a step that times out, or a command the device tool stops, still
leaves everything done before it. Under --out:

    gpu_check.jsonl   one JSON line per check: step, check, status (PASS, FAIL, SKIP, INFO, TIMEOUT),
                      seconds and details; appended to by every command (--only reruns add lines)
    gpu_check.md      a fragment for bench/RESULTS.md, rewritten after every step from the latest
                      line of each check, with the device header and the workload and scale fragments
    tuning.json       knob values the measurements recommend (eigh_batched_max_n, solve_max_l,
                      small_max_n); recommendations only: the defaults change in backends/cuda.py
    logs/             each step's output; install.log, pytest.log/.xml, memcheck.log, racecheck.log
    env/              nvidia-smi.txt, environment.json (versions, TF32 settings)
    bench/, scale/    bench_cuda.py and scale_run.py outputs (json + md fragments)
    cupy-kernel-cache.tar.gz   CuPy's compiled kernels, so that a rerun on a fresh machine need not
                      compile them again (unpack into ~/.cupy/kernel_cache)

Steps, in order (the optional ones run only when their whole cap still fits the budget):

    env        nvidia-smi, package versions (read without importing), nvcc, compute-sanitizer, disk
    install    PLATEAULAB_CUDA=ON pip install --no-build-isolation --no-deps . (skipped when the
               installed package was built from these very sources: a stamp records their hash)
    smoke      each path alone, PASS/FAIL with a timing: the scorer kernel (C = 1, 33, 100, rows of
               NaN and -inf), the small-system kernel (n = 1, 160, 170 x C = 1, 33; past the device
               bound it must refuse), spd_solve, 3-D eigh through the engine's check, stage in a
               thread, one paper-shaped probe_block against the cpu backend
    tests      the GPU tests and the backend-parametrised tests, CUDA_LAUNCH_BLOCKING=1, --durations
    sanitize   compute-sanitizer memcheck and racecheck on our two kernels only, CuPy's pools off
    micro      pinned and pageable H2D, a device copy, fp32/fp64 GEMMs, eigh/Cholesky/trsm batched
               against looped at the engine's sizes, the small kernel against the library path, the
               engine's upload from a memory-mapped store file
    workloads  bench_cuda.py (i), (ii), (iv), shrunk to fit, with baselines (a) CuPy port, (b) cpu
    scale      scale_run.py: 100 checkpoints x 12 layers (D = 768, C = 100, 10,000 test rows), in
               chunks, stopped by its time limit; extrapolated to 1,000 checkpoints
    cache      the CuPy kernel cache tarball
    sweep      (optional) bench_cuda.solver_sweep: where solve_max_l and small_max_n should sit
    extract    (optional) bench_extract.py: timm ViT-B/16 and ResNet-50 (every block), random weights

--tiny runs the same steps on the CPU at toy sizes (backend cpu, the kernels through their host
emulations); a step that needs a GPU reports SKIP with the reason. No number from --tiny is a
measurement of anything but the code's plumbing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

import bench_cuda as bc  # noqa: E402   (numpy and the standard library only at import)

INSTALL_CMD = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "."]
SOURCES = ("csrc", "python/plateaulab", "CMakeLists.txt", "pyproject.toml")


@dataclass(frozen=True)
class Step:
    name: str
    cap_s: float          # its own time limit (the budget may shorten it)
    optional: bool = False


# Expected on an H200 (not measured yet): env 3 s, install 90 s (fresh machine), smoke 30-60 s (CuPy
# compiles the engine's kernels on first use; later steps read them from its disk cache), tests 60-90,
# sanitize 50-70, micro 20-30, workloads 80-110, scale what is left: about 7 minutes in all.
STEPS = (Step("env", 20), Step("install", 180), Step("smoke", 90), Step("tests", 90), Step("sanitize", 70),
         Step("micro", 45), Step("workloads", 110), Step("scale", 70), Step("cache", 15),
         Step("sweep", 40, optional=True), Step("extract", 60, optional=True))
REPORT_RESERVE_S = 15     # kept back for the cache step and the report
MIN_STEP_S = 8


class Skip(Exception):
    """A check that cannot run here; its message says why."""


# --------------------------------------------------------------------------- records

class Ctx:
    """What a step's process knows: where to write, the mode, its deadline."""

    def __init__(self, args, step: str):
        self.out, self.workdir, self.tiny, self.step = Path(args.out), Path(args.workdir), args.tiny, step
        self.deadline = time.monotonic() + (args.cap or 1e9)
        self.backend = "cpu" if args.tiny else "cuda"
        for sub in ("logs", "env", "bench", "scale"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, check: str, status: str, seconds: float | None = None, **details) -> None:
        line = {"time_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "step": self.step,
                "check": check, "status": status, "seconds": None if seconds is None else round(seconds, 3),
                "tiny": self.tiny, **details}
        with open(self.out / "gpu_check.jsonl", "a") as f:
            f.write(json.dumps(line, default=bc._json_default) + "\n")
        print(f"[{self.step}] {status:7s} {check}" + (f" ({seconds:.2f} s)" if seconds is not None else ""),
              flush=True)

    @contextlib.contextmanager
    def check(self, name: str):
        """Time the body and record it: PASS, SKIP (Skip raised), FAIL (anything else raised), or
        the status the body put in ``detail["status"]`` (INFO for a measurement)."""
        detail: dict = {}
        t0 = time.perf_counter()
        try:
            yield detail
        except Skip as why:
            self.record(name, "SKIP", time.perf_counter() - t0, reason=str(why), **detail)
        except Exception as exc:                                        # report and go on
            self.record(name, "FAIL", time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}",
                        traceback=traceback.format_exc(limit=6)[-2000:], **detail)
        else:
            self.record(name, detail.pop("status", "PASS"), time.perf_counter() - t0, **detail)


def run_logged(cmd, log: Path, timeout: float, env=None, cwd=ROOT) -> tuple[int, str]:
    """Run ``cmd`` in its own process group, output to ``log``; killed at ``timeout`` (rc 124).
    Returns (rc, the log's last 3,000 characters)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
        try:
            rc = p.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = 124
    return rc, log.read_text(errors="replace")[-3000:]


def _gpu_or_skip(ctx: Ctx) -> None:
    if ctx.tiny:
        raise Skip("--tiny: no GPU is used")


# --------------------------------------------------------------------------- env, install

def step_env(ctx: Ctx) -> None:
    from importlib import metadata

    with ctx.check("nvidia-smi") as d:
        smi = shutil.which("nvidia-smi")
        if not smi:
            raise Skip("nvidia-smi not found (no NVIDIA driver here)")
        out = subprocess.run([smi], capture_output=True, text=True, timeout=15).stdout
        (ctx.out / "env" / "nvidia-smi.txt").write_text(out)
        d.update(status="INFO", gpu=bc._run([smi, "--query-gpu=name,driver_version,memory.total",
                                              "--format=csv,noheader"]))
    with ctx.check("versions") as d:
        versions = {}
        for pkg in ("numpy", "cupy-cuda13x", "cupy-cuda12x", "cupy", "jax", "jaxlib", "torch", "timm", "scipy"):
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions[pkg] = metadata.version(pkg)
        nvcc = bc._run(["nvcc", "--version"])
        d.update(status="INFO", python=sys.version.split()[0], packages=versions,
                 nvcc=nvcc.splitlines()[-1] if nvcc else None, compute_sanitizer=shutil.which("compute-sanitizer"),
                 tf32_env={k: os.environ.get(k) for k in ("NVIDIA_TF32_OVERRIDE", "CUPY_TF32")},
                 cpu_cores=os.cpu_count(), install_command="PLATEAULAB_CUDA=ON " + " ".join(INSTALL_CMD[2:]))
    with ctx.check("plateaulab's runtime dependencies are installed") as d:
        missing = missing_dependencies()
        d["checked"] = len(runtime_dependencies())
        assert not missing, (f"not installed here: {', '.join(missing)}; carry them as wheels "
                             "(bench/GPU_RUNBOOK.md, 'Before the first call')")
    with ctx.check("disk") as d:
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(ctx.workdir)
        d.update(status="INFO", workdir=str(ctx.workdir), free_gb=round(usage.free / 1e9, 1),
                 df=bc._run(["df", "-h", str(ctx.workdir)]))


def runtime_dependencies() -> list[str]:
    """The distribution names of pyproject.toml's [project] dependencies."""
    import re
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.split(r"[<>=!~; \[]", d, maxsplit=1)[0] for d in deps]


def missing_dependencies() -> list[str]:
    """Runtime dependencies with no installed distribution (read from metadata: nothing is imported)."""
    from importlib import metadata

    out = []
    for name in runtime_dependencies():
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def source_digest() -> str:
    h = hashlib.sha256()
    for top in SOURCES:
        path = ROOT / top
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _installed_ok() -> tuple[bool, str]:
    code = ("import plateaulab._cuda, cupy, plateaulab, os; n = cupy.cuda.runtime.getDeviceCount(); "
            "print(os.path.dirname(plateaulab.__file__), n)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    return p.returncode == 0 and p.stdout.split()[-1] != "0", (p.stdout + p.stderr).strip()[-500:]


def step_install(ctx: Ctx) -> None:
    with ctx.check("pip install (PLATEAULAB_CUDA=ON)") as d:
        _gpu_or_skip(ctx)
        digest = source_digest()
        stamp = ctx.workdir / "installed-sources.txt"
        ok, where = _installed_ok()
        if ok and stamp.exists() and stamp.read_text() == digest:
            raise Skip(f"installed from these sources already (sha256 {digest}): {where}")
        env = {**os.environ, "PLATEAULAB_CUDA": "ON"}
        rc, tail = run_logged(INSTALL_CMD, ctx.out / "logs" / "install.log", ctx.left() - 5, env=env)
        d["sources_sha256"] = digest
        if rc != 0:
            raise RuntimeError(f"pip install exited {rc}: {tail[-1500:]}")
        ok, where = _installed_ok()
        if not ok:
            raise RuntimeError(f"installed, but plateaulab._cuda or the device does not load: {where}")
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
        d["where"] = where


# --------------------------------------------------------------------------- smoke

def _env_json(ctx: Ctx) -> dict:
    env = bc.environment(ctx.backend, with_jax=False)
    (ctx.out / "env" / "environment.json").write_text(json.dumps(env, indent=1, default=bc._json_default))
    return env


def _ops(ctx: Ctx, **knobs):
    """The backend's ops (cuda: the shared instance), or a NumpyOps with knobs for --tiny."""
    if ctx.tiny:
        from plateaulab.backends.cpu import NumpyOps

        return NumpyOps(**knobs)
    from plateaulab.backends import cuda

    ops = cuda.get_ops()
    for k, v in knobs.items():
        setattr(ops, k, v)
    return ops


def _scorer_case(C: int, rows: int = 200, groups: int = 3):
    rng = np.random.default_rng(C)
    logits = np.round(rng.normal(size=(rows, groups * C)) * 4).astype(np.float32) / 4
    logits[:8] = np.nan
    logits[8:16] = -np.inf
    logits[16:40, ::3] = np.nan
    bias = np.round(rng.normal(size=groups * C) * 4).astype(np.float32) / 4
    labels = rng.integers(0, C, rows).astype(np.int64)
    labels[[0, 8]] = 0
    return logits, bias, labels, groups


def smoke_scorer(ctx: Ctx) -> None:
    from plateaulab import _core
    from plateaulab import protocol as P

    for C in (1, 33, 100):
        with ctx.check(f"score_argmax kernel, C = {C}, rows of NaN and -inf") as d:
            logits, bias, labels, groups = _scorer_case(C)
            ref = np.zeros(groups, np.int64), np.zeros(groups, np.int64)
            _core.score_argmax(logits, bias, labels, C, P.TIE_RTOL, *ref)
            if ctx.tiny:
                if not hasattr(_core, "score_argmax_emulated"):
                    raise Skip("plateaulab._core predates the scorer emulation; rebuild it")
                got = np.zeros(groups, np.int64), np.zeros(groups, np.int64)
                _core.score_argmax_emulated(logits, bias, labels, C, P.TIE_RTOL, *got)
                d["path"] = "host emulation of the kernel's warp"
            else:
                ops = _ops(ctx)
                counts = ops.counters(groups)
                xp = ops.xp
                ops.score_argmax(xp.asarray(logits), xp.asarray(bias), ops.labels(labels), C, counts)
                got = ops.to_host_counts(counts)
            assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1]), (got, ref)


def _dual_problem(B: int, n: int, C: int, seed: int = 0):
    from plateaulab import protocol as P

    rng = np.random.default_rng(seed)
    D = n + 40
    x = rng.normal(size=(B, n, D))
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + P.STD_EPS)
    xs = np.ascontiguousarray(np.concatenate([x, np.full((B, n, 1), P.BIAS_CONSTANT)], axis=2))
    return xs, rng.integers(0, C, size=(B, n)).astype(np.int64)


def smoke_small_ridge(ctx: Ctx) -> None:
    ops = _ops(ctx, small_max_n=10_000) if ctx.tiny else _ops(ctx)
    if ctx.tiny:
        limit = 10_000
    else:
        from plateaulab.backends import cuda

        limit = cuda.small_ridge_limit()
    for n in (1, 160, 170):
        for C in (1, 33):
            with ctx.check(f"small_ridge kernel, n = {n}, C = {C}") as d:
                xs, labels = _dual_problem(2, n, C, seed=n + C)
                d["device_limit_n"] = limit
                xp = ops.xp
                if n > limit:                                   # past the bound: must be refused
                    try:
                        ops.small_ridge(xp.asarray(xs), xp.asarray(labels), C, [1024.0])
                    except ValueError as exc:
                        d["refused"] = str(exc)[:160]
                        continue
                    raise AssertionError(f"n = {n} > device limit {limit} was not refused")
                a, w, ok = ops.small_ridge(xp.asarray(xs), xp.asarray(labels), C, [1024.0, 2.0])
                a, w = ops.to_host(a), ops.to_host(w)
                for b in range(2):
                    y = 2.0 * np.eye(C)[labels[b]] - 1.0
                    for j, l2 in enumerate((1024.0, 2.0)):
                        ref = np.linalg.solve(xs[b] @ xs[b].T + l2 * np.eye(n), y)
                        np.testing.assert_allclose(a[b, j], ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())
                        np.testing.assert_allclose(w[b, j], xs[b].T @ ref, rtol=1e-7,
                                                   atol=1e-9 * np.abs(xs[b].T @ ref).max())
                assert ok.all()


def smoke_solvers(ctx: Ctx) -> None:
    from plateaulab.backends import _engine

    ops = _ops(ctx)
    xp = ops.xp
    rng = np.random.default_rng(3)
    with ctx.check("spd_solve (batched Cholesky on cuda)") as d:
        x = rng.normal(size=(3, 80, 60))
        a = np.swapaxes(x, 1, 2) @ x + 5.0 * np.eye(60)
        rhs = rng.normal(size=(3, 60, 9))
        w, _ = ops.spd_solve(xp.asarray(a), xp.asarray(rhs))
        np.testing.assert_allclose(ops.to_host(w), np.linalg.solve(a, rhs), rtol=1e-9)
    for B, s in ((3, 100), (2, 300)):
        with ctx.check(f"3-D eigh {B} x {s}^2 through the engine's check") as d:
            x = rng.normal(size=(B, s, s + 10))
            a = x @ np.swapaxes(x, 1, 2)
            before = ops.solve_fallbacks
            e, q = _engine._eigh(ops, xp.asarray(a))
            d["path"] = ("syevjBatched" if s <= getattr(ops, "eigh_batched_max_n", 1 << 30) else "syevd per matrix")
            d["redone"] = ops.solve_fallbacks - before
            assert d["redone"] == 0
            np.testing.assert_allclose(ops.to_host(e), np.linalg.eigh(a)[0], rtol=1e-9, atol=1e-8)


def _paper_block(tiny: bool):
    """One block shaped like the paper's (D = 768, C = 100, 50 train rows per class, 10,000 test),
    features from bench_cuda's generator; --tiny: D = 64, C = 10, 600 test rows."""
    from plateaulab import protocol as P

    spec = bc.DatasetSpec("bench", 10, 600, 30) if tiny else bc.DatasetSpec("bench", 100, 10_000, 50)
    y_train, y_test = bc.dataset_labels(spec)
    x_train, x_test = bc.FeatureSynth(np, 64 if tiny else 768).block(0, 11, 0, y_train, y_test)
    tasks = P.plan_tasks(y_train, spec.classes, (1, 5, 10, 25), (0, 1, 2))
    return x_train, y_train, x_test, y_test, tasks, spec.classes


def smoke_blocks(ctx: Ctx) -> None:
    from plateaulab.backends import get_backend

    be = get_backend(ctx.backend)
    ref = get_backend("numpy" if ctx.tiny else "cpu")
    xtr, ytr, xte, yte, tasks, C = _paper_block(ctx.tiny)
    rows = np.unique(np.concatenate([t.indices for t in tasks]))
    with ctx.check(f"stage in a thread, then probe_block ({ctx.backend})") as d:
        box = {}
        th = threading.Thread(target=lambda: box.update(staged=be.stage(xtr, rows, xte)), name="reader")
        th.start()
        th.join()
        s_tr, s_te, _ = box["staged"]
        assert (s_tr.nonfinite, s_te.nonfinite) == (0, 0)
        staged = be.probe_block(s_tr, ytr, s_te, yte, tasks, [1024.0], C)
        plain = be.probe_block(xtr, ytr, xte, yte, tasks, [1024.0], C)
        assert np.array_equal(staged.correct, plain.correct)
    with ctx.check(f"paper-shaped probe_block: {ctx.backend} against {ref.name}") as d:
        t0 = time.perf_counter()
        got = be.probe_block(xtr, ytr, xte, yte, tasks, [1024.0], C)
        d["engine_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        want = ref.probe_block(xtr, ytr, xte, yte, tasks, [1024.0], C)
        d["reference_s"] = time.perf_counter() - t0
        diff = np.abs(got.correct - want.correct)
        d.update(probes=int(got.correct.size), max_diff_rows=int(diff.max()), ties=int(want.ties.sum()))
        assert np.all(diff <= np.maximum(got.ties, want.ties)), (diff, want.ties)


def step_smoke(ctx: Ctx) -> None:
    with ctx.check("environment") as d:
        env = _env_json(ctx)
        d.update(status="INFO", device=env.get("device"), cupy=env.get("cupy"), tf32=env["tf32"])
    with ctx.check("ops satisfy the device contract") as d:
        from plateaulab.backends import base

        if ctx.tiny:
            from plateaulab.backends.cpu import NumpyOps as cls
        else:
            from plateaulab.backends.cuda import CupyOps as cls
        problems = base.contract_violations(cls)
        assert not problems and isinstance(_ops(ctx), base.Ops), problems
    for part in (smoke_scorer, smoke_small_ridge, smoke_solvers, smoke_blocks):
        try:
            part(ctx)
        except Exception as exc:                     # its set-up failed before its own checks
            ctx.record(part.__name__, "FAIL", error=f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc(limit=6)[-2000:])


# --------------------------------------------------------------------------- tests, sanitizers

TESTS = ["tests/test_cuda.py", "tests/test_kernel_emulation.py", "tests/test_small_ridge.py", "tests/test_backends.py",
         "tests/test_ops_contract.py", "tests/test_baselines.py"]


def _junit_counts(xml: Path) -> dict:
    import xml.etree.ElementTree as ET

    counts = {"cuda_passed": 0, "cuda_failed": 0, "cuda_skipped": 0, "failed_names": []}
    if not xml.exists():
        return counts
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
            "skipped" if case.find("skipped") is not None else "passed")
        if outcome == "failed":
            counts["failed_names"].append(name)
        if "cuda" in name:
            counts[f"cuda_{outcome}"] += 1
    return counts


def step_tests(ctx: Ctx) -> None:
    with ctx.check("pytest: GPU tests and backend tests on cuda (CUDA_LAUNCH_BLOCKING=1)") as d:
        files = ["tests/test_cuda.py"] if ctx.tiny else TESTS
        xml = ctx.out / "logs" / "pytest.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15",
               f"--junitxml={xml}", *files]
        env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        rc, tail = run_logged(cmd, ctx.out / "logs" / "pytest.log", ctx.left() - 3, env=env)
        d.update(rc=rc, summary=tail.strip().splitlines()[-1] if tail.strip() else "", **_junit_counts(xml))
        if rc not in (0, 5):
            raise AssertionError(f"pytest exited {rc}: {d['summary']}")
        if ctx.tiny:
            raise Skip(f"--tiny: the cuda tests skip without a GPU ({d['summary']})")
        d["auto_order_condition"] = ("met: every cuda test passed" if d["cuda_failed"] == 0 and d["cuda_passed"]
                                     else "not met")


SANITIZE_CODE = ("import sys, cupy, pytest; cupy.cuda.set_allocator(None); cupy.cuda.set_pinned_memory_allocator(None); "
                 "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_cuda.py', '-k', sys.argv[1]]))")


def _sanitize(ctx: Ctx, tool: str, select: str, cap: float) -> dict:
    """compute-sanitizer ``tool`` over the selected GPU tests, only our kernels instrumented (their
    names all contain 'plateaulab'), CuPy's pools off so that every array is its own allocation and
    an out-of-bounds access cannot land inside pooled memory unseen."""
    log = ctx.out / "logs" / f"{tool}.log"
    base = [sanitizer_path(), "--tool", tool, "--error-exitcode", "3"]
    filt = ["--kernel-name", "kns=plateaulab"]
    run = [sys.executable, "-c", SANITIZE_CODE, select]
    t0 = time.monotonic()
    rc, tail = run_logged(base + filt + run, log, cap)
    filtered = True
    if rc not in (0, 3, 124) and "kernel-name" in tail.lower():        # an older sanitizer without the filter
        rc, tail = run_logged(base + run, log, cap - (time.monotonic() - t0))
        filtered = False
    summary = [ln for ln in tail.splitlines() if "SUMMARY" in ln]
    return {"rc": rc, "summary": summary[-1] if summary else None, "kernels_filtered": filtered,
            "pytest": next((ln for ln in reversed(tail.splitlines()) if " passed" in ln or " failed" in ln), None)}


def sanitizer_path() -> str | None:
    found = shutil.which("compute-sanitizer")
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if not found and home and Path(home, "bin", "compute-sanitizer").exists():
            found = str(Path(home, "bin", "compute-sanitizer"))
    return found


def step_sanitize(ctx: Ctx) -> None:
    for tool, select, share in (("memcheck", "scorer or small_ridge", 0.6),
                                ("racecheck", "small_ridge_kernel or device_bound", 1.0)):
        with ctx.check(f"compute-sanitizer {tool} (our kernels, pools off)") as d:
            _gpu_or_skip(ctx)
            if not sanitizer_path():
                raise Skip("compute-sanitizer is not on PATH nor in $CUDA_HOME/bin or /usr/local/cuda/bin")
            d.update(_sanitize(ctx, tool, select, ctx.left() * share - 2))
            clean = d["rc"] == 0 and d["summary"] and (" 0 errors" in d["summary"] or " 0 hazards" in d["summary"])
            assert clean, d


# --------------------------------------------------------------------------- micro-timings

def library_small_solve(xp, xs, labels, C, l2):
    """The engine's library path for a dual batch: Gram, Cholesky, two triangular solves, W = X^T A."""
    import cupyx.scipy.linalg as csl

    gram = xs @ xp.swapaxes(xs, 1, 2)
    gram += l2 * xp.eye(xs.shape[1])
    y = 2.0 * xp.eye(C)[labels] - 1.0
    factor = xp.linalg.cholesky(gram)
    a = csl.solve_triangular(factor, csl.solve_triangular(factor, y, lower=True), lower=True, trans="T")
    return xp.swapaxes(xs, 1, 2) @ a


def micro_small_kernel(ctx: Ctx, xp, ops, sizes) -> list[dict]:
    rows = []
    for B, n, C in sizes:
        with ctx.check(f"small kernel vs library path, {B} x n = {n}, D' = 769, C = {C}") as d:
            if n > ops.small_max_n:
                raise Skip(f"n = {n} is above small_max_n = {ops.small_max_n}")
            xs, labels = _dual_problem(B, n, C)
            xs = np.ascontiguousarray(np.pad(xs, ((0, 0), (0, 0), (0, 769 - xs.shape[2]))))
            d_xs, d_lab = xp.asarray(xs), xp.asarray(labels)
            d["kernel_ms"] = bc._ms(xp, lambda: ops.small_ridge(d_xs, d_lab, C, [1024.0]), 3)
            d["library_ms"] = bc._ms(xp, lambda: library_small_solve(xp, d_xs, d_lab, C, 1024.0), 3)
            d.update(status="INFO", B=B, n=n, C=C)
            rows.append(dict(d))
    return rows


def micro_upload(ctx: Ctx, ops, nbytes: int) -> None:
    with ctx.check(f"engine upload from a memory-mapped store file ({nbytes >> 20} MiB, page cache warm)") as d:
        path = ctx.workdir / "upload-probe.npy"
        cols = 4096
        np.save(path, np.ones((nbytes // (2 * cols), cols), np.float16))
        mm = np.load(path, mmap_mode="r")
        for name, fn in (("to_device", ops.to_device), ("to_f32", ops.to_f32)):
            fn(mm)
            t0 = time.perf_counter()
            out = fn(mm)
            ops.count_nonfinite(out)                                  # a host int: the device work is done
            d[f"{name}_gbps"] = round(mm.nbytes / (time.perf_counter() - t0) / 1e9, 2)
        d["status"] = "INFO"
        path.unlink()


def step_micro(ctx: Ctx) -> None:
    tuning = {}
    if ctx.tiny:
        rows = []
        for s, batch in ((40, 1), (40, 4), (20, 3)):
            with ctx.check(f"factorisations {s} x {batch} (numpy, tiny)") as d:
                d.update(status="INFO", **bc.factorisation_timings(np, s, batch))
                rows.append(dict(d))
        tuning["eigh_batched_max_n"] = bc.recommend_eigh_batched_max_n(rows)
        micro_upload(ctx, _ops(ctx), 4 << 20)
        with ctx.check("pinned H2D, device copy, GEMMs, small kernel vs library path"):
            raise Skip("--tiny: no GPU")
    else:
        import cupy as cp

        with ctx.check("device ceilings: H2D pinned/pageable, D2D, GEMMs, factorisations") as d:
            c = bc.measure_ceilings(cp)
            env = _env_json(ctx)
            bc.write_outputs(ctx.out / "bench", "ceilings", {"env": env, "ceilings": c},
                             bc.ceilings_md(c, env, "python bench/gpu_check.py (micro)"))
            d.update(status="INFO", **{k: v for k, v in c.items() if k != "factorisations"},
                     factorisations=list(c.get("factorisations", {}).values()))
            tuning["eigh_batched_max_n"] = bc.recommend_eigh_batched_max_n(d["factorisations"])
        ops = _ops(ctx)
        rows = micro_small_kernel(ctx, cp, ops, ((3, 100, 100), (3, 37, 37), (3, min(170, ops.small_max_n), 100)))
        tuning["small_kernel_vs_library"] = [{k: r[k] for k in ("n", "kernel_ms", "library_ms")} for r in rows]
        micro_upload(ctx, ops, 512 << 20)
    write_tuning(ctx, tuning)


def write_tuning(ctx: Ctx, new: dict) -> None:
    path = ctx.out / "tuning.json"
    tuning = json.loads(path.read_text()) if path.exists() else {}
    tuning.update(new)
    tuning["note"] = ("recommendations from measurements in this directory; the defaults live in "
                      "backends/cuda.py (CupyOps) and change there, with the figures in bench/RESULTS.md")
    path.write_text(json.dumps(tuning, indent=1, default=bc._json_default))


# --------------------------------------------------------------------------- workloads, scale, sweep

# (workload, checkpoints, stored layers, share of the step's cap): shrunk to fit about 7 minutes.
WORKLOADS = (("i", 2, 12, 0.35), ("ii", 2, 1, 0.3), ("iv", 3, 1, 0.35))


def step_workloads(ctx: Ctx) -> None:
    ceilings = ctx.out / "bench" / "ceilings.json"
    cap0 = ctx.left()
    for key, ckpts, layers, share in WORKLOADS:
        size = "tiny" if ctx.tiny else f"shrunk to {ckpts} checkpoints x {layers} layers"
        with ctx.check(f"workload ({key}), {size}, baselines (a) port and (b) cpu") as d:
            cap = min(cap0 * share, ctx.left()) - 2
            if cap < MIN_STEP_S:
                raise Skip("no time left in this step")
            cmd = [sys.executable, str(BENCH / "bench_cuda.py"), "--workload", key, "--backend", ctx.backend,
                   "--out", str(ctx.out / "bench"), "--workdir", str(ctx.workdir), "--baselines", "port,cpu",
                   "--baseline-blocks", "1", "--no-sweep", "--quiet"]
            cmd += ["--tiny"] if ctx.tiny else ["--checkpoints", str(ckpts), "--layers", str(layers),
                                                "--time-budget", str(round(cap * 0.4))]
            if ceilings.exists():
                cmd += ["--ceilings-json", str(ceilings)]
            rc, tail = run_logged(cmd, ctx.out / "logs" / f"workload-{key}.log", cap)
            if rc != 0:
                raise RuntimeError(f"bench_cuda.py exited {rc}: {tail[-1200:]}")
            d.update(workload_summary(json.loads((ctx.out / "bench" / f"{key}.json").read_text())))
            bad = [n for n, a in d["agreement"].items() if a["within_slack"] != a["probes"]]
            assert not bad, f"engine and {bad} disagree beyond ties + slack"


def workload_summary(r: dict) -> dict:
    base = r["baselines"]
    return {"probes": r["engine"]["probes"], "probes_per_s": r["engine"]["probes_per_s"],
            "gbps": r["roofline"]["gbps"], "fraction_of_pinned_h2d": r["roofline"].get("fraction_of_pinned_h2d"),
            "ratios": {n: {"ratio": b["ratio"], "target": b.get("target"), "met": b.get("target_met")}
                       for n, b in base.items() if "ratio" in b and n != "engine_subset"},
            "agreement": {n: b["agreement"] for n, b in base.items() if "agreement" in b},
            "io_target": r.get("io_target")}


def step_scale(ctx: Ctx) -> None:
    what = "tiny (4 checkpoints x 2 layers)" if ctx.tiny else "100 checkpoints x 12 layers, D = 768, C = 100, 10,000 test"
    with ctx.check(f"scale run: {what}") as d:
        cap = ctx.left() - 3
        limit = max(cap - 20, 5)
        cmd = [sys.executable, str(BENCH / "scale_run.py"), "--backend", ctx.backend, "--workdir",
               str(ctx.workdir / "scale"), "--out", str(ctx.out / "scale"), "--extrapolate-to", "1000"]
        # Chunks of 5 checkpoints (60 blocks, 1.4 GB): the first always runs, so it must fit the cap.
        cmd += ["--tiny"] if ctx.tiny else ["--checkpoints", "100", "--chunk", "5", "--time-limit", str(round(limit))]
        rc, tail = run_logged(cmd, ctx.out / "logs" / "scale.log", cap)
        summary = ctx.out / "scale" / "scale_summary.json"
        if rc != 0 and not summary.exists():
            raise RuntimeError(f"scale_run.py exited {rc}: {tail[-1200:]}")
        s = json.loads(summary.read_text())
        d.update(status="INFO", rc=rc, **{k: s.get(k) for k in (
            "complete", "checkpoints_done", "checkpoints", "probes", "wall_s", "generation_s", "probe_s",
            "probes_per_s", "peak_rss_bytes", "peak_gpu_used_bytes", "peak_gpu_pool_bytes", "extrapolation",
            "projection")})


def step_sweep(ctx: Ctx) -> None:
    with ctx.check("solver sweep: solve_max_l and small_max_n") as d:
        key, ckpts, layers, _ = WORKLOADS[0]
        wl = bc.workloads(ctx.tiny)[key]
        if not ctx.tiny:
            wl = replace(wl, checkpoints=ckpts, layers=layers)
        st, _, _ = bc.build_store(wl, ctx.workdir, bc.array_module(ctx.backend), quiet=True)
        sw = bc.solver_sweep(st, bc.probe_blocks(st, wl)[0], ctx.backend)
        d.update(status="INFO", **sw)
        if "error" in sw:
            raise RuntimeError(sw["error"])
        write_tuning(ctx, {"solve_max_l": {"cholesky_faster_up_to_l": sw.get("cholesky_faster_up_to_l"),
                                           "now": sw.get("solve_max_l_now")},
                           "small_max_n": {"kernel_faster_up_to_n": sw.get("small_kernel_faster_up_to_n"),
                                           "now": sw.get("small_max_n_now")}})


def step_extract(ctx: Ctx) -> None:
    with ctx.check("extraction: timm ViT-B/16 and ResNet-50 (every block), random weights") as d:
        _gpu_or_skip(ctx)
        cmd = [sys.executable, str(BENCH / "bench_extract.py"), "--models", "vit_b16,resnet50_blocks", "--n", "1024",
               "--quiet", "--tmp", str(ctx.workdir)]
        rc, tail = run_logged(cmd, ctx.out / "logs" / "extract.log", ctx.left() - 2)
        if rc != 0:
            raise RuntimeError(f"bench_extract.py exited {rc}: {tail[-800:]}")
        table = [ln for ln in tail.splitlines() if ln.startswith(("#", "|"))]
        (ctx.out / "extract.md").write_text("\n".join(table) + "\n")
        d.update(status="INFO", table=table)


def step_cache(ctx: Ctx) -> None:
    with ctx.check("CuPy kernel cache tarball") as d:
        cache = Path(os.environ.get("CUPY_CACHE_DIR", Path.home() / ".cupy" / "kernel_cache"))
        if not cache.is_dir() or not any(cache.iterdir()):
            raise Skip(f"no CuPy kernel cache at {cache}")
        dest = ctx.out / "cupy-kernel-cache.tar.gz"
        with tarfile.open(dest, "w:gz") as tar:
            tar.add(cache, arcname="kernel_cache")
        d.update(status="INFO", files=sum(1 for _ in cache.rglob("*")), bytes=dest.stat().st_size, source=str(cache))


STEP_FUNCS = {"env": step_env, "install": step_install, "smoke": step_smoke, "tests": step_tests,
              "sanitize": step_sanitize, "micro": step_micro, "workloads": step_workloads, "scale": step_scale,
              "cache": step_cache, "sweep": step_sweep, "extract": step_extract}


# --------------------------------------------------------------------------- the report

def latest_records(out: Path) -> list[dict]:
    path = out / "gpu_check.jsonl"
    if not path.exists():
        return []
    latest: dict = {}
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            r = json.loads(line)
            latest[(r["step"], r["check"])] = r
    order = {s.name: i for i, s in enumerate(STEPS)}
    return sorted(latest.values(), key=lambda r: order.get(r["step"], 99))


DETAIL_KEYS = ("reason", "error", "summary", "auto_order_condition", "cuda_passed", "cuda_failed", "gpu", "packages",
               "nvcc", "free_gb", "device", "device_limit_n", "refused", "path", "engine_s", "reference_s",
               "max_diff_rows", "eigh_batched_ms", "eigh_looped_ms", "cholesky_batched_ms", "cholesky_looped_ms",
               "trsm_batched_ms", "trsm_looped_ms", "kernel_ms", "library_ms", "to_device_gbps", "to_f32_gbps", "h2d",
               "d2d_copy_gbps_median", "sgemm_8192_tflops_median", "dgemm_8192_tflops_median", "probes_per_s", "gbps",
               "fraction_of_pinned_h2d", "ratios", "io_target", "checkpoints_done", "probe_s", "peak_rss_bytes",
               "peak_gpu_used_bytes", "extrapolation", "cholesky_faster_up_to_l", "solve_max_l_now",
               "small_kernel_faster_up_to_n", "small_max_n_now", "files", "bytes", "rc")


def _fmt(key: str, v) -> str:
    if key == "ratios":
        return ", ".join(f"{n} {r['ratio']:.1f}x" + (f" (target {r['target']:.0f}x: {'met' if r['met'] else 'missed'})"
                                                     if r.get("target") else "") for n, r in v.items())
    if key == "extrapolation":
        return f"{v['checkpoints']:,} checkpoints in {v['probe_s']:.0f} s, not measured ({v['assumption'][:90]}...)"
    if key == "h2d":
        return f"pinned {v.get('pinned_gbps_best')} GB/s, pageable {v.get('pageable_gbps_best')} GB/s (best)"
    if key.endswith("_bytes") and isinstance(v, (int, float)):
        return f"{v / 2 ** 30:.2f} GiB"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return json.dumps(v, default=bc._json_default)
    return str(v)


def _detail(r: dict) -> str:
    parts = [f"{k}: {_fmt(k, r[k])}" for k in DETAIL_KEYS if r.get(k) not in (None, [], {}, "")]
    return "; ".join(parts).replace("|", "/").replace("\n", " ")[:700]


def write_report(out: Path, tiny: bool, command: str) -> Path:
    records = latest_records(out)
    env_path = out / "env" / "environment.json"
    title = "### GPU check (bench/gpu_check.py)" + (" — TINY (smoke test on the CPU, not a measurement)" if tiny else "")
    lines = [title, ""]
    if env_path.exists():
        lines += [bc.header_md(json.loads(env_path.read_text()), command).rstrip(), ""]
    else:
        lines += [f"    {command}", "", "(no environment recorded yet: the smoke step writes it)", ""]
    counts = {s: sum(r["status"] == s for r in records) for s in ("PASS", "FAIL", "TIMEOUT", "SKIP", "INFO")}
    lines += [", ".join(f"{k} {v}" for k, v in counts.items()), "",
              "| step | check | status | s | details |", "|---|---|---|---|---|"]
    for r in records:
        secs = "" if r.get("seconds") is None else f"{r['seconds']:.2f}"
        lines.append(f"| {r['step']} | {r['check']} | **{r['status']}** | {secs} | {_detail(r)} |")
    tuning = out / "tuning.json"
    if tuning.exists():
        lines += ["", "Tuning recommended by these measurements (not applied; the defaults are in "
                  "backends/cuda.py):", "", "```json", tuning.read_text().strip(), "```"]
    for frag in [out / "bench" / f"{k}.md" for k in ("ceilings", "i", "ii", "iv")] + [out / "scale" / "scale.md",
                                                                                       out / "extract.md"]:
        if frag.exists():
            lines += ["", frag.read_text().strip()]
    path = out / "gpu_check.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- driving

def run_step(step: Step, args, cap: float) -> None:
    """The step in a child process, killed at ``cap``; a crash or a timeout becomes a record."""
    out = Path(args.out)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--out", str(out), "--workdir",
           str(args.workdir), "--cap", f"{cap:.0f}"] + (["--tiny"] if args.tiny else [])
    t0 = time.monotonic()
    rc, tail = run_logged(cmd, out / "logs" / f"step-{step.name}.log", cap + 5)
    if rc != 0:
        ctx = Ctx(argparse.Namespace(out=out, workdir=args.workdir, tiny=args.tiny, cap=None), step.name)
        status = "TIMEOUT" if rc == 124 else "FAIL"
        ctx.record(f"step {step.name}", status, time.monotonic() - t0, cap_s=round(cap),
                   error=f"{'stopped at its cap' if rc == 124 else f'exited {rc}'}: {tail[-800:]}")


def plan(args) -> list[Step]:
    wanted = set(args.only.split(",")) if args.only else None
    if wanted and not wanted <= set(STEP_FUNCS):
        raise SystemExit(f"--only: unknown step(s) {sorted(wanted - set(STEP_FUNCS))}; steps: {', '.join(STEP_FUNCS)}")
    return [s for s in STEPS if wanted is None or s.name in wanted]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="results directory (the device tool's $OUT)")
    ap.add_argument("--workdir", default=None, help="stores and scratch (local disk; default: the temp dir)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole command (default 420; tiny 120)")
    ap.add_argument("--only", default=None, help=f"comma list of steps: {', '.join(STEP_FUNCS)}")
    ap.add_argument("--tiny", action="store_true", help="everything on the CPU at toy sizes (CI smoke test)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: rewrite gpu_check.md from the gpu_check.jsonl in --out (e.g. a first run and a "
                         "rerun concatenated)")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)      # internal: run one step here
    ap.add_argument("--cap", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.workdir = args.workdir or os.path.join(tempfile.gettempdir(),
                                                "plateaulab-gpu-check" + ("-tiny" if args.tiny else ""))
    if args.step:
        STEP_FUNCS[args.step](Ctx(args, args.step))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        recs = latest_records(out)
        print(write_report(out, bool(recs) and all(r["tiny"] for r in recs), "python bench/gpu_check.py (merged)"))
        return 0
    budget = args.budget or (120.0 if args.tiny else 420.0)
    deadline = time.monotonic() + budget
    shown = " ".join("DIR" if a.startswith("/") else a for a in (argv if argv is not None else sys.argv[1:]))
    command = f"python bench/gpu_check.py {shown}"
    for step in plan(args):
        left = deadline - time.monotonic() - (0 if step.name == "cache" else REPORT_RESERVE_S)
        cap = min(step.cap_s, left)
        if (step.optional and left < step.cap_s) or cap < MIN_STEP_S:
            ctx = Ctx(argparse.Namespace(out=out, workdir=args.workdir, tiny=args.tiny, cap=None), step.name)
            ctx.record(f"step {step.name}", "SKIP", reason=f"budget: {max(left, 0):.0f} s left, the step needs "
                                                          f"{step.cap_s if step.optional else MIN_STEP_S:.0f} s")
        else:
            print(f"== {step.name} (cap {cap:.0f} s)", flush=True)
            run_step(step, args, cap)
        write_report(out, args.tiny, command)
    records = latest_records(out)
    bad = [f"{r['step']}: {r['check']}" for r in records if r["status"] in ("FAIL", "TIMEOUT")]
    print(json.dumps({"out": str(out), "report": str(out / "gpu_check.md"),
                      "status": {s: sum(r["status"] == s for r in records)
                                 for s in ("PASS", "FAIL", "TIMEOUT", "SKIP", "INFO")},
                      "failed": bad}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
