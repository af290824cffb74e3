"""The CUDA backend slot.

The compiled kernels live in csrc/cuda (module plateaulab._cuda, built when nvcc is present) and
CuPy provides device arrays. Importing this module imports neither: both load on first use.
"""

from __future__ import annotations

name = "cuda"


def unavailable_reason() -> str:
    try:
        from .. import _cuda
    except ImportError:
        return ("plateaulab was built without CUDA support (nvcc was not found at build time); "
                "reinstall with PLATEAULAB_CUDA=ON on a machine with the CUDA toolkit")
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed; install plateaulab[gpu] (cupy-cuda13x)"
    if _cuda.device_count() == 0:
        return "no CUDA device is visible to the CUDA runtime"
    return "the CUDA probe path is not in this build yet; use --backend cpu"


def is_available() -> bool:
    return False


def device() -> str:
    return "cuda"


def probe_block(*args, **kwargs):
    from ..errors import BackendUnavailable

    raise BackendUnavailable(f"backend 'cuda' is not available: {unavailable_reason()}")
