"""Extraction of one in-memory model: layer discovery, hooks, pooling, inputs, store writes, errors."""

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from plateaulab import FeatureStore, InputError  # noqa: E402
from plateaulab.extract import DatasetInputs, discover_layers, extract, resolve_layers  # noqa: E402

_spec = importlib.util.spec_from_file_location("extract_models", Path(__file__).with_name("test_extract_models.py"))
M = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(M)

ROOT = Path(__file__).resolve().parents[1]


def split(x, y, n_train):
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def stored(st, ck, ds, layer):
    b = st.block(ck, ds, layer)
    return np.asarray(b.train), np.asarray(b.test)


# ---------------------------------------------------------------- discovery

def test_discovery_finds_blocks_stages_and_pre_logits():
    assert [l.name for l in discover_layers(M.TinyViT(depth=4))] == [f"blocks.{i}" for i in range(4)] + ["pre_logits"]
    assert [l.name for l in discover_layers(M.TinyMixer())] == ["blocks.0", "blocks.1", "pre_logits"]
    # ResNet stages, not the conv1/conv2 pairs inside a block nor the blocks inside a stage.
    assert [l.name for l in discover_layers(M.TinyResNet())] == ["layer1", "layer2", "layer3", "pre_logits"]


def test_discovery_without_blocks_or_head_asks_for_names():
    with pytest.raises(InputError, match="name the modules to capture in layers"):
        discover_layers(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.ReLU()))


def test_unknown_layer_name_is_named_with_suggestions():
    with pytest.raises(InputError, match=r"layer 'blocks\.9' does not exist in TinyViT.*blocks\.0"):
        resolve_layers(M.TinyViT(), ["blocks.0", "blocks.9"])
    with pytest.raises(InputError, match="pre_logits"):
        resolve_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), ["pre_logits"])


# ---------------------------------------------------------------- features equal a manual forward pass

@pytest.mark.parametrize("batch_size", [7, 64])
def test_vit_features_equal_manual_forward(tmp_path, batch_size):
    torch.manual_seed(0)
    model = M.TinyViT().eval()
    x, y = M.images(40), np.arange(40) % 5
    train, test = split(x, y, 25)
    rep = extract(model, tmp_path / "st", "toy", train=train, test=test, checkpoint="vit", dtype="float32",
                  batch_size=batch_size, progress=False)
    assert [p.status for p in rep.pairs] == ["extracted"]
    st = FeatureStore.open(tmp_path / "st")
    assert st.layers("vit", "toy") == ["blocks.0", "blocks.1", "blocks.2", "pre_logits"]
    want_tr, want_te = M.manual_vit(model, x[:25]), M.manual_vit(model, x[25:])
    for layer in want_tr:
        got_tr, got_te = stored(st, "vit", "toy", layer)
        np.testing.assert_allclose(got_tr, want_tr[layer], rtol=1e-5, atol=1e-5, err_msg=layer)
        np.testing.assert_allclose(got_te, want_te[layer], rtol=1e-5, atol=1e-5, err_msg=layer)
    # The class token differs across images only because attention mixed it: a real check.
    assert np.ptp(stored(st, "vit", "toy", "blocks.2")[0], axis=0).max() > 1e-3
    np.testing.assert_array_equal(st.dataset("toy").y_train, y[:25])
    meta = st.checkpoint_meta("vit")
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())
    assert meta["extraction"]["pooling"] == {"blocks.0": "cls", "blocks.1": "cls", "blocks.2": "cls",
                                             "pre_logits": "none"}


def test_vit_mean_pooling_and_fp16_default(tmp_path):
    torch.manual_seed(1)
    model = M.TinyViT().eval()
    x, y = M.images(30, seed=1), np.arange(30) % 3
    train, test = split(x, y, 20)
    extract(model, tmp_path / "st", "toy", train=train, test=test, pooling="mean", progress=False)
    st = FeatureStore.open(tmp_path / "st")
    want = M.manual_vit(model, x[:20], pooling="mean")
    for layer in ("blocks.0", "blocks.2"):
        got = st.block("vit" if False else "model", "toy", layer).train
        assert got.dtype == np.float16
        # fp16 storage: exactly the fp32 features rounded once to the nearest half.
        np.testing.assert_array_equal(np.asarray(got), want[layer].astype(np.float16))


