"""The folder dataset (your own files) and `dymo data build NAME --source PATH --set key=value`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.folder import read_folder, write_folder
from dymo.data.kinds import VECTOR
from dymo.data.registry import REGISTRY, build_dataset, load_dataset, open_dataset
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError


def _csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def make_folder(root: Path, n: int = 40, split: bool = False, seed: int = 0) -> dict:
    """Images (grey, most 8x6, one 10x10), a 3-column table with holes, text; 2 classes."""
    rng = np.random.default_rng(seed)
    (root / "scan").mkdir(parents=True)
    labels = [["id", "label", "split"] if split else ["id", "label"]]
    table = [["id", "a", "b", "c"]]
    text = [["id", "text"]]
    for i in range(n):
        sid = f"s{i:03d}"
        y = "yes" if i % 2 else "no"
        labels.append([sid, y, ("train" if i < n // 2 else "val" if i < 3 * n // 4 else "test")] if split else [sid, y])
        if i % 5 != 1:  # every 5th sample misses its image
            size = (10, 10) if i == 0 else (6, 8)  # PIL: (width, height)
            Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)).save(root / "scan" / f"{sid}.png")
        if i % 5 != 2:  # ... another its table row
            vals = [f"{100 + 10 * (i % 2) + rng.normal():.4f}", f"{rng.normal():.4f}", "" if i % 7 == 0 else f"{i}"]
            table.append([sid, *vals])
        if i % 5 != 3:
            text.append([sid, "big" if i % 2 else "small"])
    table.append(["s002", "", "", ""])  # an all-empty row: s002 already lacks a row -> duplicate
    _csv(root / "labels.csv", labels)
    _csv(root / "vitals.csv", table[:-1])
    _csv(root / "notes.csv", text)
    return {"n": n}


def test_read_folder_infers_specs_observed_and_standardisation(tmp_path: Path) -> None:
    make_folder(tmp_path / "raw")
    built = read_folder(source=str(tmp_path / "raw"), seed=3)
    ds = built.dataset
    assert ds.modalities == ("notes", "scan", "vitals")
    notes, scan, vitals = ds.specs
    assert scan.kind == "image" and scan.shape == (1, 8, 6)  # most common size (H 8, W 6), greyscale -> 1 channel
    assert vitals.kind == "vector" and vitals.shape == (3,) and vitals.extra["columns"] == ["a", "b", "c"]
    assert notes.kind == "text" and set(notes.extra["alphabet"]) == set("bigsmall")
    assert ds.class_names == ["no", "yes"]
    assert sum(len(s) for s in ds.splits.values()) == 40
    # A stratified split: both classes in every split.
    for split in ds.splits.values():
        assert set(np.asarray(split.labels).tolist()) == {0, 1}
    # Missing files / rows -> unobserved, by sample id.
    ids = {s: built.extras[f"{s}/ids.npy"].tolist() for s in ds.splits}
    for split, d in ds.splits.items():
        for r, sid in enumerate(ids[split]):
            i = int(sid[1:])
            assert d.observed[r].tolist() == [i % 5 != 3, i % 5 != 1, i % 5 != 2]
    # Standardisation fitted on the training split's observed rows only, and stored in the spec.
    tr = ds["train"]
    rows = tr.observed[:, 2]
    x = np.asarray(tr.arrays["vitals"])[rows]
    np.testing.assert_allclose(x[:, :2].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x[:, :2].std(0), 1.0, atol=1e-4)
    stats = vitals.extra
    val_rows = ds["val"].observed[:, 2]
    assert abs(np.asarray(ds["val"].arrays["vitals"])[val_rows][:, 0].mean()) > 1e-6  # not refitted on val
    # dymo predict applies the same transform to a raw row.
    raw = torch.tensor([[stats["mean"][0] + stats["std"][0], stats["mean"][1], stats["mean"][2]]])
    np.testing.assert_allclose(VECTOR.preprocess(raw, vitals).numpy(), [[1.0, 0.0, 0.0]], atol=1e-6)
    # Missing slots hold zeros.
    assert not np.asarray(tr.arrays["scan"])[~tr.observed[:, 1]].any()


def test_split_column_is_used_and_val_carved_when_absent(tmp_path: Path) -> None:
    make_folder(tmp_path / "raw", split=True)
    ds = read_folder(source=str(tmp_path / "raw")).dataset
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 20, "val": 10, "test": 10}
    labels = tmp_path / "raw" / "labels.csv"
    text = labels.read_text().replace(",val\n", ",train\n")
    labels.write_text(text)
    ds = read_folder(source=str(tmp_path / "raw"), val_fraction=0.2).dataset
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 24, "val": 6, "test": 10}


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda r: (r / "labels.csv").unlink(), "no labels.csv"),
        (lambda r: (r / "labels.csv").write_text("id,label,split\na,1,training\n"), "split 'training'"),
        (lambda r: (r / "labels.csv").write_text("id,label\na,1\na,2\n"), "appears twice"),
        (lambda r: (r / "vitals.csv").write_text("id,a,b,c\ns000,1,x,3\n"), r"vitals.csv, sample 's000': column 3: 'x' is not a number"),
        (lambda r: (r / "vitals.csv").write_text("id,a,b,c\ns000,1,2\n"), "sample .s000.: 2 values, modality .vitals. has 3 features"),
        (lambda r: (r / "scan" / "s000.png").write_bytes(b"not a png"), "s000.png: unreadable image"),
    ],
)
def test_bad_folders_fail_naming_the_file(tmp_path: Path, edit, match: str) -> None:
    make_folder(tmp_path / "raw")
    edit(tmp_path / "raw")
    with pytest.raises(DataError, match=match):
        read_folder(source=str(tmp_path / "raw"))


def test_build_by_name_saves_observed_and_loads_by_name(tmp_path: Path) -> None:
    make_folder(tmp_path / "raw")
    ds = build_dataset("folder", root=tmp_path / "data", out_name="clinic", source=str(tmp_path / "raw"))
    assert ds.name == "clinic"
    assert (tmp_path / "data" / "clinic" / "train" / "observed.npy").exists()
    again = load_dataset("clinic", root=tmp_path / "data")
    for split in ds.splits:
        np.testing.assert_array_equal(again[split].observed, ds[split].observed)
    assert again.specs[2].extra["mean"] == ds.specs[2].extra["mean"]
    with pytest.raises(ConfigError, match="registered dataset"):
        build_dataset("folder", root=tmp_path / "data", out_name="mfeat", source=str(tmp_path / "raw"))


def test_complete_dataset_saves_no_observed_file(tmp_path: Path) -> None:
    spec = ModalitySpec("v", "vector", (2,))
    d = MultimodalDataset([spec], {"v": np.zeros((3, 2), np.float32)}, np.array([0, 1, 0]), ["a", "b"])
    SplitDataset("x", [spec], ["a", "b"], {"train": d}).save(tmp_path / "x")
    assert not (tmp_path / "x" / "train" / "observed.npy").exists()


def test_write_folder_round_trip(tmp_path: Path) -> None:
    make_folder(tmp_path / "raw")
    ds = read_folder(source=str(tmp_path / "raw"), standardize=False).dataset
    write_folder(ds, tmp_path / "copy")
    again = read_folder(source=str(tmp_path / "copy"), standardize=False).dataset
    for split in ds.splits:
        np.testing.assert_array_equal(again[split].observed, ds[split].observed)
        np.testing.assert_array_equal(again[split].labels, ds[split].labels)
        np.testing.assert_array_equal(np.asarray(again[split].arrays["scan"]), np.asarray(ds[split].arrays["scan"]))
        np.testing.assert_allclose(np.asarray(again[split].arrays["vitals"]), np.asarray(ds[split].arrays["vitals"]), rtol=1e-6)


def test_cli_build_folder_and_help_lists_every_registered_dataset(tmp_path: Path, monkeypatch) -> None:
    from dymo.cli.main import app

    make_folder(tmp_path / "raw")
    runner = CliRunner()
    monkeypatch.setenv("COLUMNS", "200")
    help_text = runner.invoke(app, ["data", "build", "--help"]).output
    for name in REGISTRY:
        assert name in help_text
    res = runner.invoke(
        app, ["data", "build", "folder", "--source", str(tmp_path / "raw"), "--name", "clinic", "--root", str(tmp_path / "d"),
              "--set", "val_fraction=0.25", "--set", "test_fraction=0.25"],
    )
    assert res.exit_code == 0, res.output
    ds = open_dataset("clinic", root=tmp_path / "d")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 20, "val": 10, "test": 10}
    res = runner.invoke(app, ["data", "build", "mst", "--root", str(tmp_path / "d")])
    assert res.exit_code == 2 and "--source" in res.output
    res = runner.invoke(app, ["data", "build", "folder", "--source", str(tmp_path / "raw"), "--set", "nope=1", "--root", str(tmp_path / "d")])
    assert res.exit_code == 2 and "nope" in res.output
