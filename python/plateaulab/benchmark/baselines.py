"""Baselines the probe engines are benchmarked against: the same protocol written the ways others would.

All three take one (checkpoint, dataset, layer) block -- its train and test features and labels --
the block's (shots, seed) tasks from ``plateaulab.protocol.plan_tasks`` and the l2 values, and
return the number of correctly classified test rows of every probe, a host ``(T, L)`` int64 array
(row t: ``tasks[t]``, column j: ``l2s[j]``). None of them counts argmax ties; compare them with the
float64 reference (``get_backend("numpy").probe_block``) or with an engine's own ``ties``, which bound
the honest difference (``plateaulab.benchmark.agreement``).

    bigvision_loop_block   big_vision's ``fewshot_lsr`` loop transcribed to numpy (float64 or float32),
                           one probe at a time, on the CPU.
    naive_port_block       a straightforward port of the protocol to an array module ``xp`` (CuPy on a
                           GPU; numpy works too): per task gather, standardise, Gram matrix; one
                           batched ``xp.linalg.eigh`` per group of equally sized tasks; then per l2 one
                           W and one GEMM over the test split, argmax and count on the device.
    bigvision_jax_block    big_vision's ``fewshot_lsr`` in JAX as published: a jitted cache per task
                           and a jitted accuracy function per l2, on JAX's default device.

``available_baselines()`` says which can run here. The module imports with numpy alone; CuPy and
JAX are imported only when asked for. ``plateaulab bench`` runs the first two; bench/baselines.py
re-exports this module for the project's bench scripts.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from ..protocol import BIAS_CONSTANT, STD_EPS  # the appended bias feature (100); added to the few-shot std (1e-5)


# --------------------------------------------------------------------------- big_vision loop, numpy

def bigvision_loop_block(x_train, y_train, x_test, y_test, tasks, l2s, C, dtype, reload=None):
    """big_vision's fewshot_lsr transcribed to numpy, one probe at a time, as published.
    With ``reload``, every probe reads its block from the store again (a loop over probes that
    shares nothing between them)."""
    x_test = np.asarray(x_test, dtype=dtype)
    correct = np.zeros((len(tasks), len(l2s)), np.int64)
    for t, task in enumerate(tasks):
        if reload is not None:
            block = reload()
            x_train, x_test = block.train, np.asarray(block.test, dtype=dtype)
        # _precompute_cache
        x = np.asarray(x_train[task.indices], dtype=dtype)
        y = y_train[task.indices]
        mean = x.mean(0, keepdims=True)
        std = x.std(0, keepdims=True) + 1e-5
        x = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
        yt = 2.0 * np.eye(C, dtype=dtype)[y] - 1.0
        if x.shape[0] >= x.shape[1]:
            eigs, q = np.linalg.eigh(x.T @ x)
            rhs, lhs = q.T @ (x.T @ yt), q
        else:
            eigs, q = np.linalg.eigh(x @ x.T)
            rhs, lhs = q.T @ yt, x.T @ q
        for j, l2 in enumerate(l2s):
            # _eig_fewshot_acc_fn
            xt = np.pad((x_test - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
            w = (lhs * (1.0 / (eigs + l2))[None, :]) @ rhs
            correct[t, j] = np.count_nonzero(np.argmax(xt @ w, axis=1) == y_test)
    return correct


# --------------------------------------------------------------------------- straightforward port

def _to_host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)   # cupy.ndarray.get() copies to the host


def naive_port_block(xp, x_train, y_train, x_test, y_test, tasks, l2s, C, dtype=np.float32):
    """The protocol ported straightforwardly to the array module ``xp`` (``cupy``; ``numpy`` also works).

    What a user porting big_vision's evaluator to CuPy would write, with the one batching such a
    port does: the eigendecompositions of tasks with the same number of train rows (the seeds of
    one shot count) are stacked into a ``(B, s, s)`` batch and solved by one ``xp.linalg.eigh``.
    Everything else is per probe, as in the protocol:

    * the block's features and test labels are uploaded with ``xp.asarray`` once per block (in
      ``dtype``); the task's rows are gathered on the device;
    * per task: standardise with the few-shot mean and population std (+1e-5), pad the bias column
      of 100, the Gram matrix of the smaller side (``X^T X`` if n >= D + 1, else ``X X^T``), and
      the test split standardised and padded with the task's statistics;
    * per (task, l2): ``W = lhs diag(1 / (e + l2)) rhs``, one GEMM ``X_test W``, argmax and the
      count of correct rows, kept on the device.

    Nothing is folded or fused (no standardisation folded into W, no W stacked across probes, no
    custom argmax kernel). The counts stay in a device array that is copied to the host once, at
    the end of the block. Returns host int64 counts of shape ``(len(tasks), len(l2s))``.
    """
    dtype = np.dtype(dtype)
    T, L = len(tasks), len(l2s)
    xtr = xp.asarray(x_train, dtype=dtype)
    xte = xp.asarray(x_test, dtype=dtype)
    yte = xp.asarray(y_test)
    ytr = np.asarray(y_train)
    counts = xp.zeros((T, L), dtype=xp.int64)
    eye = xp.eye(C, dtype=dtype)

    groups: dict[int, list[int]] = {}
    for t, task in enumerate(tasks):
        groups.setdefault(task.n_train, []).append(t)

    for n, members in groups.items():
        per_task = []
        grams = []
        for t in members:
            idx = xp.asarray(tasks[t].indices)
            x = xtr[idx]
            mean = x.mean(axis=0, keepdims=True)
            std = x.std(axis=0, keepdims=True) + dtype.type(STD_EPS)
            xs = xp.pad((x - mean) / std, ((0, 0), (0, 1)), mode="constant", constant_values=BIAS_CONSTANT)
            yt = 2 * eye[xp.asarray(ytr[tasks[t].indices])] - 1
            primal = xs.shape[0] >= xs.shape[1]
            grams.append(xs.T @ xs if primal else xs @ xs.T)
            per_task.append((t, xs, yt, mean, std, primal))
        eigs, qs = xp.linalg.eigh(xp.stack(grams))          # one batched eigh per group
        del grams
        for k, (t, xs, yt, mean, std, primal) in enumerate(per_task):
            e, q = eigs[k], qs[k]
            if primal:
                lhs, rhs = q, q.T @ (xs.T @ yt)
            else:
                lhs, rhs = xs.T @ q, q.T @ yt
            xt = xp.pad((xte - mean) / std, ((0, 0), (0, 1)), mode="constant", constant_values=BIAS_CONSTANT)
            for j, l2 in enumerate(l2s):
                w = (lhs * (1 / (e + dtype.type(l2)))[None, :]) @ rhs
                pred = xp.argmax(xt @ w, axis=1)
                counts[t, j] = xp.count_nonzero(pred == yte)
            del xt
    return _to_host(counts).astype(np.int64)


# --------------------------------------------------------------------------- big_vision in JAX

def _import_jax():
    """JAX, told first not to take 75% of the GPU's memory at its first use (which would leave the
    engine, CuPy, short); a value the caller set is kept."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    return jax


