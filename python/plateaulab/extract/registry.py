"""Architectures by name: what builds the model a checkpoint file's weights are loaded into.

A checkpoint list, and above all a manifest (a .csv/.jsonl of checkpoints), is data: it may come from
a colleague, a sweep script or a download. It names architectures only through a registry, never as
code to run:

- ``timm:NAME``: a model timm knows by name (``timm.is_model``), built with ``pretrained=False``;
- ``torchvision:NAME``: a torchvision model builder by name, ``weights=None``;
- ``hf:DIR``: a local Hugging Face directory; ``AutoModel.from_config`` on its ``config.json``, with
  remote code off (a config's ``auto_map`` is never imported) and the Hub offline;
- a name registered from Python with :func:`register_architecture` (the builder is code the caller
  wrote and chose to expose under that name).

A ``module:attribute`` import path also names a builder, but importing a module runs its code, so an
import path is refused unless the caller passes ``allow_import=True``. ``os:abort`` in a manifest's
``architecture`` column therefore stops with an error instead of killing the process. On the command
line, ``--arch module:attr`` typed by the user counts as that permission for itself (the person typing
the command can run any code already); import paths inside a ``--manifest`` need ``--allow-import``.

Every architecture is resolved (and checked: the timm model exists, the directory holds a config)
before any checkpoint is read, so a typo stops the run before it starts, with a did-you-mean.
Nothing here downloads; the weights come only from the files the user names.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError
from . import deps

SCHEMES = ("timm", "torchvision", "hf")
_REGISTRY: dict[str, Callable] = {}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_IDENTS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def register_architecture(name: str, builder: Callable | None = None, *, replace: bool = False):
    """Make ``builder`` (called with no arguments, returning an ``nn.Module`` with any weights) the
    architecture called ``name`` in checkpoint lists and manifests.

    ``name`` is letters, digits and ``_ . + -`` (no ``:``, which marks the ``timm:``/``hf:`` schemes
    and import paths). Registering a taken name is an error unless ``replace=True``. Usable as a
    decorator: ``@register_architecture("my-vit")``. Returns the builder.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"architecture name {name!r} must be letters, digits and _ . + - (starting with a letter "
                         "or digit); ':' is reserved for timm:/hf:/torchvision: and import paths")
    if builder is None:
        return lambda fn: register_architecture(name, fn, replace=replace)
    if not callable(builder):
        raise InputError(f"architecture {name!r}: the builder must be callable, got {type(builder).__name__}")
    if name in _REGISTRY and _REGISTRY[name] is not builder and not replace:
        raise InputError(f"architecture {name!r} is already registered (to {_describe(_REGISTRY[name])}); "
                         "pass replace=True to replace it, or choose another name")
    _REGISTRY[name] = builder
    return builder


def unregister_architecture(name: str) -> None:
    """Remove a registered name (no error if it is not registered)."""
    _REGISTRY.pop(name, None)


def registered_architectures() -> list[str]:
    return sorted(_REGISTRY)


