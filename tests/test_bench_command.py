"""`plateaulab bench` on a tiny shape: the JSON contract, the table, agreement with big_vision's loop,
interleaved repeats, presets and overrides, refused options, and that the generated store is removed
(or kept with --keep). No timing is asserted: a benchmark is never a timed test."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from plateaulab.backends import available_backends
from plateaulab.benchmark import PRESETS, make_workload, run_benchmark
from plateaulab.cli import main

# D = 32: the 10-shot tasks (n = 50) are primal, the 5-shot ones (n = 25) dual in W form and the
# 1-shot ones (n = 5) dual in kernel form, so every scoring path of the engine is compared.
TINY = ["--dim", "32", "--classes", "5", "--test", "200", "--checkpoints", "2", "--layers", "2",
        "--shots", "1,5,10", "--l2", "1024,16"]
RESULT_KEYS = {"backend", "probes_per_s", "blocks_per_s", "gb_per_s", "gflop_per_s", "ratio_vs_loop",
               "pct_of_gemm_ceiling", "pct_of_memory_bandwidth", "agreement", "repeats", "spread", "flops"}


def _bench(capsys, *args) -> tuple[int, str, str]:
    rc = main(["bench", *TINY, *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run through the installed command, with --json, -o and a --workdir of its own."""
    tmp = tmp_path_factory.mktemp("bench")
    work, out_file = tmp / "work", tmp / "out" / "bench.json"
    work.mkdir()
    (work / "mine.txt").write_text("a file of the user's")
    proc = subprocess.run([sys.executable, "-m", "plateaulab", "bench", *TINY, "--repeat", "2", "--json",
                           "-o", str(out_file), "--workdir", str(work)], capture_output=True, text=True,
                          timeout=300, cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout), out_file, work, proc.stderr


def test_json_contract(tiny_run):
    r, out_file, _, _ = tiny_run
    assert json.loads(out_file.read_text()) == r              # -o writes the object --json prints
    m = r["machine"]
    for key in ("device", "versions", "blas", "threads", "tf32", "load_average", "cpu", "date_utc"):
        assert key in m, key
    assert m["blas"]["libraries"] and m["blas"]["source"] in ("threadpoolctl", "numpy.show_config")
    assert len(m["load_average"]["before"]) == 3 and len(m["load_average"]["after"]) == 3
    assert "cupy_fp32_matmul" in m["tf32"]
    w = r["workload"]
    assert (w["dim"], w["checkpoints"], w["layers"], w["shots"], w["l2"]) == (32, 2, 2, [1, 5, 10], [1024.0, 16.0])
    assert w["datasets"][0]["classes"] == 5 and w["datasets"][0]["n_test"] == 200
    assert w["blocks"] == 4 and w["probes"] == 4 * 3 * 3 * 2
    assert r["results"], "no backend ran"
    for e in r["results"]:
        assert RESULT_KEYS <= set(e), RESULT_KEYS - set(e)
        assert e["probes"] == w["probes"] and len(e["repeats"]) == 2
        assert e["probes_per_s"] > 0 and e["ratio_vs_loop"] > 0 and e["pct_of_gemm_ceiling"] > 0
        assert e["gb_per_s"] > 0 and e["flops"]["total"] == pytest.approx(e["flops"]["fp32"] + e["flops"]["fp64"])
        assert set(e["flops"]["stages"]) == {"gram", "rhs", "factorisation", "weights", "test"}
        lo, hi = e["spread"]["probes_per_s"]
        assert lo <= e["probes_per_s"] <= hi
        assert e["ceilings"] in r["ceilings"]
    ceil = next(iter(r["ceilings"].values()))
    assert ceil["gemm"]["gflops_best"] > 0 and ceil["memory"]["gbps_best"] > 0
    assert len(ceil["gemm_per_repeat"]) == 2                  # the GEMM measured again beside each repeat
    for e in r["results"]:
        assert [rep["gemm_ceiling_gflop_per_s"] for rep in e["repeats"]] == ceil["gemm_per_repeat"]
        assert e["pct_of_best_gemm_ceiling"] == pytest.approx(100 * e["gflop_per_s"] / ceil["gemm"]["gflops_best"])
        assert ceil["gemm"]["gflops_best"] >= max(ceil["gemm_per_repeat"])
    assert ceil["gemm"]["shape"][1] == 32
    loop = r["baselines"]["loop_f64"]
    assert loop["status"] == "ran" and len(loop["seconds"]) == 2 and loop["blocks"] == 1
    assert "FLOP model" in r["flop_model"]


