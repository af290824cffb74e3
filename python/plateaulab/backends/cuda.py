"""The CUDA backend: the engine of ``_engine`` over CuPy, with the kernels of csrc/cuda/ (module
plateaulab._cuda, built when nvcc is present): the fused arg-max/count kernel (score_cuda.cu) and
the shared-memory solver for small dual systems (small_ridge_cuda.cu).

Importing this module imports neither CuPy nor the CUDA module: both load on first use. What runs
on the device: each block's used train rows and test split (fp16 stays fp16 over PCIe), their
conversion and centring, the batched float64 Gram matrices and eigendecompositions (cuSOLVER
through CuPy; one matrix at a time above n = 32), the per-l2 Cholesky solves (potrfBatched +
batched trsm) when few l2 values are asked for, the small-system kernel, the folded weights, one
float32 GEMM per chunk of test rows (cuBLAS, TF32 off unless CuPy is told otherwise) and the fused
arg-max. Chunks shrink on out-of-memory instead of failing. A failed solve (backward error, or the
kernel's pivot check) is recomputed from the float64 eigendecomposition.

Streaming: uploads go through two pinned staging buffers (the host fills one while the other is
copied), and the run loop stages block k+1 on a copy stream from its reader thread while block k
computes.

Status: it shares its maths (and its tests, through the `cpu` backend and the host emulation of the
small-system kernel) with the CPU engine, and has not yet been run on a GPU: see docs/ENGINE.md,
bench/RESULTS.md and bench/GPU_RUNBOOK.md. Not used, by design: fp16 tensor-core Gram matrices
(docs/ENGINE.md says why).
"""

from __future__ import annotations

import threading

import numpy as np

from .. import protocol as P
from . import _engine

name = "cuda"
_ops = None


def unavailable_reason() -> str:
    try:
        from .. import _cuda
    except ImportError:
        return ("plateaulab was built without its CUDA module (PLATEAULAB_CUDA=OFF, or nvcc not found at "
                "build time); reinstall with PLATEAULAB_CUDA=ON on a machine with the CUDA toolkit")
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed; install plateaulab[gpu] (cupy-cuda13x)"
    if _cuda.device_count() == 0:
        return "no CUDA device is visible to the CUDA runtime"
    return ""


def is_available() -> bool:
    return unavailable_reason() == ""


def device() -> str:
    if not is_available():
        return "cuda (unavailable)"
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name_ = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return (f"cuda: {name_}, {props['totalGlobalMem'] / 2**30:.0f} GiB, CUDA runtime "
            f"{cp.cuda.runtime.runtimeGetVersion()}, driver {cp.cuda.runtime.driverGetVersion()}")