@functools.lru_cache(maxsize=None)
def _jax_fns():
    """big_vision's two jitted functions, built once so that their compilation caches persist."""
    jax = _import_jax()
    import jax.numpy as jnp

    def precompute_cache(x, y, num_classes):
        # Standardise with the few-shot statistics; population std, as jnp.std.
        mean = jnp.mean(x, axis=0, keepdims=True)
        std = jnp.std(x, axis=0, keepdims=True) + STD_EPS
        x = jnp.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
        y = 2.0 * jax.nn.one_hot(y, num_classes, dtype=x.dtype) - 1.0
        n, d = x.shape
        if n >= d:   # shapes are static under jit: the branch is chosen at trace time
            eigs, q = jnp.linalg.eigh(x.T @ x)
            lhs, rhs = q, q.T @ (x.T @ y)
        else:
            eigs, q = jnp.linalg.eigh(x @ x.T)
            lhs, rhs = x.T @ q, q.T @ y
        # What big_vision caches: the spectrum, both sides of W and the statistics.
        return {"eigs": eigs, "lhs": lhs, "rhs": rhs, "mean": mean, "std": std}

    def eig_fewshot_acc_fn(cache, x_test, y_test, l2_reg):
        x_test = jnp.pad((x_test - cache["mean"]) / cache["std"], ((0, 0), (0, 1)),
                         constant_values=BIAS_CONSTANT)
        scaling = (1.0 / (cache["eigs"] + l2_reg)).reshape(1, -1)
        w = (cache["lhs"] * scaling) @ cache["rhs"]
        preds = jnp.argmax(x_test @ w, axis=1)
        # big_vision returns the mean; the count is the same number before the division.
        return jnp.sum(preds == y_test)

    return (jax, jax.jit(precompute_cache, static_argnums=(2,)), jax.jit(eig_fewshot_acc_fn))


