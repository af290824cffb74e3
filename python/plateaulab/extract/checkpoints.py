"""Checkpoint files: which ones, what architecture builds them, and loading their weights.

Nothing here downloads. Architectures are built with random weights (timm ``pretrained=False``,
torchvision ``weights=None``, Hugging Face ``from_config`` on a local directory), and the weights
come only from the files the user names; a missing file is an error that names it.

Architectures are a callable returning an ``nn.Module`` (Python API), or a name from the registry
(``registry``: ``timm:NAME``, ``torchvision:NAME``, ``hf:DIR``, names given to
``register_architecture``); a ``module:factory`` import path only with ``allow_import=True``.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from . import deps
from .registry import resolve_architecture

# Keys under which training scripts nest the state dict (Lightning, DeiT, MAE, timm's train.py).
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "state_dict_ema", "model_ema")
# Prefixes added by DistributedDataParallel, Lightning modules and torch.compile.
_PREFIXES = ("module.", "model.", "_orig_mod.")
_CLASSIFIER_KEYS = ("head.fc.weight", "head.weight", "fc.weight", "classifier.weight", "heads.head.weight",
                    "last_linear.weight")


@dataclass
class CheckpointSpec:
    """One checkpoint to extract: its weight file, the architecture that loads it, a store name, metadata."""

    file: Path
    architecture: object = None
    name: str | None = None
    metadata: dict = field(default_factory=dict)


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _expand_file(pattern) -> list[Path]:
    s = str(pattern)
    if _has_glob(s):
        found = sorted(Path(p) for p in glob.glob(s, recursive=True) if Path(p).is_file())
        if not found:
            raise InputError(f"checkpoint pattern {s!r} matches no files")
        return found
    p = Path(s)
    if not p.is_file():
        raise InputError(
            f"checkpoint file {p} does not exist{' (it is a directory)' if p.is_dir() else ''}; "
            "plateaulab never downloads weights: pass the path of a local file"
        )
    return [p]


def expand_checkpoints(checkpoints, architecture=None, *, allow_import: bool = False) -> list[CheckpointSpec]:
    """Normalise the user's checkpoints into CheckpointSpecs with unique store names.

    ``checkpoints`` is a path or glob, a list of them, ``(architecture, file)`` pairs, dicts with
    ``file``/``architecture``/``name``/``metadata``, or CheckpointSpecs. ``architecture`` is the
    default for entries that do not name their own. Every architecture is resolved here, before any
    file is read (``registry.resolve_architecture``; import paths need ``allow_import``), and each
    spec's ``architecture`` becomes the resolved :class:`~plateaulab.extract.registry.Architecture`.
    """
    if isinstance(checkpoints, (str, os.PathLike, CheckpointSpec, dict)):
        checkpoints = [checkpoints]
    specs: list[CheckpointSpec] = []
    for item in checkpoints:
        if isinstance(item, CheckpointSpec):
            files = _expand_file(item.file)
            specs += [CheckpointSpec(f, item.architecture or architecture, item.name if len(files) == 1 else None,
                                     dict(item.metadata)) for f in files]
        elif isinstance(item, dict):
            if "file" not in item:
                raise InputError(f"checkpoint entry {item!r} has no 'file'")
            rest = {k: v for k, v in item.items() if k not in ("file", "architecture", "name", "metadata")}
            meta = {**rest, **dict(item.get("metadata") or {})}
            files = _expand_file(item["file"])
            specs += [CheckpointSpec(f, item.get("architecture") or architecture,
                                     item.get("name") if len(files) == 1 else None, dict(meta)) for f in files]
        elif isinstance(item, tuple) and len(item) == 2:
            specs += [CheckpointSpec(f, item[0]) for f in _expand_file(item[1])]
        elif isinstance(item, (str, os.PathLike)):
            specs += [CheckpointSpec(f, architecture) for f in _expand_file(item)]
        else:
            raise InputError(f"cannot use {item!r} as a checkpoint: pass a path, a glob, an (architecture, file) "
                             "pair or a dict with 'file'")
    if not specs:
        raise InputError("no checkpoints given")
    resolved: dict = {}
    for s in specs:
        if s.architecture is None:
            raise InputError(f"checkpoint file {s.file}: no architecture given; pass {{param}} or name one for "
                             "this file", param="architecture")
        # One resolution per distinct architecture: the same object for every file that shares it.
        k = id(s.architecture) if not isinstance(s.architecture, str) else s.architecture
        if k not in resolved:
            resolved[k] = resolve_architecture(s.architecture, allow_import=allow_import,
                                               where=f"checkpoint file {s.file}")
        s.architecture = resolved[k]
    _assign_names(specs)
    return specs


def _assign_names(specs: list[CheckpointSpec]) -> None:
    """File stems when they are unique, else paths relative to the files' common folder (no suffix)."""
    unnamed = [s for s in specs if not s.name]
    stems = [s.file.stem for s in unnamed]
    if len(set(stems)) == len(stems):
        for s in unnamed:
            s.name = s.file.stem
    else:
        root = Path(os.path.commonpath([str(s.file.resolve().parent) for s in unnamed]))
        for s in unnamed:
            s.name = str(s.file.resolve().relative_to(root).with_suffix("")).replace(os.sep, "/")
    seen: dict[str, Path] = {}
    for s in specs:
        if s.name in seen and seen[s.name] != s.file:
            raise InputError(f"two checkpoints would be stored as {s.name!r} ({seen[s.name]} and {s.file}); "
                             "give them distinct names")
        seen[s.name] = s.file


