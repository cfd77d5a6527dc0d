"""Image + table data: the TIP/DVM layout reader, mfeat-image-table, value-level missingness,
and the table imputers on partly and wholly missing tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dymo.data.image_table import (
    ImageTableConfig,
    build_mfeat_image_table,
    pix_to_images,
    read_image_table,
)
from dymo.data.mfeat import MFeatConfig, build_mfeat, mfeat_dir, read_view
from dymo.data.registry import build_dataset, load_or_build
from dymo.data.scenarios import apply_value_missing, parse_scenario, parse_value_missing
from dymo.errors import ConfigError, DataError, ScenarioError
from dymo.recovery import get_recoverer

LENGTHS = [1, 1, 3, 1]  # the third field is categorical with 3 codes
SIZES = {"train": 10, "val": 4, "test": 5}
NAMES = {
    "tabular": "dvm_features_{}_noOH_all_views_physical_jittered_50_reordered.csv",
    "labels": "labels_model_all_{}_all_views.pt",
    "images": "{}_paths_all_views.pt",
}


def write_tip(root: Path, header: bool = False) -> dict:
    """DVM-named files; image paths are absolute paths of another machine, the images sit in
    ``root/images`` (PNG, or TIP's .npy copies for the test split)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    truth = {}
    for split, n in SIZES.items():
        table = np.column_stack([
            rng.normal(5, 2, n), rng.normal(-1, 0.5, n), rng.integers(0, 3, n), rng.normal(0, 1, n)
        ])
        labels = rng.integers(0, 4, n)
        paths = []
        for i in range(n):
            pixel = np.full((20, 24, 3), (10 * i, 7 * SIZES[split], 100), dtype=np.uint8)
            name = f"{split}_{i}.jpg"
            if split == "test":
                np.save(root / "images" / f"{split}_{i}.npy", pixel)  # TIP's augmentation_speedup copy
            else:
                Image.fromarray(pixel).save(root / "images" / name, format="PNG")
            paths.append(f"/bigdata/siyi/data/DVM/images/{name}")
        rows = [",".join(repr(float(v)) for v in r) for r in table]
        if header:
            rows = ["width,height,colour,price"] + rows
        (root / NAMES["tabular"].format(split)).write_text("\n".join(rows) + "\n")
        torch.save(labels.tolist(), root / NAMES["labels"].format(split))
        torch.save(paths, root / NAMES["images"].format(split))
        truth[split] = (table, labels)
    torch.save(LENGTHS, root / "tabular_lengths_all_views_physical_reordered.pt")
    return truth


@pytest.fixture
def tip(tmp_path: Path):
    root = tmp_path / "DVM"
    return root, write_tip(root)


def test_tip_layout(tip):
    root, truth = tip
    ds = read_image_table(ImageTableConfig(source=str(root), image_root=str(root / "images"), image_size=8))
    assert ds.modalities == ("img", "tabular")
    assert ds.specs[0].shape == (3, 8, 8) and ds.specs[1].shape == (4,)
    assert ds.specs[1].extra["field_lengths"] == LENGTHS
    assert ds.num_classes == 4
    train_table, train_labels = truth["train"]
    tr = ds["train"]
    assert np.array_equal(tr.labels, train_labels)
    # continuous columns standardised with training statistics; the categorical codes kept
    x = np.asarray(tr.arrays["tabular"], dtype=np.float64)
    np.testing.assert_allclose(x[:, [0, 1, 3]].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(x[:, [0, 1, 3]].std(0), 1, atol=1e-5)
    assert np.array_equal(x[:, 2], train_table[:, 2])
    mean, std = np.array(ds.specs[1].extra["mean"]), np.array(ds.specs[1].extra["std"])
    test_table = truth["test"][0]
    np.testing.assert_allclose(ds["test"].arrays["tabular"], (test_table - mean) / std, rtol=1e-5, atol=1e-5)
    # images: resized, row i has red = 10 i (PNG files and .npy copies alike)
    for split in ("train", "test"):
        img = ds[split].arrays["img"]
        assert img.shape == (SIZES[split], 8, 8, 3) and img.dtype == np.uint8
        assert np.array_equal(img[:, 4, 4, 0], 10 * np.arange(SIZES[split]))
    ds["val"].batch([0, 1]).validate(ds.specs, ds.num_classes)


def test_tip_header_caps_and_tensor_images(tmp_path: Path):
    root = tmp_path / "t"
    write_tip(root, header=True)
    images = torch.rand(SIZES["val"], 3, 6, 6)
    torch.save(images, root / "val_images.pt")
    ds = read_image_table(ImageTableConfig(
        source=str(root), image_root=str(root / "images"), image_size=6, val_images="val_images.pt",
        field_lengths="", standardize=False, n_train=3,
    ))
    assert ds.specs[1].extra["columns"] == ["width", "height", "colour", "price"]
    assert ds.specs[1].extra["field_lengths"] == [1, 1, 1, 1]
    assert len(ds["train"]) == 3
    np.testing.assert_allclose(ds["val"].arrays["img"] / 255.0, images.permute(0, 2, 3, 1).numpy(), atol=1 / 255)


def test_tip_errors_name_sample_and_file(tip):
    root, truth = tip
    cfg = {"source": str(root), "image_root": str(root / "images"), "image_size": 8}
    with pytest.raises(ConfigError, match="source"):
        read_image_table(ImageTableConfig())
    (root / "images" / "train_3.jpg").unlink()
    with pytest.raises(DataError, match=r"sample 3 not found: '/bigdata/siyi/data/DVM/images/train_3.jpg'"):
        read_image_table(ImageTableConfig(**cfg))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "train_3.jpg", format="PNG")
    torch.save(truth["train"][1].tolist()[:-1], root / NAMES["labels"].format("train"))
    with pytest.raises(DataError, match="they must match"):
        read_image_table(ImageTableConfig(**cfg))
    torch.save(truth["train"][1].tolist(), root / NAMES["labels"].format("train"))
    table = truth["val"][0].copy()
    table[2, 2] = 5  # not a code of a 3-code field
    (root / NAMES["tabular"].format("val")).write_text("\n".join(",".join(f"{v:g}" for v in r) for r in table) + "\n")
    with pytest.raises(DataError, match=r"\(val\): row 2, categorical column 2 holds 5"):
        read_image_table(ImageTableConfig(**cfg))


def test_tip_registry(tip, tmp_path: Path):
    root, _ = tip
    build_dataset("image-table", root=tmp_path / "data", source=str(root), image_root=str(root / "images"), image_size=8)
    ds = load_or_build("image-table", root=tmp_path / "data")
    assert ds.specs[1].extra["field_lengths"] == LENGTHS and len(ds["test"]) == SIZES["test"]


# -- mfeat-image-table ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mit():
    return build_mfeat_image_table(MFeatConfig())


def test_mfeat_image_table_is_pix_image_plus_other_views(mit):
    assert mit.modalities == ("image", "table")
    assert mit.specs[0].shape == (1, 16, 15) and mit.specs[1].shape == (409,)
    ref = build_mfeat(MFeatConfig())  # same split and the same per-column standardisation
    for split in ("train", "val", "test"):
        assert np.array_equal(mit[split].labels, ref[split].labels)
        views = [ref[split].arrays[v] for v in ("fourier", "profile", "karhunen", "zernike", "morph")]
        np.testing.assert_allclose(mit[split].arrays["table"], np.concatenate(views, axis=1), atol=1e-5)
    pix, _ = read_view(mfeat_dir() / "mfeat-pix.csv", 240)
    img = mit["train"].arrays["image"]
    assert img.dtype == np.float32 and img.shape == (1200, 1, 16, 15) and img.min() >= 0 and img.max() <= 1
    assert set(np.unique(np.round(img * 6, 4))) <= set(range(7))
    np.testing.assert_allclose(pix_to_images(pix)[0, 0, 0], pix[0, :15] / 6, rtol=1e-6)  # row-major, 15 per row
    assert mit.specs[1].extra["views"]["morph"] == [403, 409]
    b = mit["test"].batch([0, 1, 2])
    b.validate(mit.specs, 10)
    assert b.data["image"].shape == (3, 1, 16, 15)


def test_mfeat_image_table_digits_are_upright(mit):
    imgs = np.asarray(mit["train"].arrays["image"])[:, 0]
    labels = mit["train"].labels

    def neighbour_corr(x: np.ndarray) -> tuple[float, float]:
        h = np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1]
        v = np.corrcoef(x[:, :-1, :].ravel(), x[:, 1:, :].ravel())[0, 1]
        return h, v

    # Row-major 16 x 15 gives smooth strokes both ways; reading the values as 15 rows of 16
    # breaks vertical neighbours apart.
    assert min(neighbour_corr(imgs)) > 0.7
    assert min(neighbour_corr(imgs.reshape(-1, 15, 16))) < 0.65
    mean = {c: imgs[labels == c].mean(0) for c in (6, 7, 9)}
    top, bottom = (lambda m: m[:4].mean()), (lambda m: m[-4:].mean())  # noqa: E731
    left, right = (lambda m: m[:, :4].mean()), (lambda m: m[:, -4:].mean())  # noqa: E731
    assert top(mean[7]) > bottom(mean[7]) + 0.2  # a 7's bar is at the top: not flipped
    assert bottom(mean[6]) > top(mean[6]) and left(mean[6]) > right(mean[6])  # a 6's loop is low and left
    assert right(mean[9]) > left(mean[9])  # not mirrored