class CupyOps:
    """Device arrays through CuPy; the fused scorer from plateaulab._cuda."""

    def __init__(self):
        import cupy as cp

        from .. import _cuda

        self.xp = cp
        self._cuda = _cuda
        self.out_of_memory = cp.cuda.memory.OutOfMemoryError
        self._pinned, self._pinned_done, self._pinned_lock = None, None, threading.Lock()
        self._copy_stream = None
        # Dual systems up to this size go to the shared-memory kernel (n x n float64 per block).
        self.small_max_n = min(self.small_ridge_max_n, _cuda.small_ridge_max_n())
        free, _total = cp.cuda.runtime.memGetInfo()
        # Logits of one chunk use at most an eighth of the free memory (and 1 GiB).
        self.chunk_bytes = int(min(1 << 30, max(free // 8, 16 << 20)))

    # Host-to-device uploads go through two pinned staging buffers of this many bytes: while the
    # DMA engine copies one to the device, the host fills the other from the store (page cache or
    # disk), so the read and the copy overlap (double buffering).
    pinned_chunk_bytes = 32 << 20

    def upload(self, x):
        """Copy host array ``x`` (memory-mapped is fine) to a new device array, chunk by chunk through
        the pinned buffers, on the current stream; returns once the copy is complete."""
        import cupyx

        cp = self.xp
        x = np.asarray(x)
        out = cp.empty(x.shape, dtype=x.dtype)
        if x.size == 0:
            return out
        rows_per = max(1, self.pinned_chunk_bytes // max(1, x[0].nbytes))
        stream = cp.cuda.get_current_stream()
        with self._pinned_lock:
            if self._pinned is None or self._pinned[0].nbytes < self.pinned_chunk_bytes:
                self._pinned = [cupyx.empty_pinned(self.pinned_chunk_bytes + (1 << 16), np.uint8) for _ in range(2)]
                self._pinned_done = [None, None]
            big = x[0].nbytes > self.pinned_chunk_bytes
            for k, r0 in enumerate(range(0, x.shape[0], rows_per)):
                part = x[r0:r0 + rows_per]
                if big:                       # a single row wider than a buffer: plain copy
                    out[r0:r0 + rows_per].set(np.ascontiguousarray(part), stream=stream)
                    continue
                slot = k % 2
                if self._pinned_done[slot] is not None:
                    self._pinned_done[slot].synchronize()     # its previous DMA has finished
                host = self._pinned[slot][:part.nbytes].view(x.dtype).reshape(part.shape)
                np.copyto(host, part)                         # store -> pinned (host side)
                out[r0:r0 + rows_per].set(host, stream=stream)  # pinned -> device (asynchronous)
                self._pinned_done[slot] = stream.record()
            stream.synchronize()
        return out

    def to_device(self, x):
        return self.upload(x)

    def to_f32(self, x):
        return self.upload(x).astype(self.xp.float32)

    def count_nonfinite(self, a) -> int:
        cp = self.xp
        return int(cp.count_nonzero(~cp.isfinite(a)))

    def labels(self, y):
        return self.xp.asarray(np.ascontiguousarray(y, dtype=np.int64))

    def counters(self, n: int):
        return self.xp.zeros(n, self.xp.uint64), self.xp.zeros(n, self.xp.uint64)

    def score_argmax(self, logits, bias, labels, num_classes, counts) -> None:
        cp = self.xp
        logits = cp.ascontiguousarray(logits, dtype=cp.float32)
        rows, width = logits.shape
        self._cuda.score_argmax(logits.data.ptr, rows, width, bias.data.ptr, labels.data.ptr,
                                width // num_classes, num_classes, P.TIE_RTOL, counts[0].data.ptr,
                                counts[1].data.ptr, cp.cuda.get_current_stream().ptr)

    def to_host_counts(self, counts):
        cp = self.xp
        return cp.asnumpy(counts[0]).astype(np.int64), cp.asnumpy(counts[1]).astype(np.int64)

    def to_host(self, a):
        return self.xp.asnumpy(a)

    # cupy.linalg.eigh sends every 3-D input to cuSOLVER's Jacobi syevjBatched, which PERFORMANCE.md
    # reports fast up to n ~ 32 and slow above; a single matrix goes to divide-and-conquer syevd.
    # So batches of larger matrices are decomposed one matrix at a time. The cut-over is from the
    # documentation, not yet measured here (bench/bench_cuda.py's ceilings time both).
    eigh_batched_max_n = 32

    def eigh(self, a):
        cp = self.xp
        if a.ndim == 2 or a.shape[-1] <= self.eigh_batched_max_n:
            return cp.linalg.eigh(a)
        pairs = [cp.linalg.eigh(m) for m in a]
        return cp.stack([e for e, _ in pairs]), cp.stack([q for _, q in pairs])

    solve_fallbacks = 0
    # Not yet measured on a GPU. PERFORMANCE.md's figures for a 769^2 system (cuSOLVER eigh 0.2-1 ms,
    # Cholesky 30-150 us) put the break-even near 5 l2 values; 2 is the cautious start. Measure with
    # bench/bench_cuda.py and set it from the result.
    solve_max_l = 2
    # Upper bound on n for the shared-memory kernel, below what shared memory allows (160 on an
    # H100): past a few hundred rows one problem per thread block under-uses the GPU and the batched
    # library path wins. Not yet measured; bench/bench_cuda.py times both.
    small_ridge_max_n = 160

    def spd_solve(self, a, rhs):
        """Batched float64 Cholesky (cuSOLVER potrfBatched through CuPy) and two batched triangular
        solves (cuBLAS trsm). potrfBatched reports a failed matrix only through its info array,
        which CuPy ignores by default; a failure leaves a wrong or non-finite solution, which the
        caller's backward-error check (one device sync for every l2) catches. So ``solved`` is None:
        nothing is judged here, and nothing waits for the device."""
        import cupyx
        import cupyx.scipy.linalg as csl

        cp = self.xp
        with cupyx.errstate(linalg="ignore"):
            factor = cp.linalg.cholesky(a)
        z = csl.solve_triangular(factor, rhs, lower=True)
        return csl.solve_triangular(factor, z, lower=True, trans="T"), None

    def small_ridge(self, xs, labels, num_classes, l2s, want_w=True):
        """The shared-memory kernel of csrc/cuda/small_ridge_cuda.cu over a batch of dual problems:
        (A (B, L, n, C), W (B, L, D', C) or None without ``want_w``, ok (B, L) host bool)."""
        cp = self.xp
        B, n, dp = xs.shape
        L = len(l2s)
        xs = cp.ascontiguousarray(xs, dtype=cp.float64)
        labels = cp.ascontiguousarray(labels, dtype=cp.int64)
        l2 = cp.asarray(np.asarray(l2s, dtype=np.float64))
        a = cp.empty((B, L, n, num_classes), dtype=cp.float64)
        w = cp.empty((B, L, dp, num_classes), dtype=cp.float64) if want_w else None
        info = cp.zeros((B, L), dtype=cp.int32)
        self._cuda.small_ridge(xs.data.ptr, B, n, dp, labels.data.ptr, num_classes, l2.data.ptr, L, a.data.ptr,
                               w.data.ptr if want_w else 0, info.data.ptr, cp.cuda.get_current_stream().ptr)
        return a, w, cp.asnumpy(info) == 0

    def stage(self, x_train, train_rows, x_test, x_val=None):
        """``_engine.stage`` on a non-blocking stream of its own. It waits for that stream before
        returning (blocking only the calling reader thread), so the arrays it hands over are
        complete and the main stream needs no event; they are freed only after ``probe_block``
        has synchronised on its counts, so CuPy's per-stream memory pool cannot hand their
        memory to a copy while a kernel still reads it."""
        cp = self.xp
        if self._copy_stream is None:
            self._copy_stream = cp.cuda.Stream(non_blocking=True)
        try:
            with self._copy_stream:
                staged = _engine.stage(self, x_train, train_rows, x_test, x_val)
            self._copy_stream.synchronize()
        except self.out_of_memory:
            self.release_memory()
            return x_train, x_test, x_val  # probe_block stages it itself, once the last block is freed
        return staged

    def release_memory(self) -> None:
        self.xp.get_default_memory_pool().free_all_blocks()


_ops_lock = threading.Lock()


def _get_ops():
    """The one CupyOps of this process (the reader thread and the main thread share it)."""
    global _ops
    with _ops_lock:
        if _ops is None:
            if not is_available():
                from ..errors import BackendUnavailable

                raise BackendUnavailable(f"backend 'cuda' is not available: {unavailable_reason()}")
            _ops = CupyOps()
    return _ops


def stage(x_train, train_rows, x_test, x_val=None):
    """Read and upload the used train rows and the test/val splits ahead of ``probe_block``, on a
    stream of their own (the run loop calls this from its reader thread while the previous block
    computes)."""
    return _get_ops().stage(x_train, train_rows, x_test, x_val)


def probe_block(x_train, y_train, x_test, y_test, tasks, l2s, num_classes, *,
                x_val=None, y_val=None, loo=False, predictions=False):
    return _engine.probe_block(_get_ops(), x_train, y_train, x_test, y_test, tasks, l2s, num_classes,
                               x_val=x_val, y_val=y_val, loo=loo, predictions=predictions)
