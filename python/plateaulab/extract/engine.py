"""One inference pass over one split, with every chosen layer captured by a forward hook.

Each hook pools its layer's output on the device and writes the (batch, dim) result straight into
that layer's rows of a memory-mapped .npy file, so a split never has to fit in RAM once per layer;
the caller hands those memmaps to the store at the end of the (checkpoint, dataset) pair.

Batches are written by row offset. That makes the automatic batch size simple: a batch that runs
out of GPU memory is split into halves and re-run, and the re-run overwrites exactly the rows the
failed attempt may have half-written.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, PlateaulabError
from . import deps
from .inputs import SplitSource
from .layers import Layer, Layout, layer_tensor, patch_count, pool

FP16_MAX = float(np.finfo(np.float16).max)


@dataclass
class SplitFeatures:
    """The result of one pass: a (rows, dim) memmap per layer, the labels seen, and timing."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    seconds: float
    pooling: dict[str, str] = field(default_factory=dict)
    batch_size: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.labels.size / self.seconds if self.seconds > 0 else float("nan")


def default_batch_size(device) -> int:
    # A first guess; on a GPU the pass halves it on every out-of-memory error.
    return 512 if str(device).startswith("cuda") else 64


def resolve_device(device=None):
    torch = deps.torch()
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        raise InputError(f"{{param}} {device!r} is not a device torch knows ({first}); use 'cpu', 'cuda' or "
                         "'cuda:N'", param="device") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"{{param}} {device!r}: extraction runs on 'cpu', 'cuda' (or 'cuda:N') or 'mps', not on "
                         f"{dev.type!r}", param="device")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{{param}} {device!r} was asked for but torch sees no CUDA GPU; use 'cpu'", param="device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"{{param}} {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s) "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})", param="device")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"{{param}} {device!r} was asked for but torch sees no MPS device; use 'cpu'", param="device")
    return dev


def amp_dtype_for(device, amp):
    """Autocast dtype: bf16 on GPUs that have it (no fp16 overflow in activations), else fp16; off on CPU."""
    torch = deps.torch()
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type != "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _is_oom(exc) -> bool:
    torch = deps.torch()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def _slice(x, i, j):
    torch = deps.torch()
    if isinstance(x, torch.Tensor):
        return x[i:j]
    if isinstance(x, dict):
        return {k: _slice(v, i, j) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_slice(v, i, j) for v in x)
    return x


def _to(x, device, non_blocking):
    torch = deps.torch()
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, dict):
        return {k: _to(v, device, non_blocking) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device, non_blocking) for v in x)
    return x


def _rows(x) -> int:
    torch = deps.torch()
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, dict):
        return _rows(next(iter(x.values())))
    if isinstance(x, (tuple, list)):
        return _rows(x[0])
    raise InputError(f"a batch input is a {type(x).__name__}; expected a tensor, a dict or a tuple of tensors")


