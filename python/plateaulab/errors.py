"""Exceptions raised by plateaulab.

Every message names the checkpoint, layer, dataset or file at fault and says what to do,
in the manner of scikit-learn's validators. The command line turns a ``PlateaulabError``
into one line on stderr and exit status 2; anything else is a bug and keeps its traceback.

An error about one argument names the library's parameter, not a command-line flag: the message is
written with a ``{param}`` placeholder and the parameter given as ``param=``::

    raise InputError("{param} must be >= 0; got -1", param="n_boot")

``str(exc)`` reads "n_boot must be >= 0; got -1" for a Python caller; the command line, which alone
knows its flags, shows the same message with the flag (``exc.describe({"n_boot": "--bootstrap"})``:
"--bootstrap must be >= 0; got -1"). The map from parameters to flags is in ``plateaulab.cli``.
"""

from __future__ import annotations


class PlateaulabError(Exception):
    """Base class of every error plateaulab reports to a user."""

    def __init__(self, message: str = "", *, param: str | None = None):
        self.template = str(message)
        self.param = param
        super().__init__(self.describe())

    def describe(self, names: dict | None = None) -> str:
        """The message with ``{param}`` spelled as ``names[param]`` (a flag), else as the parameter."""
        if self.param is None:
            return self.template
        return self.template.replace("{param}", (names or {}).get(self.param, self.param))


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
