"""plateaulab: few-shot probes over many checkpoints, and the saturation analysis of
Abnar et al., "Exploring the Limits of Large Scale Pre-training" (ICLR 2022).

Data flows store -> probe -> results -> analysis -> report; the command line sits on top.
``import plateaulab`` imports neither cupy nor torch: GPU and extraction paths load lazily.
"""

from .errors import PlateaulabError, StoreError, ProtocolError, RunError, InputError, BackendUnavailable
from .store import FeatureStore

__version__ = "0.1.0"

__all__ = [
    "FeatureStore", "PlateaulabError", "StoreError", "ProtocolError", "RunError", "InputError",
    "BackendUnavailable", "__version__",
]
