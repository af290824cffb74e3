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
and a block's ``block.json`` (shapes, dtype, CRC-32 of each array) is written only after its
arrays: a block without it is incomplete and is never read as features.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

import numpy as np

from .errors import StoreError

FORMAT_NAME = "plateaulab-feature-store"
FORMAT_VERSION = 1
FEATURE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
SPLITS = ("train", "test", "val")


# --------------------------------------------------------------------------- file helpers

def encode_name(name: str, what: str) -> str:
    """Directory name for a checkpoint, dataset or layer name (percent-encoded, reversible)."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise StoreError(f"invalid {what} name {name!r}: expected a non-empty string other than '.' or '..'")
    return quote(name, safe="")


def decode_name(dirname: str) -> str:
    return unquote(dirname)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Write a file through ``write(fileobj)`` to a temporary name, fsync it, rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj) -> None:
    data = json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, lambda f: np.save(f, array, allow_pickle=False))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serialisable")


def array_crc32(array: np.ndarray) -> int:
    """CRC-32 of an array's data bytes (C order); cheap enough to run on every write."""
    a = np.ascontiguousarray(array)
    return zlib.crc32(memoryview(a).cast("B")) & 0xFFFFFFFF


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{what}: missing file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{what}: {path} is not valid JSON ({exc}); rewrite it or remove the entry") from None


