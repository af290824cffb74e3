"""Simulated model zoos on a known frontier: the ground truth against which the fit and its intervals are
validated (docs/ANALYSIS.md; tests/test_analysis_noise.py).

A zoo has ``n_frontier`` models whose true accuracies lie on eq. (1), e_DS = k e_US^alpha + e_IR, with US
accuracies drawn uniformly from ``us_range``, and ``n_below`` models strictly below it (true DS accuracy
lowered by a uniform gap) whose US accuracies lie within the frontier models' range. That keeps the
estimand clean: the rising hull of the *true* accuracies is then exactly the frontier models, and the fit
on them recovers the frontier's saturation. (A below-frontier model to the right of every frontier model
would join the hull and pull even a noiseless fit down: that is a question of which models exist, which
the model bootstrap addresses, not measurement noise.) Each observed accuracy is Binomial(n_test, true accuracy) / n_test, the
measurement noise of a test set of n_test examples. The true saturation is 1 - e_IR.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Zoo", "simulated_zoo", "FRONTIER"]

#: the frontier of PROTOCOL §4's simulation: e_DS = 0.5 e_US^2 + 0.2 (saturation 0.8)
FRONTIER = (0.5, 2.0, 0.2)


@dataclasses.dataclass
class Zoo:
    us: np.ndarray            # observed US accuracy
    ds: np.ndarray            # observed DS accuracy
    us_true: np.ndarray
    ds_true: np.ndarray
    on_frontier: np.ndarray   # bool
    n_test: int
    frontier: tuple           # (k, alpha, e_ir)

    @property
    def saturation(self) -> float:
        return 1.0 - self.frontier[2]


def simulated_zoo(rng, *, frontier=FRONTIER, n_frontier: int = 25, n_below: int = 60, us_range=(0.3, 0.9),
                  gap=(0.01, 0.15), n_test: int = 10_000, below_range: str = "frontier") -> Zoo:
    """One zoo (see the module docstring); ``rng`` is a numpy Generator or a seed.

    below_range: "frontier" draws the below-frontier models' US accuracy within the frontier models' range
    (the default, a clean estimand); "full" draws it from ``us_range`` as well (PROTOCOL §4's simulation),
    so that a below-frontier model can be the rightmost point and join the true hull."""
    rng = np.random.default_rng(rng)
    k, alpha, e_ir = frontier
    n = n_frontier + n_below
    us_front = rng.uniform(*us_range, n_frontier)
    lo, hi = (us_front.min(), us_front.max()) if below_range == "frontier" else us_range
    us_true = np.concatenate([us_front, rng.uniform(lo, hi, n_below)])
    ds_true = 1.0 - (k * (1.0 - us_true) ** alpha + e_ir)
    below = np.arange(n) >= n_frontier
    ds_true[below] -= rng.uniform(*gap, below.sum())
    ds_true = np.clip(ds_true, 0.0, 1.0)
    us = rng.binomial(n_test, us_true) / n_test
    ds = rng.binomial(n_test, ds_true) / n_test
    return Zoo(us=us, ds=ds, us_true=us_true, ds_true=ds_true, on_frontier=~below, n_test=n_test,
               frontier=(k, alpha, e_ir))
