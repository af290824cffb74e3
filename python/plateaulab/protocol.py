"""The few-shot linear-probe protocol of big_vision's ``fewshot_lsr`` evaluator, in float64.

This module is the specification the backends are tested against. It reads like the protocol:

Sampling. For seed s, ``rng = numpy.random.default_rng(s)`` permutes the train indices of each
class in class order (one permutation per class, drawn in sequence from the one generator), and
the ``shots``-shot set is the first ``shots`` indices of every class, concatenated in class order.
The 1/5/10/25-shot sets of one seed are therefore nested, and the indices depend only on the
dataset's labels, the shots and the seed: every checkpoint and layer sees the same examples.

Features. X (n x D) is standardised with the few-shot set's own mean and population std (+1e-5),
the test set with the same statistics, and a constant bias column of 100 is appended ("large so
it's almost unregularized"). Targets are one-hot scaled to {-1, +1}: Y = 2 onehot - 1 (n x C).

Ridge. With N points and D' = D + 1 dims, the l2-regularised least-squares weights are

    (A) N >= D':  W = (X^T X + l2 I)^{-1} X^T Y
    (B) N <  D':  W = X^T (X X^T + l2 I)^{-1} Y

Diagonalise the smaller Gram matrix once, Q diag(e) Q^T, and both become
W = lhs diag(1 / (e + l2)) rhs with (A) lhs = Q, rhs = Q^T X^T Y and (B) lhs = X^T Q, rhs = Q^T Y,
so one eigendecomposition serves every l2. Accuracy is mean(argmax(X_test W) == y_test) over the
whole test split.

Selection of l2 without the test split. The hat matrix H(l2) = X (X^T X + l2 I)^{-1} X^T has, from
the same decomposition, (A) H = P diag(1/(e + l2)) P^T with P = X Q, and (B) H = Q diag(e/(e + l2)) Q^T.
The exact leave-one-out residual of ridge is r_i = (y_i - yhat_i) / (1 - H_ii), so the
leave-one-out prediction is y_i - r_i for every l2 at the cost of one pass over the diagonal.
The standardisation statistics are held fixed (as for any preprocessing fitted outside the
estimator, e.g. scikit-learn's RidgeClassifierCV). Alternatively a validation split is scored.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .errors import ProtocolError

BIAS_CONSTANT = 100.0
STD_EPS = 1e-5
DEFAULT_L2 = 1024.0
DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_SEEDS = (0, 1, 2)
# A test row is an argmax *tie* for a probe when its two best logits are closer than
# TIE_RTOL * max(1, |best|). Logits are O(1) (targets are +-1), so fp32 backends may order such
# rows differently from the float64 reference; they are counted, never hidden.
TIE_RTOL = 1e-4


@dataclass(frozen=True)
class ProbeTask:
    """One few-shot training set of a dataset: (shots, seed) and the train indices it selects."""

    shots: int
    seed: int
    indices: np.ndarray

    @property
    def n_train(self) -> int:
        return int(self.indices.size)


# --------------------------------------------------------------------------- sampling

def class_permutations(y_train: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.where(y_train == c)[0]) for c in range(num_classes)]


def fewshot_indices(y_train: np.ndarray, num_classes: int, shots: int, seed: int,
                    dataset: str = "?") -> np.ndarray:
    """Train indices of the ``shots``-shot set of ``seed``, in class order."""
    if shots <= 0:
        raise ProtocolError(f"dataset {dataset!r}: " "{param} must be positive, got " f"{shots}", param="shots")
    perms = class_permutations(y_train, num_classes, seed)
    for c, p in enumerate(perms):
        if p.size < shots:
            raise ProtocolError(
                f"dataset {dataset!r}: class {c} has {p.size} train examples, fewer than shots={shots}; "
                "lower {param} or ask for the shot counts that a class cannot fill to be skipped",
                param="shots")
    return np.concatenate([p[:shots] for p in perms])


def plan_tasks(y_train: np.ndarray, num_classes: int, shots, seeds, dataset: str = "?",
               on_short: str = "error") -> list[ProbeTask]:
    """Every (shots, seed) training set of a dataset. ``on_short='skip'`` drops, with a warning,
    the shot counts that some class cannot fill; ``'error'`` raises naming the class."""
    counts = np.bincount(y_train, minlength=num_classes)
    tasks = []
    for shots in shots:
        shots = int(shots)
        if shots <= 0:
            raise ProtocolError("{param} must be positive, got " f"{shots}", param="shots")
        short = np.flatnonzero(counts < shots)
        if short.size:
            c = int(short[0])
            msg = (f"dataset {dataset!r}: class {c} has {int(counts[c])} train examples, fewer than "
                   f"shots={shots}" + (f" ({short.size} classes are short)" if short.size > 1 else ""))
            if on_short == "skip":
                warnings.warn(msg + f"; skipping shots={shots} for this dataset", stacklevel=2)
                continue
            raise ProtocolError(msg + "; lower {param} or ask for the shot counts that a class cannot fill "
                                "to be skipped", param="shots")
        for seed in seeds:
            idx = fewshot_indices(y_train, num_classes, shots, int(seed), dataset)
            tasks.append(ProbeTask(shots=shots, seed=int(seed), indices=idx))
    return tasks


# --------------------------------------------------------------------------- ridge maths

def targets(y: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot labels scaled into {-1, +1}."""
    return 2.0 * np.eye(num_classes)[y] - 1.0


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x = (np.asarray(x, dtype=np.float64) - mean) / std
    return np.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)