def load_npy(path: Path, what: str, mmap: bool = True) -> np.ndarray:
    """Open an .npy file, memory-mapped by default, with errors that name the file."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise StoreError(f"{what}: missing array file {path}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise StoreError(
            f"{what}: array file {path} is truncated or corrupt ({exc}); re-extract this block"
        ) from None


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
            raise StoreError(f"no feature store at {path}: the directory does not exist")
        info = _read_json(path / "store.json", f"store {path}")
        if info.get("format") != FORMAT_NAME:
            raise StoreError(f"{path / 'store.json'} does not describe a plateaulab feature store")
        if int(info.get("version", -1)) > FORMAT_VERSION:
            raise StoreError(
                f"store {path} has format version {info.get('version')}, newer than this plateaulab "
                f"reads ({FORMAT_VERSION}); upgrade plateaulab"
            )
        return cls(path, _checked=True)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r})"

    # -- paths ---------------------------------------------------------------------------
    def _dataset_dir(self, name: str) -> Path:
        return self.path / "datasets" / encode_name(name, "dataset")

    def _checkpoint_dir(self, checkpoint: str) -> Path:
        return self.path / "checkpoints" / encode_name(checkpoint, "checkpoint")

    def _block_dir(self, checkpoint: str, dataset: str, layer: str) -> Path:
        return (self._checkpoint_dir(checkpoint) / "features" / encode_name(dataset, "dataset")
                / encode_name(layer, "layer"))

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
        root = self.path / "datasets"
        if not root.is_dir():
            return []
        return sorted(decode_name(p.name) for p in root.iterdir() if (p / "dataset.json").exists())

    def dataset(self, name: str) -> Dataset:
        d = self._dataset_dir(name)
        if not (d / "dataset.json").exists():
            known = ", ".join(self.datasets()) or "none"
            raise StoreError(f"unknown dataset {name!r} in store {self.path} (known: {known})")
        info = _read_json(d / "dataset.json", f"dataset {name!r}")
        num_classes = int(info["num_classes"])
        ys = {}
        for split in SPLITS:
            f = d / f"y_{split}.npy"
            if split == "val" and not f.exists():
                ys[split] = None
                continue
            y = load_npy(f, f"dataset {name!r}", mmap=False)
            ys[split] = check_labels(y, name, split, num_classes)
            expected = info.get(f"n_{split}")
            if expected is not None and ys[split].size != int(expected):
                raise StoreError(
                    f"dataset {name!r}: {f} has {ys[split].size} labels but dataset.json says n_{split} = {expected}"
                )
        return Dataset(name=name, num_classes=num_classes, y_train=ys["train"], y_test=ys["test"],
                       y_val=ys["val"], class_names=info.get("class_names"))

    # -- checkpoints ---------------------------------------------------------------------
    def set_checkpoint_meta(self, checkpoint: str, **meta) -> dict:
        """Merge ``meta`` into the checkpoint's metadata (architecture, params, upstream accuracy, ...)."""
        d = self._checkpoint_dir(checkpoint)
        current = self.checkpoint_meta(checkpoint) if (d / "meta.json").exists() else {}
        current.update(meta)
        atomic_write_json(d / "meta.json", current)
        return current

    def checkpoint_meta(self, checkpoint: str) -> dict:
        d = self._checkpoint_dir(checkpoint)
        if not d.is_dir():
            raise StoreError(f"unknown checkpoint {checkpoint!r} in store {self.path}")
        if not (d / "meta.json").exists():
            return {}
        return _read_json(d / "meta.json", f"checkpoint {checkpoint!r}")

    def checkpoints(self) -> list[str]:
        root = self.path / "checkpoints"
        if not root.is_dir():
            return []
        return sorted(decode_name(p.name) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    # -- features ------------------------------------------------------------------------
    def add_features(self, checkpoint: str, dataset: str, layer: str, train, test, *, val=None,
                     layer_index: int | None = None, overwrite: bool = False) -> Block:
        """Store one block of features. Arrays are (rows, dim), float16 or float32 (float64 is cast
        to float32). ``layer_index`` orders the layers of a checkpoint; by default a new layer goes
        after the ones already stored for this (checkpoint, dataset)."""
        ds = self.dataset(dataset)
        where = f"checkpoint {checkpoint!r}, dataset {dataset!r}, layer {layer!r}"
        bdir = self._block_dir(checkpoint, dataset, layer)
        if (bdir / "block.json").exists() and not overwrite:
            raise StoreError(f"{where}: features already stored; pass overwrite=True to replace them")
        train = check_features(train, where, "train", ds.y_train.size, dataset=dataset)
        dim = train.shape[1]
        test = check_features(test, where, "test", ds.y_test.size, dim, dataset=dataset)
        if val is not None:
            if ds.y_val is None:
                raise StoreError(f"{where}: val features given but dataset {dataset!r} has no val labels")
            val = check_features(val, where, "val", ds.y_val.size, dim, dataset=dataset)
        if layer_index is None:
            existing = [b for b in self.layers(checkpoint, dataset)] if self._has_ckpt_dataset(checkpoint, dataset) else []
            layer_index = len([n for n in existing if n != layer])
        if (bdir / "block.json").exists():
            os.unlink(bdir / "block.json")
        crc = {}
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
            crc[split] = array_crc32(arr)
        if not (self._checkpoint_dir(checkpoint) / "meta.json").exists():
            atomic_write_json(self._checkpoint_dir(checkpoint) / "meta.json", {})
        info = {
            "checkpoint": checkpoint, "dataset": dataset, "layer": layer, "layer_index": int(layer_index),
            "dim": int(dim), "dtype": dtype,
            "rows": {s: int(a.shape[0]) for s, a in (("train", train), ("test", test), ("val", val)) if a is not None},
            "crc32": crc,
        }
        atomic_write_json(bdir / "block.json", info)
        return self.block(checkpoint, dataset, layer)

    def _has_ckpt_dataset(self, checkpoint: str, dataset: str) -> bool:
        return (self._checkpoint_dir(checkpoint) / "features" / encode_name(dataset, "dataset")).is_dir()

    def block_infos(self, checkpoint: str, dataset: str) -> list[dict]:
        """block.json of every complete layer of (checkpoint, dataset), in layer order."""
        root = self._checkpoint_dir(checkpoint) / "features" / encode_name(dataset, "dataset")
        if not root.is_dir():
            return []
        infos = []
        for p in root.iterdir():
            if (p / "block.json").exists():
                info = _read_json(p / "block.json", f"checkpoint {checkpoint!r}, dataset {dataset!r}")
                info["layer"] = decode_name(p.name)
                infos.append(info)
        infos.sort(key=lambda i: (int(i.get("layer_index", 0)), i["layer"]))
        return infos

    def layers(self, checkpoint: str, dataset: str) -> list[str]:
        """Complete layers of (checkpoint, dataset), in layer order."""
        if not self._checkpoint_dir(checkpoint).is_dir():
            raise StoreError(f"unknown checkpoint {checkpoint!r} in store {self.path}")
        return [i["layer"] for i in self.block_infos(checkpoint, dataset)]

    def has_block(self, checkpoint: str, dataset: str, layer: str) -> bool:
        return (self._block_dir(checkpoint, dataset, layer) / "block.json").exists()

    def block(self, checkpoint: str, dataset: str, layer: str, mmap: bool = True) -> Block:
        """Open one block's arrays (memory-mapped) after checking them against block.json and the labels."""
        where = f"checkpoint {checkpoint!r}, dataset {dataset!r}, layer {layer!r}"
        bdir = self._block_dir(checkpoint, dataset, layer)
        if not (bdir / "block.json").exists():
            if not self._checkpoint_dir(checkpoint).is_dir():
                raise StoreError(f"unknown checkpoint {checkpoint!r} in store {self.path}")
            if bdir.is_dir():
                raise StoreError(f"{where}: block is incomplete (no block.json); re-extract it")
            known = ", ".join(self.layers(checkpoint, dataset)) or "none"
            raise StoreError(f"{where}: no such block in {self.path} (layers stored for this pair: {known})")
        info = _read_json(bdir / "block.json", where)
        arrays = {}
        for split in SPLITS:
            f = bdir / f"{split}.npy"
            if split not in info.get("rows", {}):
                arrays[split] = None
                continue
            a = load_npy(f, where, mmap=mmap)
            if a.ndim != 2 or a.shape[0] != int(info["rows"][split]) or a.shape[1] != int(info["dim"]):
                raise StoreError(
                    f"{where}: {f} has shape {a.shape}, block.json says ({info['rows'][split]}, {info['dim']}); "
                    "the file was changed after it was written: re-extract this block"
                )
            if a.dtype not in FEATURE_DTYPES:
                raise StoreError(f"{where}: {f} holds {a.dtype}; features must be float16 or float32")
            arrays[split] = a
        return Block(checkpoint=checkpoint, dataset=dataset, layer=layer,
                     layer_index=int(info.get("layer_index", 0)), dim=int(info["dim"]),
                     dtype=str(info.get("dtype")), train=arrays["train"], test=arrays["test"],
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
        """Every problem found in the store. ``deep`` also reads every array: checksums and NaN/Inf."""
        problems: list[Problem] = []
        datasets = {}
        ds_root = self.path / "datasets"
        for p in sorted(ds_root.iterdir()) if ds_root.is_dir() else []:
            name = decode_name(p.name)
            if not (p / "dataset.json").exists():
                problems.append(Problem(f"dataset {name!r}", "incomplete: dataset.json is missing"))
                continue
            try:
                datasets[name] = self.dataset(name)
            except StoreError as exc:
                problems.append(Problem(f"dataset {name!r}", str(exc)))
        if not datasets:
            problems.append(Problem(f"store {self.path}", "holds no datasets"))
        ckpts = self.checkpoints()
        if not ckpts:
            problems.append(Problem(f"store {self.path}", "holds no checkpoints"))
        n_blocks = 0
        for ck in ckpts:
            cdir = self._checkpoint_dir(ck)
            try:
                self.checkpoint_meta(ck)
            except StoreError as exc:
                problems.append(Problem(f"checkpoint {ck!r}", str(exc)))
            froot = cdir / "features"
            for dsdir in sorted(froot.iterdir()) if froot.is_dir() else []:
                dsname = decode_name(dsdir.name)
                if dsname not in datasets:
                    problems.append(Problem(f"checkpoint {ck!r}, dataset {dsname!r}",
                                            "features for a dataset the store does not define (or whose labels are broken)"))
                    continue
                for ldir in sorted(dsdir.iterdir()):
                    layer = decode_name(ldir.name)
                    where = f"checkpoint {ck!r}, dataset {dsname!r}, layer {layer!r}"
                    if not (ldir / "block.json").exists():
                        problems.append(Problem(where, "incomplete block (no block.json): re-extract it"))
                        continue
                    n_blocks += 1
                    try:
                        b = self.block(ck, dsname, layer)
                        check_block_against_dataset(b, datasets[dsname])
                        if deep:
                            self._deep_check_block(b)
                    except StoreError as exc:
                        problems.append(Problem(where, str(exc).removeprefix(where + ": ")))
        if ckpts and datasets and n_blocks == 0:
            problems.append(Problem(f"store {self.path}", "holds no complete feature blocks"))
        return problems

    @staticmethod
    def _deep_check_block(b: Block) -> None:
        for split in SPLITS:
            x = getattr(b, split)
            if x is None:
                continue
            want = b.info.get("crc32", {}).get(split)
            if want is not None and array_crc32(x) != int(want):
                raise StoreError(f"{b.where}: {split}.npy fails its CRC-32 check (corrupt); re-extract this block")
            n_bad = count_nonfinite(x)
            if n_bad:
                raise StoreError(f"{b.where}: {split} features contain {n_bad} NaN/Inf values")

    def summary(self) -> dict:
        """Counts and sizes for ``plateaulab store info``."""
        ckpts = self.checkpoints()
        datasets = {}
        for name in self.datasets():
            ds = self.dataset(name)
            datasets[name] = {"num_classes": ds.num_classes, "n_train": int(ds.y_train.size),
                              "n_test": int(ds.y_test.size),
                              "n_val": None if ds.y_val is None else int(ds.y_val.size)}
        n_blocks, n_bytes, dims, dtypes, layers_per = 0, 0, set(), set(), []
        meta_keys: set[str] = set()
        for ck in ckpts:
            try:
                meta_keys.update(self.checkpoint_meta(ck))
            except StoreError:
                pass
            for ds in datasets:
                infos = self.block_infos(ck, ds)
                if infos:
                    layers_per.append(len(infos))
                for info in infos:
                    n_blocks += 1
                    dims.add(int(info["dim"]))
                    dtypes.add(info.get("dtype"))
                    itemsize = np.dtype(info.get("dtype", "float32")).itemsize
                    n_bytes += sum(info["rows"].values()) * int(info["dim"]) * itemsize
        return {
            "path": str(self.path), "checkpoints": len(ckpts), "datasets": datasets,
            "blocks": n_blocks, "feature_bytes": n_bytes, "dims": sorted(dims),
            "dtypes": sorted(d for d in dtypes if d), "metadata_keys": sorted(meta_keys),
            "layers_per_checkpoint": [min(layers_per), max(layers_per)] if layers_per else [0, 0],
        }


def count_nonfinite(x: np.ndarray, chunk_rows: int = 65536) -> int:
    """NaN/Inf count of a (possibly memory-mapped) 2-D array, read in chunks."""
    n = 0
    for i in range(0, x.shape[0], chunk_rows):
        n += int(np.count_nonzero(~np.isfinite(x[i:i + chunk_rows])))
    return n
