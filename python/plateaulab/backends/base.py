"""What every backend returns for one block, what ``stage`` hands over, and the device contract (``Ops``)
that the shared engine (``_engine.py``) asks of ``cpu.NumpyOps`` and ``cuda.CupyOps``."""

from __future__ import annotations

import ast
import inspect
import textwrap
import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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


@dataclass
class HostSplit:
    """A split that ``stage`` left on the host (the device ran out of memory while staging it):
    ``probe_block`` stages it itself, once the previous block's memory is free. Its NaN/Inf values
    were counted on the host, so the run loop refuses a bad block exactly as after a real stage."""

    array: object
    nonfinite: int = 0

    @property
    def shape(self):
        return self.array.shape


# --------------------------------------------------------------------------- the device contract

@runtime_checkable
class Ops(Protocol):
    """What the engine (``_engine.py``) asks of a device, and nothing more: ``cpu.NumpyOps`` and
    ``cuda.CupyOps`` implement it. The tuning knobs are public attributes and constructor arguments
    of both classes (their docstrings give the defaults and how they were chosen)."""

    xp: Any                  # the array module the engine computes with (numpy or cupy)
    out_of_memory: type      # the exception a failed device allocation raises (a chunk is halved and retried)
    chunk_bytes: int         # knob: logits of one chunk of test rows stay below this many bytes
    solve_max_l: int         # knob: up to this many l2 values (no leave-one-out) one direct solve per l2, else one eigh
    small_max_n: int         # knob: dual systems with n <= this go to small_ridge (0: never)
    solve_fallbacks: int     # counter: matrices solved again by a float64 eigendecomposition after a failed solve

    def to_device(self, x): ...                                   # host array -> device array, dtype as stored
    def to_f32(self, x): ...                                      # host array -> a new, writable float32 device array
    def count_nonfinite(self, a) -> int: ...                      # NaN/Inf values of a device array, as a host int
    def labels(self, y): ...                                      # host labels -> contiguous int64 device array
    def counters(self, n: int): ...                               # (correct, ties): two zeroed device count vectors
    def score_argmax(self, logits, bias, labels, num_classes, counts) -> None: ...  # fused arg-max: add hits, near-ties
    def to_host_counts(self, counts): ...                         # counters -> two host int64 arrays (waits)
    def to_host(self, a): ...                                     # device array -> numpy array (waits)
    def eigh(self, a): ...                                        # (e, q) of a float64 symmetric matrix or batch
    def spd_solve(self, a, rhs): ...                              # batched SPD solve: (w, host bool per matrix or None)
    def small_ridge(self, xs, labels, num_classes, l2s, want_w=True): ...  # fused small dual solve: (A, W|None, ok)
    def release_memory(self) -> None: ...                         # give cached device memory back (after out_of_memory)


OPS_DATA = tuple(Ops.__annotations__)
OPS_METHODS = tuple(k for k, v in vars(Ops).items() if inspect.isfunction(v) and not k.startswith("_"))


def _assigned_in_init(cls) -> set[str]:
    """Names ``cls.__init__`` (or a base's) assigns as ``self.<name> = ...``, read from the source."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if not inspect.isfunction(init):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
            flat = [e for t in targets for e in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])]
            names |= {t.attr for t in flat
                      if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    return names


def contract_violations(cls) -> list[str]:
    """How the class ``cls`` falls short of ``Ops``, checked without making an instance (so a GPU
    class can be checked on a machine without CuPy): each data member must be a class attribute or
    be assigned to ``self`` in ``__init__``; each method must be a function of the class that takes
    the contract's parameters, by the same names in the same order (a parameter with a default in
    the contract keeps one). Empty when ``cls`` satisfies the contract."""
    out = []
    init_names = _assigned_in_init(cls)
    for name in OPS_DATA:
        if not hasattr(cls, name) and name not in init_names:
            out.append(f"{cls.__name__} lacks the attribute {name!r}")
    for name in OPS_METHODS:
        impl = getattr(cls, name, None)
        if not callable(impl):
            out.append(f"{cls.__name__} lacks the method {name!r}")
            continue
        want = list(inspect.signature(getattr(Ops, name)).parameters.values())[1:]
        have = list(inspect.signature(impl).parameters.values())[1:]
        if [p.name for p in have[:len(want)]] != [p.name for p in want]:
            out.append(f"{cls.__name__}.{name} takes ({', '.join(p.name for p in have)}); the contract says "
                       f"({', '.join(p.name for p in want)})")
            continue
        for w, h in zip(want, have):
            if w.default is not inspect.Parameter.empty and h.default is inspect.Parameter.empty:
                out.append(f"{cls.__name__}.{name}: parameter {w.name!r} needs a default")
        if any(p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in have[len(want):]):
            out.append(f"{cls.__name__}.{name} has required parameters beyond the contract's")
    return out


class SharedOps:
    """A backend module's one ops object, made on first use under a lock: the run loop's reader
    thread (``stage``) and the main thread (``probe_block``) both ask for it, and must get the same
    object (CuPy streams, pinned buffers and the solve counters live on it)."""

    def __init__(self, make):
        self._make, self._lock, self._ops = make, threading.Lock(), None

    def get(self):
        with self._lock:
            if self._ops is None:
                self._ops = self._make()
            return self._ops
