"""Never lose or mix up a user's work: safe outputs, provenance, integrity, one error boundary.

One test per case of the "Safe outputs, provenance and the error boundary" part of
``docs/errors.md`` (a test at the end checks that catalogue against this file). Tiny synthetic
vector data, one-epoch backbones: what is checked is what is written, refused or reported.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import dymo.training.run as run_mod
from dymo.cli.main import app
from dymo.data.dataset import SplitDataset
from dymo.data.synthetic import make_synthetic_splits
from dymo.errors import BundleError, ConfigError, OutputError
from dymo.inference import DyMoClassifier
from dymo.models.backbone import BackboneConfig
from dymo.recovery.registry import get_recoverer
from dymo.training.run import TrainConfig, TrainingDiverged, train_backbone
from dymo.utils.artifact import identify, sha256_file

TINY = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8)
KINDS = ("vector", "vector", "vector")
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _data(seed: int = 0):
    return make_synthetic_splits(48, 16, 16, kinds=KINDS, vector_dim=4, seed=seed)


def _train(data, run: Path, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("evaluate_test", False)
    tcfg = kw.pop("train", TrainConfig(epochs=1, batch_size=16))
    return train_backbone(data, run, TINY, tcfg, **kw)


def _cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _cli_error(res, *fragments: str, code: int = 2) -> str:
    """Exit status ``code``, no traceback, exactly one (unwrapped) ``error:`` line holding ``fragments``."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _write_inputs(data, root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True)
    for j, spec in enumerate(data.specs):
        with open(root / f"{spec.name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", *[f"f{k}" for k in range(spec.shape[0])]])
            for i in range(n):
                if (i + j) % 3 == 0 and i % 2:  # some samples miss a modality
                    continue
                w.writerow([f"s{i}", *[f"{v:.6f}" for v in np.asarray(data["test"].arrays[spec.name][i])]])
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved (memory-mapped) dataset, a calibrated one-epoch backbone run, a mean recoverer,
    a retrieval recoverer (it returns training rows) and a bundle, all built through the CLI."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("safety")
    _data().save(root / "data")
    data = SplitDataset.load(root / "data")
    run = _train(data, root / "run", data_ref={"name": str(root / "data")})
    res = _cli("calibrate", run)
    assert res.exit_code == 0, res.output
    get_recoverer("mean").fit(data["train"], progress=False).save(root / "rec")
    res = _cli("train", "recovery", "--data", root / "data", "--model", "retrieval", "--epochs", "1", "--out", root / "retrieval", "--no-progress")
    assert res.exit_code == 0, res.output
    res = _cli("bundle", run, "--recovery", root / "rec", "--out", root / "bundle")
    assert res.exit_code == 0, res.output
    inputs = _write_inputs(data, root / "inputs")
    return SimpleNamespace(root=root, data=data, run=run, rec=root / "rec", retrieval=root / "retrieval", bundle=root / "bundle", inputs=inputs)


