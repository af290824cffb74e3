"""Feature extraction: every layer of one model, or of many checkpoint files, into the feature store.

    from plateaulab.extract import extract, extract_checkpoints
    extract(model, "store/", dataset="pets", train=(x_tr, y_tr), test=(x_te, y_te), checkpoint="my-vit")
    extract_checkpoints("runs/*/ckpt.pt", "store/", architecture="timm:vit_base_patch16_224",
                        dataset="pets", train="pets/train", test="pets/test")

Architectures are named through a registry (``registry``: ``timm:NAME``, ``hf:DIR``,
``torchvision:NAME``, and builders given a name with :func:`register_architecture`) or passed as
callables; a ``module:attr`` import path runs code and needs ``allow_import=True``.

One inference pass per (checkpoint, split) captures every layer through forward hooks (see
``layers`` for discovery and pooling, ``engine`` for the pass). The unit of work and of resumption
is a (checkpoint, dataset) pair: all its layers come from the same pass, and its blocks are written
to the store when the pass ends. A pair is done when every one of its layers has a complete block,
and done pairs are skipped (without even loading or hashing their checkpoint), so a killed run
repeated with the same arguments loses at most the pair that was in flight.

This package imports torch only when a function runs; ``import plateaulab`` never imports it.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..store import FeatureStore
from . import deps
from .checkpoints import (CheckpointSpec, build_model, classifier_outputs, expand_checkpoints,
                          load_weights, parameter_count, read_manifest, read_state_dict, sha256_file)
from .registry import architecture_label
from .engine import amp_dtype_for, default_batch_size, resolve_device, run_split
from .inputs import ImageTransform, SplitSource, split_source
from .layers import Layer, Layout, check_pooling, check_pooling_for, discover_layers, model_layout, resolve_layers
from .registry import (Architecture, register_architecture, registered_architectures, resolve_architecture,
                       unregister_architecture)

__all__ = [
    "extract", "extract_checkpoints", "DatasetInputs", "CheckpointSpec", "ExtractionReport", "PairReport",
    "discover_layers", "resolve_layers", "read_manifest", "ImageTransform", "Layer", "Layout", "model_layout",
    "register_architecture", "unregister_architecture", "registered_architectures", "resolve_architecture",
    "Architecture", "build_model",
]

DTYPES = ("float16", "float32")
# Temporary directories are named <pid>-<random>-<host>: on a store shared by several machines
# (shards, Dask workers) only this machine's dead processes' directories are removed, never those
# of a pass still running in this process (a Dask worker may run several).
_HOST = socket.gethostname().replace("/", "_")
_LIVE_TMP: set = set()


@dataclass
class DatasetInputs:
    """The splits of one downstream dataset, in any form ``inputs.split_source`` accepts."""

    train: object
    test: object
    val: object = None
    class_names: list[str] | None = None


@dataclass
class PairReport:
    checkpoint: str
    dataset: str
    status: str  # "extracted" or "skipped" (already complete in the store)
    layers: list[str] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0
    batch_size: int = 0  # after any out-of-memory back-off

    @property
    def images_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class ExtractionReport:
    pairs: list[PairReport] = field(default_factory=list)

    @property
    def extracted(self) -> list[PairReport]:
        return [p for p in self.pairs if p.status == "extracted"]

    @property
    def skipped(self) -> list[PairReport]:
        return [p for p in self.pairs if p.status == "skipped"]

    @property
    def images_per_second(self) -> float:
        rows = sum(p.rows for p in self.extracted)
        secs = sum(p.seconds for p in self.extracted)
        return rows / secs if secs > 0 else float("nan")


@dataclass
class _Options:
    layers: object = "auto"
    pooling: object = "auto"
    dtype: str = "float16"
    device: object = None
    amp: object = None
    batch_size: object = "auto"
    num_workers: int | None = None
    transform: ImageTransform | None = None
    overwrite: bool = False
    progress: bool = True


def _open_store(store) -> FeatureStore:
    return store if isinstance(store, FeatureStore) else FeatureStore.create(store, exist_ok=True)


def _check_options(opt: _Options) -> None:
    if opt.dtype not in DTYPES:
        raise InputError(f"{{param}} must be one of {', '.join(DTYPES)}, got {opt.dtype!r}", param="dtype")
    if isinstance(opt.pooling, dict):
        for v in opt.pooling.values():
            check_pooling(v)
    else:
        check_pooling(opt.pooling)
    if opt.batch_size != "auto" and not (isinstance(opt.batch_size, int) and opt.batch_size > 0):
        raise InputError(f"{{param}} must be a positive integer or 'auto', got {opt.batch_size!r}", param="batch_size")


def _datasets_arg(datasets, dataset, train, test, val, class_names) -> dict[str, DatasetInputs]:
    if datasets is not None:
        if dataset is not None or train is not None or test is not None:
            raise InputError("pass either datasets={name: DatasetInputs(...)} or dataset=/train=/test=, not both")
        out = {}
        for name, d in dict(datasets).items():
            out[name] = d if isinstance(d, DatasetInputs) else DatasetInputs(**d)
        if not out:
            raise InputError("datasets is empty")
        return out
    if dataset is None or train is None or test is None:
        raise InputError("extraction needs a dataset name and its train and test splits (dataset=, train=, test=)")
    return {dataset: DatasetInputs(train, test, val, class_names)}


class _Run:
    """State shared by the pairs of one extraction call: the store, the split sources, the options."""

    def __init__(self, store: FeatureStore, datasets: dict[str, DatasetInputs], opt: _Options):
        _check_options(opt)
        self.store, self.opt = store, opt
        self.device = resolve_device(opt.device)
        self.amp_dtype = amp_dtype_for(self.device, opt.amp)
        self.batch_size = default_batch_size(self.device) if opt.batch_size == "auto" else int(opt.batch_size)
        self.sources: dict[str, dict[str, SplitSource]] = {}
        self.class_names: dict[str, list[str] | None] = {}
        for name, d in datasets.items():
            splits = {"train": d.train, "test": d.test, "val": d.val}
            self.sources[name] = {s: split_source(v, s, transform=opt.transform, num_workers=opt.num_workers)
                                  for s, v in splits.items() if v is not None}
            self.class_names[name] = d.class_names or self._folder_classes(name)
            labels = {s: src.labels for s, src in self.sources[name].items()}
            if all(v is not None for v in labels.values()):
                # Labels known before inference: settle the dataset now, so a mismatch fails fast.
                self._ensure_dataset(name, labels)
        self.tmp_root = store.path / ".extract-tmp"
        self._remove_stale_tmp()

    def _folder_classes(self, name: str):
        names = {s: src.class_names for s, src in self.sources[name].items() if src.class_names is not None}
        if not names:
            return None
        first = next(iter(names.values()))
        for s, cls in names.items():
            if cls != first:
                raise InputError(
                    f"dataset {name!r}: the {s} image folder has classes {cls} but the train folder has {first}; "
                    "every split needs the same class sub-folders"
                )
        return first

    def _ensure_dataset(self, name: str, labels: dict[str, np.ndarray]) -> None:
        # Under the store's dataset lock: shards or Dask workers may settle the same dataset at once.
        from .._run.locks import wait_lock

        with wait_lock(self.store.path / ".datasets.lock", f"store {self.store.path}"):
            self._ensure_dataset_locked(name, labels)

    def _ensure_dataset_locked(self, name: str, labels: dict[str, np.ndarray]) -> None:
        st = self.store
        if name in st.datasets():
            ds = st.dataset(name)
            for split, y in labels.items():
                have = getattr(ds, f"y_{split}")
                if have is None or have.shape != y.shape or not np.array_equal(have, y):
                    detail = ("it has no such split" if have is None else
                              f"{have.size} stored vs {y.size} given" if have.shape != y.shape else
                              f"first difference at row {int(np.flatnonzero(have != y)[0])}")
                    raise InputError(
                        f"dataset {name!r}: the {split} labels differ from those already in store {st.path} "
                        f"({detail}); every checkpoint must see the same examples in the same order; "
                        "use another dataset name or remove the old one"
                    )
            return
        cn = self.class_names.get(name)
        st.add_dataset(name, labels["train"], labels["test"], num_classes=len(cn) if cn else None,
                       y_val=labels.get("val"), class_names=cn)

    def _remove_stale_tmp(self) -> None:
        # Temporary memmaps of a killed run: remove those whose process is gone; another live
        # extraction into the same store keeps its own.
        if not self.tmp_root.is_dir():
            return
        for d in self.tmp_root.iterdir():
            try:
                pid, _, host = (d.name.split("-", 2) + [""])[:3]
                if (host and host != _HOST) or d in _LIVE_TMP:
                    continue   # another machine's (its pid means nothing here), or a pass of this process
                pid = int(pid)
                os.kill(pid, 0)
                alive = pid != os.getpid()
            except (ValueError, ProcessLookupError):
                alive = False
            except PermissionError:
                alive = True
            if not alive:
                shutil.rmtree(d, ignore_errors=True)

    def pending(self, checkpoint: str, layer_names: list[str]) -> list[str]:
        if self.opt.overwrite:
            return list(self.sources)
        return [ds for ds in self.sources
                if not all(self.store.has_block(checkpoint, ds, n) for n in layer_names)]

    def run_pair(self, model, checkpoint: str, dataset: str, layers: list[Layer], layout: Layout) -> PairReport:
        tmp = self.tmp_root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{_HOST}"
        _LIVE_TMP.add(tmp)
        where = f"checkpoint {checkpoint!r}, dataset {dataset!r}"
        results = {}
        try:
            for split, src in self.sources[dataset].items():
                results[split] = run_split(
                    model, layers, src, device=self.device, amp_dtype=self.amp_dtype, batch_size=self.batch_size,
                    pooling=self.opt.pooling, layout=layout, out_dtype=self.opt.dtype,
                    tmpdir=tmp / split, progress=self.opt.progress, desc=f"{checkpoint} {dataset}/{split}",
                    where=where)
                self.batch_size = min(self.batch_size, results[split].batch_size)
            self._ensure_dataset(dataset, {s: r.labels for s, r in results.items()})
            names = [layer.name for layer in layers]
            for index, name in enumerate(names):
                if self.store.has_block(checkpoint, dataset, name) and not self.opt.overwrite:
                    continue
                missing = [s for s, r in results.items() if name not in r.features]
                if missing:
                    raise InputError(f"{where}, layer {name!r}: produced no output for the {missing[0]} split")
                self.store.add_features(
                    checkpoint, dataset, name, train=results["train"].features[name],
                    test=results["test"].features[name],
                    val=results["val"].features[name] if "val" in results else None,
                    layer_index=index, overwrite=self.opt.overwrite)
            pooling = results["train"].pooling
            self.store.set_checkpoint_meta(checkpoint, extraction={
                "layers": names, "pooling": {n: pooling.get(n) for n in names}, "dtype": self.opt.dtype})
            rows = sum(r.labels.size for r in results.values())
            secs = sum(r.seconds for r in results.values())
            return PairReport(checkpoint, dataset, "extracted", names, rows, secs, self.batch_size)
        finally:
            for r in results.values():
                r.features.clear()
            shutil.rmtree(tmp, ignore_errors=True)
            _LIVE_TMP.discard(tmp)


def _prepare(model, device, layers, pooling):
    """Eval mode on ``device``; the layers to capture and the model's token/feature-map layout."""
    model.eval()
    model.to(device)
    layout = model_layout(model)
    check_pooling_for(model, layout, pooling)
    return resolve_layers(model, layers), layout


