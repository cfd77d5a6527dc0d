"""TCGA kidney cancer: three omics modalities with their own (natural) missingness.

The files are those the ``AttentionMOI==0.1.2`` sdist ships in ``AttentionMOI/example/``
(Apache-2.0; how to get them: ``docs/datasets.md``):

- ``label.csv``: ``patient_id,label``; 909 patients, labels ``0 / 1 / 2`` = the subtypes
  KICH / KIRC / KIRP (108 / 522 / 279 patients);
- ``rna.csv.gz``, ``met.csv.gz``, ``cnv.csv.gz``: one row per patient who has that modality, the
  first column the patient id, then 49 features (gene expression, DNA methylation, copy-number
  variation).

A labelled patient absent from a modality's file misses that modality, in every split: RNA is
missing for 48 labelled patients, methylation for 273 and CNV for 55. Patients with no modality
at all (44) cannot be classified and are left out; rows of patients without a label (28 per
file) are not used. Both counts are recorded in ``meta.json`` (``"provenance"``), with each
file's sha256.

The split is stratified by class and seeded by ``split_seed``: ``test_fraction`` of the usable
patients are the test split, ``val_fraction`` of the rest the validation split. 909 patients
make one split noisy, so results average over several ``split_seed`` values (docs/results.md
uses 0..4). Each modality is standardised with the mean and standard deviation of the
*training* patients that have it (stored in the spec, so ``predict`` applies the same to raw
values). The 3 empty methylation values (one each for 3 patients) are set to that training mean
(0 after standardisation) and counted in the build record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dymo.config import Config
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.entry import DatasetEntry, build_record, one_step, source_folder
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError

BUILDER_VERSION = 1
CLASS_NAMES: list[str] = ["KICH", "KIRC", "KIRP"]
#: (modality name, file name, what it measures)
MODALITIES: tuple[tuple[str, str, str], ...] = (
    ("rna", "rna.csv.gz", "gene expression"),
    ("met", "met.csv.gz", "DNA methylation"),
    ("cnv", "cnv.csv.gz", "copy-number variation"),
)
LABEL_FILE = "label.csv"


@dataclass
class TCGAKidneyConfig(Config):
    """``source``: the folder holding ``label.csv`` and the three ``.csv.gz`` files;
    ``split_seed``: which stratified split; ``test_fraction`` of the patients are tested,
    ``val_fraction`` of the others validate."""

    source: str = ""
    split_seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.125
    standardize: bool = True

    def validate(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.split_seed < 0:
            raise ConfigError(f"split_seed must be >= 0, got {self.split_seed}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_labels(path: Path) -> tuple[list[str], np.ndarray]:
    """``label.csv`` -> (patient ids, labels int64); DataError naming the file and row."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: label file missing (expected patient_id,label)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: unreadable CSV ({e})") from None
    if list(table.columns[:2]) != ["patient_id", "label"] or table.shape[1] != 2:
        raise DataError(f"{path}: expected the columns patient_id,label, got {list(table.columns)}")
    labels = pd.to_numeric(table["label"], errors="coerce").to_numpy()
    bad = ~np.isin(labels, np.arange(len(CLASS_NAMES)))
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise DataError(f"{path}: row {row + 2} has label {table['label'].iloc[row]!r}; expected 0, 1 or 2 ({', '.join(CLASS_NAMES)})")
    ids = table["patient_id"].astype(str).tolist()
    dup = table["patient_id"].duplicated()
    if dup.any():
        row = int(np.nonzero(dup.to_numpy())[0][0])
        raise DataError(f"{path}: patient {ids[row]!r} is listed twice (row {row + 2})")
    return ids, labels.astype(np.int64)


