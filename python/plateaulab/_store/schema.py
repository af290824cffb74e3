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

Count = Annotated[StrictInt, Field(ge=1)]
Split = Literal["train", "test", "val"]


class _File(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StoreFile(_File):
    format: Literal["plateaulab-feature-store"]
    version: Annotated[StrictInt, Field(ge=1)]


class DatasetFile(_File):
    name: StrictStr | None = None
    num_classes: Annotated[StrictInt, Field(ge=2)]
    class_names: list[StrictStr] | None = None
    n_train: Count
    n_test: Count
    n_val: Count | None = None

    @model_validator(mode="after")
    def _class_names_match(self):
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes = {self.num_classes}")
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
    layer_index: Annotated[StrictInt, Field(ge=0)] = 0
    dim: Annotated[StrictInt, Field(ge=1)]
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
        return data


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
