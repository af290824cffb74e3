"""Planning a probe run: the config that decides its numbers (and its hash), and the blocks it asks for."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
        layers = self.layers if isinstance(self.layers, str) else list(self.layers)
        return ProbeConfig(store=str(Path(self.store).resolve()), datasets=self.datasets and list(self.datasets),
                           checkpoints=self.checkpoints and list(self.checkpoints), layers=layers,
                           shots=sorted(set(shots)), seeds=sorted(set(seeds)), l2=list(P.check_l2s(self.l2)),
                           select=self.select, on_short=self.on_short)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PlannedBlock:
    checkpoint: str
    dataset: str
    layer: str
    layer_index: int


def plan_blocks(store: FeatureStore, cfg: ProbeConfig) -> list[PlannedBlock]:
    """The (checkpoint, dataset, layer) blocks a config asks for, checkpoint-major; unknown names raise."""
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
                    raise StoreError(f"unknown layer {missing[0]!r} for checkpoint {ck!r}, dataset {ds!r} "
                                     f"(layers: {', '.join(by_name)})")
                chosen = [by_name[n] for n in cfg.layers]
            plan += [PlannedBlock(ck, ds, i["layer"], int(i.get("layer_index", 0))) for i in chosen]
    if not plan:
        raise StoreError(f"store {store.path} has no complete feature blocks for the requested "
                         "checkpoints and datasets; run `plateaulab store check` to see why")
    return plan
