"""TCGA kidney (three omics, natural missingness) from the AttentionMOI example files: the build,
its splits and standardisation, the errors on bad files, and `dymo data build` / `fit` /
`predict` on it through the CLI."""

from __future__ import annotations

import gzip
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dymo.cli.main import app
from dymo.data.tcga import CLASS_NAMES, MODALITIES, TCGAKidneyConfig, build_tcga_kidney
from dymo.errors import ConfigError, DataError

SOURCE = Path(os.environ.get("DYMO_TCGA_KIDNEY", Path(__file__).resolve().parents[2] / "shared" / "data" / "tcga-kidney"))
if not (SOURCE / "label.csv").is_file():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must read the TCGA kidney files, not found in {SOURCE}")
    pytest.skip(f"TCGA kidney files not found in {SOURCE} (set DYMO_TCGA_KIDNEY)", allow_module_level=True)


def run_cli(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def ds():
    return build_tcga_kidney(TCGAKidneyConfig(source=str(SOURCE)))


def _raw(name: str) -> pd.DataFrame:
    return pd.read_csv(SOURCE / dict((m, f) for m, f, _ in MODALITIES)[name], index_col=0)


def test_sizes_classes_and_natural_missingness(ds):
    assert ds.modalities == ("rna", "met", "cnv") and ds.class_names == CLASS_NAMES
    assert all(s.kind == "vector" and s.shape == (49,) for s in ds.specs)
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sum(sizes.values()) == 909 - 44  # labelled patients with at least one modality
    # scikit-learn's train_test_split rounds the held-out part up
    assert sizes["test"] == math.ceil(0.2 * 865) and sizes["val"] == math.ceil(0.125 * (865 - sizes["test"]))
    observed = np.concatenate([ds[s].observed for s in ("train", "val", "test")])
    # among the 909 labelled patients RNA misses for 48, methylation for 273, CNV for 55; the 44
    # left out miss all three
    assert (~observed).sum(0).tolist() == [48 - 44, 273 - 44, 55 - 44]
    assert observed.any(1).all()
    assert ds.provenance["patients_without_modality"] == 44
    assert ds.provenance["empty_values"] == {"rna": 0, "met": 3, "cnv": 0}
    assert set(ds.provenance["files"]) == {"label.csv", "rna.csv.gz", "met.csv.gz", "cnv.csv.gz"}


def test_stratified_disjoint_and_seeded(ds):
    labels = {s: ds[s].labels for s in ("train", "val", "test")}
    share = {s: np.bincount(y, minlength=3) / len(y) for s, y in labels.items()}
    assert np.abs(share["test"] - share["train"]).max() < 0.02
    other = build_tcga_kidney(TCGAKidneyConfig(source=str(SOURCE), split_seed=1))
    # same patients, another partition: the test labels differ somewhere, the totals do not
    assert sum(len(other[s]) for s in other.splits) == sum(len(ds[s]) for s in ds.splits)
    assert not np.array_equal(other["test"].arrays["rna"], ds["test"].arrays["rna"])
    with pytest.raises(ConfigError, match="test_fraction"):
        TCGAKidneyConfig(source=str(SOURCE), test_fraction=1.0)


def test_standardised_with_the_training_patients_that_have_the_modality(ds):
    for j, s in enumerate(ds.specs):
        train = ds["train"]
        x = train.arrays[s.name][train.observed[:, j]].astype(np.float64)
        assert np.abs(x.mean(0)).max() < 1e-4
        assert np.all((np.abs(x.std(0) - 1) < 1e-3) | (x.std(0) < 1e-6))
        for split in ds.splits.values():  # a missing slot holds zeros
            assert not split.arrays[s.name][~split.observed[:, j]].any()


def test_values_are_the_files_values(ds):
    """Undo the standardisation: a test patient's stored row is its row of the file."""
    rna = _raw("rna")
    spec = ds.specs[0]
    mean, std = np.asarray(spec.extra["mean"]), np.asarray(spec.extra["std"])
    assert spec.extra["columns"] == [str(c) for c in rna.columns]
    test = ds["test"]
    rows = np.asarray(test.arrays["rna"], dtype=np.float64)[test.observed[:, 0]] * std + mean
    found = rna.to_numpy()[np.argmin(((rna.to_numpy()[:, None, :] - rows[None]) ** 2).sum(-1), axis=0)]
    np.testing.assert_allclose(rows, found, atol=1e-4)


def _copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(SOURCE, src)
    return src


def test_bad_files_name_the_file(tmp_path):
    src = _copy(tmp_path)
    (src / "met.csv.gz").unlink()
    with pytest.raises(DataError, match=r"met\.csv\.gz: modality file missing"):
        build_tcga_kidney(TCGAKidneyConfig(source=str(src)))
    src = _copy(tmp_path / "b")
    labels = (src / "label.csv").read_text().splitlines()
    (src / "label.csv").write_text("\n".join([labels[0], labels[1].rsplit(",", 1)[0] + ",7", *labels[2:]]) + "\n")
    with pytest.raises(DataError, match=r"label\.csv: row 2 has label '7'"):
        build_tcga_kidney(TCGAKidneyConfig(source=str(src)))
    src = _copy(tmp_path / "c")
    with gzip.open(src / "cnv.csv.gz", "rt") as f:
        lines = f.read().splitlines()
    with gzip.open(src / "cnv.csv.gz", "wt") as f:
        f.write("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DataError, match=r"cnv\.csv\.gz: patient .* has two rows"):
        build_tcga_kidney(TCGAKidneyConfig(source=str(src)))
    with pytest.raises(ConfigError, match="source=PATH"):
        build_tcga_kidney(TCGAKidneyConfig())


@pytest.mark.slow
def test_build_fit_predict_through_the_cli(tmp_path, monkeypatch, ds):
    """The three commands on the real files: the predictions on raw CSVs of the test patients
    (the files' own rows, ungzipped, missing modalities absent) are those of the built test split."""
    from dymo.inference.classifier import DyMoClassifier

    monkeypatch.setenv("DYMO_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    out = run_cli(["data", "build", "tcga-kidney", "--source", str(SOURCE)])
    assert "left out: 44 labelled patients with no modality" in out
    run_cli(["fit", "tcga-kidney", "--out", "bundle", "--epochs", "2"])
    clf = DyMoClassifier.from_pretrained(tmp_path / "bundle")
    test = ds["test"]
    expected = clf.predict(test.all())
    # the raw input folder: each test patient's rows of the source files, found by value
    folder = tmp_path / "new"
    folder.mkdir()
    ids = [f"p{i}" for i in range(len(test))]
    for j, (name, _, _) in enumerate(MODALITIES):
        spec = ds.specs[j]
        raw = np.asarray(test.arrays[name], dtype=np.float64) * np.asarray(spec.extra["std"]) + np.asarray(spec.extra["mean"])
        keep = test.observed[:, j]
        table = pd.DataFrame(raw[keep], columns=spec.extra["columns"])
        table.insert(0, "id", np.asarray(ids)[keep])
        table.to_csv(folder / f"{name}.csv", index=False, float_format="%.9g")
    run_cli(["predict", "bundle", str(folder), "--out", "preds.csv"])
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert (preds["status"] == "ok").all() and len(preds) == len(test)
    order = [ids.index(i) for i in preds.iloc[:, 0]]
    got = [CLASS_NAMES.index(c) for c in preds["predicted_class"].astype(str)]
    assert got == expected.class_index.numpy()[order].tolist()