def bigvision_jax_block(x_train, y_train, x_test, y_test, tasks, l2s, C):
    """big_vision's ``fewshot_lsr`` evaluator as published, in JAX, on JAX's default device.

    Per (shots, seed) task, as big_vision's ``compute_fewshot_metrics``: the task's train rows are
    gathered on the host and put on the device, and a jitted ``_precompute_cache`` standardises
    them, pads the bias column of 100, forms the smaller Gram matrix and returns its
    eigendecomposition with ``lhs``, ``rhs``, the mean and the std. Per l2 a jitted
    ``_eig_fewshot_acc_fn`` standardises and pads the test split, forms W, takes the argmax of
    ``X_test W`` and counts the correct rows (big_vision returns their mean). The l2 is a traced
    argument, so the accuracy function compiles once per test-split shape, and the cache once per
    distinct number of train rows; the first block pays those compilations, so a harness should
    time a block after a warm-up one.

    The test split and its labels are put on the device once per block (big_vision keeps the
    representations of a dataset in memory across seeds and shot counts). The per-l2 counts of one
    task are fetched to the host together, once per task (big_vision fetches once per task).

    Precision: JAX's default dtype, float32 (features of any dtype are cast to float32 on the host).
    The published evaluator runs these two functions on the host CPU (``u.jit_cpu``); here they run
    on whatever ``jax.devices()[0]`` is, the GPU when the harness compares on a GPU. Note that on
    NVIDIA GPUs JAX's default matmul precision lets XLA use TF32 for float32 matrix products
    (``jax_default_matmul_precision`` unset). This function sets and records nothing about that:
    the benchmark harness states the setting it ran under.
    """
    jax, precompute_cache, acc_fn = _jax_fns()
    y_train = np.asarray(y_train)
    x_test_d = jax.device_put(np.asarray(x_test, dtype=np.float32))
    y_test_d = jax.device_put(np.asarray(y_test, dtype=np.int32))
    correct = np.zeros((len(tasks), len(l2s)), np.int64)
    for t, task in enumerate(tasks):
        x = jax.device_put(np.asarray(x_train[task.indices], dtype=np.float32))
        y = jax.device_put(np.asarray(y_train[task.indices], dtype=np.int32))
        cache = precompute_cache(x, y, int(C))
        accs = [acc_fn(cache, x_test_d, y_test_d, np.float32(l2)) for l2 in l2s]
        correct[t] = np.asarray(jax.device_get(accs), dtype=np.int64)
    return correct


# --------------------------------------------------------------------------- availability

def _cupy_reason() -> str:
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return f"cupy is not importable ({type(exc).__name__}: {exc}); naive_port_block runs with xp=numpy only"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"cupy finds no CUDA device ({type(exc).__name__}: {exc})"
    return "available" if n > 0 else "cupy finds no CUDA device"


def _jax_reason() -> str:
    try:
        jax = _import_jax()
    except Exception as exc:
        return f"jax is not importable ({type(exc).__name__}: {exc})"
    try:
        jax.devices()
    except Exception as exc:
        return f"jax has no usable device ({type(exc).__name__}: {exc})"
    return "available"


def available_baselines() -> dict[str, str]:
    """Each baseline with 'available' or the reason it cannot run here.

    ``naive_port`` is about its GPU form (xp=cupy); with xp=numpy it always runs. ``bigvision_jax``
    is 'available' whenever JAX imports, on any device: the harness records ``jax.devices()``.
    """
    return {
        "bigvision_loop": "available",
        "naive_port": _cupy_reason(),
        "bigvision_jax": _jax_reason(),
    }


__all__ = ["bigvision_loop_block", "naive_port_block", "bigvision_jax_block", "available_baselines"]
