"""Real timm architectures, random weights: blocks found, every block pooled as the model itself pools.

One small variant of each family the paper probes and of the families with their own layouts:
ViT (class token), DeiT-distilled (class + distillation token), a ViT with a register token and
average pooling (no class token), DINOv2 with four register tokens, BEiT (average pooling after the
class token), CaiT and XCiT (class token added only after ``blocks.*``: the blocks carry patch
tokens alone), PiT-distilled (class + distillation token in one ``cls_token``, NCHW stages),
MLP-Mixer (no prefix), Swin (NHWC stages), ConvNeXt and ResNet (NCHW stages).

The expected features do not come from our hooks: they come from timm's own
``forward_intermediates`` (the block outputs, split by timm into prefix tokens and patch tokens, and
permuted by timm to NCHW; CaiT's and XCiT's have no prefix tokens to split) and
``forward_head(forward_features(x), pre_logits=True)``. Models are
built at 28-32 px (``img_size=``) so each family takes well under a second on two cores. The store
that the extraction writes is then probed by the probe engine. Weights cannot be downloaded and
are not needed: discovery, hooks and pooling do not depend on them.
"""


import numpy as np
import pytest

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

from plateaulab import FeatureStore, InputError  # noqa: E402
from plateaulab.extract import extract, extract_checkpoints, model_layout, read_manifest  # noqa: E402

# family: (timm name, create_model overrides, pooling recorded for the blocks, pooling of pre_logits)
# Depths are cut to 4 blocks (Swin: 1-2 per stage) where the full stack would only add build time:
# the token layout, heads and stage structure are those of the named model.
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, depth=4), "cls", "none"),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=4), "cls", "mean(cls,dist)"),
    "vit_reg_gap": ("vit_pwee_patch16_reg1_gap_256", dict(img_size=32, depth=4), "mean[1:]", "none"),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", dict(img_size=28, depth=4), "cls", "none"),
    "beit": ("beit_base_patch16_224", dict(img_size=32, depth=3, embed_dim=64, num_heads=2), "mean[1:]", "none"),
    "cait": ("cait_xxs24_224", dict(img_size=32, depth=2), "mean", "none"),
    "xcit": ("xcit_nano_12_p16_224", dict(img_size=32, depth=2), "mean", "none"),
    "pit_distilled": ("pit_ti_distilled_224", dict(img_size=32), "gap", "mean(cls,dist)"),
    "mixer": ("mixer_s16_224", dict(img_size=32), "mean", "none"),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, window_size=2, depths=(1, 1, 2, 1)), "gap", "none"),
    "convnext": ("convnext_atto", {}, "gap", "none"),
    "resnet": ("resnet18", {}, "gap", "none"),
}
# The block container of each family and what the layout must say (prefix tokens, class token, map axes).
BLOCKS = {"swin": "layers", "convnext": "stages", "resnet": "layer", "pit_distilled": "transformers"}
LAYOUT = {"vit": (1, True, "NCHW"), "deit_distilled": (2, True, "NCHW"), "vit_reg_gap": (1, False, "NCHW"),
          "dinov2_reg4": (5, True, "NCHW"), "beit": (1, True, "NCHW"), "cait": (1, True, "NCHW"),
          "xcit": (1, True, "NCHW"), "pit_distilled": (2, True, "NCHW"), "mixer": (0, None, "NCHW"),
          "swin": (0, None, "NHWC"), "convnext": (0, None, "NCHW"), "resnet": (0, None, "NCHW")}
# Families whose blocks carry none of the model's prefix tokens (timm's intermediates are patch maps):
# CaiT and XCiT prepend the class token after their blocks, PiT's stages output (map, class tokens).
NO_PREFIX_IN_BLOCKS = {"cait", "xcit", "pit_distilled"}
CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 8, 4


def build(family):
    name, kw, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0, **kw).eval()


