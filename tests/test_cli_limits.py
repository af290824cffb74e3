"""Refusals found by the second bad-input campaign (issue 12), through the command line: exit 2, one line
naming the flag or path, nothing written where nothing should be."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from plateaulab.cli import main


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    us = np.sort(rng.uniform(0.3, 0.9, 12))
    path = tmp_path / "g.csv"
    pd.DataFrame({"model": [f"m{i}" for i in range(12)], "imagenet": us, "cifar": 0.9 * us, "pets": us ** 2}
                 ).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("argv, needle", [
    (["sensitivity", "{t}", "--us", "imagenet", "--trials", "1000000000000"], "--trials = 1000000000000 trials"),
    (["fit", "{t}", "--us", "imagenet", "--ci", "1.5"], "--ci must be in (0, 1)"),
    (["fit", "{t}", "--us", "imagenet", "--ci", "0"], "--ci must be in (0, 1)"),
    (["sensitivity", "{t}", "--us", "imagenet", "--sizes", "0,-3"], "--sizes (sample sizes) must lie in [2,"),
    (["sensitivity", "{t}", "--us", "imagenet", "--cut-quantile", "2"], "--cut-quantile must be in (0, 1)"),
    (["sensitivity", "{t}", "--us", "imagenet", "--on", "hull,bogus"], "--on must be one of"),
    (["fit", "{t}", "--us", "imagenet", "--bootstrap", "10", "--m", "0"], "--m (models drawn per replicate)"),
    (["fit", "{t}", "--us", "imagenet", "--us-bayes-error", "2"], "--us-bayes-error must be in [0, 1)"),
    (["fit", "{t}", "--us", "imagenet", "--us-bayes-error", "nan"], "--us-bayes-error must be in [0, 1)"),
    (["fit", "{t}", "--us", "imagenet", "-o", "/nonexistent/dir/out.csv"], "the folder '/nonexistent/dir' does not"),
    (["fit", "{t}", "--us", "imagenet", "-o", "/nonexistent/dir/out.json"], "the folder '/nonexistent/dir' does not"),
    (["fit", "{t}", "--us", "imagenet", "--bootstrap", "100000000000"], "--bootstrap = 100000000000 replicates"),
])
def test_analysis_options_are_refused_naming_the_flag(table, capsys, argv, needle):
    assert main([a.replace("{t}", str(table)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    (["--layers", "0"], "--layers must be >= 1"),
    (["--checkpoints", "1000000000"], "GiB of features"),
    (["--dim", "1000000000000"], "GiB of features"),
    (["--checkpoints", "0"], "--checkpoints must be >= 3"),
    (["--train-per-class", "0"], "--train-per-class must be >= 1"),
    (["--classes", "1"], "--classes must be >= 2"),
    (["--e-ir", "nan"], "--e-ir must lie in [0,"),
])
def test_synth_sizes_are_checked_before_anything_is_written(tmp_path, capsys, args, needle):
    out = tmp_path / "s"
    assert main(["synth", str(out), *args]) == 2
    assert needle in capsys.readouterr().err and not out.exists()


def test_probe_refuses_a_run_directory_in_the_store_or_a_file(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--checkpoints", "3", "--layers", "1"]) == 0
    capsys.readouterr()
    base = ["--shots", "1", "--seeds", "1", "--quiet"]
    assert main(["probe", str(tmp_path / "s"), "-o", str(tmp_path / "s" / "checkpoints" / "run"), *base]) == 2
    assert "lies inside the feature store" in capsys.readouterr().err
    assert not (tmp_path / "s" / "checkpoints" / "run").exists()
    (tmp_path / "afile").write_text("x")
    assert main(["probe", str(tmp_path / "s"), "-o", str(tmp_path / "afile"), *base]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["probe", str(tmp_path / "s"), "-o", str(run), *base]) == 0
    (run / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["probe", str(tmp_path / "s"), "-o", str(run), *base]) == 2
    assert "nests JSON too deeply" in capsys.readouterr().err