def read_manifest(path, *, allow_import: bool = False) -> list[dict]:
    """Checkpoint entries from a .csv (header row) or .jsonl/.json file: file, architecture, name, any metadata.

    A manifest is data: its ``architecture`` values are checked against the registry here (see
    ``registry``), and an import path (``module:attr``) is refused unless ``allow_import``. Relative
    ``file`` paths and ``hf:DIR`` directories are resolved against the manifest's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint manifest {path} does not exist")
    base = path.resolve().parent
    try:
        if path.suffix == ".csv":
            # utf-8-sig: a spreadsheet's byte-order mark would otherwise become part of the first column's name
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                rows, lines = [], []
                for r in reader:
                    if None in r:
                        raise InputError(f"checkpoint manifest {path}, line {reader.line_num}: more values than "
                                         f"the {len(reader.fieldnames)} columns of the header")
                    # Names and paths stay text: a checkpoint named 007 is '007', not the number 7.
                    rows.append({k: (v if k in _TEXT_COLUMNS else _parse_scalar(v)) for k, v in r.items()
                                 if v not in (None, "")})
                    lines.append(reader.line_num)
        elif path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
            lines = list(range(1, len(rows) + 1)) if isinstance(rows, list) else []
        else:
            text = path.read_text(encoding="utf-8-sig")
            numbered = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
            rows, lines = [json.loads(line) for _, line in numbered], [i for i, _ in numbered]
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"cannot parse checkpoint manifest {path} ({exc})") from None
    except RecursionError:
        raise InputError(f"cannot parse checkpoint manifest {path}: it nests arrays or objects too deeply") from None
    except OSError as exc:
        raise InputError(f"cannot read checkpoint manifest {path} ({exc.strerror or exc})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"checkpoint manifest {path} must be a list of objects (rows)")
    if not rows:
        raise InputError(f"checkpoint manifest {path} lists no checkpoints (a header row, then one row per "
                         "checkpoint file: file, architecture, name, metadata)")
    unit = "item" if path.suffix == ".json" else "line"
    for r, line in zip(rows, lines):
        where = f"checkpoint manifest {path}, {unit} {line}"
        if "file" not in r:
            raise InputError(f"{where}: no 'file' column (columns: {', '.join(map(repr, r)) or 'none'}); name each "
                             "checkpoint's file in a column called 'file'")
        if "name" in r and not isinstance(r["name"], str):
            raise InputError(f"{where}: 'name' must be a string (the checkpoint's name in the store), got "
                             f"{r['name']!r}")
        f = Path(str(r["file"]))
        r["file"] = str(f if f.is_absolute() else base / f)
        if "architecture" in r:
            arch = r["architecture"]
            if not isinstance(arch, str):
                raise InputError(f"{where}: 'architecture' must be a name such as timm:NAME or hf:DIR, got {arch!r}")
            resolved = resolve_architecture(arch, allow_import=allow_import, where=where, base=base)
            if resolved.kind == "hf":
                r["architecture"] = resolved.label  # hf:<the directory, resolved against the manifest's folder>
    return rows


#: Manifest columns read as text, never as numbers.
_TEXT_COLUMNS = ("file", "name", "architecture")


def _parse_scalar(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: Path) -> dict:
    """The tensors of a .safetensors file or a torch.save'd state dict, unwrapped from training wrappers."""
    torch = deps.torch()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint file {path} does not exist; plateaulab never downloads weights")
    if path.stat().st_size == 0:
        raise InputError(f"checkpoint file {path} is empty (0 bytes); it was not written completely: save it again")
    if path.suffix == ".safetensors":
        st = deps.require("safetensors.torch", f"reading {path}")
        try:
            sd = st.load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise InputError(f"cannot read checkpoint file {path} as safetensors ({exc}); the file is corrupt "
                             "or not a safetensors file") from None
    else:
        try:
            # weights_only: a checkpoint is data, and unpickling arbitrary objects would run their code.
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
            raise InputError(
                f"cannot read checkpoint file {path} ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}); "
                "expected a state dict saved with torch.save (.pt/.pth/.bin) or a .safetensors file; "
                "a pickled nn.Module must be re-saved as its state_dict()"
            ) from None
    for _ in range(3):
        if isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
            nested = next((sd[k] for k in _NESTED_KEYS if isinstance(sd.get(k), dict)), None)
            if nested is None:
                break
            sd = nested
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"checkpoint file {path} holds no state dict of tensors "
                         f"(top-level keys: {sorted(sd)[:10] if isinstance(sd, dict) else type(sd).__name__})")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_weights(model, state_dict: dict, file: Path) -> None:
    """Load ``state_dict`` into ``model``, refusing missing weights, shape mismatches and foreign weights.

    Unexpected integer tensors are ignored: they are index buffers (``position_ids``,
    ``num_batches_tracked``) that newer library versions no longer persist. Unexpected float
    tensors mean the file holds weights the model would silently drop, which is an error.
    """
    own = model.state_dict()
    sd = state_dict
    for prefix in _PREFIXES:
        if not (set(sd) & set(own)) and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own and sd[k].is_floating_point()]
    mismatched = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing from the file (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} weights the model does not have (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:2])})")
    if problems:
        raise InputError(f"checkpoint file {file} does not fit architecture {type(model).__name__}: "
                         f"{'; '.join(problems)}; check the architecture given for this file")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=True)


def classifier_outputs(state_dict: dict) -> int | None:
    """Number of classes of the checkpoint's classifier, so timm/torchvision build a matching head."""
    for key in _CLASSIFIER_KEYS:
        w = state_dict.get(key)
        if w is not None and w.ndim >= 2:
            return int(w.shape[0])
    return None


def build_model(architecture, num_classes: int | None = None, *, allow_import: bool = False):
    """An ``nn.Module`` with random weights for ``architecture`` (see ``registry``); never downloads."""
    return resolve_architecture(architecture, allow_import=allow_import).build(num_classes)


def parameter_count(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))
