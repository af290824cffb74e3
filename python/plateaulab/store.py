"""The feature store: cached features of many checkpoints, on disk, memory-mappable.

The format is documented for people who write stores from their own code in
``docs/STORE_FORMAT.md``; this module is its reference reader and writer. In short::

    STORE/store.json                                   {"format": "plateaulab-feature-store", "version": 1}
    STORE/datasets/<dataset>/dataset.json              num_classes, class_names, n_train, n_test, n_val
    STORE/datasets/<dataset>/y_{train,test[,val]}.npy  int64 labels in [0, num_classes)
    STORE/checkpoints/<ckpt>/meta.json                 free-form checkpoint metadata
    STORE/checkpoints/<ckpt>/features/<dataset>/<layer>/{train,test[,val]}.npy   fp16 or fp32, (rows, dim)
    STORE/checkpoints/<ckpt>/features/<dataset>/<layer>/block.json               written last

Names are percent-encoded into directory names, so a checkpoint may be called
``ViT-B-32/laion2b``. Every file is written to a temporary name and renamed into place,
and a block's ``block.json`` (shapes, dtype, a checksum of each array) is written only after its
arrays: a block without it is incomplete and is never read as features.

The parts live in ``plateaulab._store``: ``schema`` (the pydantic schema of every metadata file,
and the one place they are validated), ``names`` (canonical encodings, names refused at write
time), ``files`` (atomic writes that honour the umask, temporary files, reads that name the file)
and ``checksum`` (XXH3-64 for new blocks, CRC-32 for older ones).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ._store.checksum import DEFAULT as CHECKSUM, array_checksum, array_crc32, verify_block
from ._store.files import (atomic_save_npy, atomic_write_bytes, atomic_write_json, load_npy, read_json,
                           remove_temp_files)
from ._store.names import MAX_ENCODED_BYTES, decode_name, encode_name, list_entries, scan_entries
from .errors import StoreError

__all__ = ["FeatureStore", "Dataset", "Block", "Problem", "check_labels", "check_features", "check_rows",
           "check_block_against_dataset", "count_nonfinite", "encode_name", "decode_name", "atomic_write_bytes",
           "atomic_write_json", "atomic_save_npy", "load_npy", "array_checksum", "array_crc32", "verify_block",
           "remove_temp_files", "MAX_ENCODED_BYTES", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "plateaulab-feature-store"
FORMAT_VERSION = 1
FEATURE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
SPLITS = ("train", "test", "val")


def _validate(kind: str, path: Path, what: str):
    """Read and validate one metadata file (plateaulab._store.schema; imported on first use)."""
    from ._store import schema

    return schema.validate(kind, read_json(path, what), path, what)


# --------------------------------------------------------------------------- records

@dataclass
class Dataset:
    """A downstream dataset: labels per split and the number of classes."""

    name: str
    num_classes: int
    y_train: np.ndarray
    y_test: np.ndarray
    y_val: np.ndarray | None = None
    class_names: list[str] | None = None

    @property
    def has_val(self) -> bool:
        return self.y_val is not None

    def fingerprint(self) -> str:
        """XXH3-64 of the class count and every label split: changes whenever the labels do."""
        import xxhash

        h = xxhash.xxh3_64(str(self.num_classes).encode())
        for y in (self.y_train, self.y_test, self.y_val):
            h.update(b"|" if y is None else np.ascontiguousarray(y, dtype=np.int64).tobytes())
        return h.hexdigest()


@dataclass
class Block:
    """Features of one (checkpoint, dataset, layer): memory-mapped arrays of shape (rows, dim)."""

    checkpoint: str
    dataset: str
    layer: str
    layer_index: int
    dim: int
    dtype: str
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None
    path: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"checkpoint {self.checkpoint!r}, dataset {self.dataset!r}, layer {self.layer!r}"


@dataclass
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


# --------------------------------------------------------------------------- validators

def check_labels(y, name: str, split: str, num_classes: int | None = None) -> np.ndarray:
    """Return labels as a 1-D int64 array; raise naming the dataset and split if they are unusable."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise StoreError(f"dataset {name!r}: y_{split} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise StoreError(f"dataset {name!r}: y_{split} is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise StoreError(f"dataset {name!r}: y_{split} must hold integer class ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise StoreError(f"dataset {name!r}: y_{split} has a negative label ({lo}); labels must be 0..num_classes-1")
    if num_classes is not None and hi >= num_classes:
        raise StoreError(
            f"dataset {name!r}: y_{split} has label {hi} but num_classes is {num_classes}; "
            "labels must lie in 0..num_classes-1"
        )
    return arr


def check_classes_trained(name: str, y_train: np.ndarray, num_classes: int, class_names=None,
                          fix: str = "fix num_classes in dataset.json or the labels") -> None:
    """Refuse a dataset with a class that has no train example: no few-shot set can be drawn for it, at
    any shot count, so every probe of the dataset would fail."""
    counts = np.bincount(y_train, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        shown = ", ".join(str(int(c)) + (f" ({class_names[c]!r})" if class_names else "") for c in empty[:5])
        more = f" and {empty.size - 5} more" if empty.size > 5 else ""
        raise StoreError(f"dataset {name!r}: {empty.size} of its {num_classes} classes have no train example "
                         f"(class {shown}{more}); a few-shot probe needs train examples of every class: {fix}")


def check_rows(where: str, split: str, n_rows: int, n_labels: int, dataset: str) -> None:
    """The one check that a split's feature rows match its labels (writing, reading, checking)."""
    if n_rows != n_labels:
        raise StoreError(
            f"{where}: {split} features have {n_rows} rows but dataset {dataset!r} has {n_labels} {split} "
            "labels; features and labels must describe the same examples in the same order"
        )


def check_block_against_dataset(b: "Block", ds: "Dataset") -> None:
    """Refuse a block whose splits do not match its dataset's labels, naming the block."""
    for split, y in (("train", ds.y_train), ("test", ds.y_test), ("val", ds.y_val)):
        x = getattr(b, split)
        if x is None:
            if split != "val":
                raise StoreError(f"{b.where}: {split} features are missing")
            continue
        if y is None:
            raise StoreError(f"{b.where}: has val features but dataset {ds.name!r} has no val labels")
        check_rows(b.where, split, x.shape[0], y.size, ds.name)


def check_features(x, where: str, split: str, rows: int, dim: int | None = None,
                   dataset: str = "?") -> np.ndarray:
    """Return a feature matrix as fp16/fp32; raise naming the block on a bad shape, dtype or value."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise StoreError(f"{where}: {split} features must be 2-D (rows, dim), got shape {arr.shape}")
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype not in FEATURE_DTYPES:
        raise StoreError(f"{where}: {split} features must be float16 or float32, got {arr.dtype}")
    check_rows(where, split, arr.shape[0], rows, dataset)
    if dim is not None and arr.shape[1] != dim:
        raise StoreError(
            f"{where}: {split} features are {arr.shape[1]} wide but train features are {dim} wide; "
            "every split of a layer must have the same width"
        )
    if arr.shape[1] == 0:
        raise StoreError(f"{where}: {split} features have zero width")
    n_bad = count_nonfinite(arr)  # in chunks: no full-size boolean mask for big splits
    if n_bad:
        r = next(i for i in range(arr.shape[0]) if not np.isfinite(arr[i]).all())
        c = int(np.flatnonzero(~np.isfinite(arr[r]))[0])
        raise StoreError(
            f"{where}: {split} features contain {n_bad} NaN/Inf values (first at row {r}, column {c}); "
            "fix the extraction (fp16 overflow is a common cause) before storing"
        )
    return arr


# --------------------------------------------------------------------------- the store

class FeatureStore:
    """Reader and writer of a plateaulab feature store (see the module docstring)."""

    def __init__(self, path, _checked: bool = False):
        self.path = Path(path)
        if not _checked:
            raise TypeError("use FeatureStore.create(path) or FeatureStore.open(path)")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def create(cls, path, exist_ok: bool = False) -> "FeatureStore":
        """Create an empty store at ``path`` (or open it if ``exist_ok`` and it is a store)."""
        path = Path(path)
        marker = path / "store.json"
        if marker.exists():
            if exist_ok:
                return cls.open(path)
            raise StoreError(f"{path} already holds a feature store; open it with FeatureStore.open or pick a new path")
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a directory; a new store needs an empty or missing directory")
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} exists and is not empty; a new store needs an empty or missing directory")
        (path / "datasets").mkdir(parents=True, exist_ok=True)
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"format": FORMAT_NAME, "version": FORMAT_VERSION})
        return cls(path, _checked=True)

    @classmethod
    def open(cls, path) -> "FeatureStore":
        path = Path(path)
        if not path.is_dir():
            if path.exists():
                raise StoreError(f"no feature store at {path}: it is a file, not a store directory")
            raise StoreError(f"no feature store at {path}: the directory does not exist")
        if not (path / "store.json").exists():
            raise StoreError(f"{path} is not a plateaulab feature store: store.json is missing")
        _validate("store.json", path / "store.json", f"store {path}")
        return cls(path, _checked=True)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r})"

    # -- paths ---------------------------------------------------------------------------
    def _dataset_dir(self, name: str) -> Path:
        return self.path / "datasets" / encode_name(name, "dataset")

    def _checkpoint_dir(self, checkpoint: str) -> Path:
        return self.path / "checkpoints" / encode_name(checkpoint, "checkpoint")

    def _features_dir(self, checkpoint: str, dataset: str) -> Path:
        return self._checkpoint_dir(checkpoint) / "features" / encode_name(dataset, "dataset")

    def _block_dir(self, checkpoint: str, dataset: str, layer: str) -> Path:
        return self._features_dir(checkpoint, dataset) / encode_name(layer, "layer")

    # -- datasets ------------------------------------------------------------------------
    def add_dataset(self, name: str, y_train, y_test, num_classes: int | None = None, *,
                    y_val=None, class_names=None, overwrite: bool = False) -> Dataset:
        """Store a downstream dataset's labels. ``num_classes`` defaults to max label + 1."""
        d = self._dataset_dir(name)
        if (d / "dataset.json").exists() and not overwrite:
            raise StoreError(f"dataset {name!r} already exists in {self.path}; pass overwrite=True to replace it")
        y_train = check_labels(y_train, name, "train", num_classes)
        y_test = check_labels(y_test, name, "test", num_classes)
        y_val = None if y_val is None else check_labels(y_val, name, "val", num_classes)
        if num_classes is None:
            num_classes = int(max(y.max() for y in (y_train, y_test, y_val) if y is not None)) + 1
        num_classes = int(num_classes)
        if num_classes < 2:
            raise StoreError(f"dataset {name!r}: num_classes must be at least 2, got {num_classes}")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != num_classes:
                raise StoreError(
                    f"dataset {name!r}: {len(class_names)} class names given for {num_classes} classes"
                )
        check_classes_trained(name, y_train, num_classes, class_names,
                              fix="pass the labels of every class's train examples (or a smaller num_classes)")
        if (d / "dataset.json").exists():
            os.unlink(d / "dataset.json")  # marks the dataset incomplete while it is rewritten
        for split, y in (("train", y_train), ("test", y_test), ("val", y_val)):
            if y is not None:
                atomic_save_npy(d / f"y_{split}.npy", y)
            elif (d / f"y_{split}.npy").exists():
                os.unlink(d / f"y_{split}.npy")
        atomic_write_json(d / "dataset.json", {
            "name": name, "num_classes": num_classes, "class_names": class_names,
            "n_train": int(y_train.size), "n_test": int(y_test.size),
            "n_val": None if y_val is None else int(y_val.size),
        })
        return self.dataset(name)

    def datasets(self) -> list[str]:
        """Names of the complete datasets (those with a dataset.json)."""
        return sorted(list_entries(self.path / "datasets", "dataset", f"store {self.path}", marker="dataset.json"))

    def dataset(self, name: str) -> Dataset:
        """A dataset's labels, after validating dataset.json and checking the labels against it."""
        d = self._dataset_dir(name)
        if not (d / "dataset.json").exists():
            known = ", ".join(self.datasets()) or "none"
            raise StoreError(f"unknown dataset {name!r} in store {self.path} (known: {known})")
        what = f"dataset {name!r}"
        info = _validate("dataset.json", d / "dataset.json", what)
        if info.name is not None and info.name != name:
            raise StoreError(f"{what}: {d / 'dataset.json'}: key 'name' is {info.name!r} but the directory "
                             f"holds dataset {name!r}; fix the key or move the directory")
        ys = {}
        for split in SPLITS:
            f = d / f"y_{split}.npy"
            expected = getattr(info, f"n_{split}")
            if split == "val" and expected is None:
                if f.exists():
                    raise StoreError(f"{what}: {f} exists but dataset.json has no n_val; set n_val or remove the file")
                ys[split] = None
                continue
            y = load_npy(f, what, mmap=False)
            ys[split] = check_labels(y, name, split, info.num_classes)
            if ys[split].size != expected:
                raise StoreError(
                    f"{what}: {f} has {ys[split].size} labels but dataset.json says n_{split} = {expected}"
                )
        check_classes_trained(name, ys["train"], info.num_classes, info.class_names,
                              fix=f"fix num_classes in {d / 'dataset.json'} or the labels in {d / 'y_train.npy'}")
        return Dataset(name=name, num_classes=info.num_classes, y_train=ys["train"], y_test=ys["test"],
                       y_val=ys["val"], class_names=info.class_names)

    # -- checkpoints ---------------------------------------------------------------------
    def set_checkpoint_meta(self, checkpoint: str, **meta) -> dict:
        """Merge ``meta`` into the checkpoint's metadata (architecture, params, upstream accuracy, ...)."""
        import json

        from ._store import schema
        from ._store.files import _json_default

        d = self._checkpoint_dir(checkpoint)
        current = self.checkpoint_meta(checkpoint) if (d / "meta.json").exists() else {}
        current.update(meta)
        try:
            as_json = json.loads(json.dumps(current, default=_json_default, allow_nan=False))
        except (TypeError, ValueError) as exc:
            bad = []
            for key, value in current.items():
                try:
                    json.dumps(value, default=_json_default, allow_nan=False)
                except (TypeError, ValueError):
                    bad.append(key)
            keys = f"key {bad[0]!r} ({current[bad[0]]!r}) " if bad else ""
            raise StoreError(f"checkpoint {checkpoint!r}: metadata {keys}is not JSON ({exc}); "
                             "store numbers (finite: no NaN or infinity), strings, lists and dicts") from None
        schema.validate("meta.json", as_json, d / "meta.json", f"checkpoint {checkpoint!r}")
        atomic_write_json(d / "meta.json", as_json)
        return as_json

    def checkpoint_meta(self, checkpoint: str) -> dict:
        """The checkpoint's meta.json, validated ({} where the checkpoint has none)."""
        d = self._checkpoint_dir(checkpoint)
        if not d.is_dir():
            raise StoreError(f"unknown checkpoint {checkpoint!r} in store {self.path}")
        if not (d / "meta.json").exists() and not (d / "meta.json").is_symlink():
            return {}
        meta = _validate("meta.json", d / "meta.json", f"checkpoint {checkpoint!r}").model_dump()
        if "checkpoint" in meta and meta["checkpoint"] != checkpoint:
            # Runs copy meta.json into checkpoints.parquet, keyed by the column 'checkpoint'.
            raise StoreError(f"checkpoint {checkpoint!r}: {d / 'meta.json'}: key 'checkpoint' is "
                             f"{meta['checkpoint']!r} but the directory holds checkpoint {checkpoint!r}; runs join "
                             "metadata on that key, so remove it or make it the checkpoint's name")
        return meta

    def checkpoints(self) -> list[str]:
        return sorted(list_entries(self.path / "checkpoints", "checkpoint", f"store {self.path}"))

    # -- features ------------------------------------------------------------------------
    def add_features(self, checkpoint: str, dataset: str, layer: str, train, test, *, val=None,
                     layer_index: int | None = None, overwrite: bool = False) -> Block:
        """Store one block of features. Arrays are (rows, dim), float16 or float32 (float64 is cast
        to float32). ``layer_index`` orders the layers of a checkpoint; by default a new layer goes
        after the ones already stored for this (checkpoint, dataset)."""
        bdir = self._block_dir(checkpoint, dataset, layer)   # refuses names the store cannot hold
        ds = self.dataset(dataset)
        where = f"checkpoint {checkpoint!r}, dataset {dataset!r}, layer {layer!r}"
        if (bdir / "block.json").exists() and not overwrite:
            raise StoreError(f"{where}: features already stored; pass overwrite=True to replace them")
        if layer_index is not None and (isinstance(layer_index, bool) or int(layer_index) != layer_index
                                        or layer_index < 0):
            raise StoreError(f"{where}: layer_index must be a non-negative integer, got {layer_index!r}")
        train = check_features(train, where, "train", ds.y_train.size, dataset=dataset)
        dim = train.shape[1]
        test = check_features(test, where, "test", ds.y_test.size, dim, dataset=dataset)
        if val is not None:
            if ds.y_val is None:
                raise StoreError(f"{where}: val features given but dataset {dataset!r} has no val labels")
            val = check_features(val, where, "val", ds.y_val.size, dim, dataset=dataset)
        if layer_index is None:
            existing = self.layers(checkpoint, dataset) if self._features_dir(checkpoint, dataset).is_dir() else []
            layer_index = len([n for n in existing if n != layer])
        if (bdir / "block.json").exists():
            os.unlink(bdir / "block.json")
        sums = {}
        dtype = None
        for split, arr in (("train", train), ("test", test), ("val", val)):
            f = bdir / f"{split}.npy"
            if arr is None:
                if f.exists():
                    os.unlink(f)
                continue
            if dtype is None:
                dtype = str(arr.dtype)
            elif str(arr.dtype) != dtype:
                arr = arr.astype(dtype)
            atomic_save_npy(f, arr)
            sums[split] = array_checksum(arr, CHECKSUM)
        if not (self._checkpoint_dir(checkpoint) / "meta.json").exists():
            atomic_write_json(self._checkpoint_dir(checkpoint) / "meta.json", {})
        info = {
            "checkpoint": checkpoint, "dataset": dataset, "layer": layer, "layer_index": int(layer_index),
            "dim": int(dim), "dtype": dtype,
            "rows": {s: int(a.shape[0]) for s, a in (("train", train), ("test", test), ("val", val)) if a is not None},
            CHECKSUM: sums,
        }
        atomic_write_json(bdir / "block.json", info)
        return self.block(checkpoint, dataset, layer)

    def _block_info(self, bdir: Path, checkpoint: str, dataset: str, layer: str) -> dict:
        """A block's validated block.json, as a dict with its ``layer`` name."""
        where = f"checkpoint {checkpoint!r}, dataset {dataset!r}, layer {layer!r}"
        info = _validate("block.json", bdir / "block.json", where).info()
        for key, value in (("checkpoint", checkpoint), ("dataset", dataset), ("layer", layer)):
            if key in info and info[key] != value:
                raise StoreError(f"{where}: {bdir / 'block.json'}: key {key!r} is {info[key]!r} but the block "
                                 f"lives in the directory of {key} {value!r}; re-extract the block or fix the key")
        info["layer"] = layer
        return info

    def _pair_root(self, checkpoint: str, dataset: str) -> Path:
        """The directory of a (checkpoint, dataset)'s layers; a file (or dangling symlink) in place of the
        checkpoint's ``features`` directory is an error, not a checkpoint without features."""
        features = self._checkpoint_dir(checkpoint) / "features"
        if not features.is_dir() and (features.exists() or features.is_symlink()):
            _, problems = scan_entries(features, "dataset", f"checkpoint {checkpoint!r}")
            raise StoreError(problems[0])
        return self._features_dir(checkpoint, dataset)

    def block_infos(self, checkpoint: str, dataset: str) -> list[dict]:
        """Validated block.json of every complete layer of (checkpoint, dataset), in layer order."""
        root = self._pair_root(checkpoint, dataset)
        where = f"checkpoint {checkpoint!r}, dataset {dataset!r}"
        entries = list_entries(root, "layer", where, marker="block.json")
        infos = [self._block_info(p, checkpoint, dataset, layer) for layer, p in entries.items()]
        infos.sort(key=lambda i: (i["layer_index"], i["layer"]))
        return infos

    def incomplete_layers(self, checkpoint: str, dataset: str) -> list[str]:
        """Layers of (checkpoint, dataset) whose directory has no block.json (a write that did not finish)."""
        root = self._pair_root(checkpoint, dataset)
        entries = list_entries(root, "layer", f"checkpoint {checkpoint!r}, dataset {dataset!r}")
        return sorted(layer for layer, p in entries.items() if not (p / "block.json").exists())

    def layers(self, checkpoint: str, dataset: str) -> list[str]:
        """Complete layers of (checkpoint, dataset), in layer order."""
        if not self._checkpoint_dir(checkpoint).is_dir():
            raise StoreError(f"unknown checkpoint {checkpoint!r} in store {self.path}")
        return [i["layer"] for i in self.block_infos(checkpoint, dataset)]

    def block_fingerprint(self, checkpoint: str, dataset: str, layer: str) -> dict:
        """What identifies a block's current contents without reading its arrays: the XXH3-64 of its
        block.json (shapes, dtype, checksums) and the size and mtime of each array file. Any rewrite
        of the block, by the store or behind its back, changes it."""
        import xxhash

        bdir = self._block_dir(checkpoint, dataset, layer)
        try:
            fp = {"block.json": xxhash.xxh3_64_hexdigest((bdir / "block.json").read_bytes())}
            for split in SPLITS:
                f = bdir / f"{split}.npy"
                if f.exists():
                    st = f.stat()
                    fp[split] = [st.st_size, st.st_mtime_ns]
        except OSError as exc:
            raise StoreError(f"checkpoint {checkpoint!r}, dataset {dataset!r}, layer {layer!r}: cannot read "
                             f"{exc.filename} ({exc.strerror}); re-extract this block") from None
        return fp

    def has_block(self, checkpoint: str, dataset: str, layer: str) -> bool:
        return (self._block_dir(checkpoint, dataset, layer) / "block.json").exists()

    def block(self, checkpoint: str, dataset: str, layer: str, mmap: bool = True) -> Block:
        """Open one block's arrays (memory-mapped) after checking them against its validated block.json."""
        where = f"checkpoint {checkpoint!r}, dataset {dataset!r}, layer {layer!r}"
        bdir = self._block_dir(checkpoint, dataset, layer)
        if not (bdir / "block.json").exists():
            if not self._checkpoint_dir(checkpoint).is_dir():
                raise StoreError(f"unknown checkpoint {checkpoint!r} in store {self.path}")
            if bdir.is_dir():
                raise StoreError(f"{where}: block is incomplete (no block.json); re-extract it")
            known = ", ".join(self.layers(checkpoint, dataset)) or "none"
            raise StoreError(f"{where}: no such block in {self.path} (layers stored for this pair: {known})")
        info = self._block_info(bdir, checkpoint, dataset, layer)
        arrays = {}
        for split in SPLITS:
            f = bdir / f"{split}.npy"
            if split not in info["rows"]:
                arrays[split] = None
                continue
            a = load_npy(f, where, mmap=mmap)
            if a.ndim != 2 or a.shape[0] != info["rows"][split] or a.shape[1] != info["dim"]:
                raise StoreError(
                    f"{where}: {f} has shape {a.shape}, block.json says ({info['rows'][split]}, {info['dim']}); "
                    "the file was changed after it was written: re-extract this block"
                )
            if a.dtype not in FEATURE_DTYPES:
                raise StoreError(f"{where}: {f} holds {a.dtype}; features must be float16 or float32")
            if str(a.dtype) != info["dtype"]:
                raise StoreError(f"{where}: {f} holds {a.dtype} but block.json says dtype {info['dtype']!r}; "
                                 "re-extract this block")
            arrays[split] = a
        return Block(checkpoint=checkpoint, dataset=dataset, layer=layer, layer_index=info["layer_index"],
                     dim=info["dim"], dtype=info["dtype"], train=arrays["train"], test=arrays["test"],
                     val=arrays["val"], path=bdir, info=info)

    def iter_blocks(self, checkpoints=None, datasets=None) -> Iterator[tuple[str, str, str]]:
        """(checkpoint, dataset, layer) of every complete block, checkpoint-major, layers in order."""
        for ck in checkpoints if checkpoints is not None else self.checkpoints():
            for ds in datasets if datasets is not None else self.datasets():
                for layer in self.layers(ck, ds):
                    yield ck, ds, layer

    def remove_block(self, checkpoint: str, dataset: str, layer: str) -> None:
        bdir = self._block_dir(checkpoint, dataset, layer)
        if (bdir / "block.json").exists():
            os.unlink(bdir / "block.json")
        shutil.rmtree(bdir, ignore_errors=True)

    # -- checks --------------------------------------------------------------------------
    def check(self, deep: bool = False) -> list[Problem]:
        """Every problem found in the store, by the same validation ``probe`` uses when it reads it.
        ``deep`` also reads every array as ``probe`` does: checksums and NaN/Inf."""
        problems: list[Problem] = []
        here = f"store {self.path}"
        try:
            _validate("store.json", self.path / "store.json", here)
        except StoreError as exc:
            problems.append(Problem(here, str(exc)))
        datasets = {}
        ds_entries, name_problems = scan_entries(self.path / "datasets", "dataset", here)
        problems += [Problem(here, m.removeprefix(here + ": ")) for m in name_problems]
        for name, p in ds_entries.items():
            if not (p / "dataset.json").exists():
                problems.append(Problem(f"dataset {name!r}", "incomplete: dataset.json is missing"))
                continue
            try:
                datasets[name] = self.dataset(name)
            except StoreError as exc:
                problems.append(Problem(f"dataset {name!r}", str(exc).removeprefix(f"dataset {name!r}: ")))
        if not datasets:
            problems.append(Problem(here, "holds no datasets"))
        ck_entries, name_problems = scan_entries(self.path / "checkpoints", "checkpoint", here)
        problems += [Problem(here, m.removeprefix(here + ": ")) for m in name_problems]
        if not ck_entries:
            problems.append(Problem(here, "holds no checkpoints"))
        n_blocks = 0
        for ck, cdir in ck_entries.items():
            try:
                self.checkpoint_meta(ck)
            except StoreError as exc:
                problems.append(Problem(f"checkpoint {ck!r}", str(exc).removeprefix(f"checkpoint {ck!r}: ")))
            if not any((cdir / f).exists() or (cdir / f).is_symlink() for f in ("meta.json", "features")):
                # Every writer of a checkpoint writes its meta.json; this directory is something else
                # (a probe run pointed into the store, a copy left behind).
                found = sorted(p.name for p in cdir.iterdir())[:5]
                problems.append(Problem(f"checkpoint {ck!r}", f"{cdir} holds neither meta.json nor features/ "
                                        f"(it holds {', '.join(found) or 'nothing'}): it is not a checkpoint; "
                                        "move it out of the store"))
            ds_dirs, name_problems = scan_entries(cdir / "features", "dataset", f"checkpoint {ck!r}")
            problems += [Problem(f"checkpoint {ck!r}", m.removeprefix(f"checkpoint {ck!r}: ")) for m in name_problems]
            for dsname, dsdir in ds_dirs.items():
                pair = f"checkpoint {ck!r}, dataset {dsname!r}"
                if dsname not in datasets:
                    problems.append(Problem(pair, "features for a dataset the store does not define "
                                                  "(or whose labels are broken)"))
                    continue
                layer_dirs, name_problems = scan_entries(dsdir, "layer", pair)
                problems += [Problem(pair, m.removeprefix(pair + ": ")) for m in name_problems]
                for layer, ldir in layer_dirs.items():
                    where = f"{pair}, layer {layer!r}"
                    if not (ldir / "block.json").exists():
                        problems.append(Problem(where, "incomplete block (no block.json): re-extract it"))
                        continue
                    n_blocks += 1
                    try:
                        b = self.block(ck, dsname, layer)
                        check_block_against_dataset(b, datasets[dsname])
                        if deep:
                            verify_block(b)
                            for split in SPLITS:
                                x = getattr(b, split)
                                n_bad = 0 if x is None else count_nonfinite(x)
                                if n_bad:
                                    raise StoreError(f"{b.where}: {split} features contain {n_bad} NaN/Inf values")
                    except StoreError as exc:
                        problems.append(Problem(where, str(exc).removeprefix(where + ": ")))
        if ck_entries and datasets and n_blocks == 0:
            problems.append(Problem(here, "holds no complete feature blocks"))
        return problems

    def summary(self) -> dict:
        """Counts and sizes for ``plateaulab store info``."""
        ckpts = self.checkpoints()
        datasets = {}
        for name in self.datasets():
            ds = self.dataset(name)
            datasets[name] = {"num_classes": ds.num_classes, "n_train": int(ds.y_train.size),
                              "n_test": int(ds.y_test.size),
                              "n_val": None if ds.y_val is None else int(ds.y_val.size)}
        n_blocks, n_incomplete, n_bytes, dims, dtypes, layers_per = 0, 0, 0, set(), set(), []
        meta_keys: set[str] = set()
        for ck in ckpts:
            try:
                meta_keys.update(self.checkpoint_meta(ck))
            except StoreError:
                pass
            for ds in datasets:
                infos = self.block_infos(ck, ds)
                n_incomplete += len(self.incomplete_layers(ck, ds))
                if infos:
                    layers_per.append(len(infos))
                for info in infos:
                    n_blocks += 1
                    dims.add(info["dim"])
                    dtypes.add(info["dtype"])
                    n_bytes += sum(info["rows"].values()) * info["dim"] * np.dtype(info["dtype"]).itemsize
        return {
            "path": str(self.path), "checkpoints": len(ckpts), "datasets": datasets,
            "blocks": n_blocks, "incomplete_blocks": n_incomplete, "feature_bytes": n_bytes, "dims": sorted(dims),
            "dtypes": sorted(dtypes), "metadata_keys": sorted(meta_keys),
            "layers_per_checkpoint": [min(layers_per), max(layers_per)] if layers_per else [0, 0],
        }


def count_nonfinite(x: np.ndarray, chunk_rows: int = 65536) -> int:
    """NaN/Inf count of a (possibly memory-mapped) 2-D array, read in chunks."""
    n = 0
    for i in range(0, x.shape[0], chunk_rows):
        n += int(np.count_nonzero(~np.isfinite(x[i:i + chunk_rows])))
    return n