def extract(model, store, dataset: str | None = None, *, train=None, test=None, val=None, datasets=None,
            checkpoint: str = "model", layers="auto", pooling="auto", dtype: str = "float16", device=None,
            amp=None, batch_size="auto", num_workers: int | None = None, image_size: int = 224,
            resize: int = 256, normalize: str = "inception", metadata: dict | None = None,
            class_names=None, overwrite: bool = False, progress: bool = True) -> ExtractionReport:
    """Capture every layer of one in-memory ``model`` over a dataset and store it as ``checkpoint``.

    ``layers``: "auto" (blocks + pre-logits), or module names (``"pre_logits"`` for the classifier's
    input). ``pooling``: "auto" (class token for class-token models, else token mean; GAP for
    feature maps), "cls", "mean", "gap", a callable ``(tensor) -> (N, D)``, or a dict layer -> mode
    (key ``"*"`` for the rest). Features are stored as ``dtype`` (float16 by default). The model is
    put in eval mode on ``device`` (CUDA when present) and run under autocast on GPU unless
    ``amp=False``. Returns an ExtractionReport; a complete pair already in the store is skipped.
    """
    torch = deps.torch()
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch nn.Module, got {type(model).__name__}")
    st = _open_store(store)
    opt = _Options(layers, pooling, dtype, device, amp, batch_size, num_workers,
                   ImageTransform(image_size, resize, normalize), overwrite, progress)
    run = _Run(st, _datasets_arg(datasets, dataset, train, test, val, class_names), opt)
    was_training = model.training
    chosen, layout = _prepare(model, run.device, layers, pooling)
    report = ExtractionReport()
    names = [layer.name for layer in chosen]
    todo = run.pending(checkpoint, names)
    try:
        if todo:
            st.set_checkpoint_meta(checkpoint, **{**(metadata or {}),
                                                  "architecture": architecture_label(type(model)),
                                                  "parameters": parameter_count(model)})
        report.pairs += _run_pairs(run, model, checkpoint, chosen, layout, todo, names)
    finally:
        model.train(was_training)
    return report


