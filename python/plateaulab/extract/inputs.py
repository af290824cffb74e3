"""The examples of one split, whatever form the user holds them in, as a stream of batches.

Accepted forms of a split (``train=``, ``test=``, ``val=``):

- ``(X, y)``: ``X`` a numpy array with examples on axis 0, or a dict of such arrays (a tokenised
  text batch: ``input_ids``, ``attention_mask``, ...), which is passed to the model as keywords;
- a ``.npz`` file holding ``y`` and either ``x`` or the named input arrays;
- a directory with one sub-folder of images per class (class ids follow sorted folder names);
- a torch ``Dataset`` whose items are ``(input, label)``, or a ``DataLoader`` over one.

Order matters: the store keeps one label vector per dataset, and every checkpoint's features must
describe the same examples in the same order, so a shuffling DataLoader is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InputError
from . import deps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
# Normalisations of pixel values in [0, 1]: big_vision's few-shot evaluator feeds values in [-1, 1]
# (PROTOCOL.md §7, "inception" here); torchvision and most timm CNNs expect ImageNet mean/std.
NORMALIZATIONS = {
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclass
class ImageTransform:
    """Resize the shorter side to ``resize``, centre-crop ``image_size``, scale, normalise (CHW float32)."""

    image_size: int = 224
    resize: int = 256
    normalize: str = "inception"

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise InputError(f"{{param}} must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}",
                             param="normalize")
        if not (0 < self.image_size <= self.resize):
            raise InputError(f"{{param}} ({self.image_size}) must be positive and at most the resize before the "
                             f"crop ({self.resize})", param="image_size")

    def __call__(self, img) -> np.ndarray:
        Image = deps.require("PIL.Image", "reading an image folder")
        img = img.convert("RGB")
        w, h = img.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.resize, round(w * scale)), max(self.resize, round(h * scale))
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - self.image_size) // 2, (nh - self.image_size) // 2
        img = img.crop((left, top, left + self.image_size, top + self.image_size))
        x = np.asarray(img, dtype=np.float32) / 255.0
        mean, std = NORMALIZATIONS[self.normalize]
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def scan_image_folder(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image files, their labels and the class names of a folder with one sub-folder per class."""
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise InputError(f"image folder {root} must hold one sub-folder per class (at least 2), found {len(classes)}")
    files, labels = [], []
    for k, cls in enumerate(classes):
        found = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise InputError(f"image folder {root}: class folder {cls!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [k] * len(found)
    return files, np.asarray(labels, np.int64), classes


def _image_dataset(files, labels, transform):
    torch = deps.torch()

    class ImageFolderDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            Image = deps.require("PIL.Image", "reading an image folder")
            try:
                with Image.open(files[i]) as img:
                    x = transform(img)
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read image {files[i]} ({exc}); remove or replace the file") from None
            return torch.from_numpy(x), int(labels[i])

    return ImageFolderDataset()


@dataclass
class SplitSource:
    """One split as ``rows`` examples; ``batches(batch_size)`` yields (inputs, labels) in a fixed order.

    ``labels`` is known before inference for arrays and image folders, and ``None`` for torch
    datasets, whose labels are read from the batches as they pass.
    """

    split: str
    rows: int
    batches: Callable[[int], Iterator]
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    description: str = ""


def _check_array_inputs(X, y, split: str, what: str):
    if isinstance(X, dict):
        if not X:
            raise InputError(f"{split} inputs from {what}: the dict of input arrays is empty")
        X = {str(k): np.asarray(v) for k, v in X.items()}
        lengths = {k: v.shape[0] if v.ndim else 0 for k, v in X.items()}
        if len(set(lengths.values())) != 1:
            raise InputError(f"{split} inputs from {what}: input arrays have different lengths {lengths}")
        n = next(iter(lengths.values()))
    else:
        X = np.asarray(X)
        if X.ndim < 1:
            raise InputError(f"{split} inputs from {what}: expected an array with examples on axis 0, got a scalar")
        n = X.shape[0]
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"{split} labels from {what}: expected a 1-D array, got shape {y.shape}")
    if y.shape[0] != n:
        raise InputError(
            f"{split} split from {what}: {n} examples but {y.shape[0]} labels; "
            "inputs and labels must have the same length"
        )
    if n == 0:
        raise InputError(f"{split} split from {what} is empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{split} labels from {what}: expected integer class ids, got dtype {y.dtype}")
    return X, y.astype(np.int64), n


