"""The fast CPU backend: the engine of ``_engine`` over numpy, with the C++ fused scorer.

See ``_engine`` for the method (folded standardisation, one stacked float32 GEMM per chunk of test
rows for every shots x seed x l2 probe of a block, kernel form for small dual systems, fused
arg-max in csrc/cpu/score_cpu.cpp).
"""

from __future__ import annotations

import os

from . import _engine

name = "cpu"
_ops = None


def unavailable_reason() -> str:
    try:
        from .. import _core  # noqa: F401
    except ImportError as exc:
        return f"the compiled module plateaulab._core is missing ({exc}); reinstall with `pip install .`"
    return ""


def is_available() -> bool:
    return unavailable_reason() == ""


def device() -> str:
    return f"cpu ({os.cpu_count()} logical cores; float64 decomposition, float32 scoring)"


def _get_ops():
    global _ops
    if _ops is None:
        _ops = _engine.NumpyOps()
    return _ops


def stage(x_train, train_rows, x_test, x_val=None):
    """Read the used train rows and convert the test/val splits ahead of ``probe_block`` (the run
    loop's reader thread)."""
    return _engine.stage(_get_ops(), x_train, train_rows, x_test, x_val)


def probe_block(x_train, y_train, x_test, y_test, tasks, l2s, num_classes, *,
                x_val=None, y_val=None, loo=False, predictions=False):
    return _engine.probe_block(_get_ops(), x_train, y_train, x_test, y_test, tasks, l2s, num_classes,
                               x_val=x_val, y_val=y_val, loo=loo, predictions=predictions)