def _describe(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


@dataclass(frozen=True, eq=False)
class Architecture:
    """A resolved architecture: ``label`` is what the store records, ``build`` makes the model."""

    label: str
    kind: str  # "timm", "torchvision", "hf", "registered", "import", "callable"
    target: object  # the timm/torchvision name, the directory, or the builder

    @property
    def key(self) -> tuple:
        """Equal for two resolutions of the same architecture (the skeleton is built once per key)."""
        return (self.kind, self.label, id(self.target) if callable(self.target) else self.target)

    def build(self, num_classes: int | None = None):
        """An ``nn.Module`` with random weights; ``num_classes`` sizes timm/torchvision classifiers."""
        torch = deps.torch()
        if self.kind == "timm":
            timm = deps.require("timm", f"architecture {self.label!r}")
            # A checkpoint without classifier weights is a headless feature extractor: num_classes=0.
            model = self._call(timm.create_model, self.target, pretrained=False,
                               num_classes=0 if num_classes is None else num_classes)
        elif self.kind == "torchvision":
            tv = deps.require("torchvision.models", f"architecture {self.label!r}")
            kw = {} if num_classes is None else {"num_classes": num_classes}
            model = self._call(tv.get_model, self.target, weights=None, **kw)
        elif self.kind == "hf":
            model = _build_hf(self.target, self.label)
        else:
            model = self._call(self.target)
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"architecture {self.label!r} built a {type(model).__name__}, not a torch nn.Module; "
                             "a builder must return the model")
        return model

    def _call(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a builder is the user's code or a library's; name it, no traceback
            first = (str(exc).splitlines() or [""])[0][:300]
            raise InputError(f"architecture {self.label!r}: building the model failed ({type(exc).__name__}: "
                             f"{first})") from None


def _build_hf(directory: Path, label: str):
    # HF_HUB_OFFLINE keeps transformers from reaching for the Hub even if the config names a remote class.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = deps.require("transformers", f"architecture {label!r}")
    try:
        config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True,
                                                         trust_remote_code=False)
        return transformers.AutoModel.from_config(config, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError/KeyError/OSError for bad configs
        first = (str(exc).splitlines() or [""])[0][:300]
        raise InputError(f"architecture {label!r}: transformers cannot build a model from {directory / 'config.json'} "
                         f"({type(exc).__name__}: {first}); plateaulab never runs a config's remote code") from None


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _suggest(name: str, options, n: int = 3) -> str:
    close = difflib.get_close_matches(name, list(options), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _timm_knows(name: str) -> bool:
    try:
        timm = importlib.import_module("timm")
    except Exception:  # noqa: BLE001 - only a hint; timm absent or broken means no hint
        return False
    return bool(timm.is_model(name))


def _resolve_timm(name: str, where: str) -> Architecture:
    timm = deps.require("timm", f"{_at(where)}architecture 'timm:{name}'")
    if ":" in name:
        raise InputError(f"{_at(where)}architecture 'timm:{name}': timm names with a prefix (hf-hub:, local-dir:) "
                         "load a configuration from elsewhere; plateaulab builds only timm's own architectures "
                         "by name (timm:NAME) and never downloads")
    if not timm.is_model(name):
        raise InputError(f"{_at(where)}architecture 'timm:{name}': timm {timm.__version__} has no model called "
                         f"{name!r}{_suggest(name, timm.list_models())}; `timm.list_models('pattern*')` lists them")
    return Architecture(f"timm:{name}", "timm", name)


def _resolve_torchvision(name: str, where: str) -> Architecture:
    tv = deps.require("torchvision.models", f"{_at(where)}architecture 'torchvision:{name}'")
    known = tv.list_models()
    if name not in known:
        raise InputError(f"{_at(where)}architecture 'torchvision:{name}': torchvision has no model called "
                         f"{name!r}{_suggest(name, known)}")
    return Architecture(f"torchvision:{name}", "torchvision", name)


def _resolve_hf(path: str, where: str, base) -> Architecture:
    if not path:
        raise InputError(f"{_at(where)}architecture 'hf:' names no directory; write hf:DIR, a local Hugging Face "
                         "model directory holding config.json")
    d = Path(path).expanduser()
    if not d.is_absolute() and base is not None:
        d = Path(base) / d
    d = d.resolve()
    if not (d / "config.json").is_file():
        raise InputError(f"{_at(where)}architecture 'hf:{path}': {d / 'config.json'} does not exist; pass a local "
                         "Hugging Face model directory (plateaulab never downloads)")
    return Architecture(f"hf:{d}", "hf", d)


def _looks_like_path(s: str) -> bool:
    return ("/" in s or "\\" in s or s.startswith((".", "~")) or
            s.lower().endswith((".py", ".pt", ".pth", ".bin", ".safetensors", ".json", ".ckpt")))


def architecture_label(architecture) -> str:
    if architecture is None:
        return ""
    if isinstance(architecture, Architecture):
        return architecture.label
    if isinstance(architecture, str):
        return architecture
    return f"{getattr(architecture, '__module__', '?')}.{getattr(architecture, '__qualname__', repr(architecture))}"


def resolve_architecture(architecture, *, allow_import: bool = False, where: str = "", base=None) -> Architecture:
    """Turn what the user gave (see the module doc) into an :class:`Architecture`, or say why not.

    ``where`` names the source in errors (a manifest file and row); ``base`` is the folder a relative
    ``hf:DIR`` is resolved against (a manifest's own folder), else the working directory.
    """
    if isinstance(architecture, Architecture):
        return architecture
    if callable(architecture) and not isinstance(architecture, str):
        return Architecture(architecture_label(architecture), "callable", architecture)
    if not isinstance(architecture, str) or not architecture.strip():
        raise InputError(f"{_at(where)}{{param}} must be a name (timm:NAME, hf:DIR, torchvision:NAME or a "
                         f"registered name) or a callable, got {architecture!r}", param="architecture")
    arch = architecture.strip()
    scheme, sep, rest = arch.partition(":")
    if sep and scheme == "timm":
        return _resolve_timm(rest, where)
    if sep and scheme == "torchvision":
        return _resolve_torchvision(rest, where)
    if sep and scheme == "hf":
        return _resolve_hf(rest, where, base)
    if arch in _REGISTRY:
        return Architecture(arch, "registered", _REGISTRY[arch])
    if sep and _IDENTS.fullmatch(scheme) and _IDENTS.fullmatch(rest):
        return _resolve_import(arch, scheme, rest, allow_import, where)
    if _looks_like_path(arch):
        raise InputError(
            f"{_at(where)}architecture {arch!r} looks like a file path; architectures are named, never loaded "
            "from a file: use hf:DIR for a local Hugging Face directory, timm:NAME, torchvision:NAME, or a name "
            "registered with plateaulab.extract.register_architecture (the weights come only from the "
            "checkpoint files)")
    hints = []
    if _REGISTRY:
        hints.append(f"registered: {', '.join(sorted(_REGISTRY))}")
    close = difflib.get_close_matches(arch, list(_REGISTRY), n=3, cutoff=0.6)
    if not sep and _timm_knows(arch):
        close.insert(0, f"timm:{arch}")
    mean = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise InputError(
        f"{_at(where)}architecture {arch!r} is not registered{mean}; name an architecture as timm:NAME, "
        f"torchvision:NAME, hf:DIR or a name registered with plateaulab.extract.register_architecture"
        f"{' (' + hints[0] + ')' if hints else ''}")


def _resolve_import(arch: str, module_name: str, attr: str, allow_import: bool, where: str) -> Architecture:
    if not allow_import:
        raise InputError(
            f"{_at(where)}architecture {arch!r} is an import path (module:attribute): using it would import "
            f"{module_name!r} and call {attr!r}, running that code, and such strings come from data files "
            "(manifests), so import paths are refused unless {param} is set. Register the builder with "
            "plateaulab.extract.register_architecture and use its name, or name the architecture as timm:NAME, "
            "hf:DIR or torchvision:NAME", param="allow_import")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - importing the user's module may raise anything; name it
        first = (str(exc).splitlines() or [""])[0][:300]
        raise InputError(f"{_at(where)}architecture {arch!r}: cannot import {attr!r} from {module_name!r} "
                         f"({type(exc).__name__}: {first})") from None
    if not callable(obj):
        raise InputError(f"{_at(where)}architecture {arch!r}: {attr!r} is a {type(obj).__name__}, not a callable "
                         "that builds the model")
    return Architecture(arch, "import", obj)
