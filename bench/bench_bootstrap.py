"""Bootstrap of eq. (1): plateaulab's numba kernel against a scipy loop, in the same run, on the same points.

    PYTHONPATH=python python bench/bench_bootstrap.py [--n 1000] [--boot 10000] [--scipy-boot 300] [--rounds 3]

Baseline (PERFORMANCE.md, "honest benchmarking"): per replicate, resample the n models with numpy, take
scipy.spatial.ConvexHull of the resample, keep its upper chain (facets whose outward normal has a positive
DS component), and fit e_DS = k e_US^alpha + e_IR to it with a bounded scipy.optimize.curve_fit (trf;
k >= 0, 0.01 <= alpha <= 100, 0 <= e_IR <= 1; one start). The scipy loop runs only --scipy-boot replicates:
its time per replicate is extrapolated to --boot replicates, and the printout says so.

The machine is shared and noisy, so the two are interleaved for --rounds rounds; each round gives a ratio,
and the median ratio is reported. Absolute times depend on the machine and its load; the ratio is the result.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import warnings

# One BLAS thread: the baseline's linear algebra is 3x3, and idle OpenBLAS threads spinning after each
# curve_fit would steal the second core from the numba kernel that runs next.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402



def make_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n models below a saturating frontier e_DS = 0.6 e_US^2.5 + 0.15, with one-sided scatter (models are
    at or below the best reachable DS accuracy), US accuracy uniform in [0.05, 0.8]."""
    rng = np.random.default_rng(seed)
    us = rng.uniform(0.05, 0.8, n)
    ds = 1.0 - (0.6 * (1.0 - us) ** 2.5 + 0.15) - np.abs(rng.normal(0.0, 0.04, n))
    return us, ds


def scipy_loop(us, ds, n_boot: int, seed: int) -> tuple[float, int]:
    from scipy.optimize import curve_fit
    from scipy.spatial import ConvexHull

    def model(x, k, a, c):
        return k * x ** a + c

    rng = np.random.default_rng(seed)
    n = us.size
    failed = 0
    t0 = time.perf_counter()
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        pts = np.column_stack([us[idx], ds[idx]])
        hull = ConvexHull(pts)
        upper = np.unique(hull.simplices[hull.equations[:, 1] > 0])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                curve_fit(model, 1.0 - pts[upper, 0], 1.0 - pts[upper, 1], p0=[1.0, 2.0, 0.1],
                          bounds=([0.0, 0.01, 0.0], [np.inf, 100.0, 1.0]), maxfev=10000)
        except (RuntimeError, ValueError):
            failed += 1
    return time.perf_counter() - t0, failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--boot", type=int, default=10_000)
    p.add_argument("--scipy-boot", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    import numba
    import scipy

    from plateaulab.analysis import bootstrap_fit

    us, ds = make_points(args.n)
    t0 = time.perf_counter()
    bootstrap_fit(us, ds, n_boot=4, seed=0)  # compile or load the cached kernels
    warm = time.perf_counter() - t0

    print(f"date {datetime.date.today()}  machine {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, numba threads {numba.get_num_threads()} ({numba.threading_layer()} layer)")
    print(f"python {platform.python_version()}  numpy {np.__version__}  numba {numba.__version__}  "
          f"scipy {scipy.__version__}")
    print(f"n = {args.n} points, B = {args.boot} replicates (numba); scipy loop on {args.scipy_boot} replicates, "
          f"extrapolated per replicate to B = {args.boot}")
    print(f"numba warm-up (compile or cache load): {warm:.2f} s; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS')}")
    ratios = []
    for r in range(args.rounds):
        t_sp, failed = scipy_loop(us, ds, args.scipy_boot, seed=r)
        per_sp = t_sp / args.scipy_boot
        t0 = time.perf_counter()
        res = bootstrap_fit(us, ds, n_boot=args.boot, seed=r)
        t_nb = time.perf_counter() - t0
        per_nb = t_nb / args.boot
        ratios.append(per_sp / per_nb)
        print(f"round {r}: scipy {per_sp * 1e3:.3f} ms/replicate ({failed} failed of {args.scipy_boot}) -> "
              f"{per_sp * args.boot:.1f} s extrapolated for B = {args.boot}; numba {t_nb:.3f} s for B = {args.boot} "
              f"({per_nb * 1e6:.1f} us/replicate, {res.n_failed} failed, {res.n_on_bound} on bound); "
              f"ratio {ratios[-1]:.0f}x")
    print(f"median ratio over {args.rounds} rounds: {float(np.median(ratios)):.0f}x "
          f"(min {min(ratios):.0f}x, max {max(ratios):.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