def test_mixer_is_mean_pooled_and_resnet_stages_average_pooled(tmp_path):
    torch.manual_seed(2)
    mixer, cnn = M.TinyMixer().eval(), M.trained_like_cnn(3)
    x, y = M.images(24, seed=2), np.arange(24) % 4
    train, test = split(x, y, 16)
    st = FeatureStore.create(tmp_path / "st")
    extract(mixer, st, "toy", train=train, test=test, checkpoint="mixer", dtype="float32", progress=False)
    extract(cnn, st, "toy", train=train, test=test, checkpoint="cnn", dtype="float32", progress=False)
    for ck, want in (("mixer", M.manual_mixer(mixer, x[16:])), ("cnn", M.manual_resnet(cnn, x[16:]))):
        assert st.layers(ck, "toy") == list(want)
        for layer, w in want.items():
            np.testing.assert_allclose(stored(st, ck, "toy", layer)[1], w, rtol=1e-5, atol=1e-5, err_msg=f"{ck} {layer}")
    assert st.checkpoint_meta("cnn")["extraction"]["pooling"]["layer2"] == "gap"
    assert st.checkpoint_meta("mixer")["extraction"]["pooling"]["blocks.0"] == "mean"


def test_explicit_layers_keep_the_given_order(tmp_path):
    torch.manual_seed(0)
    model = M.TinyViT().eval()
    x, y = M.images(20), np.arange(20) % 2
    train, test = split(x, y, 12)
    extract(model, tmp_path / "st", "toy", train=train, test=test, layers=["pre_logits", "blocks.1.fc2", "blocks.0"],
            dtype="float32", progress=False)
    st = FeatureStore.open(tmp_path / "st")
    assert st.layers("model", "toy") == ["pre_logits", "blocks.1.fc2", "blocks.0"]
    with torch.no_grad():
        t = model.blocks[0](model.tokens(torch.as_tensor(x[:12])))
        h = t + model.blocks[1].attn(*(model.blocks[1].norm1(t),) * 3, need_weights=False)[0]
        fc2 = model.blocks[1].fc2(torch.nn.functional.gelu(model.blocks[1].fc1(model.blocks[1].norm2(h))))
    np.testing.assert_allclose(stored(st, "model", "toy", "blocks.1.fc2")[0], fc2[:, 0].numpy(), rtol=1e-5, atol=1e-5)


