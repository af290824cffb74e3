"""Feature store round trips, atomicity and validation."""

import json

import numpy as np
import pytest

from plateaulab import FeatureStore
from plateaulab.errors import StoreError

from conftest import make_store


def test_round_trip(tmp_path):
    st = FeatureStore.create(tmp_path / "s")
    y_tr, y_te, y_va = np.array([0, 1, 2, 1]), np.array([2, 0]), np.array([1, 1, 0])
    st.add_dataset("cifar/100", y_tr, y_te, num_classes=3, y_val=y_va, class_names=["a", "b", "c"])
    tr = np.arange(8, dtype=np.float16).reshape(4, 2)
    te = np.ones((2, 2), np.float16)
    va = np.zeros((3, 2), np.float16)
    st.add_features("ViT-B-32/laion2b", "cifar/100", "blocks.11", train=tr, test=te, val=va)
    st.add_features("ViT-B-32/laion2b", "cifar/100", "pre_logits", train=np.ones((4, 5), np.float32),
                    test=np.ones((2, 5), np.float32))
    st.set_checkpoint_meta("ViT-B-32/laion2b", arch="vit", upstream_accuracy=0.7)
    st.set_checkpoint_meta("ViT-B-32/laion2b", params=88_000_000)

    st2 = FeatureStore.open(tmp_path / "s")
    assert st2.checkpoints() == ["ViT-B-32/laion2b"]
    assert st2.datasets() == ["cifar/100"]
    assert st2.layers("ViT-B-32/laion2b", "cifar/100") == ["blocks.11", "pre_logits"]
    assert st2.checkpoint_meta("ViT-B-32/laion2b") == {"arch": "vit", "upstream_accuracy": 0.7, "params": 88_000_000}
    ds = st2.dataset("cifar/100")
    assert ds.num_classes == 3 and ds.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.y_val, y_va)
    b = st2.block("ViT-B-32/laion2b", "cifar/100", "blocks.11")
    assert isinstance(b.train, np.memmap) and b.train.dtype == np.float16
    np.testing.assert_array_equal(b.train, tr)
    np.testing.assert_array_equal(b.val, va)
    wide = st2.block("ViT-B-32/laion2b", "cifar/100", "pre_logits")
    assert wide.dim == 5 and wide.layer_index == 1 and wide.val is None
    assert list(st2.iter_blocks()) == [("ViT-B-32/laion2b", "cifar/100", "blocks.11"),
                                       ("ViT-B-32/laion2b", "cifar/100", "pre_logits")]
    assert st2.check(deep=True) == []


def test_float64_is_stored_as_float32(tmp_path):
    st = FeatureStore.create(tmp_path / "s")
    st.add_dataset("d", [0, 1], [1, 0])
    b = st.add_features("c", "d", "l", train=np.eye(2), test=np.eye(2))
    assert b.train.dtype == np.float32


@pytest.mark.parametrize("bad,match", [
    (dict(train=np.full((4, 2), np.nan, np.float32)), "NaN/Inf"),
    (dict(train=np.ones((3, 2), np.float32)), "3 rows but dataset 'd' has 4 train labels"),
    (dict(test=np.ones((2, 3), np.float32)), "3 wide but train features are 2 wide"),
    (dict(train=np.ones((4, 2), np.int32)), "float16 or float32"),
])
def test_add_features_refuses_bad_arrays(tmp_path, bad, match):
    st = FeatureStore.create(tmp_path / "s")
    st.add_dataset("d", [0, 1, 0, 1], [1, 0])
    arrays = dict(train=np.ones((4, 2), np.float32), test=np.ones((2, 2), np.float32))
    arrays.update(bad)
    with pytest.raises(StoreError, match=match) as err:
        st.add_features("ck", "d", "l0", **arrays)
    assert "checkpoint 'ck', dataset 'd', layer 'l0'" in str(err.value)
    assert not st.has_block("ck", "d", "l0")


