"""The schema of every metadata file of a feature store, and the one place they are validated.

store.json, dataset.json, meta.json and block.json each have a pydantic model below: the types,
the required keys and the ranges of their values. ``validate(kind, obj, path, what)`` checks one
parsed file and returns the validated model, or raises a StoreError that names the file, the key,
what was expected and what was found. Every reader of the store goes through it: the reads that
``plateaulab probe`` makes and ``plateaulab store check`` alike, so a store that passes ``check``
cannot trip ``probe`` on its metadata.

Why pydantic rather than a schema written here: it is already a dependency of the environment the
project targets, it is maintained, and its models say in one declaration per key what is required,
of what type and in what range; strict mode refuses what JSON would otherwise let through unnoticed
(``"100"`` or ``true`` for a count, ``7.0`` for an index), and its errors carry the location, the
expectation and the offending value, which is all a message needs. A hand-written validator would
repeat that machinery for four files and drift from the documentation; here the models are the
documentation's tables in code (docs/STORE_FORMAT.md).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from ..errors import StoreError

FORMAT_NAME = "plateaulab-feature-store"
FORMAT_VERSION = 1

#: Every count and index is stored as int64 in a run's parquet files: larger integers are refused here,
#: naming the key, instead of overflowing when the run writes them.
INT64_MAX = 2 ** 63 - 1
Count = Annotated[StrictInt, Field(ge=1, le=INT64_MAX)]
Index = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
Split = Literal["train", "test", "val"]


class _File(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StoreFile(_File):
    format: Literal["plateaulab-feature-store"]
    version: Count


class DatasetFile(_File):
    name: StrictStr | None = None
    num_classes: Annotated[StrictInt, Field(ge=2, le=INT64_MAX)]
    class_names: list[StrictStr] | None = None
    n_train: Count
    n_test: Count
    n_val: Count | None = None

    @model_validator(mode="after")
    def _class_names_match(self):
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes = {self.num_classes}")
        if self.num_classes > self.n_train:
            # Checked before the labels are read: a few-shot probe needs a train example of every class.
            raise _KeyError("num_classes", f"at most n_train = {self.n_train} (every class needs a train example)",
                            self.num_classes)
        return self


class Rows(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    train: Count
    test: Count
    val: Count | None = None


class BlockFile(_File):
    checkpoint: StrictStr | None = None
    dataset: StrictStr | None = None
    layer: StrictStr | None = None
    layer_index: Index = 0
    dim: Count
    dtype: Literal["float16", "float32"]
    rows: Rows
    crc32: dict[Split, Annotated[StrictInt, Field(ge=0, le=2 ** 32 - 1)]] | None = None
    xxh3_64: dict[Split, Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{16}$")]] | None = None

    @model_validator(mode="after")
    def _checksums_name_stored_splits(self):
        present = {s for s in ("train", "test", "val") if getattr(self.rows, s) is not None}
        for key in ("crc32", "xxh3_64"):
            extra = sorted(set(getattr(self, key) or {}) - present)
            if extra:
                raise ValueError(f"{key} lists split {extra[0]!r}, which rows does not")
        return self

    def info(self) -> dict:
        """The validated file as a plain dict (absent optional keys left out)."""
        return self.model_dump(exclude_none=True)


def _finite_number(value, low, high) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


class MetaFile(BaseModel):
    """Free-form checkpoint metadata: a JSON object. The conventional keys, where present, must hold
    what the analysis reads from them."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _conventional_keys(cls, data: Any):
        if not isinstance(data, dict):
            return data
        checks = {
            "upstream_accuracy": (lambda v: _finite_number(v, 0, 100), "a finite number in [0, 1] (or percent, [0, 100])"),
            "params": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
            "parameters": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
            "architecture": (lambda v: isinstance(v, str), "a string"),
        }
        for key, (ok, expected) in checks.items():
            if key in data and data[key] is not None and not ok(data[key]):
                raise _KeyError(key, expected, data[key])
        for key, value in data.items():
            big = _wide_int(value)
            if big is not None:
                raise _KeyError(key, "integers within 64 bits (runs copy metadata to checkpoints.parquet, whose "
                                "integers are int64); store it as a float or a string", big)
        return data


def _wide_int(value):
    """The first integer in ``value`` (nested lists and dicts included) outside the int64 range, or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if not -2 ** 63 <= value <= INT64_MAX else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for v in items:
        big = _wide_int(v)
        if big is not None:
            return big
    return None


class _KeyError(ValueError):
    def __init__(self, key, expected, found):
        self.key, self.expected, self.found = key, expected, found
        super().__init__(f"key {key!r}: expected {expected}, found {found!r}")


MODELS = {"store.json": StoreFile, "dataset.json": DatasetFile, "meta.json": MetaFile, "block.json": BlockFile}
HINTS = {
    "store.json": "it must read {\"format\": \"plateaulab-feature-store\", \"version\": 1}",
    "dataset.json": "rewrite it (FeatureStore.add_dataset(..., overwrite=True)) or fix the key by hand",
    "meta.json": "fix the key (FeatureStore.set_checkpoint_meta) or the file by hand",
    "block.json": "re-extract this block, or fix the key by hand",
}


def _describe(err: dict) -> str:
    loc = ".".join(str(x) for x in err.get("loc", ()))
    found = err.get("input")
    kind = err.get("type", "")
    if kind == "missing":
        return f"required key {loc!r} is missing"
    msg = str(err.get("msg", ""))
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _KeyError):
        return str(ctx_error)
    for prefix in ("Value error, ", "Input should be "):
        msg = msg.removeprefix(prefix)
    if msg.startswith(("greater", "less")):
        msg = "a value " + msg
    if kind == "extra_forbidden":
        return f"unexpected key {loc!r} (found {found!r})"
    if not loc:
        return msg
    return f"key {loc!r}: expected {msg}, found {found!r}"


def validate(kind: str, obj, path, what: str):
    """The validated model of one parsed metadata file, or a StoreError naming file, key, expectation
    and value."""
    if not isinstance(obj, dict):
        raise StoreError(f"{what}: {path} must hold a JSON object, found {type(obj).__name__} "
                         f"{_short(obj)}; {HINTS[kind]}")
    try:
        model = MODELS[kind].model_validate(obj)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        details = "; ".join(_describe(e) for e in errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
        raise StoreError(f"{what}: {path}: {details}; {HINTS[kind]}") from None
    if kind == "store.json" and model.version > FORMAT_VERSION:
        raise StoreError(f"{what}: {path} has format version {model.version}, newer than this plateaulab "
                         f"reads ({FORMAT_VERSION}); upgrade plateaulab")
    return model


def _short(obj) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."