def images(size, seed=0):
    """Classes that differ in colour and in a coarse pattern, plus noise: readable by random features."""
    rng = np.random.default_rng(seed)
    n = CLASSES * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    y = np.tile(np.arange(CLASSES), n // CLASSES)
    yy, xx = np.mgrid[0:size, 0:size] / size
    patterns = [np.sin(2 * np.pi * (k + 1) * (xx if k % 2 else yy)) for k in range(CLASSES)]
    colours = rng.normal(size=(CLASSES, 3))
    x = np.stack([colours[k][:, None, None] * 0.8 + patterns[k][None] * 0.8 for k in y])
    x = (x + rng.normal(scale=0.5, size=x.shape)).astype(np.float32)
    n_train = CLASSES * TRAIN_PER_CLASS
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def reference(family, model, x):
    """{layer: (N, D)} from timm's own intermediate outputs and pre-logits, no hooks."""
    n_blocks = len(model.feature_info)
    with torch.no_grad():
        xt = torch.as_tensor(x)
        if family == "resnet":  # feature_info starts with the stem (act1): the stages are 1..4
            inter = model.forward_intermediates(xt, indices=[1, 2, 3, 4], intermediates_only=True)
            names = [f"layer{i}" for i in range(1, 5)]
        elif LAYOUT[family][0] and family not in NO_PREFIX_IN_BLOCKS:
            # token models with prefix tokens: timm returns (patch map, prefix tokens)
            inter = model.forward_intermediates(xt, indices=list(range(n_blocks)), intermediates_only=True,
                                                return_prefix_tokens=True)
            names = [f"blocks.{i}" for i in range(n_blocks)]
        else:
            inter = model.forward_intermediates(xt, indices=list(range(n_blocks)), intermediates_only=True)
            names = [f"{BLOCKS.get(family, 'blocks')}.{i}" for i in range(n_blocks)]
        out = {}
        for name, h in zip(names, inter):
            if isinstance(h, tuple):
                patches, prefix = h
                out[name] = (prefix[:, 0] if FAMILIES[family][2] == "cls" else patches.mean(dim=(2, 3))).numpy()
            else:  # NCHW, whatever the model's own layout (timm permutes Swin's NHWC stages)
                out[name] = h.mean(dim=(2, 3)).numpy()
        out["pre_logits"] = model.forward_head(model.forward_features(xt), pre_logits=True).numpy()
    return out


@pytest.fixture(scope="module")
def timm_store(tmp_path_factory):
    """Every family extracted into one store, float32, with its model and inputs."""
    path = tmp_path_factory.mktemp("timm") / "store"
    st = FeatureStore.create(path)
    models, inputs = {}, {}
    for family, (name, kw, _, _) in FAMILIES.items():
        size = kw.get("img_size", 32)
        if size not in inputs:
            inputs[size] = images(size)
        train, test = inputs[size]
        model = build(family)
        rep = extract(model, st, f"shapes{size}", train=train, test=test, checkpoint=family, dtype="float32",
                      metadata={"timm": name}, progress=False)
        assert [p.status for p in rep.pairs] == ["extracted"]
        models[family] = model
    return st, models, inputs


@pytest.mark.parametrize("family", list(FAMILIES))
def test_blocks_are_discovered_and_pooled_as_the_model_does(timm_store, family):
    st, models, inputs = timm_store
    model = models[family]
    size = FAMILIES[family][1].get("img_size", 32)
    train, test = inputs[size]
    layout = model_layout(model)
    assert (layout.prefix_tokens, layout.has_class_token, layout.map_format) == LAYOUT[family]
    want = reference(family, model, test[0])
    ds = f"shapes{size}"
    # Every block timm lists as a feature (feature_info), in order, and pre_logits last.
    blocks = [f["module"] for f in model.feature_info if f["module"] != "act1"]
    assert st.layers(family, ds) == blocks + ["pre_logits"] == list(want)
    pooling = st.checkpoint_meta(family)["extraction"]["pooling"]
    assert pooling == {**{b: FAMILIES[family][2] for b in blocks}, "pre_logits": FAMILIES[family][3]}
    for layer, w in want.items():
        got = np.asarray(st.block(family, ds, layer).test)
        assert got.shape == w.shape, (layer, got.shape, w.shape)
        scale = float(np.abs(w).max())
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5 * max(scale, 1.0), err_msg=f"{family} {layer}")
    np.testing.assert_array_equal(st.dataset(ds).y_test, test[1])