def _check_same_file(st: FeatureStore, checkpoint: str, file: Path, overwrite: bool) -> str | None:
    """Refuse to add to a stored checkpoint features of a different file; return the sha256 if computed.

    Hashing every file on every resume would cost minutes over thousands of checkpoints, so (as
    rsync does) an unchanged path, size and mtime is taken as the same file and only a change
    triggers the hash comparison.
    """
    if overwrite or checkpoint not in st.checkpoints():
        return None
    meta = st.checkpoint_meta(checkpoint)
    if not meta.get("sha256"):
        return None
    stat = Path(file).stat()
    if (meta.get("file") == str(Path(file).resolve()) and meta.get("file_bytes") == stat.st_size
            and meta.get("file_mtime_ns") == stat.st_mtime_ns):
        return meta["sha256"]
    digest = sha256_file(file)
    if digest != meta["sha256"]:
        raise InputError(
            f"checkpoint {checkpoint!r} in store {st.path} was extracted from a file with sha256 "
            f"{meta['sha256'][:12]}..., but {file} has sha256 {digest[:12]}...; give this file another name "
            "or set {param} to re-extract it", param="overwrite")
    return digest


def extract_checkpoints(checkpoints, store, dataset: str | None = None, *, architecture=None, train=None,
                        test=None, val=None, datasets=None, layers="auto", pooling="auto",
                        dtype: str = "float16", device=None, amp=None, batch_size="auto",
                        num_workers: int | None = None, image_size: int = 224, resize: int = 256,
                        normalize: str = "inception", metadata: dict | None = None, class_names=None,
                        overwrite: bool = False, progress: bool = True,
                        allow_import: bool = False, shard=None, workers=None, scheduler: str | None = None,
                        scheduler_file=None) -> ExtractionReport:
    """Extract every checkpoint file in ``checkpoints`` (paths, globs, (architecture, file) pairs,
    dicts or CheckpointSpecs; see ``checkpoints.expand_checkpoints``) over the dataset(s).

    Architectures are callables or registry names (``timm:NAME``, ``hf:DIR``, ``torchvision:NAME``, a
    name given to :func:`register_architecture`); every one is resolved before the first file is
    read. A ``module:attr`` import path is refused unless ``allow_import=True``, because importing
    runs code and checkpoint entries often come from a manifest (data).

    Each file is read once; its metadata (file, sha256, architecture, parameter count, ``metadata``
    and the spec's own metadata) goes to the store. The skeleton of an architecture is built once and
    reloaded with each file's weights. Other arguments are those of :func:`extract`.

    Beyond one process (docs/SCALE.md): ``shard`` ("K/N") extracts only the checkpoints of shard K of
    N (a stable hash of their store names), so N processes can fill one store at once; ``workers``,
    ``scheduler`` or ``scheduler_file`` run each (checkpoint, dataset) pair as a task on a Dask
    cluster (local, or existing), the store on a file system all of them share.
    """
    from .._run.shard import in_shard, parse_shard

    shard = parse_shard(shard)
    cluster = None
    if workers is not None or scheduler is not None or scheduler_file is not None:
        from .._run.distributed import ClusterOptions

        cluster = ClusterOptions(workers, scheduler, scheduler_file).checked()
    specs = [s for s in expand_checkpoints(checkpoints, architecture, allow_import=allow_import)
             if in_shard(s.name, shard)]
    st = _open_store(store)
    opt = _Options(layers, pooling, dtype, device, amp, batch_size, num_workers,
                   ImageTransform(image_size, resize, normalize), overwrite, progress)
    inputs = _datasets_arg(datasets, dataset, train, test, val, class_names)
    run = _Run(st, inputs, opt)
    if cluster is not None:
        from .._run.distributed import run_extract

        pairs = run_extract(cluster, _pair_task, specs, st, inputs, opt, metadata, run.device)
        return ExtractionReport([PairReport(**p) for p in pairs])
    extractor = _Checkpoints(run, metadata)
    report = ExtractionReport()
    for spec in specs:
        report.pairs += extractor.extract(spec)
    return report


