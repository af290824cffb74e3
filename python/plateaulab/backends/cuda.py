"""The CUDA backend: the engine of ``_engine`` over CuPy, with the kernels of csrc/cuda/ (module
plateaulab._cuda, built when nvcc is present): the fused arg-max/count kernel (score_cuda.cu) and
the shared-memory solver for small dual systems (small_ridge_cuda.cu).

Importing this module imports neither CuPy nor the CUDA module: both load on first use. What runs
on the device: each block's used train rows and test split (fp16 stays fp16 over PCIe), their
conversion and centring, the batched float64 Gram matrices and eigendecompositions (cuSOLVER
through CuPy; one matrix at a time above ``eigh_batched_max_n``), the per-l2 Cholesky solves (potrfBatched +
batched trsm) when few l2 values are asked for, the small-system kernel, the folded weights, one
float32 GEMM per chunk of test rows (cuBLAS, TF32 off unless CuPy is told otherwise) and the fused
arg-max. Chunks shrink on out-of-memory instead of failing. A failed solve (backward error, or the
kernel's pivot check) is recomputed from the float64 eigendecomposition, and every
eigendecomposition is checked (cuSOLVER's info arrays are ignored by CuPy). ``CupyOps`` is this
backend's side of the device contract (``base.Ops``); ``get_ops()`` returns the instance in use.

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
from .base import SharedOps

name = "cuda"


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
    """Device arrays through CuPy, cuSOLVER/cuBLAS through CuPy, and the kernels of plateaulab._cuda:
    ``base.Ops`` on a GPU.

    Tuning knobs (constructor arguments and public attributes; ``None`` derives the value from the
    device):

    chunk_bytes         None: the logits of one chunk of test rows take at most an eighth of the
                        free device memory at construction, between 16 MiB and 1 GiB.
    pinned_chunk_bytes  32 MiB: size of each of the two pinned staging buffers of ``upload``.
    solve_max_l         2: one Cholesky per l2 up to this many l2 values, else one eigh for all.
                        Not measured on a GPU: PERFORMANCE.md's figures for a 769^2 system (cuSOLVER
                        eigh 0.2-1 ms, Cholesky 30-150 us) put the break-even near 5; 2 is the
                        cautious start. bench/gpu_check.py's solver sweep measures it.
    small_max_n         None: the largest n whose n x n float64 Gram matrix fits the device's opt-in
                        shared memory per block (``small_ridge_limit()``; with the 227 KiB of
                        an H100/H200 that is n = 170); dual systems up to this n go to the shared-memory kernel. A larger
                        value is lowered to that limit; 0 turns the kernel off.
    eigh_batched_max_n  32: a batch of matrices up to this size goes to ``cupy.linalg.eigh`` as one
                        3-D call (cuSOLVER's Jacobi syevjBatched), a batch of larger ones one matrix
                        at a time (syevd). 32 is from cuSOLVER's documentation, not measured;
                        bench/gpu_check.py times both at the engine's sizes and recommends a value.
    """

    def __init__(self, *, chunk_bytes: int | None = None, pinned_chunk_bytes: int = 32 << 20,
                 solve_max_l: int = 2, small_max_n: int | None = None, eigh_batched_max_n: int = 32):
        import cupy as cp

        from .. import _cuda

        self.xp = cp
        self._cuda = _cuda
        self.out_of_memory = cp.cuda.memory.OutOfMemoryError
        self._pinned, self._pinned_done, self._pinned_lock = None, None, threading.Lock()
        self._copy_stream = None
        if chunk_bytes is None:
            free, _total = cp.cuda.runtime.memGetInfo()
            chunk_bytes = min(1 << 30, max(free // 8, 16 << 20))
        self.chunk_bytes = int(chunk_bytes)
        self.pinned_chunk_bytes = int(pinned_chunk_bytes)
        self.solve_max_l = int(solve_max_l)
        limit = small_ridge_limit()
        self.small_max_n = limit if small_max_n is None else min(int(small_max_n), limit)
        self.eigh_batched_max_n = int(eigh_batched_max_n)
        self.solve_fallbacks = 0

    def upload(self, x):
        """Copy host array ``x`` (memory-mapped is fine) to a new device array, chunk by chunk through
        the two pinned buffers of ``pinned_chunk_bytes``, on the current stream: while the DMA engine
        copies one to the device, the host fills the other from the store (page cache or disk), so
        the read and the copy overlap. Returns once the copy is complete."""
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

    def eigh(self, a):
        """cupy.linalg.eigh sends every 3-D input to cuSOLVER's Jacobi syevjBatched and a single
        matrix to divide-and-conquer syevd; batches of matrices larger than ``eigh_batched_max_n``
        are decomposed one at a time. Convergence is not judged here: CuPy ignores cuSOLVER's info
        arrays, and the engine checks every decomposition (``_engine._eigh``)."""
        cp = self.xp
        if a.ndim == 2 or a.shape[-1] <= self.eigh_batched_max_n:
            return cp.linalg.eigh(a)
        pairs = [cp.linalg.eigh(m) for m in a]
        return cp.stack([e for e, _ in pairs]), cp.stack([q for _, q in pairs])

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
        """``_engine.stage_or_defer`` on a non-blocking stream of its own. It waits for that stream
        before returning (blocking only the calling reader thread), so the arrays it hands over are
        complete and the main stream needs no event; they are freed only after ``probe_block`` has
        synchronised on its counts, so CuPy's per-stream memory pool cannot hand their memory to a
        copy while a kernel still reads it. Out of device memory, the splits stay on the host with
        their NaN/Inf counted there, and ``probe_block`` stages them once the last block is freed."""
        cp = self.xp
        if self._copy_stream is None:
            self._copy_stream = cp.cuda.Stream(non_blocking=True)
        with self._copy_stream:
            staged = _engine.stage_or_defer(self, x_train, train_rows, x_test, x_val)
        self._copy_stream.synchronize()
        return staged

    def release_memory(self) -> None:
        self.xp.get_default_memory_pool().free_all_blocks()


def small_ridge_limit() -> int:
    """The largest training-set size n the shared-memory kernel takes on the current device: the
    bound of ``CupyOps.small_max_n`` (csrc/common/small_ridge.h, small_ridge_max_n_for)."""
    from .. import _cuda

    return _cuda.small_ridge_max_n()


def _make_ops() -> CupyOps:
    if not is_available():
        from ..errors import BackendUnavailable

        raise BackendUnavailable(f"backend 'cuda' is not available: {unavailable_reason()}")
    return CupyOps()


_shared = SharedOps(_make_ops)


def get_ops() -> CupyOps:
    """The one CupyOps of this process, made on first use (the reader thread and the main thread
    share it, with its copy stream, pinned buffers and counters)."""
    return _shared.get()


def stage(x_train, train_rows, x_test, x_val=None):
    """Read and upload the used train rows and the test/val splits ahead of ``probe_block``, on a
    stream of their own (the run loop calls this from its reader thread while the previous block
    computes)."""
    return get_ops().stage(x_train, train_rows, x_test, x_val)


def probe_block(x_train, y_train, x_test, y_test, tasks, l2s, num_classes, *,
                x_val=None, y_val=None, loo=False, predictions=False):
    return _engine.probe_block(get_ops(), x_train, y_train, x_test, y_test, tasks, l2s, num_classes,
                               x_val=x_val, y_val=y_val, loo=loo, predictions=predictions)