def precompute_cache(x: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """Everything l2-independent: statistics, eigendecomposition, lhs and rhs (module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + STD_EPS
    xs = standardise(x, mean, std)
    yt = targets(y, num_classes)
    n, d = xs.shape
    if n >= d:
        eigs, q = np.linalg.eigh(xs.T @ xs)
        rhs = q.T @ (xs.T @ yt)
        lhs = q
        primal = True
    else:
        eigs, q = np.linalg.eigh(xs @ xs.T)
        rhs = q.T @ yt
        lhs = xs.T @ q
        primal = False
    return {"eigs": eigs, "q": q, "lhs": lhs, "rhs": rhs, "mean": mean, "std": std,
            "xs": xs, "y": yt, "primal": primal}


def ridge_weights(cache: dict, l2: float) -> np.ndarray:
    scaling = 1.0 / (cache["eigs"] + l2)
    return (cache["lhs"] * scaling[None, :]) @ cache["rhs"]


def hat_diagonal_and_fit(cache: dict, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """diag(H) and the fitted values H Y on the few-shot set, from the cached decomposition."""
    e, q = cache["eigs"], cache["q"]
    if cache["primal"]:
        p = cache["xs"] @ q                       # (n, D')
        f = 1.0 / (e + l2)
        h = np.einsum("ik,k,ik->i", p, f, p)
        fit = (p * f[None, :]) @ cache["rhs"]
    else:
        g = e / (e + l2)
        h = np.einsum("ik,k,ik->i", q, g, q)
        fit = (q * g[None, :]) @ cache["rhs"]
    return h, fit


def loo_scores(cache: dict, y: np.ndarray, l2: float) -> tuple[float, float]:
    """Exact leave-one-out (accuracy, mean squared error) of the ridge classifier at ``l2``."""
    h, fit = hat_diagonal_and_fit(cache, l2)
    yt = cache["y"]
    resid = (yt - fit) / np.maximum(1.0 - h, 1e-12)[:, None]
    loo_pred = yt - resid
    acc = float(np.mean(np.argmax(loo_pred, axis=1) == y))
    mse = float(np.mean(resid ** 2))
    return acc, mse


def argmax_with_ties(logits: np.ndarray, rtol: float = TIE_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class of each row, and whether its top-two logits are within the tie tolerance."""
    pred = np.argmax(logits, axis=1)
    if logits.shape[1] < 2:
        return pred, np.zeros(len(pred), dtype=bool)
    top2 = np.partition(logits, -2, axis=1)[:, -2:]
    best, second = top2[:, 1], top2[:, 0]
    tie = (best - second) <= rtol * np.maximum(1.0, np.abs(best))
    return pred, tie


# --------------------------------------------------------------------------- selection

SELECT_METHODS = ("fixed", "loo", "val")


def select_l2(l2s, method: str, loo_acc=None, loo_mse=None, val_acc=None) -> int:
    """Index of the chosen l2 for one probe. Never looks at the test split.

    fixed: the first l2 of the list. loo: highest leave-one-out accuracy, then lowest leave-one-out
    squared error, then the larger l2. val: highest validation accuracy, then the larger l2.
    """
    l2s = np.asarray(l2s, dtype=np.float64)
    if method == "fixed":
        return 0
    if method == "loo":
        keys = (l2s, -np.asarray(loo_mse), np.asarray(loo_acc))
    elif method == "val":
        keys = (l2s, np.asarray(val_acc))
    else:
        raise ProtocolError("unknown {param} " f"{method!r}; expected one of {', '.join(SELECT_METHODS)}",
                            param="select")
    return int(np.lexsort(keys)[-1])


def check_l2s(l2s) -> tuple[float, ...]:
    out = tuple(float(v) for v in np.atleast_1d(np.asarray(l2s, dtype=np.float64)))
    if not out:
        raise ProtocolError("at least one {param} value is needed", param="l2")
    bad = [v for v in out if not np.isfinite(v) or v <= 0]
    if bad:
        raise ProtocolError("{param} must be positive and finite, got " f"{bad[0]}; the default is {DEFAULT_L2:g}",
                            param="l2")
    if len(set(out)) != len(out):
        raise ProtocolError("{param} values must be distinct, got " f"{list(out)}", param="l2")
    return out