def test_value_missingness(mit):
    test = mit["test"]
    out = apply_value_missing(test, 0.3, seed=1)
    x = np.asarray(out.arrays["table"])
    holes = np.isnan(x)
    assert abs(holes.mean() - 0.3) < 0.01
    assert not holes.all(axis=1).any()
    assert np.array_equal(x[~holes], np.asarray(test.arrays["table"])[~holes])
    assert out.arrays["image"] is test.arrays["image"] and np.array_equal(out.observed, test.observed)
    assert np.array_equal(np.isnan(apply_value_missing(test, "value:0.3", seed=1).arrays["table"]), holes)
    assert not np.array_equal(np.isnan(apply_value_missing(test, 0.3, seed=2).arrays["table"]), holes)
    feat = np.isnan(apply_value_missing(test, "feature:0.5", seed=0).arrays["table"])
    assert feat.any(axis=0).sum() == round(0.5 * 409) and (feat == feat[:1]).all()
    explicit = np.zeros((len(test), 409), dtype=bool)
    explicit[:, 7] = True
    got = apply_value_missing(test, 0.0, missing={"table": explicit}).arrays["table"]
    assert np.array_equal(np.isnan(got), explicit)
    # a tiny table never loses every value of a row
    tiny = apply_value_missing(test.subset(range(50)), 0.95, seed=0, modalities=["table"])
    assert not np.isnan(tiny.arrays["table"]).all(axis=1).any()
    assert parse_value_missing("none") == ("value", 0.0) and parse_value_missing("0.4") == ("value", 0.4)
    for bad in ("value:1.5", "rows:0.2", "value:x"):
        with pytest.raises(ScenarioError):
            parse_value_missing(bad)
    with pytest.raises(ScenarioError, match="only vector"):
        apply_value_missing(test, 0.2, modalities=["image"])


