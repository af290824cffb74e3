"""The repository keeps its own promises: CI runs the README's test command, and nothing reads data from
outside the repository (a clone with nothing beside it must pass its tests)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"\*\*The tests\*\*:\s*```bash\n(.+?)\n```", text, re.S)
    assert m, "README.md has no fenced test command after '**The tests**:'"
    return m.group(1).strip()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_test_command() in [line.strip() for line in ci]


def test_nothing_reads_outside_the_repository():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "grep", "-nE", r"\.\./shared|shared/data|PLATEAULAB_SHARED_DATA", "--",
                          "python", "tests", "bench", ".ci", ":!tests/test_repository.py"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.stdout == "", out.stdout
