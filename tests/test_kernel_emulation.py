"""The CUDA kernels' logic run on the host, against the CPU scorer and plain arithmetic.

- ``_core.score_argmax_emulated`` is the CUDA scorer's warp (32 lanes striding over the classes, then
  the shuffle tree) with its merge rule (csrc/common/score_top2.h). It must agree with the CPU
  scorer (csrc/cpu/score_cpu.cpp) on every row, including rows of all NaN or all -inf, where the
  kernel used to start from -FLT_MAX and index INT_MAX and so disagreed.
- ``_core.small_ridge_max_n_for`` is the shared-memory bound of the small-system kernel.

The GPU runs the same code in tests/test_cuda.py.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from plateaulab import _core
from plateaulab import protocol as P

if not hasattr(_core, "score_argmax_emulated"):
    pytest.fail("plateaulab._core was built before csrc/common/score_top2.h: rebuild it (pip install .)",
                pytrace=False)


def _both(logits, bias, labels, C):
    groups = logits.shape[1] // C
    out = []
    for fn in (_core.score_argmax, _core.score_argmax_emulated):
        correct, ties = np.zeros(groups, np.int64), np.zeros(groups, np.int64)
        fn(np.ascontiguousarray(logits, np.float32), np.ascontiguousarray(bias, np.float32), labels, C,
           P.TIE_RTOL, correct, ties)
        out.append((correct, ties))
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 4), st.sampled_from([1, 2, 31, 32, 33, 65, 100]), st.integers(0, 2**31 - 1),
       st.sampled_from([0.0, 0.05, 0.3]))
def test_emulated_warp_scorer_matches_the_cpu_scorer(rows, groups, C, seed, special):
    """Random logits with exact ties, NaN and -inf sprinkled in (``special`` of them), and whole rows
    of NaN or -inf: the warp reduction and the sequential CPU loop count the same hits and ties."""
    rng = np.random.default_rng(seed)
    logits = np.round(rng.normal(size=(rows, groups * C)) * 4).astype(np.float32) / 4
    mask = rng.random(logits.shape) < special
    logits[mask] = rng.choice([np.nan, -np.inf], size=int(mask.sum()))
    logits[rng.random(rows) < special] = rng.choice([np.nan, -np.inf])     # whole rows
    bias = np.round(rng.normal(size=groups * C) * 4).astype(np.float32) / 4
    labels = rng.integers(0, C, rows).astype(np.int64)
    (c_cpu, t_cpu), (c_gpu, t_gpu) = _both(logits, bias, labels, C)
    np.testing.assert_array_equal(c_gpu, c_cpu)
    np.testing.assert_array_equal(t_gpu, t_cpu)
    if not special:                                    # finite rows: numpy's argmax and the tie rule
        z = (logits + bias).reshape(rows, groups, C).astype(np.float64)
        for g in range(groups):
            pred, tie = P.argmax_with_ties(z[:, g])
            assert c_cpu[g] == np.count_nonzero(pred == labels) and t_cpu[g] == np.count_nonzero(tie)


@pytest.mark.parametrize("fill", [np.nan, -np.inf])
@pytest.mark.parametrize("C", [1, 33, 100])
def test_a_row_without_a_finite_logit_predicts_class_0_and_is_no_tie(fill, C):
    """The documented contract (csrc/common/score_top2.h) on both scorers: rows labelled 0 count as
    correct, rows labelled otherwise do not, and none is a tie."""
    labels = np.array([0, C - 1, 0], np.int64)
    logits = np.full((3, C), fill, np.float32)
    for correct, ties in _both(logits, np.zeros(C, np.float32), labels, C):
        assert correct.tolist() == [2 if C > 1 else 3] and ties.tolist() == [0]


def test_minus_inf_after_nan_does_not_win():
    """[NaN, -inf]: the CPU loop keeps class 0 (nothing exceeds -inf); the warp once let the -inf of
    lane 1 replace lane 0's empty result (found by the property test above)."""
    logits = np.array([[np.nan, -np.inf], [-np.inf, np.nan], [np.nan, -np.inf]], np.float32)
    for correct, ties in _both(logits, np.zeros(2, np.float32), np.array([0, 0, 1]), 2):
        assert correct.tolist() == [2] and ties.tolist() == [0]


def test_nan_never_wins():
    logits = np.array([[np.nan, 1.0, 3.0, np.nan, 2.0], [1.0, np.nan, np.nan, np.nan, np.nan]], np.float32)
    for correct, ties in _both(logits, np.zeros(5, np.float32), np.array([2, 0]), 5):
        assert correct.tolist() == [2] and ties.tolist() == [0]


def test_emulated_scorer_validates_like_the_cpu_scorer():
    with pytest.raises(ValueError, match="multiple of num_classes"):
        _core.score_argmax_emulated(np.zeros((2, 5), np.float32), np.zeros(5, np.float32), np.zeros(2, np.int64),
                                    2, 1e-4, np.zeros(2, np.int64), np.zeros(2, np.int64))


@pytest.mark.parametrize("shared_bytes,n", [(232448 - 16, 170),       # H100 / H200: 227 KiB opt-in, 16 B static
                                            (166912 - 16, 144),       # A100: 163 KiB
                                            (49152, 78), (8, 1), (7, 0), (0, 0)])
def test_shared_memory_bound_of_the_small_kernel(shared_bytes, n):
    assert _core.small_ridge_max_n_for(shared_bytes) == n


@given(st.integers(0, 1 << 22))
def test_shared_memory_bound_is_the_largest_fitting_n(shared_bytes):
    n = _core.small_ridge_max_n_for(shared_bytes)
    assert n * n * 8 <= shared_bytes < (n + 1) * (n + 1) * 8
