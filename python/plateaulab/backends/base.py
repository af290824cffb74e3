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
    predictions[t, l, i]     predicted class of test row i, only when asked for (a diagnostic)
    """

    correct: np.ndarray
    ties: np.ndarray
    n_test: int
    loo_acc: np.ndarray | None = None
    loo_mse: np.ndarray | None = None
    val_correct: np.ndarray | None = None
    n_val: int = 0
    predictions: np.ndarray | None = None

    @classmethod
    def empty(cls, n_tasks: int, n_l2: int, n_test: int, loo: bool, n_val: int) -> "BlockScores":
        z = lambda dt: np.zeros((n_tasks, n_l2), dtype=dt)  # noqa: E731
        return cls(correct=z(np.int64), ties=z(np.int64), n_test=n_test,
                   loo_acc=z(np.float64) if loo else None, loo_mse=z(np.float64) if loo else None,
                   val_correct=z(np.int64) if n_val else None, n_val=n_val)


@dataclass
class StagedSplit:
    """A test (or validation) split that a backend's ``stage`` already read, converted to centred
    float32 and, for a GPU backend, uploaded: the run loop stages block k+1 in a reader thread while
    block k is probed, and passes this object to ``probe_block`` in place of the raw array.

    array   centred float32 features on the backend's device (x - mean_ref)
    mean_ref   the centring vector, float64 (the test split's mean; a val split reuses the test's)
    nonfinite  NaN/Inf values found in the split while staging it (the run loop refuses the block)
    """

    array: object
    mean_ref: object
    nonfinite: int = 0

    @property
    def shape(self):
        return self.array.shape

    def __len__(self) -> int:
        return int(self.array.shape[0])


@dataclass
class StagedTrain:
    """The train rows a block's tasks use, read once and put on the backend's device as stored
    (fp16 stays fp16): ``array[row_of[i]]`` is train row i. Made by ``stage`` with the test split."""

    array: object
    row_of: np.ndarray
    nonfinite: int = 0
