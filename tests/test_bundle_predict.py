"""Model bundles (round trip, version/spec/truncation errors) and `dymo predict` on a folder
with missing files and a corrupt file."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dymo.cli.main import app
from dymo.data.synthetic import make_synthetic_splits
from dymo.errors import BundleError, DataError
from dymo.inference import DyMoClassifier
from dymo.models import BackboneConfig
from dymo.recovery.registry import get_recoverer
from dymo.selection import compute_calibration
from dymo.training import TrainConfig, load_backbone, train_backbone

TINY = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    data = make_synthetic_splits(120, 30, 40, kinds=("image", "image", "vector"))
    run = train_backbone(data, root / "run", TINY, TrainConfig(epochs=2, batch_size=32, proto_start_epoch=1), progress=False)
    backbone = load_backbone(run)
    cal = compute_calibration(backbone, data["train"], progress=False)
    rec = get_recoverer("retrieval", epochs=1, width=4, hidden=16, embed_dim=8).fit(data["train"], progress=False)
    clf = DyMoClassifier(backbone, cal, rec, data.class_names)
    path = clf.save_pretrained(root / "bundle")
    return data, clf, path


def _test_batch(data, seed=0):
    batch = data["test"].all()
    g = torch.Generator().manual_seed(seed)
    observed = torch.rand(len(batch), 3, generator=g) > 0.5
    observed[torch.arange(len(batch)), torch.randint(0, 3, (len(batch),), generator=g)] = True
    return batch.with_observed(observed)


def test_round_trip_gives_identical_predictions(bundle):
    data, clf, path = bundle
    batch = _test_batch(data)
    before = clf.predict(batch)
    loaded = DyMoClassifier.from_pretrained(path)
    after = loaded.predict(batch)
    assert torch.equal(before.class_index, after.class_index)
    assert torch.equal(before.probabilities, after.probabilities)
    assert torch.equal(before.used, after.used)
    assert (after.used | ~after.observed).all() and (after.used >= after.observed).all()
    assert before.classes == after.classes and set(after.classes) <= set(data.class_names)
    rec = after.to_records()
    assert rec[0]["predicted_class"] in data.class_names and abs(sum(rec[0]["probabilities"].values()) - 1) < 1e-4
    json.dumps(rec)


def test_labels_are_not_needed(bundle):
    data, clf, _ = bundle
    batch = _test_batch(data)
    no_labels = batch.index(range(len(batch)))
    no_labels.labels = None
    assert torch.equal(clf.predict(batch).class_index, clf.predict(no_labels).class_index)


def _copy(path, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(path, dst)
    return dst


def test_other_version_fails_clearly(bundle, tmp_path):
    _, _, path = bundle
    dst = _copy(path, tmp_path)
    meta = json.loads((dst / "bundle.json").read_text())
    meta["dymo_version"] = "0.0.1"
    (dst / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="written by dymo '0.0.1'"):
        DyMoClassifier.from_pretrained(dst)


def test_mismatched_specs_fail_clearly(bundle, tmp_path):
    _, _, path = bundle
    dst = _copy(path, tmp_path)
    meta = json.loads((dst / "bundle.json").read_text())
    meta["specs"][2]["shape"] = [7]
    (dst / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="do not match"):
        DyMoClassifier.from_pretrained(dst)


def test_truncated_weights_fail_clearly(bundle, tmp_path):
    _, _, path = bundle
    dst = _copy(path, tmp_path)
    w = dst / "backbone.safetensors"
    w.write_bytes(w.read_bytes()[:200])
    with pytest.raises(BundleError, match="truncated or corrupt"):
        DyMoClassifier.from_pretrained(dst)


def test_missing_bundle_file(tmp_path):
    with pytest.raises(BundleError, match="not a dymo bundle"):
        DyMoClassifier.from_pretrained(tmp_path)


def test_wrong_modalities_in_batch(bundle):
    data, clf, _ = bundle
    batch = _test_batch(data)
    batch.modalities = ("x", "y", "z")
    with pytest.raises(DataError, match="do not match"):
        clf.predict(batch)


def _write_folder(data, root):
    """Samples s0..s5: s0 complete, s1-s3 with missing files, s4 a corrupt PNG, s5 nothing but a bad row."""
    test = data["test"]
    specs = test.specs
    for s in specs[:2]:
        (root / s.name).mkdir(parents=True)
    rows = []
    for i in range(5):
        b = test.batch([i])
        for j, s in enumerate(specs[:2]):
            if (i, j) in {(1, 0), (2, 1)}:
                continue  # missing file = missing modality
            arr = (b.data[s.name][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            Image.fromarray(arr).save(root / s.name / f"s{i}.png")
        if i != 3:
            rows.append([f"s{i}", *[f"{v:.5f}" for v in b.data[specs[2].name][0].tolist()]])
    (root / specs[0].name / "s4.png").write_bytes(b"not a png at all")
    with open(root / f"{specs[2].name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *[f"f{k}" for k in range(specs[2].shape[0])]])
        w.writerows(rows)


def test_predict_cli_on_folder(bundle, tmp_path):
    data, clf, path = bundle
    inp = tmp_path / "input"
    _write_folder(data, inp)
    out = tmp_path / "preds.csv"
    r = CliRunner().invoke(app, ["predict", str(path), str(inp), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = {row["sample"]: row for row in csv.DictReader(open(out))}
    assert set(rows) == {f"s{i}" for i in range(5)}
    assert rows["s4"]["status"] == "error" and "s4.png" in rows["s4"]["error"]
    for sid in ("s0", "s1", "s2", "s3"):
        assert rows[sid]["status"] == "ok" and rows[sid]["predicted_class"] in data.class_names
    i0, i1, v2 = data.modalities
    assert rows["s0"]["observed"] == f"{i0};{i1};{v2}" and rows["s0"]["recovered"] == ""
    assert rows["s1"]["recovered"] == i0 and i0 not in rows["s1"]["observed"]
    assert rows["s3"]["recovered"] == v2
    assert set(rows["s1"]["used"].split(";")) >= {i1, v2}
    # JSON output too, with rewards of every candidate at every step
    out_json = tmp_path / "preds.json"
    r = CliRunner().invoke(app, ["predict", str(path), str(inp), "--out", str(out_json)])
    assert r.exit_code == 0, r.output
    recs = {rec["sample"]: rec for rec in json.loads(out_json.read_text())}
    assert recs["s1"]["steps"] and "candidates" in recs["s1"]["steps"][0]
