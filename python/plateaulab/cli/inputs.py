"""The input arguments that ``fit``, ``sensitivity`` and ``study`` share, and the one call that reads them.

Not a command itself: each of those commands adds these arguments and calls :func:`read_input`, which
goes through :func:`plateaulab.analysis.sources.read_source` (the one map from an input to its reader).

Building the parser imports nothing of :mod:`plateaulab.analysis` (which pulls in pandas, scipy and numba):
the builtin tables and the loaders are looked up when a help text is printed or ``--loader`` is checked.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

#: written into help texts and descriptions; replaced by the builtin tables' names when help is printed
BUILTIN_LIST = "@BUILTINS@"


def _builtin_list() -> str:
    from ..analysis.sources import BUILTIN_PREFIX, BUILTINS

    return ", ".join(BUILTIN_PREFIX + b for b in BUILTINS)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """ArgumentDefaultsHelpFormatter that fills in :data:`BUILTIN_LIST` when the help is printed."""

    def _fill(self, text):
        if isinstance(text, str) and BUILTIN_LIST in text:
            text = text.replace(BUILTIN_LIST, _builtin_list())
        return text

    def _format_text(self, text):
        return super()._format_text(self._fill(text))

    def _expand_help(self, action):
        return self._fill(super()._expand_help(action))


class _LoaderChoices(Sequence):
    """``--loader``'s choices, read from :mod:`plateaulab.analysis.sources` the first time they are needed."""

    def _values(self):
        from ..analysis.sources import LOADER_CHOICES

        return tuple(LOADER_CHOICES)

    def __getitem__(self, i):
        return self._values()[i]

    def __len__(self):
        return len(self._values())

    def __contains__(self, value):
        return value in self._values()


def non_negative_int(text: str) -> int:
    """argparse type of ``--seed`` (fit, sensitivity, study): an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (a seed of numpy's generator); got {value}")
    return value


def add_seed_argument(p, help: str) -> None:
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S", help=help)


def add_input_arguments(p, *, optional_input: bool = False) -> None:
    if optional_input:
        p.add_argument("input", nargs="?", default=None, metavar="INPUT",
                       help="probe run directory (from `plateaulab probe`), accuracy table (CSV, TSV, Parquet, JSON, "
                            f"JSONL) or a builtin table ({BUILTIN_LIST}); default: builtin:openclip")
    else:
        p.add_argument("input", metavar="INPUT",
                       help="probe run directory, accuracy table (CSV, TSV, Parquet, JSON, JSONL) or a builtin "
                            f"table ({BUILTIN_LIST})")
    p.add_argument("--us", default=None, metavar="COL",
                   help="upstream accuracy: a table column, a dataset of a long table, or a checkpoint-metadata column "
                        "of a probe run (default for runs: upstream_accuracy; builtins: their own)")
    p.add_argument("--ds", default=None, metavar="COL[,COL...]",
                   help="comma-separated downstream tasks (table columns or run datasets); default: all")
    p.add_argument("--loader", default="auto", choices=_LoaderChoices(), metavar="LOADER",
                   help="how to read INPUT (%(choices)s): auto picks a builtin's or a published file's own loader, "
                        "a run directory's reader, and the generic table reader otherwise; table forces the generic "
                        "reader")
    p.add_argument("--input-scale", default="auto", metavar="auto|unit|percent|COL=SCALE,...",
                   help="table accuracies on 0-1 (unit) or 0-100 (percent), for the whole table or per column "
                        "(COL=percent,COL2=unit; a bare scale sets the other columns); auto decides per column "
                        "from its values and refuses columns that mix or disagree. Values such as '85.0%%' are "
                        "percent")
    p.add_argument("--layer", default="last", metavar="NAME",
                   help="probe runs: the layer whose accuracies are fitted; last = each checkpoint's deepest layer "
                        "probed on that dataset")
    p.add_argument("--model-col", dest="id", default=None, metavar="COL[,COL...]", help="alias of --id")
    p.add_argument("--id", dest="id", default=None, metavar="COL[,COL...]",
                   help="model id column, or several whose values are joined with '/' (e.g. model,img_size); "
                        "default: model, checkpoint, model_name or name")
    p.add_argument("--duplicates", default="error", choices=("error", "first", "best", "mean"),
                   help="a model id on several rows (in a long table: several rows per model, DS and shots): "
                        "error names them; first keeps the first row; best the row with the highest US accuracy; "
                        "mean averages each accuracy")
    p.add_argument("--shots-col", default=None, help="shots column (default: shots, when present)")
    p.add_argument("--format", default=None, help="table format when the extension does not tell")
    p.add_argument("--nan", default="drop", choices=("drop", "raise"),
                   help="rows with a missing accuracy: drop and count them, or stop with an error")
    p.add_argument("--min-us", type=float, default=None, metavar="ACC",
                   help="leave out models whose US accuracy is below ACC (0-1); default: every model counts, as "
                        "in the paper")
    p.add_argument("--exclude", action="append", default=None, metavar="MODEL[,MODEL...]",
                   help="leave out these models (ids, comma-separated); repeat the flag for more")
    p.add_argument("--n-test", type=float, default=None, metavar="N",
                   help="test-set size behind each DS accuracy, for the measurement-noise interval (default: an "
                        "n_test column, a probe run's own sizes, or a builtin's documented sizes)")
    p.add_argument("--n-test-us", type=float, default=None, metavar="N",
                   help="test-set size behind each US accuracy (default: --n-test, or a builtin's documented size)")


def add_hparam_argument(p) -> None:
    """--hparams: the hyper-parameter columns of App. C/D's analysis (study only)."""
    p.add_argument("--hparams", default=None, metavar="COL[,COL...]",
                   help="hyper-parameter columns (e.g. lr,epochs for builtin:clip-benchmark, lr for "
                        "builtin:scaling-laws-openclip): the report compares the value best for each DS task "
                        "with the value best for US (App. C, D)")


