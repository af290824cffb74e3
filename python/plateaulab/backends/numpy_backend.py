"""The float64 reference backend: the protocol of plateaulab.protocol, one probe at a time.

Slow on purpose: it reads like big_vision's evaluator and is what the other backends are tested
against. Per task it standardises the test split with the few-shot statistics and, per l2, forms
W and scores argmax(X_test W) in float64.
"""

from __future__ import annotations

import numpy as np

from .. import protocol as P
from .base import BlockScores

name = "numpy"


def is_available() -> bool:
    return True


def unavailable_reason() -> str:
    return ""


def device() -> str:
    return "cpu (numpy float64 reference)"


def _score(x_std, y, w):
    pred, tie = P.argmax_with_ties(x_std @ w)
    return int(np.count_nonzero(pred == y)), int(np.count_nonzero(tie)), pred


def probe_block(x_train, y_train, x_test, y_test, tasks, l2s, num_classes, *,
                x_val=None, y_val=None, loo=False, predictions=False) -> BlockScores:
    x_test = np.asarray(x_test, dtype=np.float64)
    x_val = None if x_val is None else np.asarray(x_val, dtype=np.float64)
    out = BlockScores.empty(len(tasks), len(l2s), len(y_test), loo, 0 if y_val is None else len(y_val))
    if predictions:
        out.predictions = np.zeros((len(tasks), len(l2s), len(y_test)), dtype=np.int32)
    for t, task in enumerate(tasks):
        x = np.asarray(x_train[task.indices], dtype=np.float64)
        y = y_train[task.indices]
        cache = P.precompute_cache(x, y, num_classes)
        xt = P.standardise(x_test, cache["mean"], cache["std"])
        xv = None if x_val is None else P.standardise(x_val, cache["mean"], cache["std"])
        for j, l2 in enumerate(l2s):
            w = P.ridge_weights(cache, l2)
            out.correct[t, j], out.ties[t, j], pred = _score(xt, y_test, w)
            if predictions:
                out.predictions[t, j] = pred
            if loo:
                out.loo_acc[t, j], out.loo_mse[t, j] = P.loo_scores(cache, y, l2)
            if xv is not None:
                out.val_correct[t, j] = _score(xv, y_val, w)[0]
    return out
