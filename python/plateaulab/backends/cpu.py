"""The fast CPU backend: the engine of ``_engine`` over numpy, with the C++ fused scorer.

See ``_engine`` for the method (folded standardisation, one stacked float32 GEMM per chunk of test
rows for every shots x seed x l2 probe of a block, kernel form for small dual systems, fused
arg-max in csrc/cpu/score_cpu.cpp). ``NumpyOps`` is this backend's side of the device contract
(``base.Ops``); ``get_ops()`` returns the one instance the backend uses, whose knobs may be changed.
"""

from __future__ import annotations

import os

import numpy as np

from .. import protocol as P
from . import _engine
from .base import SharedOps

name = "cpu"


class NumpyOps:
    """Host arrays, BLAS GEMMs, LAPACK solves and the C++ fused scorer: ``base.Ops`` on the CPU.

    Tuning knobs (constructor arguments and public attributes):

    chunk_bytes   16 MiB: the logits of one chunk of test rows stay below this (cache-sized chunks
                  keep the fused scorer's reads in L2/L3).
    solve_max_l   3: with at most this many l2 values (and no leave-one-out) each l2 gets its own
                  direct solve instead of one shared eigendecomposition. Measured on the 2-core dev
                  machine, one block of D = 768, C = 100, shots 1/5/10/25 x 3 seeds, 10,000 test
                  rows (median of 3, whole probe_block), eigh / direct: L = 1: 0.49 / 0.30 s;
                  L = 2: 0.55 / 0.43; L = 3: 0.63 / 0.56; L = 4: 0.70 / 0.67; L = 6: 0.85 / 0.93.
    small_max_n   0: small dual systems are solved with LAPACK. ``small_ridge`` runs the CUDA
                  kernel's body on one host thread (the emulation in csrc/plateaulab.cpp), which is
                  exact but single-threaded; set this above 0 to send the engine's small-system path
                  through it without a GPU (the tests do).
    """

    xp = np
    out_of_memory = MemoryError

    def __init__(self, *, chunk_bytes: int = 16 << 20, solve_max_l: int = 3, small_max_n: int = 0):
        from .. import _core

        self._core = _core
        self.chunk_bytes = int(chunk_bytes)
        self.solve_max_l = int(solve_max_l)
        self.small_max_n = int(small_max_n)
        self.solve_fallbacks = 0      # matrices whose direct solve failed and were redone by eigh

    def to_device(self, x):
        return np.ascontiguousarray(x)

    def to_f32(self, x):
        return np.array(x, dtype=np.float32, copy=True, order="C")

    def count_nonfinite(self, a) -> int:
        from ..store import count_nonfinite

        return count_nonfinite(a)

    def labels(self, y):
        return np.ascontiguousarray(y, dtype=np.int64)

    def counters(self, n: int):
        return np.zeros(n, np.int64), np.zeros(n, np.int64)

    def score_argmax(self, logits, bias, labels, num_classes, counts) -> None:
        self._core.score_argmax(logits, bias, labels, num_classes, P.TIE_RTOL, counts[0], counts[1])

    def to_host_counts(self, counts):
        return counts

    def to_host(self, a):
        return np.asarray(a)

    def eigh(self, a):
        """Symmetric eigendecomposition of one matrix or a batch (LAPACK dsyevd per matrix)."""
        return np.linalg.eigh(a)

    def spd_solve(self, a, rhs):
        """Solve a[b] w[b] = rhs[b] for the whole batch with numpy's LAPACK (dgesv, LU with partial
        pivoting); (w, solved) with solved a host bool per matrix. Not Cholesky: scipy's potrf/potrs
        would bring scipy's own OpenBLAS, whose threads then contend with numpy's for the cores
        (measured: a paper-protocol block took 0.60 s with scipy's Cholesky, 0.29 s with this, 0.50 s
        with the shared eigh). An exactly singular matrix is flagged; an inaccurate solve is caught by
        the caller's backward-error check."""
        try:
            return np.linalg.solve(a, rhs), np.ones(a.shape[0], dtype=bool)
        except np.linalg.LinAlgError:
            pass
        w = np.zeros_like(rhs)
        solved = np.ones(a.shape[0], dtype=bool)
        for b in range(a.shape[0]):
            try:
                w[b] = np.linalg.solve(a[b], rhs[b])
            except np.linalg.LinAlgError:
                solved[b] = False
        return w, solved

    def small_ridge(self, xs, labels, num_classes, l2s, want_w=True):
        """The CUDA small-system kernel's body run by one host thread (``_core.small_ridge_emulated``):
        (A (B, L, n, C), W (B, L, D', C) or None, ok (B, L) host bool). Used only when
        ``small_max_n`` > 0."""
        a, w, info = self._core.small_ridge_emulated(
            np.ascontiguousarray(xs, np.float64), np.ascontiguousarray(labels, np.int64), int(num_classes),
            np.asarray(l2s, np.float64), bool(want_w))
        return a, (w if want_w else None), info == 0

    def release_memory(self) -> None:
        pass


_shared = SharedOps(NumpyOps)


def get_ops() -> NumpyOps:
    """The one NumpyOps of this process (the run loop's reader thread and main thread share it)."""
    return _shared.get()


def unavailable_reason() -> str:
    try:
        from .. import _core  # noqa: F401
    except ImportError as exc:
        return f"the compiled module plateaulab._core is missing ({exc}); reinstall with `pip install .`"
    return ""


def is_available() -> bool:
    return unavailable_reason() == ""


def device() -> str:
    return f"cpu ({os.cpu_count()} logical cores; float64 decomposition, float32 scoring)"


def stage(x_train, train_rows, x_test, x_val=None):
    """Read the used train rows and convert the test/val splits ahead of ``probe_block`` (the run
    loop's reader thread)."""
    return _engine.stage_or_defer(get_ops(), x_train, train_rows, x_test, x_val)


def probe_block(x_train, y_train, x_test, y_test, tasks, l2s, num_classes, *,
                x_val=None, y_val=None, loo=False, predictions=False):
    return _engine.probe_block(get_ops(), x_train, y_train, x_test, y_test, tasks, l2s, num_classes,
                               x_val=x_val, y_val=y_val, loo=loo, predictions=predictions)
