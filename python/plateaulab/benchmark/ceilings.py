"""The machine's own ceilings, measured in the same run as the engine they are compared with.

    gemm         a matrix product at the workload's test-scoring shape (rows x D x stacked columns,
                 ``flops.scoring_gemm_shape``), in the backend's scoring precision: numpy (OpenBLAS,
                 MKL, ...) on the host, cuBLAS through CuPy on a GPU
    gemm_fp64    a float64 product at the shape of the workload's largest Gram matrix (the fp64 work)
    memory       a copy of a large array, counting bytes read and written: host RAM, or device memory
    h2d_pinned   on a GPU, host-to-device copies from pinned memory (the path features take)

Each is the best of a few runs after a warm-up (the ceiling is what the machine can do; the median
is recorded too). A measurement that fails is reported as such and the others still run.
"""

from __future__ import annotations

import time

import numpy as np

GEMM_INPUT_CAP = 256 << 20     # bytes of the left operand; a workload with more test rows is measured on fewer
HOST_COPY_BYTES = 256 << 20
DEVICE_COPY_BYTES = 1 << 30


def event_seconds(cp, fn, repeats: int, stream=None) -> list[float]:
    """Seconds of each of ``repeats`` runs of fn(), timed by CUDA events on ``stream``; one warm-up."""
    stream = stream or cp.cuda.get_current_stream()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    out = []
    for i in range(repeats + 1):
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        if i:
            out.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return out


def wall_seconds(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` runs of fn() by the wall clock, after one warm-up."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure_h2d(cp, nbytes: int = 1 << 30, repeats: int = 8) -> dict:
    """Host-to-device copy bandwidth: a pinned buffer (cupyx.empty_pinned) copied by cudaMemcpyAsync
    on a non-blocking stream, timed by CUDA events, best of ``repeats``; a pageable buffer likewise."""
    import cupyx

    rt = cp.cuda.runtime
    data = np.frombuffer(np.random.default_rng(0).bytes(nbytes), dtype=np.uint8)
    dev = cp.empty(nbytes, dtype=cp.uint8)
    stream = cp.cuda.Stream(non_blocking=True)
    out = {"bytes": nbytes, "repeats": repeats}
    pinned = cupyx.empty_pinned(nbytes, dtype=np.uint8)
    pinned[:] = data
    for name, host in (("pinned", pinned), ("pageable", data)):
        t = event_seconds(cp, lambda: rt.memcpyAsync(dev.data.ptr, host.ctypes.data, nbytes,
                                                     rt.memcpyHostToDevice, stream.ptr), repeats, stream)
        out[f"{name}_gbps_best"] = round(nbytes / min(t) / 1e9, 2)
        out[f"{name}_gbps_median"] = round(nbytes / float(np.median(t)) / 1e9, 2)
    del pinned, dev
    return out


def _timer(xp, repeats):
    if xp is np:
        return lambda fn: wall_seconds(fn, repeats)
    return lambda fn: event_seconds(xp, fn, repeats)


def gemm(xp, shape, dtype, repeats: int = 3) -> dict:
    """GFLOP/s of ``a @ b`` with a (m, k) and b (k, n) in ``dtype``; m is lowered so that a stays
    below GEMM_INPUT_CAP bytes (the rate does not depend on m at these sizes), and the shape measured
    is the one reported."""
    m, k, n = (max(1, int(v)) for v in shape)
    dtype = np.dtype(dtype)
    m = max(1, min(m, GEMM_INPUT_CAP // (k * dtype.itemsize)))
    rng = np.random.default_rng([m, k, n])
    a = xp.asarray(rng.standard_normal((m, k), dtype=np.float32).astype(dtype))
    b = xp.asarray(rng.standard_normal((k, n), dtype=np.float32).astype(dtype))
    c = xp.empty((m, n), dtype=dtype)
    t = _timer(xp, repeats)(lambda: xp.matmul(a, b, out=c))
    flops = 2.0 * m * k * n
    return {"shape": [m, k, n], "requested_shape": [int(v) for v in shape], "dtype": str(dtype),
            "repeats": repeats, "gflops_best": flops / min(t) / 1e9, "gflops_median": flops / float(np.median(t)) / 1e9}


def memory_copy(xp, nbytes: int, repeats: int = 5) -> dict:
    """GB/s of copying ``nbytes`` into another buffer, counting bytes read and written."""
    a = xp.ones(nbytes // 4, dtype=np.float32)
    b = xp.empty_like(a)
    t = _timer(xp, repeats)(lambda: xp.copyto(b, a))
    return {"bytes": int(a.nbytes), "repeats": repeats, "what": "copy, bytes read + written",
            "gbps_best": 2 * a.nbytes / min(t) / 1e9, "gbps_median": 2 * a.nbytes / float(np.median(t)) / 1e9}


def measure(device: str, gemm_shape, gram_shape, dtype) -> dict:
    """Every ceiling of ``device`` ("cpu" or "cuda"): see the module docstring."""
    xp = np
    if device == "cuda":
        import cupy as xp
    out: dict = {"device": device}

    def attempt(key, fn):
        try:
            out[key] = fn()
        except Exception as exc:          # report, don't lose the run for it
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
        if xp is not np:
            xp.get_default_memory_pool().free_all_blocks()

    attempt("gemm", lambda: gemm(xp, gemm_shape, dtype))
    if gram_shape is not None:
        attempt("gemm_fp64", lambda: gemm(xp, gram_shape, np.float64))
    attempt("memory", lambda: memory_copy(xp, DEVICE_COPY_BYTES if device == "cuda" else HOST_COPY_BYTES))
    if device == "cuda":
        attempt("h2d_pinned", lambda: measure_h2d(xp))
        xp.get_default_pinned_memory_pool().free_all_blocks()
    return out


__all__ = ["measure", "gemm", "memory_copy", "measure_h2d", "event_seconds", "wall_seconds"]