@pytest.mark.parametrize("family", ["deit_distilled", "vit_reg_gap", "dinov2_reg4", "beit"])
def test_the_token_mean_leaves_out_register_and_distillation_tokens(timm_store, family, tmp_path):
    """Averaging every token (the earlier behaviour) gives other features: the check above can fail."""
    model = timm_store[1][family]
    size = FAMILIES[family][1]["img_size"]
    _, (x, y) = images(size, seed=3)
    p = LAYOUT[family][0]
    last = f"blocks.{len(model.blocks) - 1}"
    seen = {}
    handle = model.blocks[-1].register_forward_hook(lambda m, a, out: seen.setdefault("tokens", out))
    with torch.no_grad():
        patches, prefix = model.forward_intermediates(torch.as_tensor(x), indices=[len(model.blocks) - 1],
                                                      intermediates_only=True, return_prefix_tokens=True)[0]
    handle.remove()
    tokens = seen["tokens"]
    assert prefix.shape[1] == p and tokens.shape[1] == p + patches.shape[2] * patches.shape[3]
    extract(model, tmp_path / "st", "d", train=(x, y), test=(x, y), layers=[last], pooling="mean", dtype="float32",
            progress=False)
    st = FeatureStore.open(tmp_path / "st")
    assert st.checkpoint_meta("model")["extraction"]["pooling"] == {last: f"mean[{p}:]"}
    got = np.asarray(st.block("model", "d", last).test)
    np.testing.assert_allclose(got, patches.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    every_token = tokens.mean(dim=1).numpy()
    assert np.abs(got - every_token).max() > 1e-3 * np.abs(every_token).max()


@pytest.mark.parametrize("family", ["cait", "xcit"])
def test_blocks_without_the_class_token_are_averaged_over_every_token(timm_store, family, tmp_path):
    """CaiT/XCiT blocks hold the patch tokens alone: 'auto' and 'mean' average all of them (token 0
    was stored as the class token, and the mean dropped the first patch), 'cls' is refused."""
    model = timm_store[1][family]
    (x, y), _ = images(32, seed=4)
    seen = {}
    handle = model.blocks[1].register_forward_hook(lambda m, a, out: seen.setdefault("tokens", out))
    with torch.no_grad():
        model(torch.as_tensor(x))
    handle.remove()
    tokens = seen["tokens"]
    assert tokens.shape[1] == model.patch_embed.num_patches == model_layout(model).num_patches == 4
    for pooling in ("auto", "mean"):
        extract(model, tmp_path / pooling, "d", train=(x, y), test=(x, y), layers=["blocks.1"], pooling=pooling,
                dtype="float32", progress=False)
        st = FeatureStore.open(tmp_path / pooling)
        assert st.checkpoint_meta("model")["extraction"]["pooling"] == {"blocks.1": "mean"}
        np.testing.assert_allclose(np.asarray(st.block("model", "d", "blocks.1").test), tokens.mean(dim=1).numpy(),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match=r"layer 'blocks\.1' outputs 4 tokens, the model's 4 patch tokens and no "
                                         r"class token .*pooling 'cls' would store a patch token"):
        extract(model, tmp_path / "cls", "d", train=(x, y), test=(x, y), layers=["blocks.1"], pooling="cls",
                dtype="float32", progress=False)


def test_xcit_at_another_resolution_counts_the_patches_of_the_pass(tmp_path):
    """XCiT runs at any input size: its blocks' patch count is the pass's (9 at 48 px), not the 4 it
    was built for, and they are still averaged over every token; pre-logits still match timm."""
    torch.manual_seed(0)
    model = timm.create_model("xcit_nano_12_p16_224", pretrained=False, num_classes=0, img_size=32, depth=2).eval()
    (x, y), _ = images(48, seed=5)
    extract(model, tmp_path / "st", "d", train=(x, y), test=(x, y), dtype="float32", progress=False)
    st = FeatureStore.open(tmp_path / "st")
    assert st.checkpoint_meta("model")["extraction"]["pooling"] == {"blocks.0": "mean", "blocks.1": "mean",
                                                                   "pre_logits": "none"}
    with torch.no_grad():
        xt = torch.as_tensor(x)
        inter = model.forward_intermediates(xt, indices=[0, 1], intermediates_only=True)
        pre = model.forward_head(model.forward_features(xt), pre_logits=True)
    assert inter[1].shape[2:] == (3, 3)
    for i, h in enumerate(inter):
        np.testing.assert_allclose(np.asarray(st.block("model", "d", f"blocks.{i}").test), h.mean(dim=(2, 3)).numpy(),
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(st.block("model", "d", "pre_logits").test), pre.numpy(), rtol=1e-4, atol=1e-5)


def test_a_patch_embedding_named_as_a_layer_is_averaged_over_every_token(tmp_path):
    """A ViT's patch_embed output has no class token; it needed a pooling callable before."""
    torch.manual_seed(0)
    model = build("vit")
    (x, y), _ = images(32, seed=6)
    extract(model, tmp_path / "st", "d", train=(x, y), test=(x, y), layers=["patch_embed", "blocks.0"],
            dtype="float32", progress=False)
    st = FeatureStore.open(tmp_path / "st")
    assert st.checkpoint_meta("model")["extraction"]["pooling"] == {"patch_embed": "mean", "blocks.0": "cls"}
    with torch.no_grad():
        want = model.patch_embed(torch.as_tensor(x)).mean(dim=1).numpy()
    np.testing.assert_allclose(np.asarray(st.block("model", "d", "patch_embed").test), want, rtol=1e-4, atol=1e-5)


def test_distilled_pre_logits_are_averaged_in_float32():
    from plateaulab.extract.layers import pre_logits_layer

    layer = pre_logits_layer(build("deit_distilled"))
    x = torch.zeros(1, 3, 4, dtype=torch.bfloat16)
    x[:, 0], x[:, 1] = 1.0, 2.0 ** -8  # (1 + 2^-8) / 2 needs 9 mantissa bits; bfloat16 keeps 8
    got = layer.reduce(x)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.full((1, 4), (1 + 2.0 ** -8) / 2))


