"""Your own data end to end: the example from raw files to predictions, the one-call API and
the three commands (`dymo data build folder`, `dymo fit`, `dymo predict`)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_data.py"


def test_from_dymo_import_dymoclassifier() -> None:
    from dymo import DyMoClassifier
    from dymo.inference.classifier import DyMoClassifier as Direct

    assert DyMoClassifier is Direct


def test_example_goes_from_raw_files_to_predictions(tmp_path: Path, monkeypatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("DYMO_DATA", str(tmp_path / "shared"))
    spec = importlib.util.spec_from_file_location("own_data", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--workdir", str(tmp_path / "work"), "--small"])
    assert out["n"] == 400 and out["errors"] == 0
    assert out["accuracy"] > 0.5  # 10 classes: chance is 0.1; one small epoch already learns
    work = tmp_path / "work"
    assert (work / "bundle" / "bundle.json").exists()
    # 30% of the training modalities were dropped: absent PNGs and table rows in the raw folder.
    labels = list(csv.DictReader(open(work / "raw" / "labels.csv")))
    train_ids = {r["id"] for r in labels if r["split"] == "train"}
    pngs = {p.stem for p in (work / "raw" / "image").glob("*.png")} & train_ids
    assert 0.6 < len(pngs) / len(train_ids) < 0.85


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A small image + table folder with missing training files (from synthetic data)."""
    from dymo.data.folder import write_folder
    from dymo.data.synthetic import make_synthetic_splits

    data = make_synthetic_splits(150, 50, 50, kinds=("image", "vector"), image_size=8, seed=1)
    rng = np.random.default_rng(0)
    observed = rng.random((150, 2)) > 0.3
    observed[~observed.any(1), 0] = True
    root = tmp_path_factory.mktemp("own")
    write_folder(data, root / "raw", observed={"train": observed})
    test_obs = rng.random((50, 2)) > 0.5
    test_obs[~test_obs.any(1), 1] = True
    write_folder(data["test"], root / "new", observed={"test": test_obs}, labels=False)
    return root


def test_three_commands_from_folder_to_predictions(tiny_folder: Path, tmp_path: Path) -> None:
    from dymo.cli.main import app

    runner = CliRunner()
    root = ["--root", str(tmp_path / "data")]
    res = runner.invoke(app, ["data", "build", "folder", "--source", str(tiny_folder / "raw"), "--name", "mine", *root])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["fit", "mine", "--out", str(tmp_path / "bundle"), "--epochs", "1", "--recovery", "retrieval", *root,
              "--recovery-set", "epochs=1", "--recovery-set", "width=4", "--recovery-set", "hidden=16",
              "--backbone-set", "dim=16", "--backbone-set", "heads=2", "--backbone-set", "proj_dim=8"],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["predict", str(tmp_path / "bundle"), str(tiny_folder / "new"), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 50 and all(r["status"] == "ok" for r in rows)
    res = runner.invoke(app, ["fit", "mine", "--out", str(tmp_path / "b2"), "--recovery", "nope", *root])
    assert res.exit_code == 2 and "nope" in res.output


def test_fit_predict_proba_explain_save(tiny_folder: Path, tmp_path: Path) -> None:
    from dymo import DyMoClassifier
    from dymo.data.registry import build_dataset

    data = build_dataset("folder", root=tmp_path, out_name="mine", source=str(tiny_folder / "raw"))
    clf = DyMoClassifier.fit(
        data, "mean", epochs=1, backbone={"dim": 16, "heads": 2, "proj_dim": 8}, progress=False,
    )
    batch = data["test"].all()
    proba = clf.predict_proba(batch)
    assert proba.shape == (len(batch), data.num_classes)
    torch.testing.assert_close(proba.sum(1), torch.ones(len(batch)))
    assert torch.equal(proba.argmax(1), clf.predict(batch).class_index)
    assert len(clf.explain(batch)) == len(batch)
    back = DyMoClassifier.from_pretrained(clf.save_pretrained(tmp_path / "bundle"))
    assert torch.equal(back.predict(batch).class_index, clf.predict(batch).class_index)


def test_fit_tunes_the_acceptance_rule_on_validation(tmp_path: Path) -> None:
    """By default fit tunes DyMo's acceptance rule on the validation split and the bundle keeps
    it; tune=False keeps the paper's rule (no stored threshold)."""
    from dymo import DyMoClassifier
    from dymo.data.synthetic import make_synthetic_splits

    data = make_synthetic_splits(120, 60, 40, kinds=("vector", "vector", "vector"), vector_dim=4, num_classes=3, seed=1)
    small = {"backbone": {"dim": 16, "heads": 2, "depth": 1, "proj_dim": 8}, "epochs": 1, "progress": False}
    tuned = DyMoClassifier.fit(data, "mean", **small)
    assert tuned.calibration.threshold is not None
    assert len(tuned.calibration.threshold.thresholds) == 3  # one tau per number observed (0..M-1)
    back = DyMoClassifier.from_pretrained(tuned.save_pretrained(tmp_path / "bundle"))
    assert back.calibration.threshold is not None
    assert back.calibration.threshold.thresholds == tuned.calibration.threshold.thresholds
    plain = DyMoClassifier.fit(data, "mean", tune=False, **small)
    assert plain.calibration.threshold is None
