"""What ``plateaulab bench`` probes: the presets, and a workload's shape with the flags' overrides.

A workload is a synthetic feature store (datasets x checkpoints x layers, every block probed) and the
protocol run on it (shots, seeds, l2 values). Presets:

    quick      (default) the reference shape at half its test rows, on 2 checkpoints x 2 layers: under a
               minute on a 2-core CPU with its baselines and 3 repeats
    reference  issue 2's workload: 20 checkpoints x 12 layers x 1 dataset, D = 768, C = 100, 5,000 train
               rows (50 per class), 10,000 test rows, fp16; shots 1/5/10/25, 3 seeds, 8 l2 (2^4 ... 2^18):
               240 blocks, 23,040 probes
    paper      the paper's protocol: 5 datasets shaped like Flowers102, Cars196, CIFAR-100, DTD and Pets
               (102, 196, 100, 47, 37 classes; their test-split sizes), D = 768, shots 1/5/10/25, 3 seeds,
               l2 = 1024; 10 checkpoints, one layer
    layers     12 layers of ``paper``
    io         I/O bound: 1-shot, D = 4096, 50,000 test rows, C = 100, 3 seeds, l2 = 1024; 16 checkpoints

The shapes of ``reference``, ``paper``/``layers`` and ``io`` are those of bench/bench_cuda.py's
workloads (i), (ii)/(iii) and (iv). Any preset's shape can be overridden (``make_workload``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ..errors import InputError

# The reference workload's l2 grid: 8 values, geometric from 2^4 to 2^18.
L2_GRID = tuple(float(v) for v in np.geomspace(2.0 ** 4, 2.0 ** 18, 8))

# (name, classes, test rows) of the paper's five downstream datasets.
PAPER_DATASETS = (("flowers102", 102, 6149), ("cars196", 196, 8041), ("cifar100", 100, 10_000),
                  ("dtd", 47, 1880), ("pets", 37, 3669))

DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: int
    n_test: int
    train_per_class: int


@dataclass(frozen=True)
class Workload:
    """A synthetic store's shape and the protocol probed on it; every stored block is probed."""

    preset: str
    title: str
    datasets: tuple[DatasetSpec, ...]
    checkpoints: int
    layers: int
    dim: int
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    l2s: tuple[float, ...]
    dtype: str = "float16"
    baseline_blocks: int = 1        # blocks per dataset the baselines (and the agreement check) run on
    repeat: int = 1
    long: bool = True               # a progress bar while it runs
    overridden: tuple[str, ...] = ()  # the preset's fields the caller changed

    @property
    def blocks(self) -> int:
        return self.checkpoints * self.layers * len(self.datasets)

    @property
    def probes(self) -> int:
        return self.blocks * len(self.shots) * len(self.seeds) * len(self.l2s)

    @property
    def itemsize(self) -> int:
        return int(np.dtype(self.dtype).itemsize)

    def store_bytes(self) -> int:
        """Bytes of features the store holds (train and test splits of every block)."""
        rows = sum(d.classes * d.train_per_class + d.n_test for d in self.datasets)
        return rows * self.dim * self.itemsize * self.checkpoints * self.layers

    def store_spec(self) -> dict:
        """What the generated store depends on (a store in --workdir is reused only when this matches)."""
        return {"datasets": [asdict(d) for d in self.datasets], "checkpoints": self.checkpoints,
                "layers": self.layers, "dim": self.dim, "dtype": self.dtype}

    def to_dict(self) -> dict:
        return {"preset": self.preset, "title": self.title, "datasets": [asdict(d) for d in self.datasets],
                "checkpoints": self.checkpoints, "layers": self.layers, "dim": self.dim,
                "shots": list(self.shots), "seeds": list(self.seeds), "l2": list(self.l2s), "dtype": self.dtype,
                "blocks": self.blocks, "probes": self.probes, "store_bytes": self.store_bytes(),
                "baseline_blocks_per_dataset": self.baseline_blocks, "repeat": self.repeat,
                "overridden": list(self.overridden)}


_PROTOCOL = dict(shots=(1, 5, 10, 25), seeds=(0, 1, 2))

PRESETS: dict[str, Workload] = {
    "quick": Workload("quick", "quick look: the reference shape at 5,000 test rows, 4 blocks",
                      (DatasetSpec("bench", 100, 5000, 50),), checkpoints=2, layers=2, dim=768, l2s=L2_GRID,
                      baseline_blocks=1, repeat=3, long=False, **_PROTOCOL),
    "reference": Workload("reference", "reference workload (issue 2): 240 blocks",
                          (DatasetSpec("bench", 100, 10_000, 50),), checkpoints=20, layers=12, dim=768,
                          l2s=L2_GRID, baseline_blocks=3, **_PROTOCOL),
    "paper": Workload("paper", "paper protocol: 5 datasets, one layer",
                      tuple(DatasetSpec(n, c, m, 30) for n, c, m in PAPER_DATASETS), checkpoints=10, layers=1,
                      dim=768, l2s=(1024.0,), baseline_blocks=1, **_PROTOCOL),
    "layers": Workload("layers", "layer sweep: 12 layers of paper",
                       tuple(DatasetSpec(n, c, m, 30) for n, c, m in PAPER_DATASETS), checkpoints=10, layers=12,
                       dim=768, l2s=(1024.0,), baseline_blocks=1, **_PROTOCOL),
    "io": Workload("io", "I/O bound: 1-shot, D = 4096, 50,000 test rows",
                   (DatasetSpec("io", 100, 50_000, 2),), checkpoints=16, layers=1, dim=4096, shots=(1,),
                   seeds=(0, 1, 2), l2s=(1024.0,), baseline_blocks=1),
}


