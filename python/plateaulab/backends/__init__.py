"""Probe backends behind one interface, in the manner of himalaya's backends.

A backend is a plain module exposing the same small set of names:

    name                      "numpy", "cpu" or "cuda"
    is_available() -> bool    whether it can run here
    unavailable_reason()      why not, in words a user can act on
    device() -> str           what it runs on, for the run manifest
    probe_block(x_train, y_train, x_test, y_test, tasks, l2s, num_classes, *,
                x_val=None, y_val=None, loo=False, predictions=False) -> BlockScores
    stage(x_train, train_rows, x_test, x_val=None)   optional: read/convert/upload ahead of probe_block
    get_ops()                 cpu and cuda: the one ops object of the shared engine (the contract
                              ``base.Ops``; NumpyOps / CupyOps), whose tuning knobs are public attributes

``probe_block`` serves every (shots, seed) task and every l2 of one (checkpoint, dataset, layer)
block from a single read of its features. The run loop (plateaulab.run) asks for a backend once
and then only calls ``backend.probe_block``; it never branches on which backend is active.
"""

from __future__ import annotations

import importlib

from ..errors import BackendUnavailable, ProtocolError
from .base import BlockScores

BACKENDS = ("numpy", "cpu", "cuda")
_MODULES = {"numpy": "numpy_backend", "cpu": "cpu", "cuda": "cuda"}


def _load(name: str):
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")


# `auto` may pick cuda only once the cuda backend has passed the shared backend tests on a GPU
# (tests/test_backends.py, which parametrises over every available backend). It has not yet been
# run on one (bench/RESULTS.md), so until then `auto` means cpu and cuda must be asked for by name.
AUTO_ORDER = ("cpu",)


def get_backend(name: str = "auto"):
    """The backend module called ``name``; ``auto`` is the first available of AUTO_ORDER."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            backend = _load(candidate)
            if backend.is_available():
                return backend
        raise BackendUnavailable(f"no probe backend is available: {_load('cpu').unavailable_reason()}")
    if name not in _MODULES:
        raise ProtocolError(f"unknown backend {name!r}; expected one of auto, {', '.join(BACKENDS)}")
    backend = _load(name)
    if not backend.is_available():
        raise BackendUnavailable(f"backend {name!r} is not available: {backend.unavailable_reason()}")
    return backend


def available_backends() -> dict[str, str]:
    """Every backend with 'available' or the reason it is not."""
    out = {}
    for name in BACKENDS:
        b = _load(name)
        out[name] = "available" if b.is_available() else b.unavailable_reason()
    return out


__all__ = ["BACKENDS", "BlockScores", "get_backend", "available_backends"]
