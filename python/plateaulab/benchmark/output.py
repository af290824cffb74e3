"""A benchmark result (``runner.run_benchmark``) as a readable table, and as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _num(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if abs(v) >= 1 else f"{v:.{digits + 1}f}"


def _range(entry: dict, key: str, value=None, unit: str = "") -> str:
    lo, hi = entry["spread"].get(key, (None, None))
    value = entry.get(key) if value is None else value
    if lo is None or len(entry["repeats"]) < 2:
        return f"{_num(value)}{unit}"
    return f"{_num(value)}{unit} ({_num(lo)}-{_num(hi)})"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.0f}%"


def _blas(machine: dict) -> str:
    libs = [lib for lib in machine["blas"]["libraries"] if lib.get("api") in ("blas", None)] or \
        machine["blas"]["libraries"]
    parts = [f"{lib.get('library')} {lib.get('version') or ''}".strip()
             + (f" ({lib['threads']} threads)" if lib.get("threads") else "") for lib in libs]
    return ", ".join(dict.fromkeys(parts)) or "unknown"


def _workload_line(w: dict) -> str:
    ds = "; ".join(f"{d['name']}: C = {d['classes']}, {d['n_test']:,} test rows" for d in w["datasets"])
    return (f"workload: {w['checkpoints']} checkpoints x {w['layers']} layers x {len(w['datasets'])} dataset(s) "
            f"= {w['blocks']} blocks ({ds}); D = {w['dim']}, {w['dtype']}; shots {','.join(map(str, w['shots']))}; "
            f"{len(w['seeds'])} seeds; {len(w['l2'])} l2 -> {w['probes']:,} probes; {w['repeat']} repeat(s)")


def _ceiling_lines(ceilings: dict) -> list[str]:
    out = []
    for key, c in ceilings.items():
        parts = []
        for name, label in (("gemm", "GEMM"), ("gemm_fp64", "fp64 GEMM")):
            g = c.get(name)
            if g is None:
                continue
            if "error" in g:
                parts.append(f"{label} failed ({g['error']})")
            else:
                parts.append(f"{label} {' x '.join(map(str, g['shape']))} {g['dtype']}: {_num(g['gflops_best'])} GFLOP/s")
        mem = c.get("memory", {})
        parts.append(f"memory copy {_num(mem['gbps_best'])} GB/s" if "gbps_best" in mem
                     else f"memory copy failed ({mem.get('error')})")
        if "h2d_pinned" in c:
            h = c["h2d_pinned"]
            parts.append(f"pinned H2D {_num(h['pinned_gbps_best'])} GB/s" if "pinned_gbps_best" in h
                         else f"pinned H2D failed ({h.get('error')})")
        again = c.get("gemm_per_repeat") or []
        if again:
            parts.insert(1, f"GEMM beside each repeat {', '.join(_num(v) for v in again)} GFLOP/s")
        out.append(f"ceilings ({key}, best of a few, measured now): " + "; ".join(parts))
    return out


def _agreement_text(a: dict) -> str:
    parts = []
    for key in ("loop_f64", "cupy_port"):
        if key in a:
            x = a[key]
            tol = "within ties" if x["slack"] == "none" else "within ties + fp32 slack"
            parts.append(f"{key}: {x['within_slack']}/{x['probes']} {tol}" + ("" if x["agrees"] else " DISAGREE"))
    if not a.get("deterministic", True):
        parts.append("repeats differ")
    return "; ".join(parts) or "-"


def format_table(result: dict) -> str:
    """The human-readable report: header, one row per backend, baselines, ceilings, the FLOP model."""
    m, w = result["machine"], result["workload"]
    load = m["load_average"]
    lines = [f"plateaulab bench, preset {w['preset']} ({w['title']}), {m['date_utc']}",
             _workload_line(w),
             f"machine: {m['cpu']}, {m['cpu_cores']} cores; BLAS {_blas(m)}; numpy {m['versions']['numpy']}; "
             f"load average {_load(load['before'])} before, {_load(load['after'])} after",
             *[f"device ({name}): {dev}" for name, dev in m["device"].items()],
             *_ceiling_lines(result["ceilings"]), ""]
    head = ["backend", "probes/s", "blocks/s", "feature GB/s", "GFLOP/s", "% GEMM ceiling", "x loop", "agreement"]
    rows = []
    for e in result["results"]:
        mem_pct = e["pct_of_h2d_pinned"] if e["pct_of_h2d_pinned"] is not None else e["pct_of_memory_bandwidth"]
        rows.append([e["backend"], _range(e, "probes_per_s"), _num(e["blocks_per_s"], 2),
                     f"{_num(e['gb_per_s'], 2)} ({_pct(mem_pct)})", _num(e["gflop_per_s"]),
                     _pct(e["pct_of_gemm_ceiling"]),
                     _range(e, "ratio_vs_loop_f64", e["ratio_vs_loop"], "x") if e["ratio_vs_loop"] else "-",
                     _agreement_text(e["agreement"])])
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(c).ljust(wd) for c, wd in zip(r, widths)).rstrip()  # noqa: E731
    lines += [fmt(head), fmt(["-" * wd for wd in widths]), *map(fmt, rows)]
    reps = result["results"][0]["repeats"] if result["results"] else []
    if len(reps) > 1:
        lines.append(f"(median of {len(reps)} repeats, min-max in brackets; engine and baselines interleaved; "
                     "% GEMM ceiling: of the GEMM measured beside each repeat)")
    for e in result["results"]:
        if e["ratio_vs_cupy_port"] is not None:
            lines.append(f"{e['backend']}: {_range(e, 'ratio_vs_cupy_port', e['ratio_vs_cupy_port'], 'x')} "
                         "the CuPy port")
        if e["pct_of_compute_floor"] is not None:
            lines.append(f"{e['backend']}: {_num(e['gflop_per_s_fp32'])} GFLOP/s fp32 + {_num(e['gflop_per_s_fp64'])} "
                         f"fp64; the same FLOPs at the GEMM ceilings would take {_num(e['compute_floor_s'], 2)} s "
                         f"of its {_num(e['wall_s'], 2)} s ({_pct(e['pct_of_compute_floor'])}); factorisation "
                         f"{'/'.join(e['factorisation'])} (solve_max_l = {e['solve_max_l']})")
    lines.append("")
    nb = len(result["baseline_blocks"])
    for key, b in result["baselines"].items():
        if b["status"] == "ran":
            lo, hi = b["probes_per_s_range"]
            spread = f" ({_num(lo)}-{_num(hi)})" if len(b["seconds"]) > 1 else ""
            lines.append(f"baseline {key}: {b['what']}: {_num(b['probes_per_s'])} probes/s{spread} "
                         f"on {nb} block(s), {b['probes']} probes")
        else:
            lines.append(f"baseline {key}: {b['status']}")
    for name, why in result["skipped"].items():
        lines.append(f"backend {name}: {why}")
    lines += ["", result["flop_model"]]
    for e in result["results"][:1]:
        st = e["flops"]["stages"]
        lines.append("this workload: " + ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in st.items())
                     + f" GFLOP (total {e['flops']['total'] / 1e9:,.1f}; fp32 {e['flops']['fp32'] / 1e9:,.1f}); "
                     f"feature bytes {e['feature_bytes'] / 1e9:.2f} GB per run")
    if result["store"]["kept"]:
        lines.append(f"store and runs kept in {result['store']['kept']}")
    lines.append(f"benchmark took {result['seconds_total']:.1f} s")
    return "\n".join(lines)


def _load(v) -> str:
    return "unknown" if v is None else " ".join(f"{x:.2f}" for x in v)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def to_json(result: dict) -> str:
    """One JSON object (floats that are not finite become null)."""
    return json.dumps(_finite(result), indent=2, default=_json_default)


def _finite(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def write_json(result: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_json(result) + "\n")
    tmp.replace(path)
    return path


__all__ = ["format_table", "to_json", "write_json"]
