"""The input arguments that ``fit``, ``sensitivity`` and ``study`` share, and the one call that reads them.

Not a command itself: each of those commands adds these arguments and calls :func:`read_input`, which
goes through :func:`plateaulab.analysis.sources.read_source` (the one map from an input to its reader).
"""

from __future__ import annotations

from ..analysis.sources import BUILTIN_PREFIX, BUILTINS, LOADER_CHOICES

BUILTIN_LIST = ", ".join(BUILTIN_PREFIX + b for b in BUILTINS)


def add_input_arguments(p, *, optional_input: bool = False) -> None:
    if optional_input:
        p.add_argument("input", nargs="?", default=None, metavar="INPUT",
                       help="probe run directory (from `plateaulab probe`), accuracy table (CSV, TSV, Parquet, JSON, "
                            f"JSONL) or a builtin table ({BUILTIN_LIST}); default: {BUILTIN_PREFIX}openclip")
    else:
        p.add_argument("input", metavar="INPUT",
                       help="probe run directory, accuracy table (CSV, TSV, Parquet, JSON, JSONL) or a builtin "
                            f"table ({BUILTIN_LIST})")
    p.add_argument("--us", default=None, metavar="COL",
                   help="upstream accuracy: a table column, a dataset of a long table, or a checkpoint-metadata column "
                        "of a probe run (default for runs: upstream_accuracy; builtins: their own)")
    p.add_argument("--ds", default=None, metavar="COL[,COL...]",
                   help="comma-separated downstream tasks (table columns or run datasets); default: all")
    p.add_argument("--loader", default="auto", choices=LOADER_CHOICES,
                   help="how to read INPUT: auto picks a builtin's or a published file's own loader, a run "
                        "directory's reader, and the generic table reader otherwise; table forces the generic reader")
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
    p.add_argument("--exclude", nargs="+", default=None, metavar="MODEL", help="leave out these models (ids)")
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
    options.update(n_test=args.n_test, n_test_us=args.n_test_us, min_us=args.min_us, exclude=args.exclude)
    return options


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


def write_table(df, path) -> str:
    """Write a table as .csv, .json (records) or .parquet, by the file's extension."""
    from pathlib import Path

    from ..errors import InputError

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.parent.is_dir():
        raise InputError(f"{{param}} {str(path)!r}: the folder {str(path.parent)!r} does not exist; create it first",
                         param="output")
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".json":
        df.to_json(path, orient="records", indent=1)
    elif suffix in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    else:
        raise InputError(f"{{param}} {str(path)!r}: use a .csv, .json or .parquet file name", param="output")
    return str(path)