def _pin(x):
    torch = deps.torch()
    if isinstance(x, torch.Tensor):
        return x.pin_memory()
    if isinstance(x, dict):
        return {k: _pin(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_pin(v) for v in x)
    return x


_END = object()


def prefetched(batches, pin: bool):
    """Yield from ``batches`` while a helper thread fetches (and, for a GPU, pins) the next batch.

    Slicing arrays, collating and copying into page-locked memory then overlap the forward pass,
    and the host-to-device copy of a pinned batch runs at full PCIe speed without blocking the host.
    """
    from concurrent.futures import ThreadPoolExecutor

    it = iter(batches)

    def fetch():
        batch = next(it, _END)
        if pin and batch is not _END and isinstance(batch, (tuple, list)) and len(batch) == 2:
            batch = (_pin(batch[0]), batch[1])
        return batch

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plateaulab-prefetch") as pool:
        future = pool.submit(fetch)
        while True:
            batch = future.result()
            if batch is _END:
                return
            future = pool.submit(fetch)
            yield batch


def _split_batch(batch, source: SplitSource):
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise InputError(
        f"{source.split} split ({source.description}): each batch must be (inputs, labels), got "
        f"{type(batch).__name__}{' of length ' + str(len(batch)) if isinstance(batch, (tuple, list)) else ''}"
    )


def _image_hw(x):
    """(H, W) of a batch of images (a 4-D tensor, or Hugging Face ``pixel_values``), else None."""
    if isinstance(x, dict):
        x = x.get("pixel_values")
    shape = getattr(x, "shape", None)
    return (int(shape[-2]), int(shape[-1])) if shape is not None and len(shape) == 4 else None


def _call(model, x):
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


class _Capture:
    """The hooks' shared state: where the current chunk's rows go and what each layer produced."""

    def __init__(self, layers, rows, out_dtype, tmpdir: Path, pooling, layout: Layout, where):
        self.layers, self.rows, self.out_dtype, self.tmpdir = layers, rows, np.dtype(out_dtype), tmpdir
        self.pooling, self.layout, self.where = pooling, layout, where
        self.features: dict[str, np.ndarray] = {}
        self.used: dict[str, str] = {}
        self.offset, self.chunk_rows, self.mask, self.fired, self.pending = 0, 0, None, {}, {}
        # This forward pass's patch-token count (from the patch embedding's hook) and input (H, W).
        self.patches, self.image_hw = None, None

    def mode_for(self, name):
        return self.pooling.get(name, self.pooling.get("*", "auto")) if isinstance(self.pooling, dict) else self.pooling

    def hook(self, index: int, layer: Layer):
        def on_output(module, args, output=None):
            value = args if layer.hook == "input" else output
            self.write(index, layer, layer_tensor(value, layer.name))
        return on_output

    def on_patch_embed(self, module, args, output) -> None:
        self.patches = patch_count(output, module)

    def write(self, index: int, layer: Layer, x) -> None:
        name = layer.name
        self.fired[name] = self.fired.get(name, 0) + 1
        mode = self.mode_for(name)
        if layer.reduce is not None:
            pooled, how = layer.reduce(x).float(), layer.reduce_name
        elif callable(mode):
            pooled, how = mode(x).float(), getattr(mode, "__name__", "custom")
            if pooled.ndim != 2:
                raise InputError(f"{self.where}, layer {name!r}: the pooling callable returned shape "
                                 f"{tuple(pooled.shape)}; it must return (N, D)")
        else:
            pooled, how = pool(x, mode, self.layout, self.mask, name, self.patches, self.image_hw)
        if pooled.shape[0] != self.chunk_rows:
            raise InputError(
                f"{self.where}, layer {name!r}: output has {pooled.shape[0]} rows for a batch of {self.chunk_rows}; "
                "the layer is not batch-first (e.g. a sequence-first transformer); name another layer or "
                "pass a pooling callable that handles its layout"
            )
        # Kept on the device until the forward pass ends: copying to the host here would make the
        # host wait for the GPU at every layer, and the GPU wait for the host to launch the next one.
        self.pending[name] = (index, pooled, how)

    def store_chunk(self) -> None:
        """Copy the finished chunk's pooled outputs to the host and into their rows of each memmap."""
        for name, (index, pooled, how) in self.pending.items():
            a = pooled.detach().to("cpu").numpy()
            if self.out_dtype == np.float16:
                big = float(np.abs(a).max(initial=0.0))
                if big > FP16_MAX:
                    raise InputError(
                        f"{self.where}, layer {name!r}: pooled features reach {big:.4g}, beyond the float16 range "
                        f"({FP16_MAX:.0f}); set {{param}} to float32 to store them", param="dtype")
            buf = self.features.get(name)
            if buf is None:
                buf = np.lib.format.open_memmap(self.tmpdir / f"{index:04d}.npy", mode="w+", dtype=self.out_dtype,
                                                shape=(self.rows, a.shape[1]))
                self.features[name] = buf
                self.used[name] = how
            elif buf.shape[1] != a.shape[1]:
                raise InputError(f"{self.where}, layer {name!r}: pooled width changed from {buf.shape[1]} to "
                                 f"{a.shape[1]} between batches; inputs of one split must share a shape")
            buf[self.offset:self.offset + a.shape[0]] = a
        self.pending = {}


def run_split(model, layers: list[Layer], source: SplitSource, *, device, amp_dtype, batch_size: int,
              pooling, layout: Layout, out_dtype, tmpdir: Path, progress: bool = True,
              desc: str = "", where: str = "") -> SplitFeatures:
    """Run ``model`` once over ``source`` and return every layer's pooled features (see module doc).

    ``layout`` is the model's :class:`~plateaulab.extract.layers.Layout` (or a bare token pooling,
    "cls"/"mean").
    """
    torch = deps.torch()
    tqdm = deps.require("tqdm", "the extraction progress bar").tqdm
    tmpdir.mkdir(parents=True, exist_ok=True)
    if isinstance(layout, str):
        layout = Layout(token_pooling=layout)
    cap = _Capture(layers, source.rows, out_dtype, tmpdir, pooling, layout, where)
    labels = np.full(source.rows, -1, np.int64)
    handles = []
    for i, layer in enumerate(layers):
        if layer.hook == "input":
            handles.append(layer.module.register_forward_pre_hook(cap.hook(i, layer)))
        else:
            handles.append(layer.module.register_forward_hook(cap.hook(i, layer)))
    patch_embed = dict(model.named_modules()).get(layout.patch_embed) if layout.patch_embed else None
    if layout.prefix_tokens and patch_embed is not None:
        # The patch count of each pass (the model may run at another resolution than it was built
        # for): a token output with exactly that many tokens carries no prefix (CaiT, XCiT blocks).
        # Prepended, so that it is known before a hook on the patch embedding itself pools.
        handles.append(patch_embed.register_forward_hook(cap.on_patch_embed, prepend=True))
    on_gpu = device.type == "cuda"
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    micro = batch_size
    offset = 0
    bar = tqdm(total=source.rows, unit="img", unit_scale=True, desc=desc, disable=not progress,
               file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(), autocast:
            for batch in prefetched(source.batches(batch_size), pin=on_gpu):
                xb, yb = _split_batch(batch, source)
                b = _rows(xb)
                if offset + b > source.rows:
                    raise InputError(f"{source.split} split ({source.description}) yielded more than its "
                                     f"{source.rows} examples")
                try:
                    labels[offset:offset + b] = np.asarray(yb.cpu() if hasattr(yb, "cpu") else yb, dtype=np.int64)
                except (TypeError, ValueError) as exc:
                    raise InputError(f"{source.split} split ({source.description}): labels must be {b} integer "
                                     f"class ids per batch of {b} ({exc})") from None
                i = 0
                while i < b:
                    j = min(b, i + micro)
                    chunk = _to(_slice(xb, i, j), device, non_blocking=on_gpu)
                    cap.offset, cap.chunk_rows, cap.fired, cap.pending = offset + i, j - i, {}, {}
                    cap.mask = chunk.get("attention_mask") if isinstance(chunk, dict) else None
                    cap.patches, cap.image_hw = None, _image_hw(chunk)
                    try:
                        _call(model, chunk)
                    except PlateaulabError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - out-of-memory is handled; the rest is named
                        if not _is_oom(exc):
                            first = (str(exc).splitlines() or [""])[0][:300]
                            raise InputError(
                                f"{where}: the model failed on the {source.split} inputs ({source.description}): "
                                f"{type(exc).__name__}: {first}; check that the inputs fit the architecture "
                                "(shape, dtype, the names of keyword inputs)") from None
                        del chunk
                        cap.pending = {}
                        if on_gpu:
                            torch.cuda.empty_cache()
                        if micro == 1:
                            raise InputError(f"{where}: out of device memory with a batch of 1 example") from None
                        micro = max(1, micro // 2)
                        bar.set_postfix_str(f"batch {micro} after OOM")
                        continue
                    for layer in layers:
                        n_calls = cap.fired.get(layer.name, 0)
                        if n_calls != 1:
                            raise InputError(
                                f"{where}, layer {layer.name!r}: the module ran {n_calls} times in one forward pass; "
                                "capture needs a module that runs exactly once per forward (name another layer)"
                            )
                    cap.store_chunk()
                    i = j
                offset += b
                bar.update(b)
        if on_gpu:
            torch.cuda.synchronize(device)
    finally:
        seconds = time.perf_counter() - t0
        bar.close()
        for h in handles:
            h.remove()
    if offset != source.rows:
        raise InputError(f"{source.split} split ({source.description}) yielded {offset} examples but reports "
                         f"{source.rows}; its length and its contents disagree")
    for buf in cap.features.values():
        buf.flush()
    return SplitFeatures(cap.features, labels, seconds, cap.used, micro)