def test_masked_mean_ignores_padding(tmp_path):
    """Text batches are padded: with an attention_mask the token mean must not see the padding."""

    class TextEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 8)
            self.layer = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(2)])

        def forward(self, input_ids, attention_mask):
            h = self.embed(input_ids)
            for lin in self.layer:
                h = h + torch.tanh(lin(h))
            return h

    torch.manual_seed(0)
    model = TextEncoder().eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 6, size=12)
    ids_short = np.zeros((12, 6), np.int64)
    ids_long = np.zeros((12, 11), np.int64)  # same sentences, five more pad tokens
    mask_short, mask_long = np.zeros_like(ids_short), np.zeros_like(ids_long)
    for i, n in enumerate(lengths):
        ids_short[i, :n] = ids_long[i, :n] = rng.integers(1, 50, n)
        mask_short[i, :n] = mask_long[i, :n] = 1
    y = np.arange(12) % 2
    st = FeatureStore.create(tmp_path / "st")
    for ck, ids, mask in (("short", ids_short, mask_short), ("long", ids_long, mask_long)):
        inputs = {"input_ids": ids, "attention_mask": mask}
        extract(model, st, "txt", train=({k: v[:8] for k, v in inputs.items()}, y[:8]),
                test=({k: v[8:] for k, v in inputs.items()}, y[8:]), checkpoint=ck, dtype="float32", progress=False)
    assert st.layers("short", "txt") == ["layer.0", "layer.1"]
    assert st.checkpoint_meta("short")["extraction"]["pooling"]["layer.1"] == "mean_masked"
    for layer in ("layer.0", "layer.1"):
        np.testing.assert_allclose(stored(st, "short", "txt", layer)[0], stored(st, "long", "txt", layer)[0],
                                   rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- input forms

class PairDataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


def test_dataset_dataloader_and_npz_inputs_agree(tmp_path):
    model = M.trained_like_cnn(0)
    x, y = M.images(30, seed=4), np.arange(30) % 3
    st = FeatureStore.create(tmp_path / "st")
    extract(model, st, "a", train=(x[:20], y[:20]), test=(x[20:], y[20:]), checkpoint="arrays", progress=False)
    extract(model, st, "b", train=PairDataset(x[:20], y[:20]), checkpoint="dataset", progress=False,
            test=torch.utils.data.DataLoader(PairDataset(x[20:], y[20:]), batch_size=4))
    np.savez(tmp_path / "tr.npz", x=x[:20], y=y[:20])
    np.savez(tmp_path / "te.npz", x=x[20:], y=y[20:])
    extract(model, st, "c", train=tmp_path / "tr.npz", test=str(tmp_path / "te.npz"), checkpoint="npz", progress=False)
    ref = stored(st, "arrays", "a", "layer3")
    for ck, ds in (("dataset", "b"), ("npz", "c")):
        for got, want in zip(stored(st, ck, ds, "layer3"), ref):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(st.dataset(ds).y_test, y[20:])


def test_shuffled_dataloader_is_refused(tmp_path):
    x, y = M.images(8), np.arange(8) % 2
    loader = torch.utils.data.DataLoader(PairDataset(x, y), batch_size=4, shuffle=True)
    with pytest.raises(InputError, match="shuffle=False"):
        extract(M.TinyResNet(), tmp_path / "st", "d", train=loader, test=(x, y), progress=False)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split_name, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / split_name / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(d / f"{i}.png")
    model = M.trained_like_cnn(1)
    extract(model, tmp_path / "st", "pets", train=tmp_path / "train", test=tmp_path / "test", image_size=16,
            resize=18, num_workers=0, dtype="float32", progress=False)
    st = FeatureStore.open(tmp_path / "st")
    ds = st.dataset("pets")
    assert ds.class_names == ["cat", "dog"] and list(ds.y_train) == [0, 0, 0, 1, 1, 1]
    # Manual preprocessing of one test image: shorter side to 18, centre crop 16, [-1, 1].
    img = Image.open(tmp_path / "test" / "dog" / "1.png").convert("RGB").resize((25, 18), Image.BILINEAR)
    arr = np.asarray(img.crop((4, 1, 20, 17)), np.float32) / 255.0
    arr = ((arr - 0.5) / 0.5).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(st.block("model", "pets", "pre_logits").test[3], M.manual_resnet(model, arr)["pre_logits"][0],
                               rtol=1e-5, atol=1e-5)
    # Splits whose class folders differ cannot share one label space.
    (tmp_path / "test" / "dog").rename(tmp_path / "test" / "fox")
    with pytest.raises(InputError, match="same class sub-folders"):
        extract(model, tmp_path / "st2", "pets", train=tmp_path / "train", test=tmp_path / "test", progress=False)


# ---------------------------------------------------------------- bad inputs and resumption

def test_mismatched_labels(tmp_path):
    x, y = M.images(10), np.arange(10) % 2
    with pytest.raises(InputError, match="10 examples but 9 labels"):
        extract(M.TinyResNet(), tmp_path / "st", "d", train=(x, y[:9]), test=(x, y), progress=False)
    extract(M.TinyResNet(), tmp_path / "st", "d", train=(x, y), test=(x, y), checkpoint="a", progress=False)
    # Same dataset name, different order of examples: the stored labels no longer describe them.
    with pytest.raises(InputError, match=r"dataset 'd': the train labels differ .*first difference at row 0"):
        extract(M.TinyResNet(), tmp_path / "st", "d", train=(x, y[::-1]), test=(x, y), checkpoint="b",
                progress=False)
    with pytest.raises(InputError, match="integer class ids"):
        extract(M.TinyResNet(), tmp_path / "st", "e", train=(x, y + 0.5), test=(x, y), progress=False)


def test_fp16_overflow_names_the_layer(tmp_path):
    model = M.TinyResNet().eval()
    with torch.no_grad():
        model.fc.weight.zero_()
    x = M.images(6) * 1e6  # stage activations beyond the float16 range
    with pytest.raises(InputError, match=r"layer 'layer1'.*float16 range.*float32"):
        extract(model, tmp_path / "st", "d", train=(x, np.arange(6) % 2), test=(x, np.arange(6) % 2), progress=False)


def test_done_pair_is_skipped_and_overwrite_redoes_it(tmp_path):
    model = M.trained_like_cnn(0)
    x, y = M.images(12), np.arange(12) % 2
    kw = dict(train=(x[:8], y[:8]), test=(x[8:], y[8:]), progress=False)
    assert extract(model, tmp_path / "st", "d", **kw).pairs[0].status == "extracted"
    f = tmp_path / "st" / "checkpoints" / "model" / "features" / "d" / "layer2" / "block.json"
    before = f.stat().st_mtime_ns
    assert extract(model, tmp_path / "st", "d", **kw).pairs[0].status == "skipped"
    assert f.stat().st_mtime_ns == before
    assert extract(model, tmp_path / "st", "d", overwrite=True, **kw).pairs[0].status == "extracted"
    # Several datasets in one call: each (checkpoint, dataset) pair is its own unit of work.
    rep = extract(model, tmp_path / "st", datasets={"d": DatasetInputs(**{k: kw[k] for k in ("train", "test")}),
                                                    "d2": DatasetInputs((x, y), (x[:4], y[:4]))}, progress=False)
    assert [(p.dataset, p.status) for p in rep.pairs] == [("d", "skipped"), ("d2", "extracted")]


def test_bad_options():
    x, y = M.images(4), np.arange(4) % 2
    with pytest.raises(InputError, match="dtype"):
        extract(M.TinyResNet(), "/nonexistent/never", "d", train=(x, y), test=(x, y), dtype="float64")
    with pytest.raises(InputError, match="pooling"):
        extract(M.TinyResNet(), "/nonexistent/never", "d", train=(x, y), test=(x, y), pooling="max")
    with pytest.raises(InputError, match="nn.Module"):
        extract(lambda v: v, "/nonexistent/never", "d", train=(x, y), test=(x, y))


def test_import_plateaulab_does_not_import_torch():
    # Without an editable install's import redirector, so that this checkout's modules are the ones imported.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]; "
            "import plateaulab, plateaulab.extract, plateaulab.cli.extract, plateaulab.extract.engine; "
            "assert plateaulab.extract.extract; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    env = {"PYTHONPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_out_of_memory_halves_the_batch_and_rewrites_the_rows(tmp_path):
    """A batch that runs out of device memory is split and re-run; features stay exact."""

    class Picky(M.TinyResNet):
        def forward(self, x):
            # Fail like the CUDA caching allocator does, after some layers' hooks have already fired.
            h = self.layer1(torch.relu(self.bn1(self.conv1(x))))
            if x.shape[0] > 5:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.fc(self.layer3(self.layer2(h)).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Picky().eval()
    x, y = M.images(30, seed=3), np.arange(30) % 3
    rep = extract(model, tmp_path / "st", "d", train=(x[:22], y[:22]), test=(x[22:], y[22:]), batch_size=16,
                  dtype="float32", progress=False)
    assert rep.pairs[0].batch_size == 4  # 16 -> 8 -> 4
    st = FeatureStore.open(tmp_path / "st")
    want = M.manual_resnet(model, x[:22])
    for layer in ("layer1", "layer3", "pre_logits"):
        np.testing.assert_allclose(st.block("model", "d", layer).train, want[layer], rtol=1e-5, atol=1e-5)


def test_pooling_callable_and_per_layer_modes(tmp_path):
    torch.manual_seed(0)
    model = M.TinyViT().eval()
    x, y = M.images(14), np.arange(14) % 2

    def last_token(t):
        return t[:, -1]

    extract(model, tmp_path / "st", "d", train=(x[:10], y[:10]), test=(x[10:], y[10:]), dtype="float32",
            pooling={"blocks.0": last_token, "blocks.1": "mean", "*": "cls"}, progress=False)
    st = FeatureStore.open(tmp_path / "st")
    with torch.no_grad():
        t0 = model.blocks[0](model.tokens(torch.as_tensor(x[:10])))
        t1 = model.blocks[1](t0)
        t2 = model.blocks[2](t1)
    # The token mean skips the class token, as timm's average pooling skips its prefix tokens.
    for layer, want in (("blocks.0", t0[:, -1]), ("blocks.1", t1[:, 1:].mean(dim=1)), ("blocks.2", t2[:, 0])):
        np.testing.assert_allclose(st.block("model", "d", layer).train, want.numpy(), rtol=1e-5, atol=1e-5)
    assert st.checkpoint_meta("model")["extraction"]["pooling"] == {
        "blocks.0": "last_token", "blocks.1": "mean[1:]", "blocks.2": "cls", "pre_logits": "none"}


def test_token_pooling_follows_the_model():
    from plateaulab.extract.layers import default_token_pooling

    vit = M.TinyViT()
    assert default_token_pooling(vit) == "cls"
    vit.global_pool = "avg"  # a timm ViT trained with average pooling
    assert default_token_pooling(vit) == "mean"
    assert default_token_pooling(M.TinyMixer()) == "mean"


def test_dataset_with_non_integer_labels(tmp_path):
    class Named(PairDataset):
        def __getitem__(self, i):
            return torch.from_numpy(self.x[i]), "cat"

    x = M.images(6)
    with pytest.raises(InputError, match="integer class ids"):
        extract(M.TinyResNet(), tmp_path / "st", "d", train=Named(x, np.zeros(6)), test=(x, np.arange(6) % 2),
                progress=False)


def test_hugging_face_vision_models_match_their_hidden_states(tmp_path):
    """HF models report every layer's output (output_hidden_states): the hooks must capture the same."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=16,
        patch_size=4, num_labels=4)).eval()
    resnet = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_labels=3)).eval()
    x, y = M.images(12, seed=6), np.arange(12) % 3
    st = FeatureStore.create(tmp_path / "st")
    for ck, model in (("vit", vit), ("resnet", resnet)):
        extract(model, st, "d", train=(x[:8], y[:8]), test=(x[8:], y[8:]), checkpoint=ck, dtype="float32",
                progress=False)
        with torch.no_grad():
            out = model(torch.as_tensor(x[:8]), output_hidden_states=True)
        layers = st.layers(ck, "d")
        assert layers[-1] == "pre_logits" and len(layers) == 1 + (3 if ck == "vit" else 4)
        for i, layer in enumerate(layers[:-1]):
            h = out.hidden_states[i + 1]  # hidden_states[0] is the embedding / stem output
            want = h[:, 0] if ck == "vit" else h.mean(dim=(2, 3))
            np.testing.assert_allclose(st.block(ck, "d", layer).train, want.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{ck} {layer}")
    assert st.checkpoint_meta("vit")["extraction"]["pooling"][st.layers("vit", "d")[0]] == "cls"
    with torch.no_grad():
        pooled = resnet.resnet(torch.as_tensor(x[:8])).pooler_output.flatten(1)
    np.testing.assert_allclose(st.block("resnet", "d", "pre_logits").train, pooled.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_mixed_precision_matches_cpu(tmp_path):
    """On a GPU the pass runs under autocast (bf16/fp16); features must stay close to the fp32 CPU ones."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    x, y = M.images(64, seed=7), np.arange(64) % 4
    st = FeatureStore.create(tmp_path / "st")
    model = M.TinyViT(d=32).eval()
    for ck, device in (("cpu", "cpu"), ("gpu", "cuda")):
        # extract() moves the model to its device: give each run its own copy of the same weights.
        rep = extract(copy.deepcopy(model), st, "d", train=(x[:48], y[:48]), test=(x[48:], y[48:]), checkpoint=ck, device=device,
                      dtype="float32", progress=False)
        assert rep.pairs[0].status == "extracted"
    for layer in st.layers("cpu", "d"):
        a, b = np.asarray(st.block("cpu", "d", layer).train), np.asarray(st.block("gpu", "d", layer).train)
        # bf16 keeps 8 mantissa bits: a few 1e-2 relative error through three blocks.
        assert np.linalg.norm(a - b) <= 5e-2 * np.linalg.norm(a), layer


def test_layout_counts_prefix_tokens_and_the_mean_skips_them():
    """Without timm's num_prefix_tokens, class/distillation/register parameters are counted."""
    from plateaulab.extract import model_layout
    from plateaulab.extract.layers import pool

    vit = M.TinyViT()
    assert (model_layout(vit).prefix_tokens, model_layout(vit).has_class_token) == (1, True)
    vit.dist_token = torch.nn.Parameter(torch.zeros(1, 1, 16))
    vit.register_tokens = torch.nn.Parameter(torch.zeros(1, 4, 16))  # Hugging Face DINOv2-with-registers name
    layout = model_layout(vit)
    assert layout.prefix_tokens == 6 and layout.token_pooling == "cls"
    x = torch.randn(3, 10, 16)
    got, how = pool(x, "mean", layout, layer="blocks.0")
    assert how == "mean[6:]"
    torch.testing.assert_close(got, x[:, 6:].mean(dim=1))
    with pytest.raises(InputError, match="no token is left to average"):
        pool(x[:, :6], "mean", layout, layer="blocks.0")
    vit.num_prefix_tokens, vit.pool_include_prefix = 6, True  # timm: average every token
    assert model_layout(vit).prefix_tokens == 0
    assert model_layout(M.TinyMixer()).prefix_tokens == 0 and model_layout(M.TinyMixer()).has_class_token is None


def test_nhwc_feature_maps_are_pooled_over_height_and_width(tmp_path):
    """A model that says output_fmt = 'NHWC' (timm Swin) has its 4-D stage outputs averaged over H, W."""

    class Stage(torch.nn.Module):  # wraps an NCHW stage so that it takes and returns NHWC
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    torch.manual_seed(0)
    model = M.TinyResNet().eval()
    for i in range(1, 4):
        setattr(model, f"layer{i}", Stage(getattr(model, f"layer{i}")))
    model.output_fmt = "NHWC"

    def forward(x):
        h = torch.relu(model.bn1(model.conv1(x))).permute(0, 2, 3, 1)
        for s in model.stages():
            h = s(h)
        return model.fc(h.mean(dim=(1, 2)))

    model.forward = forward
    x, y = M.images(10, seed=2), np.arange(10) % 2
    extract(model, tmp_path / "st", "d", train=(x, y), test=(x, y), dtype="float32", progress=False)
    st = FeatureStore.open(tmp_path / "st")
    with torch.no_grad():
        h = torch.relu(model.bn1(model.conv1(torch.as_tensor(x)))).permute(0, 2, 3, 1)
        for i, s in enumerate(model.stages()):
            h = s(h)
            want = h.mean(dim=(1, 2)).numpy()
            got = np.asarray(st.block("model", "d", f"layer{i + 1}").test)
            assert got.shape == (10, h.shape[-1])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert st.checkpoint_meta("model")["extraction"]["pooling"]["layer2"] == "gap"


def test_torchvision_swin_stages_are_pooled_channels_last(tmp_path):
    """torchvision's Swin has NHWC ``features.*`` stages and no ``output_fmt``; averaged as NCHW they
    gave (N, H) vectors (56 numbers per image for features.0) without a word. They are known NHWC."""
    torchvision = pytest.importorskip("torchvision")
    from plateaulab.extract import model_layout

    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None).eval()
    assert model_layout(model).map_format == "NHWC"
    seen = {}
    for name in ("features.1", "features.7"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
    x, y = M.images(4, seed=3, size=224), np.arange(4) % 2
    extract(model, tmp_path / "st", "d", train=(x, y), test=(x, y), layers=["features.1", "features.7"],
            dtype="float32", progress=False)
    st = FeatureStore.open(tmp_path / "st")
    for name, dim in (("features.1", 96), ("features.7", 768)):
        got = np.asarray(st.block("model", "d", name).test)
        want = seen[name].mean(dim=(1, 2)).numpy()
        assert got.shape == (4, dim)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,fmt,ok", [((2, 56, 56, 96), "NCHW", False), ((2, 96, 56, 56), "NHWC", False),
                                          ((2, 96, 56, 56), "NCHW", True), ((2, 56, 56, 96), "NHWC", True),
                                          ((2, 96, 28, 56), "NHWC", True), ((2, 7, 7, 7), "NCHW", True)])
