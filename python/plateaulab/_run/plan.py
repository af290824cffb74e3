"""Planning a probe run: the config that decides its numbers (and its hash), and the blocks it asks for."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import protocol as P
from ..errors import RunError, StoreError
from ..store import FeatureStore


@dataclass
class ProbeConfig:
    """Everything that decides the numbers of a run (hashed; the backend is not part of it)."""

    store: str
    datasets: list[str] | None = None
    checkpoints: list[str] | None = None       # glob patterns; None = all
    layers: str | list[str] = "all"            # "all", "last" or layer names
    shots: list[int] = field(default_factory=lambda: list(P.DEFAULT_SHOTS))
    seeds: list[int] = field(default_factory=lambda: list(P.DEFAULT_SEEDS))
    l2: list[float] = field(default_factory=lambda: [P.DEFAULT_L2])
    select: str = "fixed"
    on_short: str = "error"                    # "error" or "skip" for classes with fewer than `shots`

    def normalised(self) -> "ProbeConfig":
        if self.select not in P.SELECT_METHODS:
            raise RunError("unknown {param} " f"{self.select!r}; expected one of {', '.join(P.SELECT_METHODS)}",
                           param="select")
        if self.on_short not in ("error", "skip"):
            raise RunError("{param} must be 'error' or 'skip', got " f"{self.on_short!r}", param="on_short")
        shots = [int(s) for s in self.shots]
        if not shots or any(s <= 0 for s in shots):
            raise P.ProtocolError("{param} must be positive integers, got " f"{self.shots}", param="shots")
        seeds = [int(s) for s in self.seeds]
        if not seeds or any(s < 0 for s in seeds):
            raise P.ProtocolError("{param} must be non-negative integers, got " f"{self.seeds}", param="seeds")
        if any(s > MAX_SEED for s in seeds):
            raise P.ProtocolError("{param} must be at most 2**63 - 1 (they are stored as int64), got "
                                  f"{max(seeds)}", param="seeds")
        layers = self.layers if isinstance(self.layers, str) else _unique(self.layers)
        return ProbeConfig(store=str(Path(self.store).resolve()), datasets=self.datasets and _unique(self.datasets),
                           checkpoints=self.checkpoints and _unique(self.checkpoints), layers=layers,
                           shots=sorted(set(shots)), seeds=sorted(set(seeds)), l2=list(P.check_l2s(self.l2)),
                           select=self.select, on_short=self.on_short)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


#: Largest seed: results store seeds as int64.
MAX_SEED = 2 ** 63 - 1


def _unique(values) -> list:
    """``values`` without repeats, in first-seen order (``--datasets A A`` asks for A once)."""
    return list(dict.fromkeys(values))


def physical_memory() -> int:
    """Bytes of memory of this machine (16 GiB where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 * 2 ** 30


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.3g} GiB"


def seed_list(seeds) -> list[int]:
    """The seeds a ``seeds`` argument asks for: a count n (seeds 0..n-1, as big_vision) or a list.
    A count too large to hold is refused with the memory it would need, before anything is built."""
    if isinstance(seeds, (str, bytes)) or not np.isscalar(seeds):
        return [int(s) for s in seeds]
    n = int(seeds)
    if n < 1:
        raise P.ProtocolError("{param} must be at least 1 (a count) or a list of seeds, got " f"{n}", param="seeds")
    need = n * 36   # a list of n Python ints
    if need > physical_memory() // 16:
        raise P.ProtocolError(
            "{param} = " f"{n:,} seeds: the seed list alone would take about {_gib(need)} of memory before any "
            f"probe runs (this machine has {_gib(physical_memory())}); ask for fewer seeds", param="seeds")
    return list(range(n))


def check_resources(cfg: "ProbeConfig", plan: list["PlannedBlock"], datasets: dict, processes: int = 1) -> None:
    """Refuse, with the estimate, a run whose few-shot sets and per-block buffers cannot fit in memory.

    ``datasets`` maps each planned dataset to ``(num_classes, train counts per class, n_test, n_val)``.
    Estimated before any task is drawn: the train indices of every (shots, seed) set of every dataset
    (int64), and, for the largest block, what a block in flight holds: the stacked float32 weights of
    all its probes ((dim + 1) x classes x tasks x l2) and its result rows, and its staged features
    (``staged_bytes``: the test split, and the val split when ``select`` is 'val', as float32; the
    train rows its tasks use, at 4 bytes a value, the widest dtype a store holds; the float64
    few-shot batches, at most the engine's BATCH_BYTES each, or one task's rows if larger). An entry
    of ``(num_classes, counts)`` alone, without the splits' sizes, counts the weights and rows only.
    ``processes`` local worker processes (``--workers N``) each hold the train indices and two
    blocks, beside the client's own copy of the indices."""
    n_seeds, n_l2 = len(cfg.seeds), len(cfg.l2)
    indices = 0
    per_block = 0
    for name, (num_classes, counts, *splits) in datasets.items():
        shots = [s for s in cfg.shots if cfg.on_short == "error" or s <= min(counts)]
        indices += 8 * n_seeds * sum(s * num_classes for s in shots)
        dim = max([b.dim for b in plan if b.dataset == name] or [0])
        probes = len(shots) * n_seeds * n_l2
        block = probes * (4 * (dim + 1) * num_classes + 200)
        if splits:
            n_test, n_val = splits
            block += staged_bytes(cfg, dim, num_classes, shots, int(np.sum(counts)), n_test,
                                  n_val if cfg.select == "val" else 0)
        per_block = max(per_block, block)
    processes = max(1, int(processes))
    total = (indices + 2 * per_block) * processes + (indices if processes > 1 else 0)
    budget = physical_memory()
    if total > budget:
        where = (f", in each of {processes} worker processes (and the indices once more in the client)"
                 if processes > 1 else "")
        fewer = "fewer {param}, shots or l2 values" + (", or fewer --workers" if processes > 1 else "")
        raise P.ProtocolError(
            f"this run would need about {_gib(total)} of memory: {_gib(indices)} for the few-shot train indices "
            f"({n_seeds:,} seeds x shots {cfg.shots}) and {_gib(per_block)} per block for its staged features "
            f"and the weights and rows of its {len(cfg.shots) * n_seeds * n_l2:,} probes (two blocks in "
            f"flight){where}; this machine has {_gib(budget)}; ask for " + fewer, param="seeds")


