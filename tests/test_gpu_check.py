"""bench/gpu_check.py in its --tiny mode: every step runs on the CPU (backend cpu, kernels through
their host emulations) and writes what it did; steps that need a GPU say SKIP and why. Also the
parts a timeout or a crash goes through, and --only. No timing is asserted."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import gpu_check as gc  # noqa: E402

GPU_ONLY = {("install", "pip install (PLATEAULAB_CUDA=ON)"),
            ("sanitize", "compute-sanitizer memcheck (our kernels, pools off)"),
            ("sanitize", "compute-sanitizer racecheck (our kernels, pools off)")}


def _run(*args, timeout=170):
    return subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=BENCH.parent)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    out = _run("--tiny", "--out", str(tmp / "out"), "--workdir", str(tmp / "work"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]


def test_every_step_reports_and_nothing_fails(tiny):
    recs = _records(tiny / "out")
    assert {r["step"] for r in recs} >= {s.name for s in gc.STEPS if not s.optional}
    bad = [(r["step"], r["check"], r.get("error")) for r in recs if r["status"] in ("FAIL", "TIMEOUT")]
    assert not bad, bad
    assert all(r["tiny"] for r in recs)
    for r in recs:
        if r["status"] == "SKIP":
            assert r.get("reason"), r


def test_gpu_steps_skip_with_their_reason(tiny):
    recs = {(r["step"], r["check"]): r for r in _records(tiny / "out")}
    for key in GPU_ONLY:
        assert recs[key]["status"] == "SKIP" and recs[key]["reason"], recs[key]


def test_the_cpu_paths_really_ran(tiny):
    recs = {(r["step"], r["check"]): r for r in _records(tiny / "out")}
    assert recs[("smoke", "paper-shaped probe_block: cpu against numpy")]["status"] == "PASS"
    assert recs[("smoke", "ops satisfy the device contract")]["status"] == "PASS"
    assert recs[("smoke", "small_ridge kernel, n = 170, C = 33")]["status"] == "PASS"
    workloads = [r for r in recs.values() if r["step"] == "workloads"]
    assert len(workloads) == 3 and all(r["status"] == "PASS" and r["probes"] > 0 for r in workloads)
    for key in ("i", "ii", "iv"):
        assert (tiny / "out" / "bench" / f"{key}.json").exists()
    scale = next(r for r in recs.values() if r["step"] == "scale")
    assert scale["extrapolation"]["checkpoints"] == 1000 and "NOT MEASURED" in scale["extrapolation"]["note"]
    tuning = json.loads((tiny / "out" / "tuning.json").read_text())
    assert "eigh_batched_max_n" in tuning and "solve_max_l" in tuning


def test_the_report_is_a_results_fragment(tiny):
    md = (tiny / "out" / "gpu_check.md").read_text()
    assert md.startswith("### GPU check (bench/gpu_check.py) — TINY")
    assert "TF32" in md and "| step | check | status | s | details |" in md
    assert "### Workload (i)" in md and "### Scale run" in md        # the fragments are folded in


def test_only_reruns_some_steps_and_appends(tiny):
    before = len(_records(tiny / "out"))
    out = _run("--tiny", "--out", str(tiny / "out"), "--workdir", str(tiny / "work"), "--only", "env,cache")
    assert out.returncode == 0, out.stderr
    new = _records(tiny / "out")[before:]
    assert {r["step"] for r in new} == {"env", "cache"}
    assert _run("--tiny", "--out", str(tiny / "out"), "--only", "env,nosuch").returncode != 0


def test_report_only_rebuilds_the_fragment_from_the_records(tiny, tmp_path):
    (tmp_path / "gpu_check.jsonl").write_text((tiny / "out" / "gpu_check.jsonl").read_text())
    out = _run("--out", str(tmp_path), "--report-only", timeout=60)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "gpu_check.md").read_text()
    assert "paper-shaped probe_block: cpu against numpy | **PASS**" in md and "TINY" in md


def test_runtime_dependencies_are_read_from_pyproject(monkeypatch):
    deps = gc.runtime_dependencies()
    assert "numpy" in deps and all(d and not set(d) & set("<>=; ") for d in deps)
    assert gc.missing_dependencies() == []                       # this machine runs the tests
    monkeypatch.setattr(gc, "runtime_dependencies", lambda: ["numpy", "no-such-distribution-xyz"])
    assert gc.missing_dependencies() == ["no-such-distribution-xyz"]


def test_a_budget_too_small_skips_steps_instead_of_running_them(tmp_path):
    out = _run("--tiny", "--out", str(tmp_path), "--budget", "10", "--only", "smoke,sweep", timeout=60)
    assert out.returncode == 0, out.stderr
    recs = _records(tmp_path)
    assert [r["status"] for r in recs] == ["SKIP", "SKIP"] and all("budget" in r["reason"] for r in recs)


def test_a_step_past_its_cap_is_killed(tmp_path):
    rc, _ = gc.run_logged([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "sleep.log", 1)
    assert rc == 124


def test_a_crashed_step_becomes_a_record(tmp_path):
    args = argparse.Namespace(out=str(tmp_path), workdir=str(tmp_path / "w"), tiny=True)
    gc.run_step(gc.Step("nosuch", 30), args, 30)
    (rec,) = _records(tmp_path)
    assert rec["status"] == "FAIL" and "exited" in rec["error"] and rec["check"] == "step nosuch"