def test_class_token_pooling_is_refused_for_a_model_without_one(timm_store, tmp_path):
    model = timm_store[1]["vit_reg_gap"]  # its token 0 is a register token
    (x, y), _ = images(32)
    with pytest.raises(InputError, match=r"pooling 'cls' asks for the class token, but VisionTransformer has none "
                                         r"\(it was built without one; its token 0 is its register token\)"):
        extract(model, tmp_path / "st", "d", train=(x, y), test=(x, y), pooling="cls", progress=False)
    assert not (tmp_path / "st" / "checkpoints").exists() or not any((tmp_path / "st" / "checkpoints").iterdir())
    # Without registers token 0 is a patch token, not a register token (the message said so before).
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=1,
                              class_token=False, global_pool="avg").eval()
    assert model_layout(plain).prefix_tokens == 0
    with pytest.raises(InputError, match=r"has none \(it was built without one; its token 0 is a patch token: it has "
                                         r"no prefix tokens\)"):
        extract(plain, tmp_path / "st2", "d", train=(x, y), test=(x, y), pooling="cls", progress=False)


def test_the_store_probes(timm_store, tmp_path):
    """The probe engine reads the extracted store unchanged; the classes are readable at some layer."""
    run_mod = pytest.importorskip("plateaulab.run")
    st, _, _ = timm_store
    run = run_mod.probe_store(st, tmp_path / "run", shots=(1, 4), seeds=2, backend="numpy", quiet=True)
    res = run.results()
    n_blocks = sum(len(st.layers(ck, ds)) for ck in st.checkpoints() for ds in st.datasets() if st.layers(ck, ds))
    assert len(res) == n_blocks * 2 * 2
    assert set(res.checkpoint) == set(FAMILIES)
    assert res.accuracy.between(0, 1).all()
    best = res[res.shots == 4].groupby(["checkpoint", "layer"]).accuracy.mean().groupby("checkpoint").max()
    chance = 1 / CLASSES
    assert (best >= 2 * chance).all(), best


