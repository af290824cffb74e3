"""The FLOPs and feature bytes a probe block needs, counted from the engine's own decisions.

This is the model ``plateaulab bench`` prints and divides by (achieved GFLOP/s, feature GB/s), and
bench/bench_cuda.py's roofline uses. ``FLOP_MODEL`` is its text.
"""

from __future__ import annotations

import numpy as np

FLOP_MODEL = """\
FLOP model (the FLOPs the method needs, counted from the engine's decisions). Per (shots, seed) task
with n few-shot rows, D' = D + 1, s = min(n, D'), primal when n >= D', L l2 values, C classes, m test rows:
  Gram           primal X^T X: 2 n D'^2      dual X X^T: 2 n^2 D'                         fp64
  rhs            primal X^T Y: 2 n D' C                                                  fp64
  factorisation  eigh (one, shared by every l2): 9 s^3 + Q^T R 2 s^2 C + Q [..] 2 s^2 L C
                 direct (one per l2, when L <= the backend's solve_max_l; on cuda small dual systems
                 go to the shared-memory kernel, counted the same): L (s^3/3 + 4 s^2 C)       fp64
  weights        primal: fold 2 D L C; dual W form: X^T A 2 D' n L C + fold; kernel form: 2 n D
  test scoring   primal / W form: 2 m D L C;  kernel form (n D + n L C < L C D): 2 m D n + 2 m n L C  fp32
Not counted: standardisation, gathers, arg-max and counting (O(n D + m L C) compares), fallbacks.
Feature bytes: the whole test split plus the distinct train rows some task uses, at the stored width."""


def is_kernel_form(n: int, D: int, C: int, L: int) -> bool:
    """Whether the engine scores a dual task (n < D + 1) through its kernel form (``_engine``, point 2)."""
    return n < D + 1 and n * D + n * L * C < L * C * D


def task_flops(n: int, D: int, C: int, L: int, m: int, factor: str) -> dict[str, tuple[float, str]]:
    """{stage: (FLOPs, precision)} of one task and its L l2 values, as the engine computes them."""
    Dp = D + 1
    primal = n >= Dp
    s = min(n, Dp)
    f = {"gram": (2.0 * n * Dp * Dp if primal else 2.0 * n * n * Dp, "fp64"),
         "rhs": (2.0 * n * Dp * C if primal else 0.0, "fp64")}
    if factor == "eigh":
        f["factorisation"] = (9.0 * s ** 3 + 2.0 * s * s * C + 2.0 * s * s * L * C, "fp64")
    else:
        f["factorisation"] = (L * (s ** 3 / 3.0 + 2.0 * s * s * C + 2.0 * s * s * C), "fp64")
    kernel = is_kernel_form(n, D, C, L)
    if primal:
        f["weights"] = (2.0 * D * L * C, "fp64")
    elif kernel:
        f["weights"] = (2.0 * n * D, "fp64")
    else:
        f["weights"] = (2.0 * Dp * n * L * C + 2.0 * D * L * C, "fp64")
    f["test"] = ((2.0 * m * D * n + 2.0 * m * n * L * C) if kernel else 2.0 * m * D * L * C, "fp32")
    return f


def block_flops(tasks, D: int, C: int, L: int, m: int, chol_max_l: int) -> dict:
    """FLOPs of one block: by stage, by precision and in total; ``factorisation`` names the solver."""
    factor = "cholesky" if L <= chol_max_l else "eigh"
    stages: dict[str, float] = {}
    by_prec = {"fp64": 0.0, "fp32": 0.0}
    for t in tasks:
        for stage, (flops, prec) in task_flops(t.n_train, D, C, L, m, factor).items():
            stages[stage] = stages.get(stage, 0.0) + flops
            by_prec[prec] += flops
    return {"factorisation": factor, "stages": stages, **by_prec, "total": by_prec["fp64"] + by_prec["fp32"]}


def block_feature_bytes(tasks, D: int, m: int, itemsize: int = 2) -> int:
    """Feature bytes one block's probes read: the test split and the train rows some task uses."""
    rows = np.unique(np.concatenate([t.indices for t in tasks])).size
    return int((m + rows) * D * itemsize)


def scoring_gemm_shape(tasks, D: int, C: int, L: int, m: int) -> tuple[int, int, int]:
    """(rows, inner, columns) of the block's largest test GEMM: the test split times the stacked
    primal and W-form weights (every task of those forms, every l2: one column group each), or, when
    every task is scored in kernel form, times the stacked kernel bases (n columns per task)."""
    primal_cols = sum(L * C for t in tasks if not is_kernel_form(t.n_train, D, C, L))
    kernel_cols = sum(t.n_train for t in tasks if is_kernel_form(t.n_train, D, C, L))
    return int(m), int(D), int(primal_cols if primal_cols else kernel_cols)


__all__ = ["FLOP_MODEL", "task_flops", "block_flops", "block_feature_bytes", "scoring_gemm_shape", "is_kernel_form"]
