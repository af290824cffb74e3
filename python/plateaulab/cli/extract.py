"""``plateaulab extract``: fill a feature store with every layer of a list of checkpoint files."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  plateaulab extract store/ runs/*/ckpt.pt --arch timm:vit_base_patch16_224 \\
      --dataset pets --train pets/train --test pets/test
  plateaulab extract store/ --manifest checkpoints.csv --dataset texts --train tr.npz --test te.npz
  plateaulab extract --list-layers --arch timm:resnet50

A split (--train/--test/--val) is an image folder with one sub-folder per class, or a .npz file with
labels 'y' and inputs 'x' (or several named input arrays, passed to the model as keywords).
A manifest is a .csv or .jsonl with columns file, architecture, name and any metadata
(upstream accuracy, data size, epochs, ...). Run the same command again to resume after a crash.

Architectures are named: timm:NAME, torchvision:NAME or hf:DIR. An import path (module:factory)
imports and runs that module: typed as --arch it is allowed (you typed it); in a manifest it is
refused unless --allow-import is given.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract", help="capture every layer of checkpoints into a feature store",
        description="Run each checkpoint once over a dataset and store a pooled representation of every block "
                    "(ViT/Mixer blocks, ResNet stages) plus pre-logits. Never downloads weights.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", nargs="?", metavar="STORE", help="feature store directory (created if missing)")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                   help="checkpoint files or globs (.pt/.pth/.bin state dicts or .safetensors)")
    p.add_argument("--arch", dest="architecture",
                   help="architecture of the checkpoints: timm:NAME, torchvision:NAME, hf:DIR, or module:factory "
                        "(an import path: typed here, it is allowed)")
    p.add_argument("--manifest", help="a .csv/.jsonl listing checkpoints (file, architecture, name, metadata)")
    p.add_argument("--allow-import", action="store_true",
                   help="allow module:factory import paths in the --manifest's architecture column (importing "
                        "runs that module's code; without this flag a manifest can only name timm:/hf:/torchvision:)")
    p.add_argument("--dataset", help="dataset name in the store")
    p.add_argument("--train", help="train split: image folder or .npz")
    p.add_argument("--test", help="test split: image folder or .npz")
    p.add_argument("--val", help="optional validation split")
    p.add_argument("--layers", default="auto", help="'auto' (blocks + pre_logits) or comma-separated module names")
    p.add_argument("--pooling", default="auto", choices=("auto", "cls", "mean", "gap"),
                   help="pooling of token outputs (feature maps are always average-pooled)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="stored feature dtype")
    p.add_argument("--device", default=None, help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on GPU")
    p.add_argument("--batch-size", default="auto", help="'auto' (halved on out-of-memory) or an integer")
    p.add_argument("--loader-workers", dest="num_workers", type=int, default=None,
                   help="data-loading processes for image folders (default: up to 8)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--resize", type=int, default=256, help="shorter side before the centre crop")
    p.add_argument("--normalize", default="inception", choices=("inception", "imagenet", "none"),
                   help="pixel normalisation: inception = [-1, 1] (big_vision), imagenet = mean/std")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata for every checkpoint (repeatable; VALUE parsed as JSON when it can be)")
    p.add_argument("--overwrite", action="store_true", help="re-extract pairs already in the store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-layers", action="store_true",
                   help="print the layers --layers auto would capture, and every module name, then exit")
    from .probe import add_scale_arguments

    add_scale_arguments(p, unit="one (checkpoint, dataset) pair")
    p.set_defaults(func=run)


def _meta(pairs) -> dict:
    from ..errors import InputError

    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--meta {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _typed_architecture(args):
    """--arch as typed: the user's own command, so an import path in it is allowed (a manifest's is not)."""
    from ..extract.registry import resolve_architecture

    return resolve_architecture(args.architecture, allow_import=True) if args.architecture else None


def _list_layers(args) -> int:
    from ..errors import InputError
    from ..extract.checkpoints import classifier_outputs, read_state_dict
    from ..extract.layers import discover_layers, model_layout

    if not args.architecture:
        raise InputError("--list-layers needs --arch")
    arch = _typed_architecture(args)
    num_classes = None
    if args.checkpoints:
        from ..extract.checkpoints import expand_checkpoints
        spec = expand_checkpoints(args.checkpoints[:1], arch)[0]
        num_classes = classifier_outputs(read_state_dict(spec.file))
    model = arch.build(num_classes=num_classes)
    layout = model_layout(model)
    prefix = f", {layout.prefix_tokens} prefix tokens skipped by the token mean" if layout.prefix_tokens else ""
    nhwc = ", feature maps NHWC" if layout.map_format == "NHWC" else ""
    print(f"# layers captured by --layers auto (token pooling: {layout.token_pooling}{prefix}{nhwc})")
    for layer in discover_layers(model):
        print(layer.name)
    print("# every module")
    for name, mod in model.named_modules():
        if name:
            print(f"{name}\t{type(mod).__name__}")
    return 0


def run(args) -> int:
    from ..errors import InputError

    try:
        return _run(args)
    except InputError as exc:
        if exc.param == "layers":
            # The library names its parameter; here the command that lists the module names can be named too.
            raise InputError(f"{exc.template}; `plateaulab extract --list-layers --arch ARCH` prints them",
                             param=exc.param) from None
        raise


def _run(args) -> int:
    from ..errors import InputError

    if args.list_layers:
        return _list_layers(args)
    from ..extract import extract_checkpoints, read_manifest

    if not args.store:
        raise InputError("STORE is required (the feature store directory to fill)")
    architecture = _typed_architecture(args)
    entries = list(args.checkpoints)
    if args.manifest:
        entries += read_manifest(args.manifest, allow_import=args.allow_import)
    if not entries:
        raise InputError("no checkpoints: pass checkpoint files/globs after STORE, or --manifest")
    for opt in ("dataset", "train", "test"):
        if not getattr(args, opt):
            raise InputError(f"--{opt} is required")
    batch = args.batch_size
    if batch != "auto":
        try:
            batch = int(batch)
        except ValueError:
            raise InputError(f"--batch-size must be 'auto' or an integer, got {batch!r}") from None
    report = extract_checkpoints(
        entries, args.store, args.dataset, architecture=architecture, train=args.train, test=args.test,
        val=args.val, layers=args.layers, pooling=args.pooling, dtype=args.dtype, device=args.device,
        amp=False if args.no_amp else None, batch_size=batch, num_workers=args.num_workers,
        image_size=args.image_size, resize=args.resize, normalize=args.normalize, metadata=_meta(args.meta),
        overwrite=args.overwrite, progress=not args.no_progress, allow_import=args.allow_import, shard=args.shard,
        workers=args.workers, scheduler=args.scheduler, scheduler_file=args.scheduler_file)
    done, skipped = report.extracted, report.skipped
    n_layers = len(done[0].layers) if done else (len(skipped[0].layers) if skipped else 0)
    rate = f", {report.images_per_second:.1f} images/s" if done else ""
    shard = f"shard {args.shard}: " if args.shard else ""
    print(f"{shard}extracted {len(done)} (checkpoint, dataset) pairs of {n_layers} layers into {args.store}"
          f"{rate}; {len(skipped)} already complete", file=sys.stdout)
    return 0
