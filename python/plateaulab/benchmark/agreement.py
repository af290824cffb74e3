"""Whether an engine and a baseline agree on the same probes, counted arg-max ties apart.

Per probe, excess = max(|correct_baseline - correct_engine| - ties_engine, 0): the test rows that
differ beyond the engine's counted near-ties (protocol.TIE_RTOL). A float64 baseline must have
excess 0 everywhere. Float32 baselines (the CuPy port, JAX with TF32) may also move rows whose logits
are close but outside the tie tolerance; their slack is that of tests/test_baselines.py: 1 % of the
test rows per probe (2 % at l2 < 1).
"""

from __future__ import annotations

import numpy as np

FP32_SLACK = 0.01              # of the test rows per probe, 2x at l2 < 1 (tests/test_baselines.py)


def excess_rows(correct, ties, other):
    return np.maximum(np.abs(np.asarray(other, np.int64) - correct) - ties, 0)


def agreement(pairs, fp32: bool) -> dict:
    """pairs: (engine BlockScores, baseline (T, L) counts, l2s) per block; see the module docstring.
    Any object with ``correct``, ``ties`` ((T, L) arrays) and ``n_test`` serves as the engine's scores."""
    n = identical = within_ties = within_slack = 0
    max_e, sum_e = 0, 0.0
    for scores, other, l2s in pairs:
        e = excess_rows(scores.correct, scores.ties, other)
        slack = (np.where(np.asarray(l2s) >= 1.0, FP32_SLACK, 2 * FP32_SLACK) * scores.n_test
                 if fp32 else np.zeros(len(l2s)))
        n += e.size
        identical += int(np.count_nonzero(np.asarray(other) == scores.correct))
        within_ties += int(np.count_nonzero(e == 0))
        within_slack += int(np.count_nonzero(e <= slack[None, :]))
        max_e, sum_e = max(max_e, int(e.max(initial=0))), sum_e + float(e.sum())
    return {"probes": n, "identical": identical, "within_ties": within_ties, "within_slack": within_slack,
            "fraction_within_slack": within_slack / n if n else None, "max_excess_rows": max_e,
            "mean_excess_rows": sum_e / n if n else None,
            "slack": f"{FP32_SLACK:.0%} of test rows per probe ({2 * FP32_SLACK:.0%} at l2 < 1)" if fp32 else "none"}


def agrees(a: dict) -> bool:
    """Every compared probe within ties (+ the slack, for a float32 baseline), and at least one compared."""
    return bool(a["probes"]) and a["within_slack"] == a["probes"]


__all__ = ["FP32_SLACK", "excess_rows", "agreement", "agrees"]