_EXTRACTORS: dict = {}
_EXTRACTORS_LOCK = threading.Lock()
# Held for the whole of a pair: a worker with several threads (an existing cluster's) would otherwise
# run the pairs of two datasets at once, two passes and two skeletons in memory, and both would write
# the same checkpoint's metadata.
_PAIR_LOCK = threading.Lock()


def _pair_task(job: dict, spec, dataset: str, inputs) -> dict:
    """One (checkpoint, dataset) pair as a Dask task (``--workers``/``--scheduler``). The worker process
    keeps one extractor per dataset of the job (its split sources and the architecture's skeleton),
    so a pair already complete is skipped without reading its file once the skeleton exists; the
    pairs of one process run one at a time, whatever their dataset (one process-wide lock). A
    plateaulab error is returned, not raised, for the client to raise: it is the user's error, not
    the worker's."""
    from dataclasses import asdict

    from ..errors import PlateaulabError

    try:
        key = (job["token"], dataset)
        with _EXTRACTORS_LOCK:
            entry = _EXTRACTORS.get(key)
            if entry is None:
                for old in [k for k in _EXTRACTORS if k[0] != job["token"]]:
                    del _EXTRACTORS[old]              # an earlier extraction's: free its skeleton
                try:
                    st = FeatureStore.open(job["store"])
                except PlateaulabError as exc:
                    raise InputError(f"worker on {_HOST}: {exc} (the store must be on a file system shared by the "
                                     "client and every worker, at the same path)") from None
                entry = _EXTRACTORS[key] = _Checkpoints(_Run(st, {dataset: inputs}, job["opt"]), job["metadata"])
        with _PAIR_LOCK:
            return {"pairs": [asdict(r) for r in entry.extract(spec)], "error": None}
    except PlateaulabError as exc:
        return {"pairs": [], "error": exc}