def test_engine_agrees_with_the_loop(tiny_run):
    r = tiny_run[0]
    for e in r["results"]:
        a = e["agreement"]
        assert a["agrees"] and a["deterministic"]
        assert a["loop_f64"]["probes"] == 3 * 3 * 2                # one block: 3 shots x 3 seeds x 2 l2
        assert a["loop_f64"]["within_ties"] == a["loop_f64"]["probes"]


def test_generated_files_are_removed(tiny_run, capsys, tmp_path):
    work = tiny_run[2]
    assert [f.name for f in work.iterdir()] == ["mine.txt"]      # the given folder and its files stay
    new = tmp_path / "new"
    assert _bench(capsys, "--repeat", "1", "--workdir", str(new))[0] == 0
    assert not new.exists()                                      # a folder the run made goes with it


def test_unavailable_backends_are_reported_not_fatal(tiny_run):
    r = tiny_run[0]
    for name, status in available_backends().items():
        if name in ("cpu", "cuda") and status != "available":
            assert r["skipped"][name] == f"not available: {status}"
    if available_backends()["cuda"] != "available":
        assert r["baselines"]["cupy_port"]["status"].startswith("not available")


def test_table(capsys, tmp_path):
    rc, out, _ = _bench(capsys, "--repeat", "1", "--workdir", str(tmp_path))
    assert rc == 0
    for text in ("probes/s", "% GEMM ceiling", "x loop", "loop_f64", "ceilings (cpu-float32", "FLOP model",
                 "load average", "this workload:"):
        assert text in out, text
    row = next(line for line in out.splitlines() if line.startswith("cpu "))
    assert "within ties" in row


def test_temporary_folder_is_removed_and_keep_keeps_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert _bench(capsys, "--repeat", "1", "--quiet")[0] == 0
    assert list(tmp_path.iterdir()) == []
    assert _bench(capsys, "--repeat", "1", "--quiet", "--keep", "--json")[0] == 0
    kept = list(tmp_path.iterdir())
    assert len(kept) == 1 and (kept[0] / "bench-stores").is_dir()


def test_a_kept_store_is_reused(capsys, tmp_path):
    assert _bench(capsys, "--repeat", "1", "--workdir", str(tmp_path), "--keep", "--json")[0] == 0
    rc, out, _ = _bench(capsys, "--repeat", "1", "--workdir", str(tmp_path), "--json")
    assert rc == 0
    store = json.loads(out)["store"]
    assert store["bytes_written"] == 0 and store["kept"] is None
    assert list(tmp_path.iterdir()) == []                       # no --keep this time: removed


def test_repeats_interleave_engine_and_baselines(tmp_path):
    lines = []
    wl = make_workload("quick", dim=16, classes=4, test=80, checkpoints=1, layers=1, shots=[1, 5], l2=[1024.0],
                       repeat=3)
    run_benchmark(wl, workdir=tmp_path, progress=True, log=lines.append, backends=["cpu"])
    order = [line.split(":")[1].split()[0] for line in lines if line.startswith("repeat")]
    assert order == ["cpu", "loop_f64", "loop_f64", "cpu", "cpu", "loop_f64"]


def test_a_disagreement_fails_the_command(capsys, tmp_path, monkeypatch):
    """The agreement check bites: a loop that counts 3 more correct rows per probe than the engine's
    ties allow makes the command fail."""
    from plateaulab.benchmark import runner

    real = runner.bigvision_loop_block
    monkeypatch.setattr(runner, "bigvision_loop_block", lambda *a, **k: real(*a, **k) + 3)
    rc, out, err = _bench(capsys, "--repeat", "1", "--workdir", str(tmp_path))
    assert rc == 1 and "disagree" in err and "DISAGREE" in out


