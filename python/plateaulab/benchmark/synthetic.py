"""Synthetic feature stores with class structure, for benchmarks (``plateaulab bench``, bench/bench_cuda.py).

Features are class means in a 64-dimensional subspace, scaled by a separation that grows with the
checkpoint (cycling every 20) and the layer, plus unit Gaussian noise and an offset of 1.5; stored as
fp16 (or fp32). Accuracies therefore spread over (0, 1), as real probes' do, and arg-max ties are
rare. Each block is a function of (checkpoint, layer, dataset) alone, so an interrupted build
resumes with the same features.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import InputError
from .workloads import DatasetSpec, Workload

STORE_MARKER = "bench-store.json"


def dataset_labels(spec: DatasetSpec, seed: int = 0):
    """(y_train, y_test): ``train_per_class`` train rows of each class in a shuffled order, test labels
    drawn uniformly."""
    rng = np.random.default_rng([seed, spec.classes, spec.n_test])
    y_train = np.repeat(np.arange(spec.classes), spec.train_per_class)
    rng.shuffle(y_train)
    return y_train, rng.integers(0, spec.classes, spec.n_test)


class FeatureSynth:
    """The features of one block (module docstring). Draws on the GPU through CuPy when ``xp`` is CuPy;
    ``dtype`` is the stored dtype (float16 or float32)."""

    def __init__(self, xp, dim: int, seed: int = 0, dtype=np.float16):
        self.xp, self.dim, self.seed, self.dtype = xp, dim, seed, np.dtype(dtype)
        self.basis = np.random.default_rng([seed, dim]).normal(size=(64, dim)) / 8.0

    def block(self, k: int, layer: int, d: int, y_train, y_test):
        xp = self.xp
        key = [self.seed, k, layer, d]
        sep = 0.3 + 0.7 * (k % 20) / 19 + 0.05 * layer
        C = int(max(y_train.max(), y_test.max())) + 1
        means = (np.random.default_rng(key).normal(size=(C, 64)) @ self.basis * (4 * sep)).astype(np.float32)
        y = np.concatenate([y_train, y_test])
        if xp is np:
            x = np.random.default_rng(key + [1]).standard_normal((y.size, self.dim), dtype=np.float32)
        else:
            x = xp.random.RandomState(int(np.random.SeedSequence(key).generate_state(1)[0])).standard_normal(
                (y.size, self.dim), dtype=np.float32)
        x += xp.asarray(means)[xp.asarray(y)]
        x += 1.5
        x = x.astype(self.dtype, copy=False)
        x = x if xp is np else x.get()
        return x[: y_train.size], x[y_train.size:]


def write_blocks(st, synth: FeatureSynth, jobs, workers: int | None = None, on_block=None) -> int:
    """Generate and store every (checkpoint, k, layer, dataset index, dataset, y_train, y_test) job
    whose block is not complete yet. The host work of a block (NaN check, checksum, write, fsync) runs
    in a thread pool, as numpy, hashing and file writes release the GIL; at most 2 x workers blocks
    are in flight. ``on_block()`` is called after each block is written. Returns the feature bytes
    written."""
    workers = workers or min(8, os.cpu_count() or 1)
    todo = [j for j in jobs if not st.has_block(j[0], j[4], f"layer{j[2]:02d}")]
    for ck in dict.fromkeys(j[0] for j in todo):
        k = int(ck.split("-")[1])
        st.set_checkpoint_meta(ck, upstream_accuracy=0.4 + 0.5 * (k % 20) / 19, index=k)

    def one(job):
        ck, k, layer, d, name, y_train, y_test = job
        train, test = synth.block(k, layer, d, y_train, y_test)
        st.add_features(ck, name, f"layer{layer:02d}", train=train, test=test, layer_index=layer)
        return train.nbytes + test.nbytes

    written = 0

    def done(f):
        nonlocal written
        written += f.result()
        if on_block is not None:
            on_block()

    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for job in todo:
            pending.append(pool.submit(one, job))
            if len(pending) >= 2 * workers:
                done(pending.pop(0))
        for f in pending:
            done(f)
    return written


def build_store(wl: Workload, path, xp=np, *, workers: int | None = None, on_block=None):
    """The workload's store at ``path``: reused when a complete one of the same shape is there (its
    marker file matches), resumed when a build was interrupted, refused when the disk is too small.
    Returns (FeatureStore, seconds spent building now, feature bytes written now)."""
    from ..store import FeatureStore

    path = Path(path)
    spec = wl.store_spec()
    marker = path / STORE_MARKER
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return FeatureStore.open(path), 0.0, 0
    if path.exists() and not (path / "store.json").exists() and any(path.iterdir()):
        raise InputError(f"{path} exists and is not a feature store; give {{param}} a folder of its own",
                         param="workdir")
    if marker.exists() or (path / "store.json").exists() and not _same_partial(path, spec):
        shutil.rmtree(path)                      # a store of another shape: rebuilt
    path.parent.mkdir(parents=True, exist_ok=True)
    need, free = wl.store_bytes(), shutil.disk_usage(path.parent).free
    if need > 0.95 * free:
        raise InputError(f"the {wl.preset} workload's store needs {need / 1e9:.1f} GB and {path.parent} has "
                         f"{free / 1e9:.1f} GB free; point {{param}} at a larger disk or shrink the shape",
                         param="workdir")
    t0 = time.perf_counter()
    st = FeatureStore.create(path, exist_ok=True)
    (path / "bench-store.partial.json").write_text(json.dumps(spec, sort_keys=True))
    synth = FeatureSynth(xp, wl.dim, dtype=wl.dtype)
    jobs = []
    for d, ds in enumerate(wl.datasets):
        if ds.name not in st.datasets():
            y_train, y_test = dataset_labels(ds)
            st.add_dataset(ds.name, y_train, y_test, num_classes=ds.classes)
        y_train, y_test = st.dataset(ds.name).y_train, st.dataset(ds.name).y_test
        for k in range(wl.checkpoints):
            for layer in range(wl.layers):
                jobs.append((f"ckpt-{k:04d}", k, layer, d, ds.name, y_train, y_test))
    written = write_blocks(st, synth, jobs, workers, on_block)
    marker.write_text(json.dumps(spec, sort_keys=True))
    (path / "bench-store.partial.json").unlink(missing_ok=True)
    return st, time.perf_counter() - t0, written


def _same_partial(path: Path, spec: dict) -> bool:
    """Whether ``path`` holds an interrupted build of the same shape (resumed rather than rebuilt)."""
    f = path / "bench-store.partial.json"
    try:
        return json.loads(f.read_text()) == spec
    except (OSError, ValueError):
        return False


def probe_order(st, wl: Workload) -> list[tuple[str, str, str]]:
    """(checkpoint, dataset, layer) of every block of the workload, checkpoint-major."""
    return [(ck, d.name, layer) for ck in st.checkpoints() for d in wl.datasets for layer in st.layers(ck, d.name)]


__all__ = ["FeatureSynth", "dataset_labels", "write_blocks", "build_store", "probe_order"]