@pytest.mark.parametrize("labels,match", [
    ([0, 1, 5], "has label 5 but num_classes is 3"),
    ([0, -1, 1], "negative label"),
    ([[0, 1]], "must be 1-D"),
    ([0.5, 1.0], "integer class ids"),
])
def test_add_dataset_refuses_bad_labels(tmp_path, labels, match):
    st = FeatureStore.create(tmp_path / "s")
    with pytest.raises(StoreError, match=match):
        st.add_dataset("d", labels, [0, 1], num_classes=3)


def test_unknown_names_are_listed(tmp_path):
    st = make_store(tmp_path / "s", n_checkpoints=1, n_layers=1)
    with pytest.raises(StoreError, match=r"unknown dataset 'nope'.*known: toy"):
        st.dataset("nope")
    with pytest.raises(StoreError, match="unknown checkpoint 'nope'"):
        st.layers("nope", "toy")
    with pytest.raises(StoreError, match=r"no such block.*layers stored for this pair: block0"):
        st.block("ckpt-00", "toy", "block9")


def test_incomplete_block_is_invisible_and_reported(tmp_path):
    st = make_store(tmp_path / "s", n_checkpoints=1, n_layers=2)
    bdir = st._block_dir("ckpt-00", "toy", "block1")
    (bdir / "block.json").unlink()  # what a crash between the arrays and the marker leaves
    assert st.layers("ckpt-00", "toy") == ["block0"]
    with pytest.raises(StoreError, match="incomplete"):
        st.block("ckpt-00", "toy", "block1")
    problems = [str(p) for p in st.check()]
    assert any("layer 'block1'" in p and "incomplete" in p for p in problems)


def test_check_finds_truncated_corrupt_and_nonfinite_arrays(tmp_path):
    st = make_store(tmp_path / "s", n_checkpoints=2, n_layers=2)
    # Truncate one file, flip bytes in another, write NaN into a third behind the store's back.
    f1 = st._block_dir("ckpt-00", "toy", "block0") / "test.npy"
    f1.write_bytes(f1.read_bytes()[:-100])
    f2 = st._block_dir("ckpt-01", "toy", "block0") / "train.npy"
    raw = bytearray(f2.read_bytes())
    raw[-10:] = b"\x00" * 10
    f2.write_bytes(bytes(raw))
    f3 = st._block_dir("ckpt-01", "toy", "block1") / "test.npy"
    a = np.load(f3)
    a[3, 1] = np.nan
    np.save(f3, a)
    shallow = [str(p) for p in st.check()]
    assert any("ckpt-00" in p and "truncated or corrupt" in p for p in shallow)
    deep = [str(p) for p in st.check(deep=True)]
    assert any("'ckpt-01'" in p and "'block0'" in p and "fails its xxh3_64 check" in p for p in deep)
    assert any("'ckpt-01'" in p and "'block1'" in p for p in deep)
    assert len(deep) == 3


def test_rows_that_disagree_with_labels_are_reported(tmp_path):
    st = make_store(tmp_path / "s", n_checkpoints=1, n_layers=1)
    d = st._dataset_dir("toy")
    y = np.load(d / "y_test.npy")
    np.save(d / "y_test.npy", y[:-5])
    info = json.loads((d / "dataset.json").read_text())
    info["n_test"] -= 5
    (d / "dataset.json").write_text(json.dumps(info))
    problems = [str(p) for p in st.check()]
    assert any("test features have 300 rows but dataset 'toy' has 295 test labels" in p for p in problems)


def test_create_refuses_existing_store_and_open_refuses_non_store(tmp_path):
    FeatureStore.create(tmp_path / "s")
    with pytest.raises(StoreError, match="already holds a feature store"):
        FeatureStore.create(tmp_path / "s")
    assert FeatureStore.create(tmp_path / "s", exist_ok=True).path == tmp_path / "s"
    (tmp_path / "x").mkdir()
    with pytest.raises(StoreError, match="store.json"):
        FeatureStore.open(tmp_path / "x")
    with pytest.raises(StoreError, match="does not exist"):
        FeatureStore.open(tmp_path / "nothing")


def test_empty_store_check(tmp_path):
    st = FeatureStore.create(tmp_path / "s")
    msgs = [str(p) for p in st.check()]
    assert any("no datasets" in m for m in msgs) and any("no checkpoints" in m for m in msgs)
