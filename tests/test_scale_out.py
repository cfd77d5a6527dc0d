"""`dymo predict` and `dymo calibrate` through Lightning: 2 CPU processes (ddp, gloo) give
byte-identical output to one process, which equals the in-process computation."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dymo.data.synthetic import make_synthetic_splits
from dymo.inference import DyMoClassifier
from dymo.models import BackboneConfig, FlexibleBackbone
from dymo.recovery.registry import get_recoverer
from dymo.selection import Calibration, compute_calibration

SRC = Path(__file__).resolve().parents[1] / "src"
KINDS = ("vector", "vector", "vector", "vector")


def make_vector_bundle(root: Path, n_train: int = 200, seed: int = 0) -> tuple[Path, object]:
    """An (untrained) 4-vector-modality bundle: what matters here is the plumbing."""
    data = make_synthetic_splits(n_train, 20, 20, kinds=KINDS, vector_dim=6, seed=seed)
    torch.manual_seed(seed)
    backbone = FlexibleBackbone(data.specs, data.num_classes, BackboneConfig(dim=16, heads=2, depth=2, proj_dim=8)).eval()
    cal = compute_calibration(backbone, data["train"], progress=False)
    rec = get_recoverer("mean").fit(data["train"], progress=False)
    path = DyMoClassifier(backbone, cal, rec, data.class_names).save_pretrained(root / "bundle")
    return path, data


def write_vector_inputs(root: Path, specs, n: int, seed: int = 0, missing: float = 0.5) -> None:
    """``<modality>.csv`` per modality; each (sample, modality) absent with probability ``missing``
    (at least one modality per sample)."""
    rng = np.random.default_rng(seed)
    present = rng.random((n, len(specs))) >= missing
    present[np.arange(n), rng.integers(0, len(specs), n)] = True
    root.mkdir(parents=True, exist_ok=True)
    for j, s in enumerate(specs):
        x = rng.normal(size=(n, s.shape[0]))
        with open(root / f"{s.name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", *[f"f{k}" for k in range(s.shape[0])]])
            for i in np.nonzero(present[:, j])[0]:
                w.writerow([f"s{i:07d}", *[f"{v:.4f}" for v in x[i]]])


def dymo(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "dymo.cli.main", *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    path, data = make_vector_bundle(root)
    write_vector_inputs(root / "input", data.specs, 45)
    return root, path, data


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_predict_two_processes_equal_one(setup, suffix):
    root, path, _ = setup
    one, two = root / f"one{suffix}", root / f"two{suffix}"
    # JSON: one chunk for two processes (one of them has nothing to do)
    size = "8" if suffix == ".csv" else "64"
    dymo("predict", str(path), str(root / "input"), "--out", str(one), "--batch-size", size)
    dymo("predict", str(path), str(root / "input"), "--out", str(two), "--batch-size", size,
         "--devices", "2", "--strategy", "ddp")
    assert one.read_bytes() == two.read_bytes()
    assert not (root / f".{two.name}.parts").exists()
    if suffix == ".csv":
        rows = list(csv.DictReader(open(one)))
        assert sorted(r["sample"] for r in rows) == [f"s{i:07d}" for i in range(45)]  # one row per sample
        assert all(r["status"] == "ok" for r in rows)
        assert any(r["recovered"] and r["used"] != r["observed"] for r in rows)  # real selections
    else:
        recs = json.loads(one.read_text())
        assert sorted(r["sample"] for r in recs) == [f"s{i:07d}" for i in range(45)]


def test_predict_through_lightning_equals_the_classifier(setup):
    """The chunked, streamed path predicts what DyMoClassifier.predict does on the same batch."""
    from dymo.inference.folder import InputFolder

    root, path, _ = setup
    out = root / "ref.csv"
    dymo("predict", str(path), str(root / "input"), "--out", str(out), "--batch-size", "45")
    clf = DyMoClassifier.from_pretrained(path)
    folder = InputFolder.scan(root / "input", clf.specs)
    batch, errors = folder.load(folder.ids)
    assert not errors
    pred = clf.predict(batch)
    rows = list(csv.DictReader(open(out)))
    assert [r["predicted_class"] for r in rows] == pred.classes
    probs = np.array([[float(r[f"p_{c}"]) for c in clf.class_names] for r in rows])
    np.testing.assert_allclose(probs, pred.probabilities.numpy(), atol=1e-6)


def test_calibrate_two_processes_equal_one(tmp_path):
    from dymo.training import TrainConfig, train_backbone

    data = make_synthetic_splits(90, 20, 20, kinds=KINDS, vector_dim=6)
    data.save(tmp_path / "data")
    run = train_backbone(data, tmp_path / "run", BackboneConfig(dim=16, heads=2, depth=2, proj_dim=8),
                         TrainConfig(epochs=1, batch_size=32), data_ref={"name": str(tmp_path / "data")},
                         progress=False, evaluate_test=False)
    args = ["calibrate", str(run), "--samples-per-class", "12", "--batch-size", "16"]
    dymo(*args)
    one = Calibration.load(run / "calibration.safetensors")
    dymo(*args, "--devices", "2", "--strategy", "ddp")
    cal = Calibration.load(run / "calibration.safetensors")
    # identical tensors (the safetensors header orders its metadata differently per process)
    for name in ("prototypes", "sigma", "overall"):
        assert torch.equal(getattr(cal, name), getattr(one, name)), name
    assert (cal.metric, cal.temperature, cal.modalities) == (one.metric, one.temperature, one.modalities)
    from dymo.training.run import load_backbone

    direct = compute_calibration(load_backbone(run), data["train"], batch_size=16, progress=False, samples_per_class=12)
    torch.testing.assert_close(cal.prototypes, direct.prototypes, atol=1e-6, rtol=0)
    torch.testing.assert_close(cal.sigma, direct.sigma, atol=1e-6, rtol=0)


def test_evaluate_two_processes_equal_one(tmp_path):
    from dymo.training import TrainConfig, train_backbone

    data = make_synthetic_splits(60, 20, 40, kinds=KINDS, vector_dim=6)
    data.save(tmp_path / "data")
    run = train_backbone(data, tmp_path / "run", BackboneConfig(dim=16, heads=2, depth=2, proj_dim=8),
                         TrainConfig(epochs=1, batch_size=32), data_ref={"name": str(tmp_path / "data")},
                         progress=False, evaluate_test=False)
    dymo("calibrate", str(run), "--samples-per-class", "10")
    get_recoverer("mean").fit(data["train"], progress=False).save(tmp_path / "rec")
    base = ["evaluate", str(run), "--recovery", str(tmp_path / "rec"), "--method", "discard,fuse-all,dymo",
            "--batch-size", "16"]
    dymo(*base, "--out", str(tmp_path / "one.json"))
    dymo(*base, "--out", str(tmp_path / "two.json"), "--devices", "2", "--strategy", "ddp")
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    for m in ("discard", "fuse-all", "dymo"):
        for key, value in one[m].items():
            if key != "seconds":
                assert two[m][key] == value, (m, key)