def staged_bytes(cfg: "ProbeConfig", dim: int, num_classes: int, shots: list[int], n_train: int, n_test: int,
                 n_val: int) -> int:
    """Bytes of features one block in flight holds beside its weights (``backends._engine``): the test
    (and val) split as float32, the train rows the tasks use (at most every train row, and at most
    the rows of all tasks together) at 4 bytes a value (float16 or float32 as stored), and the
    largest batch of float64 few-shot features ((tasks, shots x classes, dim + 1), as many tasks of
    one size as fit in BATCH_BYTES, at least one)."""
    from ..backends._engine import BATCH_BYTES

    n_seeds = len(cfg.seeds)
    rows_used = min(int(n_train), n_seeds * sum(s * num_classes for s in shots))
    batch = 0
    for s in shots:
        task = s * num_classes * (dim + 1) * 8
        batch = max(batch, min(n_seeds, max(1, BATCH_BYTES // max(task, 1))) * task)
    return (int(n_test) + int(n_val)) * dim * 4 + rows_used * dim * 4 + batch


@dataclass
class PlannedBlock:
    checkpoint: str
    dataset: str
    layer: str
    layer_index: int
    dim: int = 0


def _selection(store: FeatureStore, cfg: ProbeConfig) -> tuple[list[str], list[str]]:
    all_ckpts = store.checkpoints()
    all_ds = store.datasets()
    if not all_ckpts or not all_ds:
        raise StoreError(f"store {store.path} is empty ({len(all_ckpts)} checkpoints, {len(all_ds)} datasets); "
                         "add datasets and features first (see docs/STORE_FORMAT.md)")
    datasets = cfg.datasets or all_ds
    unknown = [d for d in datasets if d not in all_ds]
    if unknown:
        raise StoreError(f"unknown dataset {unknown[0]!r} in store {store.path} (known: {', '.join(all_ds)})")
    if cfg.checkpoints:
        ckpts = [c for c in all_ckpts if any(fnmatch.fnmatchcase(c, pat) for pat in cfg.checkpoints)]
        if not ckpts:
            raise StoreError(f"no checkpoint in store {store.path} matches {', '.join(cfg.checkpoints)} "
                             f"({len(all_ckpts)} checkpoints, e.g. {all_ckpts[0]!r})")
    else:
        ckpts = all_ckpts
    return ckpts, datasets


def incomplete_blocks(store: FeatureStore, cfg: ProbeConfig, keep=None) -> list[tuple[str, str, str]]:
    """(checkpoint, dataset, layer) of the requested blocks that have a directory but no block.json
    (of the checkpoints ``keep`` accepts, if given)."""
    ckpts, datasets = _selection(store, cfg)
    ckpts = [c for c in ckpts if keep is None or keep(c)]
    named = None if isinstance(cfg.layers, str) else set(cfg.layers)
    return [(ck, ds, layer) for ck in ckpts for ds in datasets for layer in store.incomplete_layers(ck, ds)
            if named is None or layer in named]


def plan_blocks(store: FeatureStore, cfg: ProbeConfig, keep=None) -> list[PlannedBlock]:
    """The (checkpoint, dataset, layer) blocks a config asks for, checkpoint-major; unknown names raise.

    ``keep`` (a shard's test of a checkpoint name) plans only the checkpoints it accepts, without
    reading the others' blocks; such a plan may be empty (a shard that owns no checkpoint)."""
    ckpts, datasets = _selection(store, cfg)
    ckpts = [c for c in ckpts if keep is None or keep(c)]
    plan = []
    for ck in ckpts:
        for ds in datasets:
            infos = store.block_infos(ck, ds)
            if not infos:
                continue
            if cfg.layers == "all":
                chosen = infos
            elif cfg.layers == "last":
                chosen = infos[-1:]
            else:
                by_name = {i["layer"]: i for i in infos}
                missing = [n for n in cfg.layers if n not in by_name]
                if missing:
                    if missing[0] in store.incomplete_layers(ck, ds):
                        raise StoreError(f"checkpoint {ck!r}, dataset {ds!r}, layer {missing[0]!r}: block is "
                                         "incomplete (no block.json); re-extract it")
                    raise StoreError(f"unknown layer {missing[0]!r} for checkpoint {ck!r}, dataset {ds!r} "
                                     f"(layers: {', '.join(by_name)})")
                chosen = [by_name[n] for n in cfg.layers]
            plan += [PlannedBlock(ck, ds, i["layer"], i["layer_index"], i["dim"]) for i in chosen]
    if not plan and keep is None:
        raise StoreError(f"store {store.path} has no complete feature blocks for the requested "
                         "checkpoints and datasets; run `plateaulab store check` to see why")
    return plan
