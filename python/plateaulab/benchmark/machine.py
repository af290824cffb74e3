"""What a benchmark ran on: device, versions, BLAS and its threads, TF32 settings, load average."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path

import numpy as np


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def tf32_settings(with_jax: bool = True) -> dict:
    """How float32 matrix products run on a GPU here: TF32 (10 mantissa bits) or full FP32, for CuPy
    (the engine and the CuPy port) and, with ``with_jax``, JAX (which uses TF32 by default)."""
    override = os.environ.get("NVIDIA_TF32_OVERRIDE")
    cupy_on = os.environ.get("CUPY_TF32") == "1" and override != "0"
    out = {"NVIDIA_TF32_OVERRIDE": override, "CUPY_TF32": os.environ.get("CUPY_TF32"), "cupy_tf32": cupy_on,
           "cupy_fp32_matmul": ("TF32 (CUPY_TF32=1)" if cupy_on
                                else "FP32, TF32 off (CuPy uses it only with CUPY_TF32=1)")}
    if not with_jax:
        out["jax_fp32_matmul"] = "not used"
        return out
    try:
        import jax

        prec = jax.config.jax_default_matmul_precision
        if override == "0":
            jax_mode = "FP32 (NVIDIA_TF32_OVERRIDE=0 forbids TF32)"
        elif prec in (None, "default", "bfloat16", "tensorfloat32", "fastest"):
            jax_mode = (f"TF32 on NVIDIA GPUs (jax_default_matmul_precision={prec!r}: XLA's default lets "
                        "fp32 dots use TF32)")
        else:
            jax_mode = f"jax_default_matmul_precision={prec!r}"
        out.update({"jax_default_matmul_precision": prec, "jax_fp32_matmul": jax_mode})
    except Exception as exc:  # ImportError, or a broken CUDA plugin
        out["jax_fp32_matmul"] = f"jax unavailable ({type(exc).__name__})"
    return out


def blas_info() -> dict:
    """The BLAS libraries loaded in this process and their thread counts: threadpoolctl where it is
    installed, else numpy's build configuration (which names the library, not its threads)."""
    try:
        import threadpoolctl

        pools = threadpoolctl.threadpool_info()
        return {"source": "threadpoolctl",
                "libraries": [{"api": p.get("user_api"), "library": p.get("internal_api"),
                               "version": p.get("version"), "threads": p.get("num_threads"),
                               "architecture": p.get("architecture")} for p in pools]}
    except ImportError:
        pass
    try:
        cfg = np.show_config(mode="dicts")
        deps = cfg.get("Build Dependencies", {})
        return {"source": "numpy.show_config",
                "libraries": [{"api": k, "library": v.get("name"), "version": v.get("version"), "threads": None}
                              for k, v in deps.items() if k in ("blas", "lapack")]}
    except Exception as exc:  # numpy < 1.25 has no mode="dicts"
        return {"source": f"unknown ({type(exc).__name__})", "libraries": []}


def thread_counts() -> dict:
    """Threads each library was told to use (environment) and what numba uses."""
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                          "NUMBA_NUM_THREADS") if os.environ.get(k) is not None}
    out = {"cpu_count": os.cpu_count(), "environment": env}
    try:
        out["affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def machine_info(backends: dict) -> dict:
    """The ``machine`` object of a benchmark's JSON. ``backends``: {name: backend module} that ran."""
    import plateaulab

    versions = {"plateaulab": plateaulab.__version__, "python": sys.version.split()[0], "numpy": np.__version__}
    for mod in ("numba", "cupy-cuda13x", "cupy-cuda12x", "cupy", "threadpoolctl"):
        v = _version(mod)
        if v:
            versions[mod] = v
    return {"date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": {name: b.device() for name, b in backends.items()},
            "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "ram_gib": ram_gib(), "platform": platform.platform(),
            "versions": versions, "blas": blas_info(), "threads": thread_counts(),
            "tf32": tf32_settings(with_jax=False)}


__all__ = ["machine_info", "load_average", "tf32_settings", "blas_info", "thread_counts", "cpu_name", "ram_gib"]