class _Checkpoints:
    """Extracts checkpoint files one after another into ``run``'s store and datasets, reusing the
    skeleton of an architecture from one file to the next (a Dask worker keeps one per process, and
    gives it one (checkpoint, dataset) pair at a time: a ``run`` of one dataset)."""

    def __init__(self, run: "_Run", metadata: dict | None):
        self.run, self.metadata = run, metadata
        self.key, self.skeleton, self.chosen, self.layout = None, None, None, None

    def extract(self, spec) -> list[PairReport]:
        run, st, opt = self.run, self.run.store, self.run.opt
        ck = spec.name
        digest = _check_same_file(st, ck, spec.file, opt.overwrite)
        key = spec.architecture.key
        if self.key is not None and self.key[0] == key:
            names = [layer.name for layer in self.chosen]
            if not run.pending(ck, names):
                return [PairReport(ck, ds, "skipped", names) for ds in run.sources]
        sd = read_state_dict(spec.file)
        full_key = (key, classifier_outputs(sd))
        if full_key != self.key:
            self.skeleton = spec.architecture.build(num_classes=full_key[1])
            self.chosen, self.layout = _prepare(self.skeleton, run.device, opt.layers, opt.pooling)
            self.key = full_key
        skeleton, chosen = self.skeleton, self.chosen
        names = [layer.name for layer in chosen]
        todo = run.pending(ck, names)
        if not todo:
            return [PairReport(ck, ds, "skipped", names) for ds in run.sources]
        digest = digest or sha256_file(spec.file)
        load_weights(skeleton, sd, spec.file)
        del sd
        skeleton.eval()
        st.set_checkpoint_meta(ck, **{**(self.metadata or {}), **spec.metadata,
                                      "file": str(Path(spec.file).resolve()), "sha256": digest,
                                      "file_bytes": Path(spec.file).stat().st_size,
                                      "file_mtime_ns": Path(spec.file).stat().st_mtime_ns,
                                      "architecture": architecture_label(spec.architecture),
                                      "parameters": parameter_count(skeleton)})
        return _run_pairs(run, skeleton, ck, chosen, self.layout, todo, names)


def _run_pairs(run, model, checkpoint, chosen, layout, todo, names) -> list:
    """Extract every pending dataset of one checkpoint; report the finished ones as skipped."""
    return [run.run_pair(model, checkpoint, ds, chosen, layout) if ds in todo
            else PairReport(checkpoint, ds, "skipped", names) for ds in run.sources]