def _copy_run(world, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(world.run, dst)
    return dst


# -- data loss -------------------------------------------------------------------------------------


def test_bundle_out_over_its_own_run_is_refused(world):
    before = _tree(world.run)
    res = _cli("bundle", world.run, "--recovery", world.rec, "--out", world.run, "--force")
    _cli_error(res, f"--out {world.run}: overlaps the input")
    assert _tree(world.run) == before  # checkpoints/, logs/, config.json, metrics.json all kept
    assert {"checkpoints/last.ckpt", "config.json", "calibration.safetensors"} <= set(before)


def test_bundle_out_into_a_user_folder_is_refused_even_with_force(world, tmp_path):
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    for extra in ([], ["--force"]):
        res = _cli("bundle", world.run, "--recovery", world.rec, "--out", docs, *extra)
        _cli_error(res, f"--out {docs}: holds files dymo did not write", "will not replace it")
    assert (docs / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydocs"]  # no hidden temporary left


def test_bundle_out_over_the_current_folder_is_refused(world, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    res = _cli("bundle", world.run, "--recovery", world.rec, "--out", ".", "--force")
    _cli_error(res, "--out .: is the current folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bundle_out_over_a_bundle_needs_force(world, tmp_path):
    out = tmp_path / "b"
    assert _cli("bundle", world.run, "--recovery", world.rec, "--out", out).exit_code == 0
    _cli_error(_cli("bundle", world.run, "--recovery", world.rec, "--out", out), "holds a dymo bundle already; pass --force")
    res = _cli("bundle", world.run, "--recovery", world.rec, "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert identify(out) == "bundle" and not (tmp_path / ".b.old").exists()


def test_predict_out_over_a_user_file_is_refused(world, tmp_path):
    out = tmp_path / "preds.csv"
    out.write_text("my,own,spreadsheet\n1,2,3\n")
    for extra in ([], ["--force"]):
        res = _cli("predict", world.bundle, world.inputs, "--out", out, *extra)
        _cli_error(res, f"--out {out}: holds files dymo did not write")
    assert out.read_text() == "my,own,spreadsheet\n1,2,3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv"]  # nothing hidden as .preds.csv.old


def test_predict_out_over_earlier_predictions_needs_force(world, tmp_path):
    out = tmp_path / "preds.json"
    assert _cli("predict", world.bundle, world.inputs, "--out", out).exit_code == 0
    first = out.read_text()
    _cli_error(_cli("predict", world.bundle, world.inputs, "--out", out), "holds a dymo predictions already; pass --force")
    res = _cli("predict", world.bundle, world.inputs, "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text()) == json.loads(first)


def test_train_recovery_out_over_a_backbone_run_is_refused(world, tmp_path):
    run = _copy_run(world, tmp_path)
    before = _tree(run)
    for extra in ([], ["--force"]):
        res = _cli("train", "recovery", "--data", world.root / "data", "--model", "mean", "--out", run, *extra)
        _cli_error(res, f"--out {run}: holds a dymo backbone-run, not a recoverer")
    assert _tree(run) == before
    # ... and the Python API refuses it too
    with pytest.raises(OutputError, match="holds a dymo backbone-run"):
        get_recoverer("mean").fit(world.data["train"], progress=False).save(run)


def test_train_backbone_over_a_user_folder_or_an_existing_run_is_refused(world, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("x")
    res = _cli("train", "backbone", "--data", world.root / "data", "--out", docs, "--epochs", "1", "--force")
    _cli_error(res, "holds files dymo did not write")
    assert _tree(docs) == {"a.txt": b"x"}
    run = _copy_run(world, tmp_path)
    before = _tree(run)
    with pytest.raises(ConfigError, match="holds a backbone run already; pass --resume to continue it or --force to replace it"):
        _train(world.data, run)
    assert _tree(run) == before


@pytest.mark.parametrize("command", ["evaluate", "data-show"])
def test_other_outputs_over_a_user_file_are_refused(world, tmp_path, command):
    out = tmp_path / ("m.json" if command == "evaluate" else "grid.png")
    out.write_bytes(b"user data")
    if command == "evaluate":
        res = _cli("evaluate", world.run, "--method", "discard", "--out", out, "--force")
    else:
        res = _cli("data", "show", world.root / "data", "--out", out, "--force", "--rows", "2")
    _cli_error(res, f"--out {out}: holds files dymo did not write")
    assert out.read_bytes() == b"user data"


@pytest.mark.parametrize("command", ["data-build", "benchmark"])
def test_dataset_and_benchmark_folders_over_a_user_folder_are_refused(world, tmp_path, command):
    target = tmp_path / ("polymnist-small" if command == "data-build" else "bench")
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    if command == "data-build":
        res = _cli("data", "build", "polymnist-small", "--root", tmp_path, "--n-train", "20", "--n-val", "10", "--n-test", "10", "--force")
        _cli_error(res, f"dataset folder {target}: holds files dymo did not write")
    else:
        res = _cli("benchmark", "--data", world.root / "data", "--out", target, "--methods", "discard", "--recovery", "mean", "--no-progress")
        _cli_error(res, f"--out {target}: holds files dymo did not write")
    assert _tree(target) == {"keep.txt": b"mine"}


def test_every_artefact_kind_is_recognised_and_nothing_else(world, tmp_path):
    from dymo.utils.artifact import check_output

    grid = tmp_path / "g.png"
    assert _cli("data", "show", world.root / "data", "--out", grid, "--rows", "2").exit_code == 0
    metrics = tmp_path / "m.json"
    assert _cli("evaluate", world.run, "--method", "discard", "--out", metrics).exit_code == 0
    preds = tmp_path / "p.csv"
    assert _cli("predict", world.bundle, world.inputs, "--out", preds).exit_code == 0
    found = {
        "backbone-run": world.run, "calibration": world.run / "calibration.safetensors", "recoverer": world.rec,
        "bundle": world.bundle, "dataset": world.root / "data", "grid": grid, "metrics": metrics, "predictions": preds,
    }
    for kind, path in found.items():
        assert identify(path) == kind, path
        check_output(path, kind, force=True)  # the same kind may be replaced
        for other in found:
            if other != kind:
                with pytest.raises(OutputError, match=f"holds an? dymo {kind}, not an? {other}"):
                    check_output(path, other, force=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "user.json").write_text('{"accuracy": 1}')
    (tmp_path / "user.csv").write_text("sample,label\n")
    assert identify(tmp_path / "empty") == "" and identify(tmp_path / "nothing") == ""
    assert identify(tmp_path / "user.json") is None and identify(tmp_path / "user.csv") is None
    interrupted = tmp_path / "interrupted"  # a build killed before its meta.json: ours, rebuilt in place
    (interrupted / "train").mkdir(parents=True)
    np.save(interrupted / "train" / "v0.npy", np.zeros(3))
    assert identify(interrupted) == "dataset"
    (interrupted / "notes").mkdir()  # ... but not once a user's folder sits beside the splits
    assert identify(interrupted) is None


def test_every_manifest_records_format_kind_version_and_what_it_was_made_from(world):
    import dymo
    from dymo.selection.calibration import Calibration
    from dymo.training.run import data_fingerprint
    from dymo.utils.artifact import dataset_fingerprint

    run_cfg = json.loads((world.run / "config.json").read_text())
    rec_cfg = json.loads((world.rec / "config.json").read_text())
    bundle_cfg = json.loads((world.bundle / "bundle.json").read_text())
    for cfg, artifact in ((run_cfg, "backbone-run"), (rec_cfg, "recoverer"), (bundle_cfg, "bundle")):
        assert (cfg["format"], cfg["artifact"], cfg["dymo_version"]) == (1, artifact, dymo.__version__) and cfg["kind"]
    assert run_cfg["data_fingerprint"] == data_fingerprint(world.data)
    assert rec_cfg["made_from"]["data_fingerprint"] == dataset_fingerprint(world.data["train"])
    cal = Calibration.load(world.run / "calibration.safetensors")
    assert cal.backbone_sha256 == sha256_file(world.run / "backbone.safetensors")
    made = bundle_cfg["made_from"]
    assert made["backbone_sha256"] == sha256_file(world.bundle / "backbone.safetensors") == cal.backbone_sha256
    assert made["recoverer_data_fingerprint"] == rec_cfg["made_from"]["data_fingerprint"]
    from dymo.utils.artifact import file_hashes

    assert bundle_cfg["files"] == file_hashes(world.bundle, skip=["bundle.json"])  # every file, each hash
    assert {"backbone.safetensors", "calibration.safetensors", "recovery/config.json"} <= set(bundle_cfg["files"])


# -- silent mix-ups ----------------------------------------------------------------------------------


def test_stale_calibration_is_refused_after_the_backbone_was_extended(world, tmp_path):
    run = _copy_run(world, tmp_path)
    _train(world.data, run, train=TrainConfig(epochs=2, batch_size=16), resume=True, data_ref={"name": str(world.root / "data")})
    res = _cli("evaluate", run, "--method", "dymo", "--recovery", world.rec)
    _cli_error(res, "calibration.safetensors: stale calibration", f"run `dymo calibrate {run}` again")
    _cli_error(_cli("bundle", run, "--recovery", world.rec, "--out", tmp_path / "b"), "stale calibration")
    assert not (tmp_path / "b").exists()
    assert _cli("calibrate", run).exit_code == 0  # recalibrating fixes it
    assert _cli("evaluate", run, "--method", "dymo", "--recovery", world.rec).exit_code == 0


def test_resume_of_a_checkpoint_from_another_config_is_refused(world, tmp_path):
    # What an interrupted restart with --lr 0.0005 left: its config.json, the old run's last.ckpt.
    run = _copy_run(world, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    new = TrainConfig(epochs=1, batch_size=16, lr=5e-4)
    cfg["train"] = new.to_dict()
    (run / "config.json").write_text(json.dumps(cfg))
    weights = (run / "backbone.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="last.ckpt was written by a run with another config"):
        _train(world.data, run, train=new, resume=True, data_ref=cfg["data"])
    assert (run / "backbone.safetensors").read_bytes() == weights
    # the restart itself, without --resume, is refused (it needs --force, which starts over cleanly)
    with pytest.raises(ConfigError, match="pass --resume to continue it or --force"):
        _train(world.data, run, train=new, data_ref=cfg["data"])
    _train(world.data, run, train=new, force=True, data_ref=cfg["data"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["train"]["lr"] == 5e-4 and not (run / "calibration.safetensors").exists()


def test_resume_with_other_data_is_refused(world, tmp_path):
    run = _copy_run(world, tmp_path)
    other = _data(seed=7)  # same specs and sizes, other samples
    assert other.specs == world.data.specs
    before = _tree(run)
    with pytest.raises(ConfigError, match="was trained on other data"):
        _train(other, run, train=TrainConfig(epochs=2, batch_size=16), resume=True)
    assert _tree(run) == before


def test_two_trainings_cannot_write_one_run_folder(world, tmp_path):
    from filelock import FileLock

    run = tmp_path / "run"
    run.mkdir()
    with FileLock(str(run / ".dymo.lock")):  # a training in progress holds it
        with pytest.raises(OutputError, match="another dymo training is writing this folder"):
            _train(world.data, run)
    assert [p.name for p in run.iterdir()] == [".dymo.lock"]  # nothing written
    _train(world.data, run)  # once released, the folder can be used
    assert (run / "backbone.safetensors").exists()


def test_benchmark_recomputes_cells_after_the_backbone_was_retrained(world, tmp_path):
    from dymo.evaluation.benchmark import BenchmarkConfig, run_benchmark

    run = _copy_run(world, tmp_path)
    cfg = BenchmarkConfig.from_dict(
        {"methods": ["discard", "dymo"], "missing": ["random:0.5"], "seeds": [0], "recovery": [str(world.rec)], "backbones": [str(run)], "batch_size": 16}
    )
    out = tmp_path / "bench"
    first = run_benchmark(world.data, cfg, out, progress=False)
    assert (first.computed, first.skipped) == (2, 0)
    again = run_benchmark(world.data, cfg, out, progress=False)
    assert (again.computed, again.skipped) == (0, 2)
    _train(world.data, run, train=TrainConfig(epochs=1, batch_size=16, seed=5), force=True, data_ref={"name": str(world.root / "data")})
    retrained = run_benchmark(world.data, cfg, out, progress=False)
    assert (retrained.computed, retrained.skipped) == (2, 0)  # both cells used the old weights
    cell = json.loads(next((out / "cells").glob("discard*.json")).read_text())
    assert cell["models"]["backbone"] == sha256_file(run / "backbone.safetensors")


def test_diverged_training_stops_and_exports_nothing(world, tmp_path):
    out = tmp_path / "run"
    res = _cli("train", "backbone", "--data", world.root / "data", "--out", out, "--epochs", "2", "--lr", "1e30", "--batch-size", "16", "--accelerator", "cpu")
    _cli_error(res, "training diverged: the loss is ", "lower --lr")  # nan or inf, whichever comes first
    assert not out.exists()  # no run folder, no weights
    for lr in ("inf", "nan"):
        res = _cli("train", "backbone", "--data", world.root / "data", "--out", out, "--lr", lr)
        _cli_error(res, "lr must be a positive finite number")
        assert not out.exists()


def test_non_finite_weights_are_never_exported(world, tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod._FiniteGuard, "on_train_batch_end", lambda *a, **k: None)  # let it diverge
    with pytest.raises(TrainingDiverged, match="holds NaN or Inf"):
        _train(world.data, tmp_path / "run", train=TrainConfig(epochs=1, batch_size=16, lr=1e30))
    assert not (tmp_path / "run").exists()


# -- integrity -------------------------------------------------------------------------------------------


def _flip_bit(path: Path, tensor: str, index: int, bit: int) -> None:
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    start = 8 + n + header[tensor]["data_offsets"][0] + 4 * index
    (value,) = struct.unpack("<I", raw[start : start + 4])
    raw[start : start + 4] = struct.pack("<I", value ^ (1 << bit))
    path.write_bytes(bytes(raw))


def test_a_flipped_bit_in_bundle_weights_is_detected(world, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(world.bundle, dst)
    name = next(k for k in DyMoClassifier.from_pretrained(dst).backbone.state_dict() if k.endswith("classifier.bias"))
    _flip_bit(dst / "backbone.safetensors", name, 1, 30)
    with pytest.raises(BundleError, match="backbone.safetensors: truncated or corrupt: its sha256 differs from the manifest"):
        DyMoClassifier.from_pretrained(dst)
    res = _cli("predict", dst, world.inputs, "--out", tmp_path / "p.csv")
    _cli_error(res, "backbone.safetensors: truncated or corrupt", "--no-verify")
    assert not (tmp_path / "p.csv").exists()
    flipped = DyMoClassifier.from_pretrained(dst, verify=False)  # skipping the check is explicit
    assert float(flipped.backbone.state_dict()[name][1].abs()) > 1e30


def test_bundle_is_self_contained_and_predicts_after_a_copy(world, tmp_path):
    bundle = tmp_path / "made" / "bundle"
    res = _cli("bundle", world.run, "--recovery", world.retrieval, "--out", bundle)
    assert res.exit_code == 0, res.output
    batch = world.data["test"].batch(range(12))
    batch.observed[::2, 0] = False
    batch.observed[1::3, 2] = False
    expected = DyMoClassifier.from_pretrained(bundle).predict(batch)
    assert bool((~batch.observed).any())
    # the bundle moves to another machine; the dataset it was trained from is not there
    moved = Path(tempfile.mkdtemp(dir=tmp_path)) / "elsewhere" / "bundle"
    shutil.copytree(bundle, moved)
    shutil.rmtree(tmp_path / "made")
    data_dir = world.root / "data"
    hidden = world.root / "data-away"
    os.replace(data_dir, hidden)
    try:
        got = DyMoClassifier.from_pretrained(moved).predict(batch)
    finally:
        os.replace(hidden, data_dir)
    assert torch.equal(got.class_index, expected.class_index)
    assert torch.equal(got.used, expected.used)
    # same process, same batch: only the loading differs, so any difference would be a real one
    torch.testing.assert_close(got.probabilities, expected.probabilities, atol=1e-6, rtol=0)
    meta = json.loads((moved / "bundle.json").read_text())
    assert any(f.startswith("recovery/train_data/") for f in meta["files"])


# -- the error boundary ----------------------------------------------------------------------------------


def _raise_on_write(monkeypatch, code: int) -> None:
    """Every dymo writer (atomic files, staged folders) fails as on a full / read-only disk."""
    import dymo.utils.artifact
    import dymo.utils.io

    def fail(*args, dir=None, **kwargs):
        raise OSError(code, os.strerror(code), str(dir))

    monkeypatch.setattr(dymo.utils.io.tempfile, "mkstemp", fail)
    monkeypatch.setattr(dymo.utils.artifact.tempfile, "mkdtemp", fail)


def _command(world, tmp_path: Path, name: str) -> list:
    return {
        "predict": ["predict", world.bundle, world.inputs, "--out", tmp_path / "p.csv"],
        "bundle": ["bundle", world.run, "--recovery", world.rec, "--out", tmp_path / "b"],
        "train": ["train", "backbone", "--data", world.root / "data", "--out", tmp_path / "r", "--epochs", "1", "--accelerator", "cpu"],
        "train-recovery": ["train", "recovery", "--data", world.root / "data", "--model", "mean", "--out", tmp_path / "m"],
        "data-build": ["data", "build", "polymnist-small", "--root", tmp_path / "d", "--n-train", "20", "--n-val", "10", "--n-test", "10"],
        "calibrate": ["calibrate", _copy_run(world, tmp_path)],
        "evaluate": ["evaluate", world.run, "--method", "discard", "--out", tmp_path / "m.json"],
        "data-show": ["data", "show", world.root / "data", "--out", tmp_path / "g.png", "--rows", "2"],
    }[name]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES], ids=["full", "read-only", "permission"])
@pytest.mark.parametrize("name", ["predict", "bundle", "train", "train-recovery", "data-build", "calibrate", "evaluate", "data-show"])
def test_full_or_read_only_disk_is_one_error_line(world, tmp_path, monkeypatch, name, code):
    args = _command(world, tmp_path, name)
    before = _tree(tmp_path)
    _raise_on_write(monkeypatch, code)
    res = _cli(*args)
    named = {"predict": "p.csv", "bundle": "/b:", "train": "/r/config.json", "train-recovery": "/m:", "data-build": ".npy:",
             "calibrate": "calibration.safetensors", "evaluate": "m.json", "data-show": "g.png"}[name]
    line = _cli_error(res, f"{tmp_path}", f"{named}", os.strerror(code))  # the file the user asked for
    assert ("disk is full" in line) if code == errno.ENOSPC else ("read-only" in line)
    assert ".tmp" not in line and "/." not in line  # not a hidden temporary
    assert _tree(tmp_path) == before  # no partial output


def test_full_disk_while_writing_a_checkpoint(world, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(run_mod.torch, "save", fail)
    res = _cli(*_command(world, tmp_path, "train"))
    _cli_error(res, "/checkpoints/", ".ckpt: could not write the checkpoint")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "option, value, named",
    [
        ("--devices", "abc", "--devices 'abc'"),
        ("--accelerator", "gpu", "--accelerator 'gpu'"),
        ("--strategy", "foo", "--strategy 'foo'"),
        ("--precision", "bogus", "--precision 'bogus'"),
        ("--lr", "nan", "lr must be a positive finite number"),
        ("--batch-size", "0", "batch_size must be >= 1"),
    ],
    ids=["devices", "accelerator", "strategy", "precision", "lr-nan", "batch-size"],
)
def test_bad_training_options_are_one_error_line_and_leave_no_run_folder(world, tmp_path, option, value, named):
    if option == "--accelerator" and (torch.cuda.is_available() or torch.backends.mps.is_available()):
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    res = _cli("train", "backbone", "--data", world.root / "data", "--out", out, "--epochs", "1", option, value)
    _cli_error(res, named)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, named",
    [
        (["calibrate", "{run}", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["evaluate", "{run}", "--batch-size", "-3"], "--batch-size must be >= 1, got -3"),
        (["evaluate", "{run}", "--method", "dymo,dymo"], "--method: ['dymo'] given more than once"),
        (["predict", "{bundle}", "{inputs}", "--out", "{tmp}/p.txt"], "--out {tmp}/p.txt: must end in .csv or .json"),
        (["predict", "{bundle}", "{inputs}", "--out", "{tmp}/p.csv", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["train", "recovery", "--data", "{data}", "--model", "mean", "--out", "{tmp}/m", "--epochs", "0"], "--epochs must be >= 1"),
    ],
    ids=["calibrate-batch-size", "evaluate-batch-size", "evaluate-duplicate-method", "predict-suffix", "predict-batch-size", "recovery-epochs"],
)
def test_bad_options_are_one_error_line(world, tmp_path, args, named):
    fill = {"run": world.run, "bundle": world.bundle, "inputs": world.inputs, "tmp": tmp_path, "data": world.root / "data"}
    res = _cli(*[a.format(**fill) for a in args])
    _cli_error(res, named.format(**fill))
    assert list(tmp_path.iterdir()) == []


def _damage(world, tmp_path: Path, case: str) -> tuple[list, str]:
    if case.startswith("bundle"):
        dst = tmp_path / "bundle"
        shutil.copytree(world.bundle, dst)
        meta = json.loads((dst / "bundle.json").read_text())
        if case == "bundle-json-list":
            meta = [meta]
        else:
            meta.pop("specs")
        (dst / "bundle.json").write_text(json.dumps(meta))
        return ["predict", dst, world.inputs, "--out", tmp_path / "p.csv"], "bundle.json: "
    if case.startswith("meta"):
        dst = tmp_path / "data"
        shutil.copytree(world.root / "data", dst)
        meta = json.loads((dst / "meta.json").read_text())
        if case == "meta-json-list":
            meta = [meta]
        else:
            meta.pop("specs")
        (dst / "meta.json").write_text(json.dumps(meta))
        return ["data", "info", dst], "meta.json: "
    run = _copy_run(world, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg.pop("data")
    (run / "config.json").write_text(json.dumps(cfg))
    return ["calibrate", run], "config.json: key 'data' missing"


@pytest.mark.parametrize("case", ["bundle-json-list", "bundle-json-no-specs", "meta-json-list", "meta-json-no-specs", "run-config-no-data"])
def test_json_with_the_wrong_structure_is_one_error_line(world, tmp_path, case):
    args, named = _damage(world, tmp_path, case)
    line = _cli_error(_cli(*args), named)
    assert ("expected a JSON object" in line) if case.endswith("list") else ("missing" in line)


def test_ctrl_c_exits_130_with_the_resume_command(world, tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "train_backbone", interrupted)
    out = tmp_path / "run"
    res = _cli("train", "backbone", "--data", world.root / "data", "--out", out, "--epochs", "3", "--lr", "0.002")
    line = _cli_error(res, "interrupted; resume with: dymo train backbone", code=130)
    assert re.search(rf"--out {re.escape(str(out))} .*--epochs 3 .*--lr 0.002 .*--resume$", line), line
    # a benchmark resumes by running the same command again; a prediction has nothing to resume
    import dymo.evaluation.benchmark
    import dymo.inference.folder

    monkeypatch.setattr(dymo.evaluation.benchmark, "run_benchmark", interrupted)
    res = _cli("benchmark", "--data", world.root / "data", "--out", tmp_path / "bench", "--methods", "discard", "--recovery", "mean", "--seeds", "0")
    line = _cli_error(res, "interrupted; resume with: dymo benchmark", code=130)
    assert f"--out {tmp_path / 'bench'}" in line and "--methods discard" in line and "--resume" not in line
    monkeypatch.setattr(dymo.inference.folder.InputFolder, "scan", interrupted)
    res = _cli("predict", world.bundle, world.inputs, "--out", tmp_path / "p.csv")
    _cli_error(res, "interrupted; nothing half-written was left behind", code=130)
    assert not (tmp_path / "p.csv").exists()


def test_ctrl_c_inside_lightning_keeps_the_run_for_resume(world, tmp_path, monkeypatch):
    def stop(self, trainer, *a, **k):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_mod._FiniteGuard, "on_train_batch_end", stop)
    run = tmp_path / "run"
    res = _cli("train", "backbone", "--data", world.root / "data", "--out", run, "--epochs", "3", "--batch-size", "16", "--accelerator", "cpu")
    _cli_error(res, "interrupted; resume with:", "--resume", code=130)  # not Lightning's sys.exit(1)
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "backbone.safetensors").exists()
    monkeypatch.undo()
    res = _cli("train", "backbone", "--data", world.root / "data", "--out", run, "--epochs", "3", "--batch-size", "16", "--accelerator", "cpu", "--resume")
    assert res.exit_code == 0, res.output
    assert (run / "backbone.safetensors").exists()


def test_every_command_runs_inside_the_error_boundary():
    import typer.main

    def commands(cmd, path=()):
        subs = getattr(cmd, "commands", None)
        if subs is None:
            yield " ".join(path), cmd
            return
        for name, sub in subs.items():
            yield from commands(sub, (*path, name))

    found = dict(commands(typer.main.get_command(app)))
    assert {"predict", "bundle", "train backbone", "train recovery", "data build", "benchmark"} <= set(found)
    for name, cmd in found.items():
        assert getattr(cmd.callback, "dymo_error_boundary", False), f"`dymo {name}` is not wrapped in friendly_errors"


def test_debug_shows_the_traceback(world):
    res = _cli("evaluate", world.run, "--batch-size", "0")
    assert res.exit_code == 2 and "Traceback" not in res.output
    res = runner.invoke(app, ["--debug", "evaluate", str(world.run), "--batch-size", "0"])
    assert res.exit_code == 1 and isinstance(res.exception, ConfigError)  # raised, with its traceback


def test_an_unexpected_error_is_one_line_pointing_at_debug(world, monkeypatch):
    import dymo.training.run

    def bug(*a, **k):
        raise KeyError("oops")

    monkeypatch.setattr(dymo.training.run, "load_backbone", bug)
    line = _cli_error(_cli("evaluate", world.run), "unexpected KeyError", "dymo --debug", code=1)
    assert "oops" in line


# -- the catalogue in docs/errors.md agrees with the tests ----------------------------------------------


#: The sections of docs/errors.md with test tables, and the test file their rows default to.
SECTIONS = {"## Catalogue": "test_reliability_errors.py", "## Interruption": "test_atomic.py", "## Safe outputs": "test_safety.py"}


def _catalogue_rows() -> list[tuple[str, str, str]]:
    """(case, test cell, default test file) of every table row in the sections above."""
    rows, default = [], None
    for line in (ROOT / "docs" / "errors.md").read_text().splitlines():
        if line.startswith("## "):
            default = next((f for h, f in SECTIONS.items() if line.startswith(h)), None)
            continue
        if default is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or set(cells[0]) <= {"-", ":"} or cells[0] in ("case", "what"):
            continue
        if cells[0].startswith("**") and not any(cells[1:]):
            continue  # a group heading inside a table
        rows.append((cells[0], cells[-1], default))
    return rows


def _named_tests(cell: str, default: str) -> list[tuple[str, str]]:
    """``test_x``, ``file.py::test_x``, ``tests/file.py::test_x``, ``test_x[id]``, and ``::test_x``
    (the file of the previous reference in the cell)."""
    out: list[tuple[str, str]] = []
    for ref in re.findall(r"`([^`]*test_[^`]*)`", cell):
        m = re.fullmatch(r"(?:(?:tests/)?(test_\w+\.py)?::)?(test_\w+)(?:\[.*\])?", ref.strip())
        assert m is not None, f"docs/errors.md: cannot read the test reference {ref!r}"
        same_file = ref.strip().startswith("::") and out
        out.append((m.group(1) or (out[-1][0] if same_file else default), m.group(2)))
    return out


def test_every_catalogue_row_names_tests_that_exist():
    defined = {f.name: set(re.findall(r"^def (test_\w+)\(", f.read_text(), flags=re.M)) for f in (ROOT / "tests").glob("test_*.py")}
    rows = _catalogue_rows()
    assert len(rows) > 80 and any(d == "test_safety.py" for _, _, d in rows)
    for case, cell, default in rows:
        refs = _named_tests(cell, default)
        assert refs, f"docs/errors.md row {case!r} names no test"
        for file, name in refs:
            assert name in defined.get(file, set()), f"docs/errors.md row {case!r}: tests/{file}::{name} does not exist"


def test_every_safety_test_is_in_the_catalogue():
    text = (ROOT / "docs" / "errors.md").read_text()
    safety_part = text[text.index("## Safe outputs"):]
    for name in re.findall(r"^def (test_\w+)\(", Path(__file__).read_text(), flags=re.M):
        if name.startswith("test_every_"):
            continue  # these checks themselves
        assert f"`{name}" in safety_part, f"{name} is not in the catalogue of docs/errors.md"
