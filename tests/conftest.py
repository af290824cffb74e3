"""Shared fixtures: small generated feature stores with real class structure."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from plateaulab import FeatureStore

import plateaulab

# The published accuracy tables the tests read are the ones shipped inside the package (open_clip,
# CLIP_benchmark, model-soups, scaling-laws-openclip; sources, commits and licences in
# python/plateaulab/data/PROVENANCE.md), so a clone with nothing beside it runs every test.
DATA = Path(plateaulab.__file__).resolve().parent / "data"

# CI draws the same hypothesis examples on every run, so a red CI is reproducible; locally the
# examples vary from run to run and keep searching.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def make_store(path, *, n_checkpoints=2, n_layers=2, datasets=None, dim=16, dtype=np.float16, seed=0,
               with_val=False):
    """A store whose checkpoints' features separate the classes to different degrees.

    datasets: {name: (num_classes, n_train_per_class, n_test)}.
    """
    datasets = datasets or {"toy": (5, 12, 300)}
    rng = np.random.default_rng(seed)
    st = FeatureStore.create(path)
    for name, (C, per_class, n_test) in datasets.items():
        y_train = np.repeat(np.arange(C), per_class)
        rng.shuffle(y_train)
        y_test = rng.integers(0, C, n_test)
        y_val = rng.integers(0, C, max(C * 4, 40)) if with_val else None
        st.add_dataset(name, y_train, y_test, num_classes=C, y_val=y_val)
        for k in range(n_checkpoints):
            ck = f"ckpt-{k:02d}"
            st.set_checkpoint_meta(ck, upstream_accuracy=0.5 + 0.1 * k, arch="toy", params=1000 * (k + 1))
            for layer in range(n_layers):
                sep = 0.4 + 0.5 * k + 0.3 * layer
                means = rng.normal(size=(C, dim)) * sep
                d = dim + 4 * layer  # layers of one checkpoint may differ in width
                means = np.pad(means, ((0, 0), (0, d - dim)))

                def feats(y):
                    return (means[y] + rng.normal(size=(len(y), d)) + 2.0).astype(dtype)

                st.add_features(ck, name, f"block{layer}", train=feats(y_train), test=feats(y_test),
                                val=None if y_val is None else feats(y_val), layer_index=layer)
    return st


@pytest.fixture
def small_store(tmp_path):
    return make_store(tmp_path / "store")


class ProbeCrash(Exception):
    """Raised by :func:`crash_after` inside probe_store, as a crash would stop it."""


@contextlib.contextmanager
def crash_after(monkeypatch, n_blocks):
    """Interrupt probe_store after its n-th block (through the run loop's per-block seam), as a crash would."""
    from plateaulab import run as loop

    def after(b, done):
        if done >= n_blocks:
            raise ProbeCrash(b)

    with monkeypatch.context() as m:
        m.setattr(loop, "_after_block", after)
        with pytest.raises(ProbeCrash):
            yield