def _array_source(X, y, split: str, what: str) -> SplitSource:
    X, y, n = _check_array_inputs(X, y, split, what)
    torch = deps.torch()

    def to_tensor(a):
        # Feed float64 arrays as float32 (what models hold); other dtypes (token ids) pass unchanged.
        a = np.ascontiguousarray(a if a.dtype != np.float64 else a.astype(np.float32))
        if not a.flags.writeable:  # read-only memmaps: torch.from_numpy would warn on every batch
            a = a.copy()
        return torch.from_numpy(a)

    def batches(batch_size: int):
        for i in range(0, n, batch_size):
            if isinstance(X, dict):
                xb = {k: to_tensor(v[i:i + batch_size]) for k, v in X.items()}
            else:
                xb = to_tensor(X[i:i + batch_size])
            yield xb, y[i:i + batch_size]

    return SplitSource(split, n, batches, labels=y, description=what)


def _npz_source(path: Path, split: str) -> SplitSource:
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read {split} split file {path} as .npz ({exc})") from None
    if "y" not in arrays:
        raise InputError(f"{split} split file {path} has no 'y' array (labels); it holds {sorted(arrays)}")
    y = arrays.pop("y")
    X = arrays.pop("x") if set(arrays) == {"x"} else arrays
    return _array_source(X, y, split, f"file {path}")


def _loader_source(loader, split: str, what: str) -> SplitSource:
    torch = deps.torch()
    if isinstance(loader.sampler, torch.utils.data.RandomSampler):
        raise InputError(
            f"{split} DataLoader ({what}) shuffles its examples; every checkpoint must see the examples in "
            "the same order, so build it with shuffle=False"
        )
    try:
        n = len(loader.dataset)
    except TypeError:
        raise InputError(f"{split} DataLoader ({what}) has a dataset without a length; extraction needs a sized dataset") from None
    return SplitSource(split, n, lambda batch_size: iter(loader), description=what)


def _dataset_source(ds, split: str, what: str, num_workers: int, class_names=None, labels=None) -> SplitSource:
    torch = deps.torch()
    try:
        n = len(ds)
    except TypeError:
        raise InputError(f"{split} dataset ({what}) has no length; extraction needs a sized dataset") from None
    if n == 0:
        raise InputError(f"{split} dataset ({what}) is empty")

    def batches(batch_size: int):
        return iter(torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers))

    return SplitSource(split, n, batches, labels=labels, class_names=class_names, description=what)


def split_source(obj, split: str, *, transform: ImageTransform | None = None,
                 num_workers: int | None = None) -> SplitSource:
    """Turn one user-given split into a SplitSource (see the module docstring for the forms)."""
    if isinstance(obj, SplitSource):
        return obj
    if isinstance(obj, tuple) and len(obj) == 2:
        return _array_source(obj[0], obj[1], split, "arrays")
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_dir():
            files, labels, classes = scan_image_folder(path)
            workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if num_workers is None else num_workers
            ds = _image_dataset(files, labels, transform or ImageTransform())
            return _dataset_source(ds, split, f"image folder {path}", workers, class_names=classes, labels=labels)
        if path.suffix == ".npz":
            if not path.is_file():
                raise InputError(f"{split} split file {path} does not exist")
            return _npz_source(path, split)
        raise InputError(
            f"{split} split {path}: expected an image folder (one sub-folder per class) or a .npz file "
            f"with 'y' and inputs, and {'it does not exist' if not path.exists() else 'got neither'}"
        )
    torch = deps.torch()
    if isinstance(obj, torch.utils.data.DataLoader):
        return _loader_source(obj, split, type(obj.dataset).__name__)
    if isinstance(obj, torch.utils.data.Dataset):
        return _dataset_source(obj, split, type(obj).__name__, 0 if num_workers is None else num_workers)
    raise InputError(
        f"{split} split: cannot use a {type(obj).__name__}; pass (X, y) arrays, a .npz file, an image folder, "
        "a torch Dataset of (input, label) or a DataLoader"
    )