def input_options(args) -> dict:
    """read_source's options beyond the input, loader, us, ds, scale and layer."""
    options = {k: v for k, v in (("id", args.id), ("shots_col", args.shots_col), ("format", args.format),
                                 ("nan", args.nan), ("duplicates", args.duplicates),
                                 ("hparams", getattr(args, "hparams", None))) if v is not None}
    options.update(n_test=args.n_test, n_test_us=args.n_test_us, min_us=args.min_us, exclude=excluded(args.exclude))
    return options


def excluded(values):
    """The model ids of every ``--exclude`` (each a comma-separated list), in order; None without the flag."""
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def read_input(args, *, partial: bool = False):
    """The :class:`~plateaulab.analysis.sources.Source` that the parsed arguments name."""
    from ..analysis.sources import read_source

    return read_source(args.input, loader=args.loader, us=args.us, ds=args.ds, scale=args.input_scale,
                       layer=args.layer, partial=partial, **input_options(args))


def add_fit_arguments(p, *, bootstrap_default: int) -> None:
    """How the fit and its intervals are computed: shared by fit and study."""
    p.add_argument("--bootstrap", type=int, default=bootstrap_default, metavar="B",
                   help="replicates of each interval's bootstrap (0: no interval)")
    p.add_argument("--ci-source", default="both", choices=("noise", "models", "both"),
                   help="interval: noise = measurement noise (accuracies redrawn from their test-set sizes; the "
                        "primary one where sizes are known), models = the model bootstrap, both = each, named")
    p.add_argument("--tail", action="store_true",
                   help="also fit the descending tail of the hull (default: the rising part, from the leftmost "
                        "vertex to the highest; see docs/ANALYSIS.md)")


TABLE_SUFFIXES = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def check_output_file(path, suffixes=TABLE_SUFFIXES, kinds: str = "a .csv, .json or .parquet"):
    """Refuse an ``-o FILE`` that cannot be written, before any work: an extension not among ``suffixes``
    (``kinds`` says which in words), a folder that does not exist, or a folder given as the file."""
    from pathlib import Path

    from ..errors import InputError

    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{{param}} {str(path)!r}: use {kinds} file name", param="output")
    if not path.parent.is_dir():
        raise InputError(f"{{param}} {str(path)!r}: the folder {str(path.parent)!r} does not exist; create it first",
                         param="output")
    if path.is_dir():
        raise InputError(f"{{param}} {str(path)!r} is a folder; give a file name", param="output")
    return path


def write_atomic(path, write) -> str:
    """Write ``path`` by ``write(tmp)`` into a temporary file beside it, then move it into place
    (os.replace), so a reader or a killed command never sees a half-written file, and an earlier file
    stays whole until the new one is complete. Callers check ``path`` first (:func:`check_output_file`)."""
    from pathlib import Path

    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(path)


def write_json(obj, path, *, indent: int = 2) -> str:
    """Write a JSON object to ``path`` atomically (:func:`write_atomic`)."""
    import json

    path = check_output_file(path, (".json",), "a .json")
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=indent) + "\n"))


def write_table(df, path) -> str:
    """Write a table as .csv, .json (records) or .parquet, by the file's extension, atomically."""
    path = check_output_file(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return write_atomic(path, lambda tmp: df.to_csv(tmp, index=False))
    if suffix == ".json":
        return write_atomic(path, lambda tmp: df.to_json(tmp, orient="records", indent=1))
    return write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False))
