"""Findings of the code review of the study, fit and sensitivity commands and the report: each test failed
before its fix.

1 / 4: ``study -o DIR`` replaces only its own reports (marker file, nothing foreign), refuses the working
directory, tidies the leftovers of a killed study, and refuses a bad output before the analysis.
2: --seed is a non-negative integer for fit, sensitivity and study. 3: --sizes must name a size.
5: building the parser imports no pandas. 6: captions follow --tail, --ci-source and --bootstrap 0, and the
planted saturation has its own line style. 7: fit/sensitivity -o write atomically, checked up front.
9: docstrings and the fits.json sentence. 12: --exclude no longer swallows INPUT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plateaulab.cli import main
from plateaulab.errors import InputError

STUDY_FAST = ["--bootstrap", "0", "--no-sensitivity", "--quiet"]
DEAD_PID = 99_999_999          # above any Linux pid_max: never a running process


@pytest.fixture
def table(tmp_path):
    """A wide table of 30 models, two DS tasks following eq. (1) plus noise (0-1 accuracies)."""
    rng = np.random.default_rng(0)
    n = 30
    us = np.sort(rng.uniform(0.3, 0.9, n))
    df = pd.DataFrame({"model": [f"m{i}" for i in range(n)], "us": us})
    for name, (k, a, e) in {"alpha_task": (0.9, 1.5, 0.1), "beta_task": (0.7, 2.5, 0.3)}.items():
        df[name] = np.clip(1 - (k * (1 - us) ** a + e) - np.abs(rng.normal(0, 0.02, n)), 0, 1)
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    return path


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"plateaulab {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------ 1, 4: what study -o may replace

def test_study_never_deletes_a_folder_holding_other_files(table, tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "thesis.tex").write_text("x")
    (proj / "report.html").write_text("<html>")
    assert main(["study", str(table), "--us", "us", "-o", str(proj), *STUDY_FAST]) == 2
    err = one_line_error(capsys, "study")
    assert str(proj) in err and "thesis.tex" in err and ".plateaulab-report" in err and "--output" in err
    assert (proj / "thesis.tex").read_text() == "x" and (proj / "report.html").read_text() == "<html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj", "t.csv"]     # no leftovers beside it


def test_a_bad_output_is_refused_before_the_input_is_read(tmp_path, capsys):
    from plateaulab.report.study import run_study

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("x")
    # the input does not exist: had it been read first, the error would name it
    with pytest.raises(InputError, match="notes.txt"):
        run_study(tmp_path / "missing.csv", proj, n_boot=0, sensitivity=False)
    assert main(["study", str(tmp_path / "missing.csv"), "-o", str(proj), *STUDY_FAST]) == 2
    assert "notes.txt" in one_line_error(capsys, "study")


def test_a_report_is_marked_and_replaced_but_not_with_foreign_files_in_it(table, tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["study", str(table), "--us", "us", "-o", str(out), *STUDY_FAST]
    assert main(argv) == 0
    marker = json.loads((out / ".plateaulab-report").read_text())
    assert marker["plateaulab"] and "report.html" in marker["files"] and "fits.json" in marker["files"]
    assert all((out / f).is_file() for f in marker["files"])
    assert main(argv) == 0                                   # an earlier report is replaced
    (out / "tables" / "mine.txt").write_text("keep me")
    assert main(argv) == 2
    assert "tables/mine.txt" in one_line_error(capsys, "study")
    assert (out / "tables" / "mine.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["study", str(table), "--us", "us", "-o", str(empty), *STUDY_FAST]) == 0


@pytest.mark.parametrize("where", [".", "..", "{cwd}"])
def test_study_refuses_the_working_directory_and_its_parents(table, tmp_path, capsys, monkeypatch, where):
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.txt").write_text("x")
    monkeypatch.chdir(work)
    out = where.replace("{cwd}", str(work))
    assert main(["study", str(table), "--us", "us", "-o", out, *STUDY_FAST]) == 2
    assert "working directory" in one_line_error(capsys, "study")
    assert (work / "data.txt").read_text() == "x" and table.exists()


def test_leftovers_of_a_killed_study_are_tidied_and_a_moved_report_put_back(table, tmp_path):
    from plateaulab.report.writer import check_output

    out = tmp_path / "rep"
    assert main(["study", str(table), "--us", "us", "-o", str(out), *STUDY_FAST]) == 0
    # killed between _publish's two renames: the previous report is aside, the new one still staged
    os.replace(out, tmp_path / f".rep.old-{DEAD_PID}")
    (tmp_path / f".rep.tmp-{DEAD_PID}").mkdir()
    check_output(out)
    assert (out / "report.html").exists() and (out / ".plateaulab-report").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "t.csv"]
    # killed while the previous report was being deleted: the rest of it goes with the next study
    (tmp_path / f".rep.old-{DEAD_PID}").mkdir()
    (tmp_path / f".rep.old-{DEAD_PID}" / "report.html").write_text("old")
    assert main(["study", str(table), "--us", "us", "-o", str(out), *STUDY_FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "t.csv"]


# ------------------------------------------------------------------------ 2, 3: --seed, --sizes

@pytest.mark.parametrize("command", ["fit", "sensitivity", "study"])
@pytest.mark.parametrize("seed", ["-1", "x"])
def test_seed_is_a_non_negative_integer(table, tmp_path, capsys, command, seed):
    argv = [command, str(table), "--us", "us", "--seed", seed]
    if command == "study":
        argv += ["-o", str(tmp_path / "rep"), *STUDY_FAST]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"plateaulab {command}: error: argument --seed:" in err and "Traceback" not in err
    assert not (tmp_path / "rep").exists()


def test_seed_zero_and_positive_are_accepted(table, capsys):
    assert main(["fit", str(table), "--us", "us", "--seed", "0"]) == 0
    assert main(["fit", str(table), "--us", "us", "--seed", "12", "--bootstrap", "20"]) == 0


@pytest.mark.parametrize("sizes", [",", " , ,"])
def test_sensitivity_refuses_an_empty_size_list(table, capsys, sizes):
    assert main(["sensitivity", str(table), "--us", "us", "--sizes", sizes]) == 2
    assert "--sizes names no sample size" in one_line_error(capsys, "sensitivity")


# ------------------------------------------------------------------------ 5: a light parser

@pytest.mark.parametrize("code", [
    "from plateaulab.cli import build_parser; build_parser()",
    "from plateaulab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
])
def test_building_the_parser_imports_no_pandas(code):
    probe = code + "\nimport sys\nprint(sorted(m for m in ('pandas', 'scipy', 'pyarrow', 'plateaulab.analysis') " \
                   "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_help_still_lists_the_builtins_and_loaders(capsys):
    from plateaulab.analysis.sources import BUILTINS, LOADER_CHOICES

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "@BUILTINS@" not in text
    for name in BUILTINS:
        assert f"builtin:{name}" in text.replace("- ", "-")
    assert ", ".join(LOADER_CHOICES) in text


def test_loader_choices_are_still_checked(table, capsys):
    with pytest.raises(SystemExit):
        main(["fit", str(table), "--us", "us", "--loader", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    assert main(["fit", str(table), "--us", "us", "--loader", "table"]) == 0


# ------------------------------------------------------------------------ 6: captions follow the options

class _Art:
    """A stand-in for writer.Artefacts: sections write nothing, figures are drawn and dropped."""

    def __init__(self):
        self.files = []

    def table(self, name, df):
        pass

    def figure(self, name, fig):
        import matplotlib.pyplot as plt

        plt.close(fig)
        return b""

    def json(self, name, obj):
        pass


def _page_text(table, planted=None, **options) -> tuple:
    from plateaulab.analysis.sources import read_source
    from plateaulab.analysis.study import analyse
    from plateaulab.report import sections as S

    res = analyse(read_source(table, us="us"), **options)
    page = S.Page(res=res, art=_Art(), planted=planted or {})
    parts = {f.__name__: " ".join(f(page)) for f in (S.header, S.summary, S.saturation_figure, S.parameters,
                                                     S.sensitivity, S.files)}
    return res, parts


def test_default_captions_describe_the_rising_hull_and_the_primary_interval(table):
    _, text = _page_text(table, n_boot=20, sensitivity=False)
    fig1 = text["saturation_figure"]
    assert "dotted after it" in fig1 and "band of its primary interval" in fig1
    assert "measurement noise where the test-set sizes are known" in text["summary"]
    assert "Both are in <code>tables/parameters.csv</code>" in text["parameters"]


def test_captions_follow_tail_and_ci_source_models(table):
    res, text = _page_text(table, n_boot=20, sensitivity=True, sensitivity_trials=2, tail=True, ci_source="models")
    assert res.tail and res.ci_source == "models"
    fig1 = text["saturation_figure"]
    assert "dotted after it" not in fig1 and "rising hull" not in fig1 and "all of it fitted" in fig1
    assert "model-bootstrap interval" in fig1 and "primary interval" not in fig1
    assert "measurement noise" not in text["summary"] and "model-bootstrap interval" in text["summary"]
    params = text["parameters"]
    assert "drawn dotted and not fitted" not in params and "descending tail included" in params
    assert "one of two bootstraps" not in params and "Both are in" not in params
    assert "rising hull" not in text["sensitivity"] and "whole upper hull" in text["sensitivity"]
    assert "descending tail" in text["header"]


def test_captions_with_the_bootstrap_off_promise_no_interval(table):
    _, text = _page_text(table, n_boot=0, sensitivity=False)
    assert "95% pointwise band" not in text["saturation_figure"] and "no band" in text["saturation_figure"]
    assert "95%" not in text["summary"] and "no interval" in text["summary"]
    assert "No intervals" in text["parameters"] and "percentile intervals" not in text["parameters"]
    assert "Bootstrap: off" in text["header"]


def test_the_planted_saturation_has_its_own_line_and_words(table):
    import matplotlib.pyplot as plt

    from plateaulab.report import figures as F

    res, text = _page_text(table, planted={"alpha_task": 0.9}, n_boot=0, sensitivity=False)
    assert "Green dash-dots" not in text["saturation_figure"]
    assert "planted by construction (purple dashed)" in text["saturation_figure"]
    r = next(g for g in res.groups if g.task == "alpha_task")
    fig, ax = plt.subplots()
    F._saturation_panel(ax, r, "linear", {"alpha_task": 0.9})
    lines = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in ax.get_lines()}
    plt.close(fig)
    assert lines["planted saturation"] != lines["eq. (1) fit on all points"]
    assert lines["planted saturation"][1] != "-."


# ------------------------------------------------------------------------ 7: -o FILE of fit and sensitivity

@pytest.mark.parametrize("command, name", [("fit", "out.json"), ("fit", "out.csv"), ("sensitivity", "out.csv")])
def test_output_files_are_written_atomically(table, tmp_path, capsys, monkeypatch, command, name):
    import plateaulab.cli.inputs as inputs

    out = tmp_path / name
    out.write_text("earlier")
    argv = [command, str(table), "--us", "us", "-o", str(out)] + (["--trials", "2"] if command != "fit" else [])

    def refuse(src, dst):
        assert Path(src).parent == out.parent and Path(src).name != name and Path(dst) == out
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(inputs.os, "replace", refuse)
    assert main(argv) == 2
    assert out.read_text() == "earlier"                     # the earlier file is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"t.csv", name})     # no temporary file left
    monkeypatch.undo()
    capsys.readouterr()
    assert main(argv) == 0 and out.read_text() != "earlier"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)


@pytest.mark.parametrize("command", ["fit", "sensitivity"])
@pytest.mark.parametrize("name, needle", [("nope/out.json", "the folder"), ("nope/out.csv", "the folder"),
                                          ("out.txt", "use a .csv, .json or .parquet file name")])
def test_a_bad_output_file_is_refused_up_front_naming_the_flag(tmp_path, capsys, command, name, needle):
    # the input is missing too: the output is checked first
    assert main([command, str(tmp_path / "missing.csv"), "-o", str(tmp_path / name)]) == 2
    err = one_line_error(capsys, command)
    assert err.startswith(f"plateaulab {command}: error: --output '{tmp_path / name}'") and needle in err


# ------------------------------------------------------------------------ 9: texts

def test_fits_json_is_described_as_it_is(table):
    _, text = _page_text(table, n_boot=0, sensitivity=False)
    assert "has the schema of" not in text["files"] and '{"fits": [...]}' in text["files"]


def test_add_scale_arguments_has_one_docstring():
    from plateaulab.cli.probe import add_scale_arguments

    assert "--workers" in add_scale_arguments.__doc__ and "unit" in add_scale_arguments.__doc__


# ------------------------------------------------------------------------ 12: --exclude

def test_exclude_before_the_input_takes_one_value(table, tmp_path):
    out = tmp_path / "rep"
    assert main(["study", "--exclude", "m1", str(table), "--us", "us", "-o", str(out), *STUDY_FAST]) == 0
    html = (out / "report.html").read_text()
    assert "Left out by request: m1." in html and "builtin:openclip" not in html


def test_exclude_repeats_and_takes_comma_separated_lists(table, capsys):
    capsys.readouterr()
    assert main(["fit", "--exclude", "m0,m1", "--exclude", "m2", str(table), "--us", "us", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert "Left out by request: m0, m1, m2." in notes
    assert main(["sensitivity", "--exclude", "m0", str(table), "--us", "us", "--trials", "2", "--json"]) == 0