def test_checkpoint_files_through_timm_names(tmp_path):
    """`timm:NAME` from a manifest, weights from files: the classifier's size comes from the file."""
    torch.manual_seed(1)
    r18 = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    for mod in r18.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
    atto = timm.create_model("convnext_atto", pretrained=False, num_classes=0).eval()
    torch.save({"state_dict": r18.state_dict()}, tmp_path / "r18.pt")
    from safetensors.torch import save_file
    save_file(atto.state_dict(), str(tmp_path / "atto.safetensors"))
    (tmp_path / "m.csv").write_text("file,architecture,upstream_accuracy\nr18.pt,timm:resnet18,0.7\n"
                                    "atto.safetensors,timm:convnext_atto,0.75\n")
    (x, y), (xt, yt) = images(32)
    rep = extract_checkpoints(read_manifest(tmp_path / "m.csv"), tmp_path / "st", "d", train=(x, y), test=(xt, yt),
                              dtype="float32", progress=False)
    assert [p.status for p in rep.pairs] == ["extracted", "extracted"]
    st = FeatureStore.open(tmp_path / "st")
    assert st.checkpoint_meta("r18")["architecture"] == "timm:resnet18"
    assert st.checkpoint_meta("r18")["parameters"] == sum(p.numel() for p in r18.parameters())
    for ck, model, family in (("r18", r18, "resnet"), ("atto", atto, "convnext")):
        want = reference(family, model, xt)
        assert st.layers(ck, "d") == list(want)
        for layer, w in want.items():
            np.testing.assert_allclose(st.block(ck, "d", layer).test, w, rtol=1e-4, atol=1e-5, err_msg=f"{ck} {layer}")


def test_unknown_and_prefixed_timm_names(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "m.csv").write_text("file,architecture\nw.pt,timm:vit_tiny_patch16_22\n")
    with pytest.raises(InputError, match=r"line 2: architecture 'timm:vit_tiny_patch16_22': timm [\d.]+ has no model "
                                         r"called 'vit_tiny_patch16_22' \(did you mean 'vit_tiny_patch16_224'"):
        read_manifest(tmp_path / "m.csv")
    with pytest.raises(InputError, match="hf-hub:, local-dir:.*never downloads"):
        extract_checkpoints([("timm:hf-hub:timm/resnet18.a1_in1k", tmp_path / "w.pt")], tmp_path / "st", "d",
                            train=images(32)[0], test=images(32)[1])
    # A bare timm name is not a registry name; the error points at the timm: spelling.
    with pytest.raises(InputError, match=r"'resnet18' is not registered \(did you mean 'timm:resnet18'"):
        extract_checkpoints([("resnet18", tmp_path / "w.pt")], tmp_path / "st", "d",
                            train=images(32)[0], test=images(32)[1])


def test_list_layers_names_the_layout(capsys):
    from plateaulab.cli import main as cli_main

    assert cli_main(["extract", "--list-layers", "--arch", "timm:deit_tiny_distilled_patch16_224"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("# layers captured by --layers auto (token pooling: cls, 2 prefix tokens skipped by the "
                        "token mean)")
    assert lines[1:14] == [f"blocks.{i}" for i in range(12)] + ["pre_logits"]
    assert "head_dist\tIdentity" in lines