def test_a_feature_map_that_contradicts_its_order_is_refused(shape, fmt, ok):
    from plateaulab.extract.layers import Layout, pool

    x = torch.zeros(shape)
    if ok:
        got, how = pool(x, "auto", Layout(map_format=fmt), layer="stage")
        assert how == "gap" and got.shape == (2, shape[3] if fmt == "NHWC" else shape[1])
    else:
        with pytest.raises(InputError, match=r"layer 'stage' outputs a feature map of shape .* looks"):
            pool(x, "auto", Layout(map_format=fmt), layer="stage")


def test_nchw_map_with_channels_equal_to_height_passes_for_non_square_images(tmp_path):
    """(N, 64, 64, 32) from 128 x 64 images is an NCHW map whose channel count equals its height; it
    was refused as 'looks NHWC'. Non-square inputs give no square-axes evidence, so it is pooled."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = torch.nn.Conv2d(3, 64, 3, stride=2, padding=1)
            self.layer2 = torch.nn.Conv2d(64, 64, 3, padding=1)
            self.fc = torch.nn.Linear(64, 2)

        def forward(self, x):
            return self.fc(self.layer2(torch.relu(self.layer1(x))).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    x = np.random.default_rng(0).normal(size=(4, 3, 128, 64)).astype(np.float32)
    y = np.arange(4) % 2
    extract(model, tmp_path / "st", "d", train=(x, y), test=(x, y), dtype="float32", progress=False)
    st = FeatureStore.open(tmp_path / "st")
    with torch.no_grad():
        h = model.layer1(torch.as_tensor(x))
    assert tuple(h.shape) == (4, 64, 64, 32)
    np.testing.assert_allclose(stored(st, "model", "d", "layer1")[1], h.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-5)
    assert st.checkpoint_meta("model")["extraction"]["pooling"]["layer1"] == "gap"
    # With square images the same contradiction is still refused.
    from plateaulab.extract.layers import Layout, pool

    with pytest.raises(InputError, match=r"layer 'layer1' outputs a feature map of shape \(4, 64, 64, 32\), which looks "
                                         r"NHWC"):
        pool(h, "auto", Layout(), layer="layer1", image_hw=(64, 64))
    assert pool(h, "auto", Layout(), layer="layer1", image_hw=(128, 64))[1] == "gap"


def test_token_outputs_with_exactly_the_patch_tokens_have_no_prefix():
    """Layout.num_patches: a token output with that many tokens carries none of the prefix tokens."""
    from plateaulab.extract.layers import Layout, pool

    layout = Layout(token_pooling="cls", prefix_tokens=1, has_class_token=True, num_patches=4)
    x = torch.randn(2, 4, 8)
    got, how = pool(x, "auto", layout, layer="blocks.0")
    assert how == "mean"
    torch.testing.assert_close(got, x.mean(dim=1))
    assert pool(x, "mean", layout, layer="blocks.0")[1] == "mean"
    with pytest.raises(InputError, match=r"layer 'blocks\.0' outputs 4 tokens, the model's 4 patch tokens and no class"):
        pool(x, "cls", layout, layer="blocks.0")
    # One prefix token plus the patches: pooled as before; the pass's own patch count wins over the layout's.
    x5 = torch.randn(2, 5, 8)
    assert pool(x5, "auto", layout, layer="blocks.0")[1] == "cls"
    assert pool(x5, "mean", layout, layer="blocks.0")[1] == "mean[1:]"
    assert pool(x5, "auto", layout, layer="blocks.0", patches=5)[1] == "mean"
    assert pool(x, "auto", layout, layer="blocks.0", patches=3)[1] == "cls"


def test_pairs_of_one_worker_process_run_one_at_a_time(tmp_path, monkeypatch):
    """_pair_task's lock is process-wide: two datasets' pairs in two threads of one worker do not overlap."""
    import threading
    import time

    import plateaulab.extract as ex

    FeatureStore.create(tmp_path / "st")
    active, most = [0], [0]
    guard = threading.Lock()

    class Fake:
        def __init__(self, run, metadata):
            pass

        def extract(self, spec):
            with guard:
                active[0] += 1
                most[0] = max(most[0], active[0])
            time.sleep(0.2)
            with guard:
                active[0] -= 1
            return []

    monkeypatch.setattr(ex, "_Checkpoints", Fake)
    monkeypatch.setattr(ex, "_Run", lambda st, inputs, opt: None)
    monkeypatch.setattr(ex, "_EXTRACTORS", {})
    job = {"token": "t", "store": str(tmp_path / "st"), "opt": None, "metadata": None}
    out = []
    threads = [threading.Thread(target=lambda d=d: out.append(ex._pair_task(job, None, d, None))) for d in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [{"pairs": [], "error": None}] * 2
    assert most[0] == 1
