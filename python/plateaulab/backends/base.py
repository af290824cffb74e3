"""What every backend returns for one block."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BlockScores:
    """Scores of T tasks x L l2 values on one (checkpoint, dataset, layer) block.

    correct[t, l]   test rows whose arg-max equals the label
    ties[t, l]      test rows whose two best logits are within protocol.TIE_RTOL (counted, see there)
    loo_acc, loo_mse[t, l]   exact leave-one-out accuracy / squared error on the few-shot set (or None)
    val_correct[t, l]        validation rows classified correctly (or None)
    """

    correct: np.ndarray
    ties: np.ndarray
    n_test: int
    loo_acc: np.ndarray | None = None
    loo_mse: np.ndarray | None = None
    val_correct: np.ndarray | None = None
    n_val: int = 0

    @classmethod
    def empty(cls, n_tasks: int, n_l2: int, n_test: int, loo: bool, n_val: int) -> "BlockScores":
        z = lambda dt: np.zeros((n_tasks, n_l2), dtype=dt)  # noqa: E731
        return cls(correct=z(np.int64), ties=z(np.int64), n_test=n_test,
                   loo_acc=z(np.float64) if loo else None, loo_mse=z(np.float64) if loo else None,
                   val_correct=z(np.int64) if n_val else None, n_val=n_val)
