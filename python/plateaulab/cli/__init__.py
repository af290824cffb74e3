"""The ``plateaulab`` command: a thin layer over the library.

Each sub-command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed arguments and returning an
exit status. Heavy imports happen inside those callables, so ``plateaulab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..errors import PlateaulabError

# Modules of plateaulab.cli, in the order their commands appear in --help.
COMMANDS = ("store", "probe", "extract", "study", "synth", "fit", "sensitivity", "bench")

#: Library parameters whose flag is spelled differently from the parameter (parameter -> argparse dest).
#: Every other parameter named by an error maps to the flag of the same dest (``seeds`` -> ``--seeds``).
#: This is the one place where the library's parameter names meet the command line's flags.
PARAM_DESTS = {
    "n_boot": "bootstrap", "sensitivity_trials": "trials", "on_short": "skip_short_classes",
    "prefetch": "no_prefetch", "run_dir": "output", "out_dir": "output", "source": "input",
    "verify": "no_verify", "scale": "input_scale", "model_col": "id",
    "n_checkpoints": "checkpoints", "n_layers": "layers", "n_train_per_class": "train_per_class",
    "n_test_per_class": "test_per_class", "num_classes": "classes",
}


def flag_names(parser: argparse.ArgumentParser) -> dict:
    """{library parameter: flag} for one (sub)command's parser."""
    by_dest = {}
    for action in parser._actions:
        if action.option_strings:
            by_dest[action.dest] = max(action.option_strings, key=len)
        elif action.dest not in ("help",):
            by_dest[action.dest] = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    names = dict(by_dest)
    for param, dest in PARAM_DESTS.items():
        if dest in by_dest:
            names[param] = by_dest[dest]
    return names


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command, parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="plateaulab",
        description="Few-shot probes over many checkpoints, and the upstream/downstream saturation study "
                    "of Abnar et al. (ICLR 2022).",
    )
    parser.add_argument("--version", action="version", version=f"plateaulab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _short_warnings(command: str):
    """A ``warnings.formatwarning`` that prints plateaulab's own warnings as one line each,
    ``plateaulab COMMAND: warning: ...``, in the manner of its errors (not file:line and a source line);
    other libraries' warnings keep Python's format."""
    import os

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    original = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if str(filename).startswith(package) and issubclass(category, UserWarning):
            return f"plateaulab {command}: warning: {message}\n"
        return original(message, category, filename, lineno, line)
    return format_warning


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.formatwarning
    # Only the format changes: whoever records warnings (pytest.warns, catch_warnings) still gets them.
    warnings.formatwarning = _short_warnings(args.command)
    try:
        return _run(parser, args)
    finally:
        warnings.formatwarning = previous


def _run(parser: argparse.ArgumentParser, args) -> int:
    try:
        return int(args.func(args) or 0)
    except PlateaulabError as exc:
        message = exc.describe(flag_names(_subparser(parser, args.command)))
        print(f"plateaulab {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:   # last resort: the file system refused something no library check foresaw
        where = f" ({exc.filename})" if getattr(exc, "filename", None) and str(exc.filename) not in str(exc) else ""
        print(f"plateaulab {args.command}: error: {exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plateaulab {args.command}: interrupted; finished work is kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
