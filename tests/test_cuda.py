"""GPU-only checks of the CUDA kernels (skipped cleanly without a GPU, CuPy or the CUDA module).

The cuda backend as a whole is also compared with the float64 reference by tests/test_backends.py,
which parametrises over every available backend.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from plateaulab import protocol as P
from plateaulab.backends import available_backends

pytestmark = pytest.mark.gpu
if available_backends()["cuda"] != "available":
    pytest.skip(f"cuda backend unavailable: {available_backends()['cuda']}", allow_module_level=True)

import cupy as cp  # noqa: E402

from plateaulab import _cuda  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.integers(1, 6), st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_cuda_scorer_matches_numpy(rows, groups, C, seed):
    rng = np.random.default_rng(seed)
    logits = np.round(rng.normal(size=(rows, groups * C)) * 4).astype(np.float32) / 4
    bias = np.round(rng.normal(size=groups * C) * 4).astype(np.float32) / 4
    labels = rng.integers(0, C, rows).astype(np.int64)
    d_logits, d_bias, d_labels = cp.asarray(logits), cp.asarray(bias), cp.asarray(labels)
    correct, ties = cp.zeros(groups, cp.uint64), cp.zeros(groups, cp.uint64)
    _cuda.score_argmax(d_logits.data.ptr, rows, groups * C, d_bias.data.ptr, d_labels.data.ptr, groups, C,
                       P.TIE_RTOL, correct.data.ptr, ties.data.ptr, 0)
    z = (logits + bias).reshape(rows, groups, C).astype(np.float64)
    for g in range(groups):
        pred, tie = P.argmax_with_ties(z[:, g, :])
        assert int(correct[g]) == np.count_nonzero(pred == labels)
        assert int(ties[g]) == np.count_nonzero(tie)
