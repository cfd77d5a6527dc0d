"""Unimodal judge classifiers, the recovery report and the recovery CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_split
from dymo.cli.main import app
from dymo.errors import BundleError
from dymo.recovery.coherence import (
    UnimodalClassifier,
    UnimodalConfig,
    default_report_masks,
    recovery_report,
)
from dymo.recovery.oracle import OracleRecoverer
from dymo.recovery.quality import ShuffledRecoverer

TINY = UnimodalConfig(epochs=8, lr=5e-3, batch_size=32, embed_dim=16, width=4, hidden=16, text_embed=8, seed=4)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    split = make_split(kinds=("image", "vector", "text"), seed=13, n_test=60)
    clf = UnimodalClassifier(split.specs, split.class_names, TINY).fit(split["train"], progress=False)
    return split, clf


def test_classifier_learns_and_round_trips(trained, tmp_path) -> None:
    split, clf = trained
    test = split["test"].all()
    pred = clf.predict(test.data)
    for name in test.modalities:
        assert float((pred[name] == test.labels).float().mean()) >= 0.85
    clf.save(tmp_path / "clf")
    again = UnimodalClassifier.load(tmp_path / "clf")
    for name, p in again.predict(test.data).items():
        assert torch.equal(p, pred[name])
    (tmp_path / "clf" / "weights.safetensors").write_bytes(b"trunc")
    with pytest.raises(BundleError, match="weights"):
        UnimodalClassifier.load(tmp_path / "clf")


def test_default_masks_observe_1_to_m_minus_1() -> None:
    m = default_report_masks(500, 4, seed=1)
    k = m.sum(1)
    assert k.min() == 1 and k.max() == 3
    assert set(k.tolist()) == {1, 2, 3}


def test_report_oracle_vs_shuffled(trained, tmp_path) -> None:
    split, clf = trained
    oracle = OracleRecoverer().fit(split["train"], progress=False)
    rep = recovery_report(oracle, split["test"], clf, grid_path=tmp_path / "grid.png", progress=False)
    assert rep["error"]["img0"] == 0.0 and rep["error"]["txt2"] == 0.0
    assert rep["coherence"]["overall"] == rep["reference_accuracy"]["overall"] >= 0.85
    assert set(rep["coherence"]["by_num_observed"]) == {"1", "2"}
    assert rep["throughput_samples_per_s"] > 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(rep)  # JSON-able
    shuffled = ShuffledRecoverer(OracleRecoverer(), seed=0).fit(split["train"], progress=False)
    bad = recovery_report(shuffled, split["test"], clf, progress=False)
    assert bad["coherence"]["overall"] < 0.6  # real data of the wrong sample: incoherent
    assert bad["error"]["img0"] > 0


def test_cli_train_and_report(tmp_path) -> None:
    root = tmp_path / "synth"
    make_split(kinds=("image", "image", "vector"), seed=17).save(root)
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "recovery", "--data", str(root), "--model", "retrieval", "--out", str(run),
                              "--epochs", "3", "--set", "width=4", "--set", "embed_dim=16", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["kind"] == "retrieval"
    res = runner.invoke(app, ["recovery-report", str(run), "--data", str(root), "--classifier-epochs", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    rep = json.loads((run / "report.json").read_text())
    assert rep["recoverer"] == "retrieval" and rep["num_samples"] == 30
    assert (run / "recovery_grid.png").exists() and (run / "coherence_classifier" / "config.json").exists()
    res = runner.invoke(app, ["train", "recovery", "--data", str(root), "--model", "mean", "--out", str(tmp_path / "m"), "--epochs", "2"])
    assert res.exit_code == 2 and "epochs" in res.output