@pytest.mark.parametrize("args, flag", [
    (["--classes", "1"], "--classes"),
    (["--test", "200,300"], "--test"),
    (["--shots", "0"], "--shots"),
    (["--l2", "-1"], "--l2"),
    (["--backend", "tpu"], "--backend"),
    (["--repeat", "0"], "--repeat"),
    (["--dim", "0"], "--dim"),
    (["--baseline-blocks", "0"], "--baseline-blocks"),
    (["--seeds", "0"], "--seeds"),
])
def test_refused_options_name_their_flag(capsys, tmp_path, args, flag):
    rc, _, err = _bench(capsys, *args, "--workdir", str(tmp_path))
    assert rc == 2 and err.startswith("plateaulab bench: error:") and flag in err, err
    assert "Traceback" not in err


def test_presets_have_the_issue_shapes():
    ref = PRESETS["reference"]
    assert (ref.blocks, ref.probes, ref.dim, ref.datasets[0].classes, ref.datasets[0].n_test) == (240, 23_040, 768,
                                                                                                  100, 10_000)
    assert len(ref.l2s) == 8 and ref.l2s[0] == 16.0 and ref.l2s[-1] == pytest.approx(2.0 ** 18)
    paper = PRESETS["paper"]
    assert [d.classes for d in paper.datasets] == [102, 196, 100, 47, 37]
    assert (paper.dim, paper.shots, paper.seeds, paper.l2s) == (768, (1, 5, 10, 25), (0, 1, 2), (1024.0,))
    assert PRESETS["layers"].layers == 12 and PRESETS["layers"].datasets == paper.datasets
    io = PRESETS["io"]
    assert (io.shots, io.dim, io.datasets[0].n_test) == ((1,), 4096, 50_000)
    assert PRESETS["quick"].repeat == 3 and not PRESETS["quick"].long and ref.long


def test_overrides():
    wl = make_workload("paper", classes=[10], test=[50], seeds=2, l2=[1.0, 2.0], dtype="float32", shots=[40])
    assert [d.classes for d in wl.datasets] == [10] * 5 and {d.n_test for d in wl.datasets} == {50}
    assert wl.seeds == (0, 1) and wl.l2s == (1.0, 2.0) and wl.dtype == "float32"
    assert {d.train_per_class for d in wl.datasets} == {40}    # raised to the largest shot count
    assert "overridden" in wl.title
    two = make_workload("quick", classes=[3, 7], test=[20, 30])
    assert [(d.name, d.classes, d.n_test) for d in two.datasets] == [("data0", 3, 20), ("data1", 7, 30)]


def test_scoring_gemm_of_the_reference_workload():
    """The GEMM ceiling's shape for the reference workload is the engine's stacked test GEMM
    (bench/RESULTS.md: 10,000 x 768 x 7,200; the 1-shot tasks score in kernel form)."""
    from plateaulab import protocol as P
    from plateaulab.benchmark.flops import scoring_gemm_shape
    from plateaulab.benchmark.synthetic import dataset_labels

    ref = PRESETS["reference"]
    y_train, _ = dataset_labels(ref.datasets[0])
    tasks = P.plan_tasks(y_train, 100, ref.shots, ref.seeds)
    assert scoring_gemm_shape(tasks, 768, 100, 8, 10_000) == (10_000, 768, 7200)


def test_bench_probe_is_a_thin_caller(tmp_path):
    out = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "bench_probe.py"),
                          "--checkpoints", "1", "--layers", "2", "--dim", "24", "--classes", "4", "--test", "100",
                          "--l2", "2", "--baseline-blocks", "1", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "x loop" in out.stdout and "solver: auto" in out.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
def test_cuda_backend_and_cupy_port(tmp_path):
    if available_backends()["cuda"] != "available":
        pytest.skip(f"cuda backend not available: {available_backends()['cuda']}")
    wl = make_workload("quick", dim=32, classes=5, test=200, checkpoints=2, layers=1, shots=[1, 5, 10],
                       l2=[1024.0, 16.0], repeat=1)
    r = run_benchmark(wl, backends=["cuda"], workdir=tmp_path)
    e = r["results"][0]
    assert e["backend"] == "cuda" and e["agreement"]["agrees"]
    assert e["agreement"]["cupy_port"]["probes"] > 0 and e["ratio_vs_cupy_port"] > 0
    assert r["ceilings"]["cuda-float32"]["h2d_pinned"]["pinned_gbps_best"] > 0
    assert np.isfinite(e["pct_of_h2d_pinned"])
