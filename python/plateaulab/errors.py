"""Exceptions raised by plateaulab.

Every message names the checkpoint, layer, dataset or file at fault and says what to do,
in the manner of scikit-learn's validators. The command line turns a ``PlateaulabError``
into one line on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""


class PlateaulabError(Exception):
    """Base class of every error plateaulab reports to a user."""


class StoreError(PlateaulabError):
    """A feature store is missing, malformed, incomplete or was asked for a name it lacks."""


class ProtocolError(PlateaulabError):
    """A few-shot probe cannot run as asked (shots, l2, labels, features)."""


class RunError(PlateaulabError):
    """A probe run directory is inconsistent with the command that points at it."""


class InputError(PlateaulabError):
    """An accuracy table or option given to the analysis or the study is unusable."""


class BackendUnavailable(PlateaulabError):
    """A probe backend was asked for but cannot run here (no GPU, not compiled with CUDA)."""
