"""Optional dependencies of extraction, imported only when extraction runs.

``import plateaulab`` must work on machines without PyTorch (the probe engine never needs it), so
every module of this package reaches torch, timm, transformers and safetensors through these
functions, which turn a missing package into an error that says what to install.
"""

from __future__ import annotations

import importlib

from ..errors import BackendUnavailable

_INSTALL = {
    "torch": "pip install 'plateaulab[extract]' (or a PyTorch build for your machine from pytorch.org)",
    "timm": "pip install timm",
    "torchvision": "pip install torchvision (matching your torch version)",
    "transformers": "pip install transformers",
    "safetensors": "pip install safetensors",
    "PIL": "pip install pillow",
    "tqdm": "pip install tqdm",
}


def require(module: str, why: str):
    """Import ``module`` or raise BackendUnavailable naming the package and what needed it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = _INSTALL.get(top, f"pip install {top}")
        raise BackendUnavailable(f"{why} needs the Python package {top!r}, which is not installed ({exc}); "
                                 f"install it with: {hint}") from None


def torch():
    return require("torch", "feature extraction")
