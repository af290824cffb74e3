"""Kernel micro-benchmarks (pytest-benchmark), outside the test suite (testpaths is tests/).

    python -m pytest bench --benchmark-only                       # time every kernel, print the table
    python -m pytest bench --benchmark-only --benchmark-save=NAME  # keep the figures (.benchmarks/)
    python -m pytest bench --benchmark-only --benchmark-compare    # against the last saved run
    python -m pytest bench --benchmark-disable -q                  # CI: each body runs once, nothing timed

Kernels, each parametrised by shape:
  score_argmax         the fused arg-max / correct / near-tie count (csrc/cpu/score_cpu.cpp; on a GPU
                       csrc/cuda/score_cuda.cu), on one chunk of stacked logits (rows x probes x C)
  small_ridge          the small dual-system solver: its host emulation (_core.small_ridge_emulated,
                       one thread) on the CPU, the shared-memory kernel on a GPU
  upper_hull           analysis.upper_hull (numba monotone chain) on n models
  powerlaw_fit         analysis.fit_saturating_power_law, eq. (1) on the rising hull (profile intervals on)
  bootstrap_batch      analysis.bootstrap_fit: one batch of B model-bootstrap replicates
  noise_batch          analysis.noise.noise_bootstrap: one batch of B measurement-noise replicates

Every benchmark checks what its kernel returned, so a broken kernel fails here too (with or without
timing); none asserts a time. numba kernels are compiled (or loaded from their cache) before timing.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench_bootstrap import make_points  # the bootstrap benchmark's generated models below a frontier

from plateaulab import protocol as P

SCORER_SHAPES = [  # (rows, probes, classes): a reference chunk (16 MiB of logits), 1-shot heads, a paper dataset
    pytest.param((582, 72, 100), id="582x72x100"),
    pytest.param((4096, 8, 100), id="4096x8x100"),
    pytest.param((4096, 12, 37), id="4096x12x37"),
]
SMALL_SHAPES = [  # (tasks, n = 1-shot rows = classes, D + 1, l2 values)
    pytest.param((3, 37, 769, 1), id="3x37x769-l1"),
    pytest.param((3, 100, 769, 1), id="3x100x769-l1"),
    pytest.param((3, 170, 769, 2), id="3x170x769-l2"),
]
POINTS = [pytest.param(n, id=f"n{n}") for n in (100, 1000, 10_000)]
BOOT = [pytest.param((n, b), id=f"n{n}-B{b}") for n, b in ((100, 1000), (1000, 1000))]


def _cuda_ops():
    from plateaulab.backends import available_backends, get_backend

    why = available_backends()["cuda"]
    if why != "available":
        pytest.skip(f"cuda not available: {why}")
    return get_backend("cuda").get_ops()


# --------------------------------------------------------------------------- the fused scorer

def _logits(rows, probes, C, seed=0):
    rng = np.random.default_rng([rows, probes, C, seed])
    logits = rng.standard_normal((rows, probes * C), dtype=np.float32)
    bias = rng.standard_normal(probes * C, dtype=np.float32)
    labels = rng.integers(0, C, rows).astype(np.int64)
    return logits, bias, labels


def _reference_counts(logits, bias, labels, C):
    full = (logits + bias).reshape(len(labels), -1, C)
    return (full.argmax(axis=2) == labels[:, None]).sum(axis=0)


@pytest.mark.parametrize("shape", SCORER_SHAPES)
def test_score_argmax_cpu(benchmark, shape):
    from plateaulab import _core

    rows, probes, C = shape
    logits, bias, labels = _logits(rows, probes, C)
    correct, ties = np.zeros(probes, np.int64), np.zeros(probes, np.int64)

    def run():
        correct[:] = ties[:] = 0
        _core.score_argmax(logits, bias, labels, C, P.TIE_RTOL, correct, ties)

    benchmark(run)
    # random logits: near-ties are possible but the hit counts must be those of a plain argmax within them
    assert np.all(np.abs(correct - _reference_counts(logits, bias, labels, C)) <= ties)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SCORER_SHAPES)
def test_score_argmax_cuda(benchmark, shape):
    ops = _cuda_ops()
    rows, probes, C = shape
    logits, bias, labels = _logits(rows, probes, C)
    xp = ops.xp
    d_logits, d_bias, d_labels = xp.asarray(logits), xp.asarray(bias), ops.labels(labels)
    counts = ops.counters(probes)

    def run():
        counts[0].fill(0)
        counts[1].fill(0)
        ops.score_argmax(d_logits, d_bias, d_labels, C, counts)
        return ops.to_host_counts(counts)          # waits for the kernel

    correct, ties = benchmark(run)
    assert np.all(np.abs(correct - _reference_counts(logits, bias, labels, C)) <= ties)


# --------------------------------------------------------------------------- the small-system solver

def _small_problem(B, n, dp, L, seed=0):
    rng = np.random.default_rng([B, n, dp, seed])
    xs = rng.standard_normal((B, n, dp))
    xs[:, :, -1] = P.BIAS_CONSTANT
    labels = np.stack([rng.permutation(n) for _ in range(B)]).astype(np.int64)   # 1-shot: each class once
    l2s = np.geomspace(1024.0, 16.0, L)
    return xs, labels, l2s


def _check_small(xs, labels, C, l2s, a, w, ok):
    assert np.all(ok)
    b, j = xs.shape[0] - 1, len(l2s) - 1
    k = xs[b] @ xs[b].T + l2s[j] * np.eye(xs.shape[1])
    y = 2.0 * np.eye(C)[labels[b]] - 1.0
    np.testing.assert_allclose(k @ a[b, j], y, rtol=0, atol=1e-6 * np.abs(y).max() * np.linalg.norm(k, 2))
    np.testing.assert_allclose(w[b, j], xs[b].T @ a[b, j], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_small_ridge_host_emulation(benchmark, shape):
    from plateaulab.backends import get_backend

    B, n, dp, L = shape
    xs, labels, l2s = _small_problem(B, n, dp, L)
    ops = get_backend("cpu").get_ops()              # small_ridge: the kernel's body on one host thread
    a, w, ok = benchmark(ops.small_ridge, xs, labels, n, l2s, True)
    _check_small(xs, labels, n, l2s, a, w, ok)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_small_ridge_cuda(benchmark, shape):
    ops = _cuda_ops()
    B, n, dp, L = shape
    if n > ops.small_max_n:
        pytest.skip(f"n = {n} is above this device's bound small_max_n = {ops.small_max_n}")
    xs, labels, l2s = _small_problem(B, n, dp, L)
    d_xs, d_labels = ops.xp.asarray(xs), ops.xp.asarray(labels)
    a, w, ok = benchmark(ops.small_ridge, d_xs, d_labels, n, l2s, True)   # returns after the kernel (ok is host)
    _check_small(xs, labels, n, l2s, ops.to_host(a), ops.to_host(w), ok)


# --------------------------------------------------------------------------- the analysis kernels

@pytest.fixture(scope="module")
def warm():
    """Compile (or load from numba's cache) every analysis kernel once, before any is timed."""
    from plateaulab.analysis import bootstrap_fit, fit_saturating_power_law, upper_hull
    from plateaulab.analysis.noise import noise_bootstrap

    us, ds = make_points(50)
    upper_hull(us, ds)
    fit_saturating_power_law(us, ds)
    bootstrap_fit(us, ds, n_boot=20)
    noise_bootstrap(us, ds, 10_000, n_boot=20)


@pytest.mark.parametrize("n", POINTS)
def test_upper_hull(benchmark, warm, n):
    from plateaulab.analysis import upper_hull
    from plateaulab.analysis.hull import upper_hull_reference

    us, ds = make_points(n)
    chain = benchmark(upper_hull, us, ds)
    assert np.array_equal(chain, upper_hull_reference(us, ds))


@pytest.mark.parametrize("n", POINTS[:2])
def test_powerlaw_fit(benchmark, warm, n):
    from plateaulab.analysis import fit_saturating_power_law

    us, ds = make_points(n)
    fit = benchmark(fit_saturating_power_law, us, ds)
    # make_points plants e_DS = 0.6 e_US^2.5 + 0.15 below a one-sided scatter: the hull finds the frontier
    assert fit.success and 0.05 < fit.e_ir < 0.25 and 1.0 < fit.alpha < 5.0


@pytest.mark.parametrize("shape", BOOT)
def test_bootstrap_batch(benchmark, warm, shape):
    from plateaulab.analysis import bootstrap_fit

    n, b = shape
    us, ds = make_points(n)
    res = benchmark(bootstrap_fit, us, ds, n_boot=b, seed=1)
    assert res.n_boot == b and res.n_failed == 0
    lo, hi = res.ci["e_ir"]
    assert lo <= hi and 0.0 <= lo and hi <= 1.0


@pytest.mark.parametrize("shape", BOOT)
def test_noise_batch(benchmark, warm, shape):
    from plateaulab.analysis.noise import noise_bootstrap

    n, b = shape
    us, ds = make_points(n)
    res = benchmark(noise_bootstrap, us, ds, 10_000, n_boot=b, seed=1)
    assert res.n_boot == b and res.n_failed < b
    lo, hi = res.ci["e_ir"]
    assert lo <= hi