def read_modality(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """One omics file -> (patient ids, feature names, values float64 ``[N, F]``, NaN = empty)."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: modality file missing")
    try:
        table = pd.read_csv(path, index_col=0)
    except (ValueError, UnicodeDecodeError, OSError, EOFError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: unreadable CSV ({e})") from None
    if table.shape[1] == 0:
        raise DataError(f"{path}: no feature column after the patient id")
    ids = [str(i) for i in table.index]
    dup = table.index.duplicated()
    if dup.any():
        row = int(np.nonzero(dup)[0][0])
        raise DataError(f"{path}: patient {ids[row]!r} has two rows (row {row + 2})")
    try:
        values = table.to_numpy(dtype=np.float64)
    except ValueError:
        col = next(c for c in table.columns if pd.to_numeric(table[c], errors="coerce").isna().sum() > table[c].isna().sum())
        raise DataError(f"{path}: column {col!r} holds a value that is not a number") from None
    if np.isinf(values).any():
        row = int(np.nonzero(np.isinf(values).any(axis=1))[0][0])
        raise DataError(f"{path}: patient {ids[row]!r} has an infinite value")
    return ids, [str(c) for c in table.columns], values


def stratified_split(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """(train, val, test) index arrays: a stratified test split, then a stratified validation
    split of the rest (scikit-learn's ``train_test_split``, seeded)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction, stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def build_tcga_kidney(config: TCGAKidneyConfig) -> SplitDataset:
    cfg = config
    root = source_folder(cfg.source, "tcga-kidney", f"{LABEL_FILE} and {', '.join(f for _, f, _ in MODALITIES)}", "TCGA kidney")
    ids, labels = read_labels(root / LABEL_FILE)
    row_of = {pid: i for i, pid in enumerate(ids)}
    n = len(ids)
    values: dict[str, np.ndarray] = {}
    observed = np.zeros((n, len(MODALITIES)), dtype=bool)
    record: dict[str, Any] = {"files": {LABEL_FILE: _sha256(root / LABEL_FILE)}, "unlabelled_rows": {}, "empty_values": {}}
    columns: dict[str, list[str]] = {}
    for j, (name, file, _) in enumerate(MODALITIES):
        path = root / file
        mids, cols, x = read_modality(path)
        record["files"][file] = _sha256(path)
        full = np.zeros((n, x.shape[1]), dtype=np.float64)
        rows = np.array([row_of.get(pid, -1) for pid in mids])
        known = rows >= 0
        full[rows[known]] = x[known]
        observed[rows[known], j] = True
        record["unlabelled_rows"][name] = int((~known).sum())
        empty_rows = np.isnan(full).all(axis=1) & observed[:, j]
        if empty_rows.any():
            raise DataError(f"{path}: patient {ids[int(np.nonzero(empty_rows)[0][0])]!r} has a row with no value")
        values[name], columns[name] = full, cols
    usable = observed.any(axis=1)
    record["patients_without_modality"] = int((~usable).sum())
    keep = np.nonzero(usable)[0]
    labels, observed = labels[keep], observed[keep]
    values = {k: v[keep] for k, v in values.items()}
    record["notes"] = [
        f"left out: {record['patients_without_modality']} labelled patients with no modality",
        "not used: rows of patients without a label (" + ", ".join(f"{k} {v}" for k, v in record["unlabelled_rows"].items()) + ")",
    ]
    train, val, test = stratified_split(labels, cfg.test_fraction, cfg.val_fraction, cfg.split_seed)
    specs = []
    for j, (name, file, what) in enumerate(MODALITIES):
        x, have = values[name], observed[:, j]
        fit_rows = train[have[train]]
        mean = np.nanmean(x[fit_rows], axis=0)
        empty = np.isnan(x) & have[:, None]
        record["empty_values"][name] = int(empty.sum())
        if empty.any():
            record["notes"].append(f"{name}: {int(empty.sum())} empty value(s) set to the training mean")
        x = np.where(empty, mean, x)  # an empty value becomes the training mean (0 once standardised)
        extra: dict[str, Any] = {"source": file, "measures": what, "columns": columns[name]}
        if cfg.standardize:
            std = x[fit_rows].std(axis=0)
            std = np.where(std > 1e-12, std, 1.0)
            x = np.where(have[:, None], (x - mean) / std, 0.0)
            extra.update(mean=mean.tolist(), std=std.tolist())
        else:
            x = np.where(have[:, None], x, 0.0)
        values[name] = x.astype(np.float32)
        specs.append(ModalitySpec(name, "vector", (x.shape[1],), extra=extra))
    splits = {
        split: MultimodalDataset(
            specs, {k: v[idx] for k, v in values.items()}, labels[idx], CLASS_NAMES, observed[idx], name=f"tcga-kidney/{split}"
        )
        for split, idx in (("train", train), ("val", val), ("test", test))
    }
    return SplitDataset(
        "tcga-kidney", specs, list(CLASS_NAMES), splits, build_record("tcga-kidney", BUILDER_VERSION, cfg), record
    )


DATASETS = (
    DatasetEntry(
        "tcga-kidney",
        "TCGA kidney cancer subtypes (KICH / KIRC / KIRP): RNA, methylation and CNV (49 features each), "
        "natural missingness; read from the AttentionMOI example files (source=DIR)",
        TCGAKidneyConfig,
        {},
        BUILDER_VERSION,
        one_step(build_tcga_kidney),
        external=True,
    ),
)
