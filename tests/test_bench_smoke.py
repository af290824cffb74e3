"""The GPU benchmark harness (bench/bench_cuda.py) and the scale run (bench/scale_run.py), run in their
tiny CPU mode: every workload and baseline goes through the same code as on the GPU, on stores of a
few kilobytes. Checks the outputs' fields and that the engine's accuracies agree with the baselines
(no timing is asserted: a benchmark is never a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script: str, *args: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                         cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    _run("bench_cuda.py", "--workload", "all", "--backend", "cpu", "--tiny", "--quiet",
         "--out", str(tmp / "out"), "--workdir", str(tmp / "work"), cwd=tmp)
    return tmp / "out"


@pytest.mark.parametrize("key", ["i", "ii", "iii", "iv"])
def test_workload_json_has_every_number(bench_out, key):
    r = json.loads((bench_out / f"{key}.json").read_text())
    assert r["workload"] == key and r["tiny"] is True
    env = r["env"]
    for field in ("date_utc", "device", "tf32", "numpy", "plateaulab", "engine_sha256"):
        assert field in env
    assert "cupy_fp32_matmul" in env["tf32"] and "jax_fp32_matmul" in env["tf32"]
    e = r["engine"]
    assert e["probes"] > 0 and e["wall_s"] > 0 and e["probes_per_s"] > 0 and e["peak_rss_bytes"] > 0
    spec = r["spec"]
    probes_per_block = len(spec["shots"]) * len(spec["seeds"]) * len(spec["l2s"])
    assert e["probes"] == r["store"]["blocks_probed"] * probes_per_block
    roof = r["roofline"]
    assert roof["feature_bytes"] > 0 and roof["gbps"] > 0 and roof["tflops"] > 0
    assert roof["flops"]["total"] == pytest.approx(roof["flops"]["fp64"] + roof["flops"]["fp32"])
    assert set(roof["flops"]["stages"]) == {"gram", "rhs", "factorisation", "weights", "test"}
    for name in ("engine_subset", "naive_port", "cpu_engine", "bigvision_jax", "ref_f64"):
        assert name in r["baselines"]
    md = (bench_out / f"{key}.md").read_text()
    assert md.startswith(f"### Workload ({key})") and "TF32" in md and "| method |" in md


@pytest.mark.parametrize("key", ["i", "ii", "iii", "iv"])
def test_engine_agrees_with_the_baselines(bench_out, key):
    base = json.loads((bench_out / f"{key}.json").read_text())["baselines"]
    for name in ("naive_port", "cpu_engine", "ref_f64"):
        assert base[name]["status"] == "ran", (name, base[name])
    if base["bigvision_jax"]["status"] != "ran":
        assert base["bigvision_jax"]["status"].startswith("skipped"), base["bigvision_jax"]
    for name, b in base.items():
        if name == "engine_subset" or b["status"] != "ran":
            continue
        a = b["agreement"]
        assert a["probes"] == b["probes"] > 0
        assert a["within_slack"] == a["probes"], (name, a)          # every probe within ties (+ fp32 slack)
        if name in ("cpu_engine", "ref_f64"):                        # float64 decompositions: ties only
            assert a["within_ties"] == a["probes"], (name, a)
        assert "ratio" in b and b["ratio"] > 0
    assert base["naive_port"]["target"] == 10 and base["cpu_engine"]["target"] == 100


def test_solver_sweep_on_the_reference_workload(bench_out):
    sw = json.loads((bench_out / "i.json").read_text())["solver_sweep"]
    assert "error" not in sw, sw
    assert [r["l2_values"] for r in sw["cholesky_vs_eigh"]] == [1, 2, 4, 8]
    assert all(r["eigh_s"] > 0 and r["cholesky_s"] > 0 for r in sw["cholesky_vs_eigh"])
    from plateaulab.backends.cpu import NumpyOps

    assert sw["solve_max_l_now"] == NumpyOps().solve_max_l            # the default, and the sweep restored it
    assert sw["solve_max_l_after"] == sw["solve_max_l_now"]


def test_io_workload_and_ceilings(bench_out):
    r = json.loads((bench_out / "iv.json").read_text())
    assert r["io"]["bytes"] > 0 and r["io"]["engine_stage_gbps"] > 0
    c = json.loads((bench_out / "ceilings.json").read_text())
    assert c["ceilings"]["status"].startswith("not measured")      # no GPU here


def test_flop_model_matches_the_documented_counts():
    """Workload (i): 120 GFLOP of fp32 scoring per block (7,200 primal columns plus the kernel-form
    1-shot heads), as bench/RESULTS.md derives it for the cpu engine."""
    sys.path.insert(0, str(BENCH))
    import numpy as np

    import bench_cuda as bc
    from plateaulab import protocol as P

    wl = bc.workloads()["i"]
    y_train, _ = bc.dataset_labels(wl.datasets[0])
    tasks = P.plan_tasks(y_train, 100, wl.shots, wl.seeds)
    f = bc.block_flops(tasks, 768, 100, len(wl.l2s), 10_000, chol_max_l=1)
    assert f["factorisation"] == "eigh"
    primal_cols = 9 * 8 * 100                                       # 5-, 10- and 25-shot tasks, W form
    kernel = 3 * (2 * 10_000 * 768 * 100 + 2 * 10_000 * 100 * 800)
    assert f["stages"]["test"] == pytest.approx(2 * 10_000 * 768 * primal_cols + kernel)
    assert f["fp32"] == pytest.approx(120e9, rel=0.01)
    assert bc.block_flops(tasks, 768, 100, 1, 10_000, chol_max_l=1)["factorisation"] == "cholesky"
    assert bc.block_feature_bytes(tasks, 768, 10_000) == (10_000 + np.unique(
        np.concatenate([t.indices for t in tasks])).size) * 768 * 2


def test_scale_run_resumes_across_commands(tmp_path):
    args = ["--backend", "cpu", "--tiny", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    _run("scale_run.py", *args, "--max-chunks", "1", cwd=tmp_path)
    first = json.loads((tmp_path / "out" / "scale_summary.json").read_text())
    assert not first["complete"] and first["chunks_done"] == 1 and "projection" in first
    assert not (tmp_path / "work" / "stores" / "chunk-0000").exists()      # features deleted after probing

    _run("scale_run.py", *args, cwd=tmp_path)
    s = json.loads((tmp_path / "out" / "scale_summary.json").read_text())
    assert s["complete"] and s["chunks_done"] == s["chunks"] == 2 and "projection" not in s
    x = s["extrapolation"]                                                  # 4 checkpoints -> 1,000
    assert x["checkpoints"] == 1000 and x["probe_s"] == pytest.approx(s["probe_s"] / 4 * 1000)
    assert "NOT MEASURED" in x["note"] and "linear" in x["assumption"]
    assert s["probes"] == s["probes_planned"] == 4 * 2 * 4 * 3            # ckpts x layers x shots x seeds
    for field in ("wall_s", "generation_s", "probe_s", "delete_s", "probes_per_s", "peak_rss_bytes",
                  "peak_rss_probe_bytes", "peak_gpu_used_bytes", "peak_gpu_pool_bytes"):
        assert field in s
    assert s["wall_s"] == pytest.approx(s["generation_s"] + s["probe_s"] + s["delete_s"])
    assert len(s["commands"]) == 2
    assert not list((tmp_path / "work" / "stores").glob("chunk-*"))

    import pandas as pd

    res = pd.read_parquet(tmp_path / "work" / "results.parquet")
    assert len(res) == s["probes"] and res["checkpoint"].nunique() == 4

    # Another machine: the ledger carried over counts its chunks as done.
    _run("scale_run.py", "--backend", "cpu", "--tiny", "--workdir", str(tmp_path / "fresh"), "--out",
         str(tmp_path / "out2"), "--resume-ledger", str(tmp_path / "out" / "ledger.json"), cwd=tmp_path)
    assert json.loads((tmp_path / "out2" / "scale_summary.json").read_text())["complete"]
