"""The ``plateaulab`` command: a thin layer over the library.

Each sub-command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed arguments and returning an
exit status. Heavy imports happen inside those callables, so ``plateaulab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import PlateaulabError

# Modules of plateaulab.cli, in the order their commands appear in --help.
COMMANDS = ("store", "probe", "extract", "study", "synth", "fit", "sensitivity")


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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PlateaulabError as exc:
        print(f"plateaulab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plateaulab {args.command}: interrupted; finished work is kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
