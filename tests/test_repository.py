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


def test_bench_imports_the_installed_package():
    """bench/ runs against the installed package: putting the source tree's python/ on sys.path shadows
    the installed plateaulab with one that has no compiled _core (CI's non-editable install failed so)."""
    pattern = re.compile(r"sys\.path\.insert\(.*[\"']python[\"']")
    offenders = [f"{f.relative_to(ROOT)}" for f in sorted((ROOT / "bench").glob("*.py"))
                 if pattern.search(f.read_text())]
    assert offenders == []


def _imports() -> dict:
    """{module: set of plateaulab modules it imports (at any depth of the file, lazy imports included)}."""
    import ast

    pkg = ROOT / "python" / "plateaulab"
    graph = {}
    for f in pkg.rglob("*.py"):
        parts = list(f.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mod = ".".join(parts)
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            deps |= {n for n in names if n.startswith("plateaulab")}
        graph[mod] = deps
    mods = set(graph)
    return {m: {d for d in deps if d in mods and d != m} for m, deps in graph.items()}


def test_analysis_never_imports_report():
    graph = _imports()
    bad = {m: sorted(d for d in deps if d.startswith("plateaulab.report"))
           for m, deps in graph.items() if m.startswith("plateaulab.analysis")}
    assert not {m: d for m, d in bad.items() if d}


def test_no_import_circle_between_modules():
    """No cycle among plateaulab's modules (package __init__ re-exports aside), lazy imports included."""
    graph = _imports()
    graph = {m: {d for d in deps if not (d in graph and d != m and m.startswith(d + "."))}
             for m, deps in graph.items()}   # a module importing its own package's __init__ is not a cycle
    state, cycles = {}, []

    def visit(m, path):
        state[m] = 1
        for d in graph.get(m, ()):
            if d.startswith(m + "."):
                continue            # a package __init__ re-exporting its own modules
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_report_functions_are_short():
    import ast

    longest = []
    for f in (ROOT / "python" / "plateaulab" / "report").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                longest.append((node.end_lineno - node.lineno + 1, f"{f.name}:{node.name}"))
    assert max(longest)[0] < 60, sorted(longest)[-3:]


#: analysis functions that compute (hulls, fits, bootstraps, quantiles): report/ draws and words their results
#: from the StudyResult and never imports or calls them itself (a section named like one is no call)
_COMPUTING = {"upper_hull", "rising_hull", "hull_overlay", "fit_saturating_power_law", "bootstrap_fit",
              "noise_bootstrap", "vertex_influence", "layer_profile", "layer_summary", "prediction_power",
              "sample_size_sensitivity", "scale_up", "residual_association", "spearman_matrices", "analyse_group",
              "quantile", "median", "nanquantile", "nanmedian", "percentile"}


def test_report_does_not_compute():
    import ast

    offenders = []
    for f in sorted((ROOT / "python" / "plateaulab" / "report").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and "analysis" in (node.module or ""):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                names = [node.func.attr]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names = [node.func.id]
            else:
                continue
            offenders += [f"{f.name}:{node.lineno}: {n}" for n in names if n in _COMPUTING]
    assert offenders == []
