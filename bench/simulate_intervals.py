"""The simulations behind docs/ANALYSIS.md's figures on the rising hull and the intervals.

    python bench/simulate_intervals.py [--zoos 200] [--boot 200] [--json out.json]

Zoos come from plateaulab.analysis.simulate (25 models on the frontier e_DS = 0.5 e_US^2 + 0.2, 60 below it,
binomial test noise). For each design it reports the rising-hull and whole-hull estimates of the saturation
(mean and std against the truth, 0.8) and how often each 95% interval covers the truth: the measurement-noise
interval (analysis.noise, centred), its plain percentile version, and the model bootstrap (analysis.bootstrap).
A coverage of c over N zoos has binomial standard error sqrt(c (1 - c) / N).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from plateaulab.analysis import bootstrap_fit, fit_saturating_power_law
from plateaulab.analysis.noise import noise_bootstrap
from plateaulab.analysis.simulate import simulated_zoo

DESIGNS = {
    "clean, n_test 10,000": dict(n_test=10_000, below_range="frontier"),
    "clean, n_test 2,000": dict(n_test=2_000, below_range="frontier"),
    "PROTOCOL §4 (below-frontier models over the full US range), n_test 10,000": dict(n_test=10_000, below_range="full"),
}


def run_design(opts: dict, zoos: int, boot: int, seed0: int) -> dict:
    rising, whole, cover = [], [], {"noise": 0, "noise_plain": 0, "noise_whole_hull": 0, "models": 0}
    widths = {"noise": [], "models": []}
    for z in range(zoos):
        zoo = simulated_zoo(seed0 + z, **opts)
        truth = zoo.saturation
        nb = noise_bootstrap(zoo.us, zoo.ds, zoo.n_test, zoo.n_test, n_boot=boot, seed=z)
        nb_tail = noise_bootstrap(zoo.us, zoo.ds, zoo.n_test, zoo.n_test, n_boot=boot, seed=z, tail=True)
        mb = bootstrap_fit(zoo.us, zoo.ds, boot, seed=z)
        rising.append(nb.fit.saturation - truth)
        whole.append(fit_saturating_power_law(zoo.us, zoo.ds, tail=True, profile=False).saturation - truth)
        s = nb.samples[:, 3][np.isfinite(nb.samples[:, 3])]
        lo_p, hi_p = np.quantile(s, [0.025, 0.975])
        for name, (lo, hi) in (("noise", nb.ci["saturation"]), ("noise_plain", (lo_p, hi_p)),
                               ("noise_whole_hull", nb_tail.ci["saturation"]), ("models", mb.ci["saturation"])):
            cover[name] += bool(lo <= truth <= hi)
        widths["noise"].append(nb.ci["saturation"][1] - nb.ci["saturation"][0])
        widths["models"].append(mb.ci["saturation"][1] - mb.ci["saturation"][0])
    out = {"zoos": zoos, "replicates": boot,
           "rising_bias": float(np.mean(rising)), "rising_std": float(np.std(rising)),
           "whole_bias": float(np.mean(whole)), "whole_std": float(np.std(whole)),
           "median_width": {k: float(np.median(v)) for k, v in widths.items()}}
    for name, c in cover.items():
        p = c / zoos
        out[f"covered_{name}"] = c
        out[f"coverage_{name}"] = p
        out[f"coverage_{name}_se"] = math.sqrt(p * (1 - p) / zoos)
    return out


def figure(path, results_zoos: int = 200) -> None:
    """One zoo of PROTOCOL §4's design with both fits, and the two estimators' errors over the clean zoos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plateaulab.analysis.hull import upper_hull

    for seed in range(21_000, 21_200):     # the first zoo whose hull has a tail that moves the whole-hull fit
        zoo = simulated_zoo(seed, below_range="full")
        rise = fit_saturating_power_law(zoo.us, zoo.ds, profile=False)
        whole = fit_saturating_power_law(zoo.us, zoo.ds, tail=True, profile=False)
        if abs(rise.saturation - whole.saturation) > 0.02:
            break
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.scatter(zoo.us[~zoo.on_frontier], zoo.ds[~zoo.on_frontier], s=10, color="#9bb3cf", label="models below the frontier")
    a.scatter(zoo.us[zoo.on_frontier], zoo.ds[zoo.on_frontier], s=10, color="#1f3b63", label="models on the frontier")
    h = upper_hull(zoo.us, zoo.ds)
    a.plot(zoo.us[h], zoo.ds[h], "-", color="#444", lw=0.8, label="upper hull")
    g = np.linspace(0.25, 1.0, 200)
    a.plot(g, 1 - (0.5 * (1 - g) ** 2 + 0.2), "k:", lw=1.2, label="true frontier (saturation 0.80)")
    a.plot(g, rise.predict(g), "-", color="#c0392b", lw=1.5, label=f"rising-hull fit ({rise.saturation:.3f})")
    a.plot(g, whole.predict(g), "--", color="#7b5ea7", lw=1.3, label=f"whole-hull fit ({whole.saturation:.3f})")
    a.set_xlabel("US accuracy")
    a.set_ylabel("DS accuracy")
    a.set_title(f"zoo {seed}: below-frontier models over the full US range", fontsize=9)
    a.legend(fontsize=7, loc="lower right")
    err_r, err_w = [], []
    for z in range(results_zoos):
        zz = simulated_zoo(20_000 + z)
        err_r.append(fit_saturating_power_law(zz.us, zz.ds, profile=False).saturation - zz.saturation)
        err_w.append(fit_saturating_power_law(zz.us, zz.ds, tail=True, profile=False).saturation - zz.saturation)
    bins = np.linspace(-0.06, 0.03, 46)
    b.hist(err_w, bins=bins, color="#7b5ea7", alpha=0.6, label=f"whole hull: {np.mean(err_w):+.4f} +- {np.std(err_w):.4f}")
    b.hist(err_r, bins=bins, color="#c0392b", alpha=0.6, label=f"rising hull: {np.mean(err_r):+.4f} +- {np.std(err_r):.4f}")
    b.axvline(0, color="k", lw=0.8)
    b.set_xlabel("fitted saturation - true saturation")
    b.set_ylabel("zoos")
    b.set_title(f"{results_zoos} clean zoos (n_test 10,000)", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoos", type=int, default=200)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("--figure", default=None, help="also draw docs/figures/rising_hull.png's figure to this path")
    args = ap.parse_args(argv)
    if args.figure:
        figure(args.figure, args.zoos)
    results = {}
    for i, (name, opts) in enumerate(DESIGNS.items()):
        t0 = time.perf_counter()
        results[name] = r = run_design(opts, args.zoos, args.boot, 20_000 + 1_000 * i)
        print(f"## {name} ({args.zoos} zoos, {args.boot} replicates, {time.perf_counter() - t0:.0f} s)")
        print(f"  rising hull: saturation error {r['rising_bias']:+.4f} +- {r['rising_std']:.4f}")
        print(f"  whole hull:  saturation error {r['whole_bias']:+.4f} +- {r['whole_std']:.4f}")
        for key in ("noise", "noise_plain", "noise_whole_hull", "models"):
            print(f"  95% {key:17s} covers {r[f'covered_{key}']}/{args.zoos} = {r[f'coverage_{key}']:.3f} "
                  f"(+- {r[f'coverage_{key}_se']:.3f})")
        print(f"  median widths: {r['median_width']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
