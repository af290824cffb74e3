"""Extraction throughput: images/s with every block captured, against a plain forward pass.

    PYTHONPATH=python python bench/bench_extract.py                      # GPU: ViT-B/16 + ResNet-50 at 224²
    PYTHONPATH=python python bench/bench_extract.py --device cpu --n 64 --models resnet50_stages  # smoke run

Models are timm's vit_base_patch16_224 and resnet50 with random weights (timm ``pretrained=False``:
nothing is downloaded, and throughput does not depend on the weights). Captured layers:

- ``vit_b16``: blocks.0 .. blocks.11 (class token) + pre_logits: 13 layers;
- ``resnet50_stages``: layer1 .. layer4 (global average pool) + pre_logits: 5 layers (what
  ``--layers auto`` picks);
- ``resnet50_blocks``: all 16 bottleneck blocks (layer1.0 .. layer4.2) + pre_logits: 17 layers.

Inputs are synthetic 224² images held in host memory (numpy float32), so the numbers measure the
model, the hooks, the device-to-host copies and the store, not JPEG decoding. The baseline is the
same model run over the same batches with the same batch size and autocast, without hooks, and
without writing anything: the ratio is the cost of capturing every layer. Each configuration runs
a warm-up extraction first (cuDNN autotuning, allocator growth) that is not timed.

Printed: the pass's images/s (inference with capture, what the progress bar shows), the
end-to-end images/s including the fp16 store writes, the baseline, and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np


MODELS = {
    "vit_b16": "vit_base_patch16_224",
    "resnet50_stages": "resnet50",
    "resnet50_blocks": "resnet50",
}


def layers_for(config: str, model):
    if config == "resnet50_blocks":
        return [f"{stage}.{i}" for stage in ("layer1", "layer2", "layer3", "layer4")
                for i in range(len(getattr(model, stage)))] + ["pre_logits"]
    return "auto"


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    # Values in [-1, 1] like the inception normalisation; generated in chunks to bound peak memory.
    rng = np.random.default_rng(seed)
    x = np.empty((n, 3, size, size), np.float32)
    for i in range(0, n, 256):
        x[i:i + 256] = rng.random((min(256, n - i), 3, size, size), dtype=np.float32) * 2 - 1
    return x


def baseline_images_per_second(model, x: np.ndarray, batch_size: int, device, amp_dtype) -> float:
    """Plain forward passes over the same host batches (host-to-device copy included), no hooks."""
    import torch

    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        model(torch.from_numpy(x[:batch_size]).to(device))  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for i in range(0, len(x), batch_size):
            model(torch.from_numpy(x[i:i + batch_size]).to(device, non_blocking=True))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return len(x) / (time.perf_counter() - t0)


def run_config(config: str, args, device) -> dict:
    import timm
    import torch

    from plateaulab.extract import extract
    from plateaulab.extract.engine import amp_dtype_for, default_batch_size

    model = timm.create_model(MODELS[config], pretrained=False).eval().to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    layers = layers_for(config, model)
    x = synthetic_images(args.n, args.image_size)
    n_test = max(args.n // 4, 2)
    y = np.arange(args.n) % 10
    tmp = tempfile.mkdtemp(prefix="bench-extract-", dir=args.tmp)
    try:
        kw = dict(device=device, batch_size=args.batch_size, dtype="float16", layers=layers, progress=not args.quiet)
        warm = min(args.n, 2 * (args.batch_size if args.batch_size != "auto" else default_batch_size(device)))
        extract(model, os.path.join(tmp, "warm"), "synthetic", train=(x[:warm], y[:warm]),
                test=(x[:2], y[:2]), **kw)
        t0 = time.perf_counter()
        rep = extract(model, os.path.join(tmp, "store"), "synthetic", train=(x[n_test:], y[n_test:]),
                      test=(x[:n_test], y[:n_test]), **kw)
        wall = time.perf_counter() - t0
        pair = rep.pairs[0]
        from plateaulab import FeatureStore
        bs = FeatureStore.open(os.path.join(tmp, "store")).checkpoint_meta("model")
        batch = pair.batch_size  # the batch the pass settled on, after any out-of-memory halving
        base = baseline_images_per_second(model, x, batch, device, amp_dtype_for(device, None))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"config": config, "timm_model": MODELS[config], "layers": len(pair.layers), "n": args.n,
            "batch_size": batch, "capture_img_s": pair.images_per_second, "end_to_end_img_s": args.n / wall,
            "baseline_img_s": base, "params": bs.get("parameters")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="vit_b16,resnet50_stages,resnet50_blocks")
    ap.add_argument("--n", type=int, default=4096, help="images per configuration (train + test)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", default="auto", help="'auto' (512 on GPU, halved on OOM) or an integer")
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--tmp", default=None, help="directory for the temporary stores")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)
    try:
        import timm  # noqa: F401
        import torch
    except ImportError as exc:
        print(f"bench_extract needs torch and timm ({exc}); pip install timm", file=sys.stderr)
        return 2
    from plateaulab.extract.engine import resolve_device

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# bench_extract {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {name}; "
          f"torch {torch.__version__}, timm {timm.__version__}; autocast "
          f"{'bf16/fp16' if device.type == 'cuda' else 'off'}; TF32 matmul "
          f"{torch.backends.cuda.matmul.allow_tf32 if device.type == 'cuda' else 'n/a'}; fp16 store; "
          f"{args.n} synthetic {args.image_size}² images per model")
    print("| model | layers captured | batch | capture img/s | end-to-end img/s (with store writes) "
          "| plain forward img/s | capture / plain |")
    print("|---|---|---|---|---|---|---|")
    for config in [c.strip() for c in args.models.split(",") if c.strip()]:
        if config not in MODELS:
            print(f"unknown model config {config!r}; choose from {', '.join(MODELS)}", file=sys.stderr)
            return 2
        r = run_config(config, args, device)
        print(f"| {r['timm_model']} ({config}) | {r['layers']} | {r['batch_size']} | {r['capture_img_s']:.0f} | "
              f"{r['end_to_end_img_s']:.0f} | {r['baseline_img_s']:.0f} | "
              f"{r['capture_img_s'] / r['baseline_img_s']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
