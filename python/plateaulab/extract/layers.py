"""Which modules of a network are "layers", and how one layer's output becomes one vector per example.

Layer discovery
---------------
Every architecture the paper studies is a stem, a sequence of repeated blocks and a head: ViT and
MLP-Mixer keep their blocks in a container (timm: ``blocks.0 .. blocks.11``; Hugging Face:
``encoder.layer.0 ..``; torchvision: ``encoder.layers.encoder_layer_0 ..``), ResNets name their stages
``layer1 .. layer4`` (timm ConvNeXt and ResNetV2: ``stages.0 ..``). What they share is a group of
sibling modules whose names differ only in a trailing integer. Such groups also appear inside a block
(``norm1``/``norm2``, ``fc1``/``fc2``, the bottleneck's ``conv1 .. conv3``), so among all groups we
take the one that holds the most parameters: the trunk holds nearly all of a network's weights, and
a block's internals hold a fraction of one block. Ties go to the group with more members.

Pre-logits is the input of the classifier (``head``, ``fc``, ``classifier``, ...), captured with a
forward pre-hook: it is the pooled, normalised representation that big_vision's few-shot evaluator
probes (PROTOCOL.md §7). Models without a recognisable classifier (a bare text encoder) have none.

Pooling
-------
A block's output is (N, tokens, D) for transformers and mixers and a feature map for CNN stages
(PROTOCOL.md §8): (N, C, H, W), or (N, H, W, C) for models that say so (timm's Swin, SwinV2 and
MambaOut set ``output_fmt = "NHWC"``) or that are known to be channels-last without saying so
(torchvision's Swin transformers, whose ``features.*`` stages are NHWC). A map whose shape contradicts
the declared order is refused, naming the layer (``check_map_format``): averaging over the wrong axes
would give a vector of the wrong length and meaning, silently. Token outputs are pooled by the class
token or by the mean over the tokens that follow the model's prefix tokens (class, distillation and
register tokens: timm's ``num_prefix_tokens``, or counted from the ``cls_token``/``dist_token``/
``reg_token`` parameters), as timm's own average pooling does. The prefix is decided per output: one
with exactly as many tokens as the patch embedding produced carries none (CaiT and XCiT add their
class token only after ``blocks.*``, in their class-attention blocks; a ViT's ``patch_embed``), so
it is averaged over every token, and "cls" is refused for it. When the batch carries an
``attention_mask`` of shape (N, tokens) the mean runs over real tokens only, so padding of text
batches does not leak into the features.
Feature maps are globally average-pooled. (N, D) outputs are stored as they are. Pooling runs in
float32 whatever the autocast dtype, so a mean over hundreds of tokens does not lose bits to
fp16/bf16 accumulation.

Everything pooling needs to know about a model is read once, before the pass, into a
:class:`Layout` (``model_layout``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable

from ..errors import InputError

POOLINGS = ("auto", "cls", "mean", "gap")
PRE_LOGITS = "pre_logits"
# Where classifiers live, most specific first: timm (head.fc for ConvNeXt-style heads, head, fc),
# torchvision (fc, classifier, heads.head), Hugging Face (classifier), Cadene's models (last_linear).
_HEAD_NAMES = ("head.fc", "head", "heads.head", "fc", "classifier", "last_linear")
_NUMBERED = re.compile(r"(.*?)(\d+)")


@dataclass(frozen=True)
class Layer:
    """A module whose output (``hook="output"``) or input (``hook="input"``) is captured.

    ``reduce``, when set, is the layer's own definition of its (N, D) vector, applied instead of the
    pooling modes (``reduce_name`` is what the store records): DeiT-distilled's pre-logits are the
    mean of its class and distillation tokens after the final norm, which no single module's input holds.
    """

    name: str
    module: object
    hook: str = "output"
    reduce: Callable | None = None
    reduce_name: str = ""


@dataclass(frozen=True)
class Layout:
    """What pooling must know about a model's outputs (see the module doc).

    ``token_pooling``: "cls" or "mean", the "auto" choice for token outputs. ``prefix_tokens``: how
    many leading tokens (class, distillation, register) the token mean skips. ``has_class_token``:
    True, False, or None when the model does not say (a text encoder's [CLS] is an input token).
    ``map_format``: "NCHW" or "NHWC", the axis order of 4-D feature maps. ``num_patches``: the
    number of patch tokens of the model's patch embedding at the size it was built for (timm
    ``patch_embed.num_patches``, Hugging Face ``embeddings.patch_embeddings.num_patches``), or None.
    ``patch_embed``: the name of that module; during a pass the engine hooks it and pools with the
    patch count it produced (a model run at another resolution), falling back to ``num_patches``.
    A token output with exactly that many tokens has no prefix tokens.
    """

    token_pooling: str = "mean"
    prefix_tokens: int = 0
    has_class_token: bool | None = None
    map_format: str = "NCHW"
    num_patches: int | None = None
    patch_embed: str = ""


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_layers(model) -> list[Layer]:
    """The repeated blocks (ViT/Mixer blocks, ResNet stages) of ``model``, in order (see module doc)."""
    groups: dict[tuple[str, str], list[tuple[int, str, object]]] = {}
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            m = _NUMBERED.fullmatch(child_name)
            if m is None:
                continue
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            groups.setdefault((parent_name, m.group(1)), []).append((int(m.group(2)), full, child))
    best, best_key = None, None
    for members in groups.values():
        if len(members) < 2:
            continue
        key = (sum(_param_count(mod) for _, _, mod in members), len(members))
        if key[0] == 0:  # activations and pools in a Sequential are not blocks
            continue
        if best_key is None or key > best_key:
            best, best_key = members, key
    if best is None:
        return []
    return [Layer(name, mod) for _, name, mod in sorted(best, key=lambda t: t[0])]


def _distilled_pre_logits(x):
    import torch

    return x[:, :2].mean(dim=1, dtype=torch.float32)


def _is_distilled(model, modules) -> bool:
    """A timm distilled model: a ``head_dist`` and either a ``dist_token`` (DeiT) or a ``cls_token``
    of shape (1, 2, D) that holds the class and distillation tokens together (PiT)."""
    if "head_dist" not in modules:
        return False
    if "dist_token" in dict(model.named_parameters()):
        return True
    cls = getattr(model, "cls_token", None)
    return getattr(cls, "ndim", 0) == 3 and int(cls.shape[1]) == 2


def pre_logits_layer(model) -> Layer | None:
    """The classifier whose input is the pre-logits representation, if the model has one."""
    import torch.nn as nn

    modules = dict(model.named_modules())
    # timm's distilled models (DeiT, PiT) classify from two tokens with two heads and average the
    # logits; their pre-logits (``forward_head(x, pre_logits=True)``) are the mean of the class and
    # distillation tokens of the final norm's output.
    if isinstance(modules.get("norm"), nn.Module) and _is_distilled(model, modules):
        return Layer(PRE_LOGITS, modules["norm"], reduce=_distilled_pre_logits, reduce_name="mean(cls,dist)")
    for name in _HEAD_NAMES:
        mod = modules.get(name)
        # Hugging Face CNN heads are Sequential(Flatten, Linear): the pre-logits feed the last Linear.
        if isinstance(mod, nn.Sequential) and len(mod) and isinstance(mod[-1], nn.Linear):
            mod = mod[-1]
        if isinstance(mod, (nn.Linear, nn.Identity)):
            return Layer(PRE_LOGITS, mod, hook="input")
    return None


def discover_layers(model) -> list[Layer]:
    """Every block of ``model`` plus pre-logits; raises if nothing block-like is found."""
    layers = block_layers(model)
    head = pre_logits_layer(model)
    if head is not None:
        layers.append(head)
    if not layers:
        raise InputError(
            f"found no repeated blocks (modules named like blocks.0, layer1, stages.0) and no classifier in "
            f"{type(model).__name__}; name the modules to capture in {{param}} (names as in the model's "
            "named_modules())", param="layers")
    return layers


def resolve_layers(model, layers) -> list[Layer]:
    """``layers`` is "auto", or a list of module names (``pre_logits`` included) in the order to store."""
    if layers is None or (isinstance(layers, str) and layers == "auto"):
        return discover_layers(model)
    if isinstance(layers, str):
        layers = [s.strip() for s in layers.split(",") if s.strip()]
    modules = dict(model.named_modules())
    out, seen = [], set()
    for name in layers:
        if name in seen:
            raise InputError(f"layer {name!r} is named twice in {{param}} ({', '.join(layers)})", param="layers")
        seen.add(name)
        if name == PRE_LOGITS:
            head = pre_logits_layer(model)
            if head is None:
                raise InputError(
                    f"layer 'pre_logits': {type(model).__name__} has no classifier module named one of "
                    f"{', '.join(_HEAD_NAMES)}; name in {{param}} the module whose output you want instead",
                    param="layers")
            out.append(head)
            continue
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InputError(
                f"layer {name!r} does not exist in {type(model).__name__}{hint}; {{param}} takes the names "
                "of the model's modules (named_modules()) or 'pre_logits'", param="layers")
        out.append(Layer(name, modules[name]))
    if not out:
        raise InputError("{param} is empty; pass 'auto' or at least one module name", param="layers")
    return out


_CLASS_TOKENS = ("cls_token", "class_token", "class_embedding")
_DIST_TOKENS = ("dist_token", "distillation_token")
_REG_TOKENS = ("reg_token", "register_tokens")


def default_token_pooling(model) -> str:
    """"cls" when the model classifies from a class token, else "mean".

    timm models say so in ``global_pool`` ('token' or 'avg'; 'map', attention pooling, has no
    per-block equivalent and gets the mean); otherwise a parameter named ``cls_token`` /
    ``class_token`` / ``class_embedding`` anywhere in the model (timm, torchvision, Hugging Face ViT's
    ``embeddings.cls_token``, CLIP) marks a class-token model. Mixers and text encoders have none and
    are mean-pooled (sentence-transformers' MiniLM is trained with mean pooling).
    """
    gp = getattr(model, "global_pool", None)
    if isinstance(gp, str) and gp:
        return "cls" if gp == "token" else "mean"
    for name, _ in model.named_parameters():
        if name.rsplit(".", 1)[-1] in _CLASS_TOKENS:
            return "cls"
    return "mean"


def model_layout(model) -> Layout:
    """The token and feature-map layout of ``model`` (see :class:`Layout` and the module doc).

    timm models state it: ``num_prefix_tokens`` (class + distillation + register tokens, always first),
    ``pool_include_prefix`` (a mean over every token), ``has_class_token`` and ``output_fmt``. For
    other models the prefix is counted from the parameters that hold those tokens: the T of a class
    token of shape (1, T, D) (PiT-distilled keeps its class and distillation tokens in one
    ``cls_token`` of shape (1, 2, D)), one for a 1-D class embedding (CLIP) and for each distillation
    token, and the register count of a ``reg_token`` / ``register_tokens`` of shape (1, R, D)
    (Hugging Face DINOv2 with registers). ``num_patches`` and ``patch_embed`` come from the one
    patch-embedding module (``_patch_embedding``).
    """
    params = {name.rsplit(".", 1)[-1]: p for name, p in model.named_parameters()}
    has_cls = getattr(model, "has_class_token", None)
    if not isinstance(has_cls, bool):
        if any(k in params for k in _CLASS_TOKENS):
            has_cls = True
        elif getattr(model, "cls_token", 0) is None or isinstance(getattr(model, "num_prefix_tokens", None), int):
            has_cls = False  # timm: cls_token is None when the model was built with class_token=False
        else:
            has_cls = None
    prefix = getattr(model, "num_prefix_tokens", None)
    if not isinstance(prefix, int) or isinstance(prefix, bool):
        prefix = sum(1 for k in _DIST_TOKENS if k in params)
        for k in _CLASS_TOKENS:
            if k in params:
                prefix += int(params[k].shape[-2]) if params[k].ndim == 3 else 1
        for k in _REG_TOKENS:
            if k in params:
                prefix += int(params[k].shape[-2]) if params[k].ndim >= 2 else 1
    if getattr(model, "pool_include_prefix", False) is True:
        prefix = 0
    fmt = getattr(model, "output_fmt", None)
    if fmt not in ("NCHW", "NHWC"):
        fmt = "NHWC" if _channels_last_without_saying(model) else "NCHW"
    patch_embed, num_patches = _patch_embedding(model)
    return Layout(default_token_pooling(model), int(prefix), has_cls, fmt, num_patches, patch_embed)


_PATCH_EMBED_NAMES = ("patch_embed", "patch_embeddings")


def _patch_embedding(model) -> tuple[str, int | None]:
    """The name and patch count of the model's patch embedding: the one module named ``patch_embed``
    (timm) or ``patch_embeddings`` (Hugging Face) that states ``num_patches`` or a 2-D ``grid_size``.
    None when there is no such module or more than one (multi-branch models such as CrossViT)."""
    found = []
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] not in _PATCH_EMBED_NAMES:
            continue
        n = getattr(mod, "num_patches", None)
        if not isinstance(n, int) or isinstance(n, bool):
            grid = getattr(mod, "grid_size", None)
            n = (int(grid[0]) * int(grid[1]) if isinstance(grid, (tuple, list)) and len(grid) == 2
                 and all(isinstance(g, int) for g in grid) else None)
        if n:
            found.append((name, n))
    return found[0] if len(found) == 1 else ("", None)


def patch_count(output, module) -> int | None:
    """How many patch tokens a patch embedding produced, from its output: (N, L, D) or a tuple that
    starts with one (XCiT returns ((N, L, D), (Hp, Wp))), or a 4-D map in the module's
    ``output_fmt`` (timm: NCHW unless it says NHWC). None for anything else."""
    import torch

    x = output
    if isinstance(x, (tuple, list)) and x:
        x = x[0]
    if not isinstance(x, torch.Tensor):
        return None
    if x.ndim == 3:
        return int(x.shape[1])
    if x.ndim == 4:
        fmt = getattr(module, "output_fmt", "NCHW")
        nhwc = getattr(fmt, "value", fmt) == "NHWC"
        return int(x.shape[1] * x.shape[2]) if nhwc else int(x.shape[2] * x.shape[3])
    return None


# Models whose feature maps are (N, H, W, C) but carry no ``output_fmt``: (module, class) of the model.
_CHANNELS_LAST = {("torchvision.models.swin_transformer", "SwinTransformer")}


def _channels_last_without_saying(model) -> bool:
    cls = type(model)
    return any((c.__module__, c.__name__) in _CHANNELS_LAST for c in cls.__mro__)


def check_map_format(shape: tuple, map_format: str, layer: str, image_hw: tuple | None = None) -> None:
    """Refuse a 4-D output whose shape contradicts ``map_format``.

    Only one kind of evidence is used: which pair of axes is square. Of the two candidate (H, W)
    pairs, axes 1-2 (NHWC's) and axes 2-3 (NCHW's), the map is refused when exactly one is square
    and it is not the declared format's: (N, 56, 56, 96) taken as NCHW, (N, 96, 56, 56) taken as
    NHWC. Maps where both pairs or neither is square pass (the shape says nothing). So does every
    map of a pass whose input images are not square (``image_hw``, the (H, W) of the batch, when the
    engine knows it): their maps are not square either, and an NCHW map whose channel count equals
    its height, (N, 64, 64, 32) from 128 x 64 images, would otherwise be refused. With square (or
    unknown) inputs such a map is refused; pool it with a callable."""
    if image_hw is not None and image_hw[0] != image_hw[1]:
        return
    _, a, b, c = shape
    looks = "NHWC" if a == b != c else "NCHW" if b == c != a else None
    if looks is not None and looks != map_format:
        raise InputError(
            f"layer {layer!r} outputs a feature map of shape {tuple(shape)}, which looks {looks} (height and "
            f"width equal), but the model's maps are taken as {map_format}; averaging over the wrong axes "
            "would give wrong features. Name another layer, or pass a callable as {param} that pools this "
            "output (also if it is a non-square map whose channel count equals one side)", param="pooling")


def check_pooling(pooling) -> None:
    if callable(pooling):
        return
    if pooling not in POOLINGS:
        raise InputError(f"{{param}} must be one of {', '.join(POOLINGS)} or a callable, got {pooling!r}",
                         param="pooling")


def check_pooling_for(model, layout: Layout, pooling) -> None:
    """Refuse class-token pooling for a model that states it has no class token (its token 0 is a
    register or patch token)."""
    modes = pooling.values() if isinstance(pooling, dict) else [pooling]
    if layout.has_class_token is False and any(isinstance(m, str) and m == "cls" for m in modes):
        p = layout.prefix_tokens
        first = ("its token 0 is a patch token: it has no prefix tokens" if p == 0 else
                 "its token 0 is its register token" if p == 1 else
                 f"its token 0 is the first of its {p} register tokens")
        raise InputError(
            f"{{param}} 'cls' asks for the class token, but {type(model).__name__} has none (it was built "
            f"without one; {first}); use 'mean' or 'auto'", param="pooling")


def layer_tensor(output, layer: str):
    """The tensor a module produced: Hugging Face blocks return tuples and ModelOutputs."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        if isinstance(output.get("last_hidden_state"), torch.Tensor):
            return output["last_hidden_state"]
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise InputError(f"layer {layer!r} produced {type(output).__name__}, not a tensor; name another layer")


def pool(x, mode: str, layout, mask=None, layer: str = "", patches: int | None = None,
         image_hw: tuple | None = None):
    """Reduce one layer's output to (N, D) float32 and say which pooling was used.

    ``mode`` is the pooling asked for ("auto", "cls", "mean", "gap"); it decides how token outputs
    are pooled ("auto" defers to ``layout.token_pooling``, "gap" means the token mean). 4-D maps
    are always globally average-pooled (over H, W of ``layout.map_format``; ``image_hw`` goes to
    ``check_map_format``) and 2-D outputs kept, whatever ``mode`` says. The token mean skips
    ``layout.prefix_tokens`` leading tokens and is recorded as "mean[P:]" when P > 0, except for an
    output with exactly ``patches`` tokens (the patch embedding's count in this pass, else
    ``layout.num_patches``): it carries no prefix, so "auto" averages all of its tokens ("mean")
    and "cls" is refused. ``layout`` may be a bare token pooling ("cls"/"mean").
    """
    import torch

    if isinstance(layout, str):
        layout = Layout(token_pooling=layout)
    # Reduce first and cast the (N, D) result: a float32 copy of a whole (N, tokens, D) output would
    # double the activation memory, and a view into it would keep it alive until the pass ends.
    f32 = torch.float32
    if x.ndim == 2:
        return x.to(f32, copy=True), "none"
    if x.ndim == 4:
        check_map_format(tuple(x.shape), layout.map_format, layer, image_hw)
        return x.mean(dim=(1, 2) if layout.map_format == "NHWC" else (2, 3), dtype=f32), "gap"
    if x.ndim != 3:
        raise InputError(
            f"layer {layer!r} outputs shape {tuple(x.shape)}; expected (N, D), (N, tokens, D) or (N, C, H, W); "
            "pass a callable as {param} or name another layer", param="pooling")
    p = layout.prefix_tokens
    patches = patches if patches is not None else layout.num_patches
    no_prefix = bool(p) and patches is not None and x.shape[1] == patches
    how = layout.token_pooling if mode == "auto" else ("mean" if mode == "gap" else mode)
    if no_prefix:
        if how == "cls":
            if mode == "cls":
                raise InputError(
                    f"layer {layer!r} outputs {x.shape[1]} tokens, the model's {patches} patch tokens and no class "
                    "token (CaiT and XCiT add theirs after their blocks); {param} 'cls' would store a patch "
                    "token. Use 'mean' or 'auto' for this layer", param="pooling")
            how = "mean"
        p = 0
    if how == "cls":
        return x[:, 0].to(f32, copy=True), "cls"
    if p and x.shape[1] <= p:
        raise InputError(
            f"layer {layer!r} outputs {x.shape[1]} tokens, but the model has {p} prefix (class, distillation, "
            "register) tokens, so no token is left to average; name another layer or pass a callable as {param}",
            param="pooling")
    if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
        w = mask[:, p:].to(device=x.device, dtype=f32).unsqueeze(-1)
        label = "mean_masked" if not p else f"mean_masked[{p}:]"
        return (x[:, p:].to(f32) * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0), label
    return x[:, p:].mean(dim=1, dtype=f32), ("mean" if not p else f"mean[{p}:]")
