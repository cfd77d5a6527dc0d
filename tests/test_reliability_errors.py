"""Bad input gives a clear error naming the sample / modality / file, and nothing half-written.

One test per row of the catalogue in ``docs/errors.md`` (rows already covered elsewhere point
at those tests there). Everything runs on tiny synthetic data with a randomly initialised
backbone: what is checked is the error path, not accuracy.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import dymo
from conftest import cli_error
from dymo.cli.main import app
from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.specs import ModalitySpec, specs_to_list
from dymo.data.synthetic import make_synthetic, make_synthetic_splits
from dymo.errors import BundleError, ConfigError, DataError
from dymo.inference import DyMoClassifier
from dymo.inference.folder import InputFolder
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.recovery.registry import get_recoverer
from dymo.selection import SelectionConfig, compute_calibration
from dymo.training.run import TrainConfig, load_backbone, train_backbone
from dymo.utils.io import save_tensors, write_json

TINY = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8)
KINDS = ("vector", "vector", "vector")
runner = CliRunner()


@pytest.fixture(scope="module")
def setup():
    """Vector-only synthetic data, a random backbone, its calibration, a mean-imputer classifier."""
    torch.manual_seed(0)
    data = make_synthetic_splits(60, 20, 20, kinds=KINDS, vector_dim=4)
    backbone = FlexibleBackbone(data.specs, data.num_classes, TINY).eval()
    cal = compute_calibration(backbone, data["train"], progress=False)
    mean = get_recoverer("mean").fit(data["train"], progress=False)
    clf = DyMoClassifier(backbone, cal, mean, data.class_names)
    return data, backbone, cal, clf


@pytest.fixture(scope="module")
def bundle(setup, tmp_path_factory):
    _, _, _, clf = setup
    return clf.save_pretrained(tmp_path_factory.mktemp("rel") / "bundle")


def _batch(setup, n=5):
    data = setup[0]
    return data["test"].batch(range(n))


def _replace_data(batch, **tensors):
    return dataclasses.replace(batch, data={**batch.data, **tensors})


def _copy(path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


# -- samples with no observed modality ------------------------------------------------------


def test_no_observed_modality_with_a_recoverer_that_needs_evidence(setup):
    data, backbone, cal, _ = setup
    rec = get_recoverer("retrieval", epochs=1, width=4, hidden=16, embed_dim=8).fit(data["train"], progress=False)
    clf = DyMoClassifier(backbone, cal, rec, data.class_names)
    batch = _batch(setup)
    observed = batch.observed.clone()
    observed[2] = False
    with pytest.raises(DataError, match="retrieval: sample 2 has no observed modality; recovery needs at least one"):
        clf.predict(batch.with_observed(observed))


def test_no_observed_modality_falls_back_to_the_best_recovered_one(setup):
    """Documented fallback (recoverers with ``allows_empty``, e.g. the imputers): the sample
    starts from nothing and its first addition is forced; it uses recovered modalities only."""
    _, _, _, clf = setup
    batch = _batch(setup)
    observed = batch.observed.clone()
    observed[2] = False
    pred = clf.predict(batch.with_observed(observed))
    assert pred.used[2].any() and not (pred.used[2] & pred.observed[2]).any()
    assert pred.explain(2).added == pred.explain(2).used
    assert pred.used[[0, 1, 3, 4]].all()  # the complete samples are untouched


def test_no_observed_modality_with_discard_is_an_error(setup):
    _, _, _, clf = setup
    batch = _batch(setup)
    observed = batch.observed.clone()
    observed[3] = False
    with pytest.raises(DataError, match=r"sample 3: no observed modality and no recovered candidate \(method 'discard'"):
        clf.predict(batch.with_observed(observed), SelectionConfig(method="discard"))


def _write_vector_inputs(data, root: Path) -> None:
    """s0 complete; s1 an empty cell in v0 (filled); s2 only empty cells (nothing observed); s3 a short row."""
    root.mkdir()
    for j, spec in enumerate(data.specs):
        with open(root / f"{spec.name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", *[f"f{k}" for k in range(spec.shape[0])]])
            for i in range(4):
                row = [f"{v:.5f}" for v in data["test"].arrays[spec.name][i]]
                if (i, j) == (1, 0):
                    row[2] = ""
                if i == 2:
                    row = [""] * len(row)
                if (i, j) == (3, 1):
                    row = row[:-1]
                w.writerow([f"s{i}", *row])


def test_predict_cli_marks_bad_samples_and_predicts_the_others(setup, bundle, tmp_path):
    data = setup[0]
    _write_vector_inputs(data, tmp_path / "in")
    out = tmp_path / "pred.csv"
    res = runner.invoke(app, ["predict", str(bundle), str(tmp_path / "in"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = {r["sample"]: r for r in csv.DictReader(open(out))}
    assert rows["s0"]["status"] == "ok" and rows["s0"]["predicted_class"] in data.class_names
    # an empty cell in an observed row: the mean imputer of this bundle fills it (docs/inputs.md)
    assert rows["s1"]["status"] == "ok" and "v0" in rows["s1"]["observed"] and "v0" in rows["s1"]["recovered"]
    assert rows["s2"]["status"] == "error" and "no observed modality" in rows["s2"]["error"]
    assert rows["s3"]["status"] == "error" and "v1.csv, sample 's3'" in rows["s3"]["error"]


# -- malformed batches ----------------------------------------------------------------------


def test_observed_mask_with_wrong_number_of_columns(setup):
    _, _, _, clf = setup
    batch = _batch(setup).with_observed(torch.ones(5, 2, dtype=torch.bool))
    with pytest.raises(DataError, match=r"observed mask has shape \(5, 2\); expected \(5, 3\)"):
        clf.predict(batch)


def test_observed_mask_with_wrong_number_of_rows(setup):
    _, _, _, clf = setup
    batch = _batch(setup).with_observed(torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(DataError, match=r"modality 'v0': tensor shape \(5, 4\), expected \(4, 4\)"):
        clf.predict(batch)


def test_dataset_observed_mask_shape(setup):
    data = setup[0]
    with pytest.raises(DataError, match=r"observed mask shape \(20, 2\), expected \(20, 3\)"):
        data["test"].with_observed(np.ones((20, 2), dtype=bool))


def test_modality_tensor_of_wrong_shape(setup):
    _, _, _, clf = setup
    with pytest.raises(DataError, match=r"modality 'v1': tensor shape \(5, 7\), expected \(5, 4\)"):
        clf.predict(_replace_data(_batch(setup), v1=torch.zeros(5, 7)))


def test_modality_tensor_of_wrong_dtype(setup):
    _, _, _, clf = setup
    with pytest.raises(DataError, match="modality 'v0' needs a floating dtype, got torch.int64"):
        clf.predict(_replace_data(_batch(setup), v0=torch.zeros(5, 4, dtype=torch.long)))
    text = ModalitySpec("t", "text", (6,), vocab_size=10)
    batch = MultimodalBatch({"t": torch.zeros(2, 6)}, torch.ones(2, 1, dtype=torch.bool), ("t",))
    with pytest.raises(DataError, match="text modality 't' needs integer token ids"):
        batch.validate([text])


@pytest.mark.parametrize("bad", [float("inf"), -float("inf")])
def test_nan_or_inf_in_an_observed_modality(setup, bad):
    # (NaN = an empty value, filled by this bundle's mean imputer: tests/test_inputs.py)
    _, _, _, clf = setup
    batch = _batch(setup)
    x = batch.data["v1"].clone()
    x[3, 2] = bad
    with pytest.raises(DataError, match="sample 3: observed modality 'v1' holds NaN or Inf"):
        clf.predict(_replace_data(batch, v1=x))
    # ... while the same value in a missing slot is fine (never read)
    observed = batch.observed.clone()
    observed[3, 1] = False
    clf.predict(_replace_data(batch, v1=x).with_observed(observed))


def test_unknown_modality_name_in_the_data(setup):
    _, _, _, clf = setup
    batch = _batch(setup)
    data = dict(batch.data)
    data["audio"] = data.pop("v2")
    with pytest.raises(DataError, match=r"unknown modality name\(s\) \['audio'\]; this model knows \['v0', 'v1', 'v2'\]"):
        clf.predict(dataclasses.replace(batch, data=data))


def test_modality_absent_from_the_data(setup):
    _, _, _, clf = setup
    batch = _batch(setup)
    data = {k: v for k, v in batch.data.items() if k != "v2"}
    with pytest.raises(DataError, match="modality 'v2' is missing from the batch data dict"):
        clf.predict(dataclasses.replace(batch, data=data))


def test_unknown_modality_in_encoder_overrides(setup):
    data = setup[0]
    with pytest.raises(ConfigError, match=r"encoders names unknown modalities \['audio'\]"):
        FlexibleBackbone(data.specs, 3, TINY.replace(encoders={"audio": "mlp"}))


def test_unknown_sub_folder_in_the_input_folder(setup, tmp_path):
    data = setup[0]
    (tmp_path / "audio").mkdir()
    with pytest.raises(DataError, match=r"sub-folder\(s\) \['audio'\] name no modality"):
        InputFolder.scan(tmp_path, data.specs)


def test_empty_prediction_batch(setup):
    _, _, _, clf = setup
    with pytest.raises(DataError, match="empty batch"):
        clf.predict(_batch(setup).index([]))


# -- labels and datasets --------------------------------------------------------------------


@pytest.mark.parametrize("bad", [3, -1])
def test_training_label_outside_the_class_range(bad):
    ds = make_synthetic(8, kinds=KINDS, vector_dim=4)
    labels = np.asarray(ds.labels).copy()
    labels[5] = bad
    with pytest.raises(DataError, match=rf"sample 5 has label {bad}, outside \[0, 3\)"):
        MultimodalDataset(ds.specs, ds.arrays, labels, ds.class_names, name="toy")


def test_batch_label_outside_the_class_range(setup):
    data = setup[0]
    batch = _batch(setup)
    batch.labels = torch.tensor([0, 1, 7, 2, 0])
    with pytest.raises(DataError, match=r"sample 2: label 7 outside \[0, 3\)"):
        batch.validate(data.specs, num_classes=3)


def test_empty_dataset():
    ds = make_synthetic(4, kinds=KINDS, vector_dim=4)
    with pytest.raises(DataError, match="dataset synthetic is empty"):
        ds.subset([])


def test_empty_split_on_disk(tmp_path):
    data = make_synthetic_splits(10, 5, 5, kinds=("vector", "vector"), vector_dim=3)
    root = data.save(tmp_path / "ds")
    np.save(root / "test" / "labels.npy", np.zeros(0, dtype=np.int64))
    for s in data.specs:
        np.save(root / "test" / f"{s.name}.npy", np.zeros((0, 3), dtype=np.float32))
    meta = json.loads((root / "meta.json").read_text())
    meta["splits"]["test"] = 0
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="dataset synthetic/test is empty"):
        SplitDataset.load(root)


def test_unknown_split(setup):
    with pytest.raises(DataError, match=r"has no split 'tst'; it has \['test', 'train', 'val'\]"):
        setup[0]["tst"]


def test_max_train_samples_zero():
    with pytest.raises(ConfigError, match="max_train_samples must be >= 1"):
        TrainConfig(max_train_samples=0)


# -- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: BackboneConfig.from_dict({"dimm": 8}), r"BackboneConfig: unknown key\(s\) \['dimm'\]"),
        (lambda: BackboneConfig.from_dict({"dim": "8"}), "config key 'dim': expected an integer, got '8'"),
        (lambda: BackboneConfig(dim=3.5), "config key 'dim': expected an integer, got 3.5"),
        (lambda: BackboneConfig(dim=10, heads=3), "dim 10 is not divisible by heads 3"),
        (lambda: BackboneConfig(metric="manhattan"), "config key 'metric': 'manhattan' is not one of"),
        (lambda: TrainConfig.from_dict({"epoch": 3}), r"TrainConfig: unknown key\(s\) \['epoch'\]"),
        (lambda: TrainConfig.from_dict({"lr": "fast"}), "config key 'lr': expected a number, got 'fast'"),
        (lambda: TrainConfig(batch_size=0), "epochs and batch_size must be >= 1"),
        (lambda: SelectionConfig.from_dict({"methd": "dymo"}), r"SelectionConfig: unknown key\(s\) \['methd'\]"),
        (lambda: SelectionConfig(method="best"), "config key 'method': 'best' is not one of"),
        (lambda: SelectionConfig(max_added=-1), "max_added must be >= 0"),
        (lambda: SelectionConfig(costs=[0.1, -1.0]), "costs must be finite and >= 0"),
        (lambda: get_recoverer("retrieval", kk=2), r"RetrievalConfig: unknown key\(s\) \['kk'\]"),
        (lambda: get_recoverer("retrieval", k="2"), "config key 'k': expected an integer, got '2'"),
        (lambda: get_recoverer("knn", n_neighbors=0), "n_neighbors"),
        (lambda: get_recoverer("mean", strategy="median"), r"MeanConfig: unknown key\(s\) \['strategy'\]"),
    ],
    ids=[
        "backbone-unknown-key", "backbone-wrong-type", "backbone-ctor-wrong-type", "backbone-bad-value",
        "backbone-bad-literal", "train-unknown-key", "train-wrong-type", "train-bad-value",
        "selection-unknown-key", "selection-unknown-method", "selection-negative-budget",
        "selection-negative-cost", "recoverer-unknown-key", "recoverer-wrong-type", "recoverer-bad-value",
        "recoverer-no-such-option",
    ],
)
def test_bad_config(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_selection_costs_of_the_wrong_length(setup):
    _, _, _, clf = setup
    with pytest.raises(ConfigError, match=r"costs has 2 entries; need one per modality \(\['v0', 'v1', 'v2'\]\)"):
        clf.predict(_batch(setup), SelectionConfig(costs=[0.1, 0.2]))


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "file not found"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"backbon": {"dim": 8}}', "unknown key(s) ['backbon']; known keys: ['backbone', 'train']"),
        ('{"train": 3}', "'train' must be a JSON object, got int"),
        ('{"backbone": {"dimm": 8}}', "BackboneConfig: unknown key(s) ['dimm']"),
        ('{"train": {"lr": "fast"}}', "config key 'lr': expected a number, got 'fast'"),
    ],
    ids=["missing", "corrupt", "not-an-object", "unknown-section", "section-not-an-object", "unknown-key", "wrong-type"],
)
def test_cli_config_file(tmp_path, content, fragment):
    path = tmp_path / "cfg.json"
    if content is not None:
        path.write_text(content)
    res = runner.invoke(app, ["train", "backbone", "--config", str(path), "--out", str(tmp_path / "run")])
    cli_error(res, fragment)
    assert not (tmp_path / "run").exists()  # nothing written


# -- bundles and run folders ----------------------------------------------------------------


def test_bundle_with_corrupt_bundle_json(bundle, tmp_path):
    dst = _copy(bundle, tmp_path)
    (dst / "bundle.json").write_text('{"format": 1, "dymo_ver')
    with pytest.raises(BundleError, match=r"copy/bundle.json: corrupt JSON"):
        DyMoClassifier.from_pretrained(dst)


def test_bundle_of_another_format(bundle, tmp_path):
    dst = _copy(bundle, tmp_path)
    meta = json.loads((dst / "bundle.json").read_text())
    meta["format"] = 99
    (dst / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="bundle format 99, this dymo reads 1"):
        DyMoClassifier.from_pretrained(dst)


@pytest.mark.parametrize(
    "file, match",
    [
        ("calibration.safetensors", "calibration.safetensors: corrupt or unreadable calibration file"),
        ("recovery/weights.safetensors", "weights.safetensors: truncated or corrupt weights"),
    ],
)
def test_bundle_with_a_truncated_part(bundle, tmp_path, file, match):
    dst = _copy(bundle, tmp_path)
    path = dst / file
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(BundleError, match=f"{file}: truncated or corrupt: its sha256 differs from the manifest"):
        DyMoClassifier.from_pretrained(dst)  # the manifest check names the file first
    with pytest.raises(BundleError, match=match):
        DyMoClassifier.from_pretrained(dst, verify=False)  # without it, the loader still fails clearly


def test_bundle_with_a_missing_part(bundle, tmp_path):
    dst = _copy(bundle, tmp_path)
    (dst / "backbone.safetensors").unlink()
    with pytest.raises(BundleError, match="backbone.safetensors: file missing"):
        DyMoClassifier.from_pretrained(dst)
    dst2 = tmp_path / "copy2"
    shutil.copytree(bundle, dst2)
    shutil.rmtree(dst2 / "recovery")
    with pytest.raises(BundleError, match="recovery/config.json: file missing"):
        DyMoClassifier.from_pretrained(dst2)
    with pytest.raises(BundleError, match="recovery: no config.json"):
        DyMoClassifier.from_pretrained(dst2, verify=False)


def test_calibration_for_other_modalities(setup):
    data, backbone, _, _ = setup
    other = make_synthetic(40, kinds=("vector", "vector"), vector_dim=4)
    small = FlexibleBackbone(other.specs, 3, TINY)
    cal_other = compute_calibration(small, other, progress=False)
    with pytest.raises(BundleError, match=r"calibration modalities \['v0', 'v1'\] != backbone \['v0', 'v1', 'v2'\]"):
        DyMoClassifier(backbone, cal_other, setup[3].recoverer, data.class_names)


def test_calibration_for_another_metric(setup):
    data, backbone, _, clf = setup
    euclid = FlexibleBackbone(data.specs, 3, TINY.replace(metric="euclidean"))
    cal_e = compute_calibration(euclid, data["train"], progress=False)
    with pytest.raises(BundleError, match="calibration metric 'euclidean' != backbone metric 'cosine'"):
        DyMoClassifier(backbone, cal_e, clf.recoverer, data.class_names)


def test_recoverer_for_other_specs(setup):
    data, backbone, cal, _ = setup
    other = make_synthetic(30, kinds=KINDS, vector_dim=5)
    rec = get_recoverer("mean").fit(other, progress=False)
    with pytest.raises(BundleError, match="recoverer was trained for other modality specs"):
        DyMoClassifier(backbone, cal, rec, data.class_names)


def _fake_run(setup, root: Path) -> Path:
    """A run folder as train_backbone writes it (config.json + backbone.safetensors)."""
    data, backbone, _, _ = setup
    root.mkdir()
    write_json(root / "config.json", _run_config(data, TINY, TrainConfig(epochs=1)))
    save_tensors(root / "backbone.safetensors", backbone.state_dict(), metadata={"dymo_version": dymo.__version__})
    return root


def _run_config(data, bcfg, tcfg) -> dict:
    return {
        "dymo_version": dymo.__version__, "kind": "backbone", "data": {"name": data.name},
        "specs": specs_to_list(data.specs), "class_names": data.class_names,
        "backbone": bcfg.to_dict(), "train": tcfg.to_dict(),
    }


def test_run_folder_with_truncated_weights(setup, tmp_path):
    run = _fake_run(setup, tmp_path / "run")
    assert load_backbone(run).modalities == setup[0].modalities
    w = run / "backbone.safetensors"
    w.write_bytes(w.read_bytes()[:300])
    with pytest.raises(BundleError, match="backbone.safetensors: truncated or corrupt weights"):
        load_backbone(run)


def test_run_folder_from_another_version(setup, tmp_path):
    run = _fake_run(setup, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["dymo_version"] = "0.0.1"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="written by dymo '0.0.1'"):
        load_backbone(run)


def test_run_folder_for_other_specs(setup, tmp_path):
    run = _fake_run(setup, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["specs"][0]["shape"] = [9]
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="weights do not fit this backbone config/specs"):
        load_backbone(run)


def test_predict_cli_on_a_damaged_bundle(bundle, tmp_path):
    dst = _copy(bundle, tmp_path)
    w = dst / "backbone.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    (tmp_path / "in").mkdir()
    out = tmp_path / "pred.csv"
    res = runner.invoke(app, ["predict", str(dst), str(tmp_path / "in"), "--out", str(out)])
    cli_error(res, str(w), "truncated or corrupt")
    assert not out.exists()


# -- resume ---------------------------------------------------------------------------------


def test_resume_with_a_different_config(tmp_path):
    data = make_synthetic_splits(16, 8, 8, kinds=("vector", "vector"), vector_dim=3)
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "config.json", _run_config(data, TINY, TrainConfig(epochs=5)))
    before = (run / "config.json").read_bytes()
    with pytest.raises(ConfigError, match=r"config.json has a different 'train' than this command; use a new run folder"):
        train_backbone(data, run, TINY, TrainConfig(epochs=1), resume=True, progress=False)
    assert (run / "config.json").read_bytes() == before  # the old run is left as it was
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def test_resume_from_a_truncated_checkpoint(tmp_path):
    data = make_synthetic_splits(16, 8, 8, kinds=("vector", "vector"), vector_dim=3)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    tcfg = TrainConfig(epochs=1)
    write_json(run / "config.json", _run_config(data, TINY, tcfg))
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(BundleError, match=r"last.ckpt is truncated or corrupt \(not a torch checkpoint\)"):
        train_backbone(data, run, TINY, tcfg, resume=True, progress=False)


# -- dataset files and mask files -----------------------------------------------------------


@pytest.mark.parametrize(
    "target, damage, match",
    [
        ("train/v0.npy", lambda b: b[:100], "EOF"),
        ("train/v1.npy", lambda b: b"garbage" * 20, "pickled"),
        ("val/labels.npy", lambda b: b[:90], "EOF"),
        ("test/v0.npy", None, "file missing"),
    ],
    ids=["truncated-header", "not-an-array", "truncated-labels", "missing-file"],
)
def test_dataset_folder_with_a_corrupt_npy(tmp_path, target, damage, match):
    data = make_synthetic_splits(10, 5, 5, kinds=("vector", "vector"), vector_dim=3)
    root = data.save(tmp_path / "ds")
    path = root / target
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=rf"{target}: .*{match}"):
        SplitDataset.load(root)


def test_cli_dataset_folder_with_a_corrupt_npy(tmp_path):
    data = make_synthetic_splits(10, 5, 5, kinds=("vector", "vector"), vector_dim=3)
    root = data.save(tmp_path / "ds")
    (root / "train" / "v0.npy").write_bytes(b"\x93NUMPY")
    res = runner.invoke(app, ["data", "info", str(root)])
    cli_error(res, str(root / "train" / "v0.npy"), "corrupt or unreadable array file")


def test_cli_mask_csv_with_values_other_than_0_and_1(tmp_path):
    data = make_synthetic_splits(10, 5, 6, kinds=("vector", "vector"), vector_dim=3)
    root = data.save(tmp_path / "ds")
    mask = tmp_path / "mask.csv"
    mask.write_text("0,1\n" * 5 + "0,2\n")
    out = tmp_path / "grid.png"
    res = runner.invoke(app, ["data", "show", str(root), "--scenario", f"file:{mask}", "--out", str(out)])
    cli_error(res, f"{mask}: line 6, column 2: value '2'; mask files hold only 0 (observed) and 1 (missing)")
    assert not out.exists()