def _positive(name: str, value: int, minimum: int = 1) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{{param}} must be an integer; got {value!r}", param=name) from None
    if v != value or v < minimum:
        raise InputError(f"{{param}} must be an integer >= {minimum}; got {value!r}", param=name)
    return v


def _ints(name: str, values, minimum: int, *, what: str) -> tuple[int, ...]:
    values = [values] if np.isscalar(values) else list(values)
    if not values:
        raise InputError(f"{{param}} needs at least one {what}", param=name)
    out = tuple(_positive(name, v, minimum) for v in values)
    if len(set(out)) != len(out):
        raise InputError(f"{{param}} repeats a value: {', '.join(map(str, out))}", param=name)
    return out


def make_workload(preset: str = "quick", *, dim=None, classes=None, test=None, shots=None, seeds=None, l2=None,
                  dtype=None, checkpoints=None, layers=None, repeat=None, baseline_blocks=None) -> Workload:
    """The preset's workload with any of its shape overridden (None keeps the preset's value).

    classes: one value (every dataset of the preset gets it) or one per dataset (the datasets become
    these; names kept when there are as many as in the preset). test: one value for every dataset or
    one per dataset. seeds: a count (seeds 0..N-1) or a list. l2: one value or a list. Train rows per
    class are raised to the largest shot count where the preset has fewer.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown {{param}} {preset!r}; expected one of {', '.join(PRESETS)}", param="preset")
    wl = PRESETS[preset]
    datasets = list(wl.datasets)
    if classes is not None:
        cls = [_positive("classes", c, 2) for c in ([classes] if np.isscalar(classes) else classes)]
        if not cls:
            raise InputError("{param} needs at least one class count", param="classes")
        if len(cls) == 1:
            datasets = [replace(d, classes=cls[0]) for d in datasets]
        elif len(cls) == len(datasets):
            datasets = [replace(d, classes=c) for d, c in zip(datasets, cls)]
        else:
            base = datasets[0]
            datasets = [replace(base, name=f"data{i}", classes=c) for i, c in enumerate(cls)]
    if test is not None:
        rows = [_positive("test", t) for t in ([test] if np.isscalar(test) else test)]
        if len(rows) == 1:
            rows = rows * len(datasets)
        if len(rows) != len(datasets):
            raise InputError(f"{{param}} takes one value or one per dataset ({len(datasets)}); got {len(rows)}",
                             param="test")
        datasets = [replace(d, n_test=m) for d, m in zip(datasets, rows)]
    shots_t = wl.shots if shots is None else _ints("shots", shots, 1, what="shot count")
    if seeds is None:
        seeds_t = wl.seeds
    elif np.isscalar(seeds):
        seeds_t = tuple(range(_positive("seeds", seeds)))
    else:
        seeds_t = _ints("seeds", seeds, 0, what="seed")
    if l2 is None:
        l2_t = wl.l2s
    else:
        vals = [l2] if np.isscalar(l2) else list(l2)
        try:
            l2_t = tuple(float(v) for v in vals)
        except (TypeError, ValueError):
            raise InputError(f"{{param}} must be numbers; got {l2!r}", param="l2") from None
        if not l2_t or not all(np.isfinite(v) and v > 0 for v in l2_t):
            raise InputError(f"{{param}} values must be finite and > 0; got {l2!r}", param="l2")
    dtype_s = wl.dtype if dtype is None else str(dtype)
    if dtype_s not in DTYPES:
        raise InputError(f"{{param}} must be one of {', '.join(DTYPES)}; got {dtype!r}", param="dtype")
    datasets = [replace(d, train_per_class=max(d.train_per_class, max(shots_t))) for d in datasets]
    given = {"dim": dim, "classes": classes, "test": test, "shots": shots, "seeds": seeds, "l2": l2, "dtype": dtype,
             "checkpoints": checkpoints, "layers": layers}
    overridden = tuple(k for k, v in given.items() if v is not None)
    return replace(
        wl, datasets=tuple(datasets), overridden=overridden,
        title=wl.title + (f" [overridden: {', '.join(overridden)}]" if overridden else ""),
        shots=shots_t, seeds=seeds_t, l2s=l2_t, dtype=dtype_s,
        dim=wl.dim if dim is None else _positive("dim", dim),
        checkpoints=wl.checkpoints if checkpoints is None else _positive("checkpoints", checkpoints),
        layers=wl.layers if layers is None else _positive("layers", layers),
        repeat=wl.repeat if repeat is None else _positive("repeat", repeat),
        baseline_blocks=wl.baseline_blocks if baseline_blocks is None else _positive("baseline_blocks",
                                                                                     baseline_blocks))


__all__ = ["DatasetSpec", "Workload", "PRESETS", "L2_GRID", "PAPER_DATASETS", "make_workload"]
