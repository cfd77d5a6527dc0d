"""CelebA image + attribute text, read from a tiny fixture in the MoPoE / DyMo layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dymo.data.celeba import CelebAConfig, attribute_text, read_celeba
from dymo.data.mst import decode_text
from dymo.data.registry import build_dataset, load_or_build
from dymo.errors import ConfigError, DataError

ATTRS = ["Bangs", "Blond_Hair", "Smiling", "Wearing_Hat"]
N = 12


def write_celeba(root: Path, text_file: bool = False, balanced: bool = False) -> np.ndarray:
    """``N`` aligned 178x218 JPEG-sized PNGs: red border, the centred 148x148 crop green with
    blue = 20 * row, so the crop and the row can be checked. Returns the attribute matrix."""
    rng = np.random.default_rng(0)
    values = rng.choice([-1, 1], size=(N, len(ATTRS)))
    values[:, 1] = np.where(np.arange(N) % 3 == 0, 1, -1)  # Blond_Hair
    (root / "img_align_celeba").mkdir(parents=True)
    ids = [f"{i + 1:06d}.png" for i in range(N)]
    for i, image_id in enumerate(ids):
        img = np.zeros((218, 178, 3), dtype=np.uint8)
        img[..., 0] = 255
        img[35 : 35 + 148, 15 : 15 + 148] = (0, 200, 20 * i)
        Image.fromarray(img).save(root / "img_align_celeba" / image_id)
    lines = ["image_id," + ",".join(ATTRS)] + [f"{i}," + ",".join(map(str, v)) for i, v in zip(ids, values, strict=True)]
    (root / "list_attr_celeba.csv").write_text("\n".join(lines) + "\n")
    parts = [0] * 6 + [1] * 3 + [2] * 3
    # the partition file lists rows in another order than the attribute file: rows are joined by id
    order = list(reversed(range(N)))
    (root / "list_eval_partition.csv").write_text(
        "image_id,partition\n" + "".join(f"{ids[i]},{parts[i]}\n" for i in order)
    )
    if balanced:
        (root / "list_eval_partition_Blond_Hair_balanced.csv").write_text(
            "image_id,partition\n" + "".join(f"{ids[i]},{parts[i] if i % 2 == 0 else -1}\n" for i in range(N))
        )
    if text_file:
        (root / "list_attr_text_016_False_True_celeba.csv").write_text(
            "image_id,text\n" + "".join(f"{image_id},  person {i}\n" for i, image_id in enumerate(ids))
        )
    return values


@pytest.fixture
def celeba(tmp_path: Path) -> tuple[Path, np.ndarray]:
    root = tmp_path / "CelebA"
    return root, write_celeba(root)


def test_images_crop_labels_and_generated_text(celeba):
    root, values = celeba
    ds = read_celeba(CelebAConfig(source=str(root), text_length=64, seed=0))
    assert ds.modalities == ("img", "text")
    assert ds.specs[0].shape == (3, 64, 64) and ds.specs[1].shape == (64,) and ds.specs[1].vocab_size == 72
    assert ds.class_names == ["not Blond_Hair", "Blond_Hair"]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6, "val": 3, "test": 3}
    train = ds["train"]
    img = train.arrays["img"]
    assert img.shape == (6, 64, 64, 3) and img.dtype == np.uint8
    # MoPoE's crop keeps exactly the centred 148x148 square: no red border survives the resize
    assert img[..., 0].max() <= 2 and abs(int(img[..., 1].mean()) - 200) <= 2
    rows = np.round(img[:, 32, 32, 2] / 20).astype(int)  # which source image each row is
    assert sorted(rows) == list(range(6))
    assert np.array_equal(train.labels, (values[rows, 1] > 0).astype(int))
    for k, r in enumerate(rows):
        text = decode_text(train.arrays["text"][k])
        assert text.strip() == attribute_text(ATTRS, values[r])
        assert text.startswith(" ") or text.strip() == text[: len(text.strip())]
    batch = train.batch([0, 1])
    batch.validate(ds.specs, 2)


def test_label_choice_and_label_free_text(celeba):
    root, values = celeba
    ds = read_celeba(CelebAConfig(source=str(root), label="Smiling", label_in_text=False))
    test = ds["test"]
    rows = np.round(test.arrays["img"][:, 32, 32, 2] / 20).astype(int)
    assert np.array_equal(test.labels, (values[rows, 2] > 0).astype(int))
    assert all("smiling" not in decode_text(t) for t in test.arrays["text"])
    with pytest.raises(ConfigError, match="Not_An_Attr"):
        read_celeba(CelebAConfig(source=str(root), label="Not_An_Attr"))


def test_mopoe_text_file_and_balanced_partition(tmp_path: Path):
    root = tmp_path / "CelebA"
    write_celeba(root, text_file=True, balanced=True)
    ds = read_celeba(CelebAConfig(source=str(root), text_length=16))
    # the balanced partition keeps even rows only (others are -1)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 3, "val": 2, "test": 1}
    rows = np.round(ds["train"].arrays["img"][:, 32, 32, 2] / 20).astype(int)
    assert all(r % 2 == 0 for r in rows)
    for k, r in enumerate(rows):
        assert decode_text(ds["train"].arrays["text"][k]) == f"  person {r}"  # read, then padded with 0
    assert ds["train"].arrays["text"][0, -1] == 0
    assert ds.specs[1].extra["source"].startswith("list_attr_text_")
    with pytest.raises(ConfigError, match="generated text only"):
        read_celeba(CelebAConfig(source=str(root), label_in_text=False))


def test_errors_name_the_file(celeba):
    root, _ = celeba
    with pytest.raises(ConfigError, match="source"):
        read_celeba(CelebAConfig())
    (root / "img_align_celeba" / "000004.png").unlink()
    with pytest.raises(DataError, match="000004.png"):
        read_celeba(CelebAConfig(source=str(root)))
    (root / "img_align_celeba" / "000004.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="000004.png: corrupt"):
        read_celeba(CelebAConfig(source=str(root)))
    text = (root / "list_attr_celeba.csv").read_text().replace("000002.png,-1", "000002.png,7", 1).replace("000002.png,1", "000002.png,7", 1)
    (root / "list_attr_celeba.csv").write_text(text)
    with pytest.raises(DataError, match="000002.png"):
        read_celeba(CelebAConfig(source=str(root)))


def test_registry(celeba, tmp_path: Path):
    root, _ = celeba
    built = build_dataset("celeba", root=tmp_path / "data", source=str(root), n_train=4)
    loaded = load_or_build("celeba", root=tmp_path / "data")
    assert len(loaded["train"]) == 4
    assert np.array_equal(np.asarray(loaded["train"].arrays["img"]), built["train"].arrays["img"])


def test_cli_builds_celeba_from_source(celeba, tmp_path: Path):
    from typer.testing import CliRunner

    from dymo.cli.main import app

    root, _ = celeba
    args = ["data", "build", "celeba", "--source", str(root), "--root", str(tmp_path / "d"), "--set", "n_train=4", "--set", "label_in_text=false"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    ds = load_or_build("celeba", root=tmp_path / "d")
    assert len(ds["train"]) == 4 and ds.build_info["config"]["label_in_text"] is False