@pytest.mark.parametrize("kind", ["mean", "knn", "iterative"])
def test_imputers_fill_partly_and_wholly_missing_tables(mit, kind):
    options = {"n_nearest_features": 5, "max_iter": 1} if kind == "iterative" else {}
    rec = get_recoverer(kind, **options).fit(mit["train"].subset(range(300)), progress=False)
    test = mit["test"].subset(range(60))
    observed = parse_scenario("fixed:table").sample(60, 2, seed=0, names=test.modalities)
    observed[::2] = True  # half the samples keep a (partly missing) table
    data = apply_value_missing(test.with_observed(observed), 0.4, seed=0)
    batch = data.all()
    out = rec.recover(batch)
    x, y = batch.data["table"], out.data["table"]
    assert torch.isfinite(y).all()
    keep = torch.from_numpy(observed[:, 1]).unsqueeze(1) & ~torch.isnan(x)
    assert torch.equal(y[keep], x[keep])  # observed values bit-identical
    assert torch.equal(out.data["image"], batch.data["image"])
    assert torch.equal(out.observed, batch.observed)
    # value holes of observed tables are recovered from the row's other values: closer to the
    # truth than the training mean (0 after standardisation), except for the mean imputer itself
    truth = torch.from_numpy(np.asarray(test.arrays["table"]))
    holes = torch.from_numpy(observed[:, 1]).unsqueeze(1) & torch.isnan(x)
    err = float(((y - truth)[holes] ** 2).mean())
    baseline = float((truth[holes] ** 2).mean())
    assert err < baseline * {"mean": 1.05, "knn": 0.6, "iterative": 0.9}[kind]


def test_cli_builds_image_table_from_source(tip, tmp_path: Path):
    from typer.testing import CliRunner

    from dymo.cli.main import app

    root, _ = tip
    args = ["data", "build", "image-table", "--source", str(root), "--root", str(tmp_path / "d"),
            "--set", f"image_root={root / 'images'}", "--set", "image_size=8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert load_or_build("image-table", root=tmp_path / "d").specs[0].shape[1:] == (8, 8)
