"""MNIST-SVHN-Text (Sutter et al. 2020/2021, "MoPoE"), read from the published on-disk layout,
plus MoPoE's character-text helpers (shared by the MNIST-Text and CelebA loaders).

Sources (read, not copied): ``thomassutter/MoPoE`` (``mnistsvhntext/SVHNMNISTDataset.py``,
``utils/text.py``, ``mnistsvhntext/flags.py``, ``alphabet.json``), the index-pairing script
``iffsid/mmvae`` ``bin/make-mnist-svhn-idx.py``, and the DyMo authors' copy
``siyi-wind/DyMo`` ``datasets/MSTDataset.py`` + ``configs/dataset/MST.yaml`` (which adds a
``val`` split and keeps the index files in ``MNIST_SVHN/processed``).

Layout under ``source`` (``<split>`` is ``train``, ``val`` or ``test``)::

    MNIST/processed/training.pt | val.pt | test.pt     torch (uint8 images [N,28,28], int64 labels [N])
      (or MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz] + -labels-idx1-ubyte[.gz], torchvision's raw files)
    SVHN/train_32x32.mat | val_32x32.mat | test_32x32.mat    X uint8 [32,32,3,N], y [N,1] (10 = digit 0)
    MNIST_SVHN/processed/<split>-ms-mnist-idx.pt             int64 [P]: row of MNIST for pair p
    MNIST_SVHN/processed/<split>-ms-svhn-idx.pt              int64 [P]: row of SVHN for pair p
      (the MoPoE/mmvae location ``<split>-ms-*-idx.pt`` directly in ``source`` is accepted too)

Pair ``p`` is (MNIST row ``mnist_idx[p]``, SVHN row ``svhn_idx[p]``); both must show the same
digit. The text modality is MoPoE's ``create_text_from_label_mnist``: the English digit name
written at a random offset ``randint(0, L - 1 - len(name))`` into a string of ``L = 8`` blanks.
MoPoE redraws the offset at every ``__getitem__``; here it is drawn once per pair from
``seed``, so a built dataset is fixed. ``.pt`` files are read with
``torch.load(weights_only=True)`` (tensors, tuples and lists only; nothing is unpickled).

Text encoding (all dymo text modalities): character ``c`` becomes ``alphabet.find(c) + 1``
(MoPoE's ``char2Index`` + 1), so id 0 is padding: it fills positions past the end of a string
and stands for a character outside the alphabet (MoPoE leaves that one-hot row empty).
MoPoE's blank ``' '`` is a character of the alphabet (id 70), not padding.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dymo.config import Config
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.entry import DatasetEntry, build_record, source_folder
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BUILDER_VERSION = 1
Progress = Callable[[int, int], None]

#: MoPoE's ``alphabet.json`` joined into one string (71 characters; ``'-'`` appears twice, and
#: ``str.find`` maps both to the first).
MOPOE_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"\\/|_@#$%^&*~`+-=<>()[]{} \n"
#: ids 1..71 are characters, 0 is padding.
TEXT_VOCAB_SIZE = len(MOPOE_ALPHABET) + 1
DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLASS_NAMES: list[str] = [str(d) for d in range(10)]
MST_TEXT_LENGTH = 8
SPLITS: tuple[str, ...] = ("train", "val", "test")
# per split: (MNIST .pt, MNIST raw prefix, SVHN .mat)
_FILES = {
    "train": ("training.pt", "train", "train_32x32.mat"),
    "val": ("val.pt", None, "val_32x32.mat"),
    "test": ("test.pt", "t10k", "test_32x32.mat"),
}


# -- character text (MoPoE) ---------------------------------------------------------------


def read_alphabet(path: str | os.PathLike) -> str:
    """MoPoE's ``alphabet.json``: a JSON list of one-character strings, joined."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable alphabet file ({e})") from None
    if not isinstance(items, list) or not items or not all(isinstance(c, str) and len(c) == 1 for c in items):
        raise DataError(f"{path}: an alphabet file is a JSON list of one-character strings")
    return "".join(items)


def encode_text(texts: Sequence[str], length: int, alphabet: str = MOPOE_ALPHABET) -> np.ndarray:
    """Strings -> int64 ``[N, length]`` character ids (``alphabet.find(c) + 1``; 0 = padding or a
    character outside the alphabet). Longer strings are cut, shorter ones padded with 0."""
    if length < 1:
        raise ConfigError(f"text length must be >= 1, got {length}")
    size = max(256, *(ord(c) + 1 for c in alphabet)) if alphabet else 256
    lookup = np.zeros(size, dtype=np.int64)
    for i in range(len(alphabet) - 1, -1, -1):  # descending: the first occurrence wins, as str.find
        lookup[ord(alphabet[i])] = i + 1
    out = np.zeros((len(texts), length), dtype=np.int64)
    for r, text in enumerate(texts):
        codes = np.fromiter((ord(c) for c in text[:length]), dtype=np.int64, count=min(len(text), length))
        out[r, : len(codes)] = np.where(codes < size, lookup[np.minimum(codes, size - 1)], 0)
    return out


def decode_text(ids: np.ndarray | Sequence[int], alphabet: str = MOPOE_ALPHABET) -> str:
    """Character ids (one row) -> string; padding (0) and out-of-range ids are dropped."""
    return "".join(alphabet[i - 1] for i in (int(v) for v in np.asarray(ids).ravel()) if 0 < i <= len(alphabet))


def digit_texts(labels: np.ndarray, length: int = MST_TEXT_LENGTH, seed: int | np.random.Generator = 0) -> list[str]:
    """MoPoE's ``create_text_from_label_mnist``: the digit's English name at a random offset in
    ``[0, length - 1 - len(name)]`` of a string of ``length`` blanks (one offset per label)."""
    longest = max(len(n) for n in DIGIT_NAMES)
    if length < longest + 1:
        raise ConfigError(f"digit text length must be >= {longest + 1} (MoPoE's offset rule), got {length}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.array([len(DIGIT_NAMES[d]) for d in range(10)])[labels]
    starts = rng.integers(0, length - sizes)  # high exclusive: 0 .. length-1-len(name)
    return [" " * s + DIGIT_NAMES[d] + " " * (length - s - len(DIGIT_NAMES[d])) for d, s in zip(labels, starts, strict=True)]


# -- readers ------------------------------------------------------------------------------


def torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with an error that names the file."""
    import torch

    if not path.is_file():
        raise DataError(f"{path}: file missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad/unsafe files
        raise DataError(
            f"{path}: not a torch file readable with weights_only=True (only tensors, lists, tuples, "
            f"numbers and strings are accepted) ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def _as_index(obj: Any, path: Path) -> np.ndarray:
    try:
        arr = np.asarray(obj.numpy() if hasattr(obj, "numpy") else obj)
    except (TypeError, ValueError):
        raise DataError(f"{path}: expected a 1-D integer index tensor") from None
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: expected a 1-D integer index tensor, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def read_mnist_pt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's old ``processed/*.pt``: a tuple (uint8 images [N,28,28], int64 labels [N])."""
    obj = torch_load(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a tuple (images, labels), got {type(obj).__name__}")
    images, labels = (np.asarray(o.numpy() if hasattr(o, "numpy") else o) for o in obj)
    return _check_mnist(images, labels, path)


def _check_mnist(images: np.ndarray, labels: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{path}: MNIST images must have shape [N, 28, 28], got {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{path}: {len(images)} images but labels of shape {labels.shape}")
    if images.dtype != np.uint8:
        if images.max(initial=0) <= 1.0:
            images = images * 255.0
        images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return images, labels


def _open_maybe_gz(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def read_idx_file(path: Path) -> np.ndarray:
    """An IDX file (MNIST's raw ``*-idx3-ubyte`` / ``*-idx1-ubyte``, optionally gzipped)."""
    try:
        raw = _open_maybe_gz(path)
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(f"{path}: size {len(raw)} bytes does not match the header's shape {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def read_mnist_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    pt_name, raw_prefix, _ = _FILES[split]
    pt = root / "MNIST" / "processed" / pt_name
    if pt.is_file():
        return read_mnist_pt(pt)
    if raw_prefix is not None:
        raw = root / "MNIST" / "raw"
        img = _find(raw, f"{raw_prefix}-images-idx3-ubyte")
        lab = _find(raw, f"{raw_prefix}-labels-idx1-ubyte")
        if img is not None and lab is not None:
            return _check_mnist(read_idx_file(img), read_idx_file(lab), img)
    raise DataError(
        f"{root}: MNIST {split} data not found; expected {pt}"
        + (f" or {root / 'MNIST' / 'raw'}/{raw_prefix}-images-idx3-ubyte[.gz]" if raw_prefix else "")
    )


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's ``*_32x32.mat``: X uint8 [32,32,3,N] -> [N,32,32,3]; y [N,1] with 10 -> 0."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"{path}: SVHN file missing")
    try:
        mat = scipy.io.loadmat(path)
    except (OSError, ValueError, NotImplementedError) as e:
        raise DataError(f"{path}: unreadable .mat file ({e})") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: expected variables 'X' and 'y', found {sorted(k for k in mat if not k.startswith('__'))}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).astype(np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X must have shape [32, 32, 3, N], got {x.shape}")
    if x.shape[3] != len(y):
        raise DataError(f"{path}: {x.shape[3]} images but {len(y)} labels")
    y = y % 10  # SVHN labels digit 0 as 10
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: negative labels")
    return np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2)).astype(np.uint8)), y


def _index_files(root: Path, split: str) -> tuple[Path, Path] | None:
    for folder in (root / "MNIST_SVHN" / "processed", root):
        m, s = folder / f"{split}-ms-mnist-idx.pt", folder / f"{split}-ms-svhn-idx.pt"
        if m.is_file() and s.is_file():
            return m, s
    return None


# -- the dataset --------------------------------------------------------------------------


@dataclass
class MSTConfig(Config):
    """Options of an MNIST-SVHN-Text build from the published files in ``source``.

    ``n_train``/``n_val``/``n_test`` keep a seeded random subset of that many pairs (None = all;
    the published training pairing has ~1.1M pairs, ~6 GB as uint8). Without ``val`` files, a
    seeded ``val_fraction`` of the test pairs becomes the ``val`` split.
    """

    source: str = ""
    alphabet_file: str = ""  # "" = MoPoE's alphabet (built in), else a path to alphabet.json
    text_length: int = MST_TEXT_LENGTH
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    val_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        if self.text_length < max(len(n) for n in DIGIT_NAMES) + 1:
            raise ConfigError(f"text_length must be >= 6 (the longest digit name + 1), got {self.text_length}")
        for key in ("n_train", "n_val", "n_test"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"{key} must be >= 1 or null, got {v}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


def mst_specs(vocab_size: int = TEXT_VOCAB_SIZE, text_length: int = MST_TEXT_LENGTH) -> list[ModalitySpec]:
    """The DyMo authors' modality order: ``mnist``, ``svhn``, ``text``."""
    return [
        ModalitySpec("mnist", "image", (1, 28, 28)),
        ModalitySpec("svhn", "image", (3, 32, 32)),
        ModalitySpec("text", "text", (text_length,), vocab_size=vocab_size, extra={"alphabet": "mopoe"}),
    ]


def _subset(n: int, keep: int | None, rng: np.random.Generator) -> np.ndarray:
    if keep is None or keep >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=keep, replace=False))


def read_mst(config: MSTConfig | None = None, progress: Progress | None = None, **options: Any) -> SplitDataset:
    """Read MNIST-SVHN-Text from ``config.source`` (see the module docstring for the layout)."""
    cfg = config or MSTConfig(**options)
    root = source_folder(cfg.source, "mst", "MNIST/, SVHN/ and the *-ms-*-idx.pt files", "MNIST-SVHN-Text")
    alphabet = read_alphabet(cfg.alphabet_file) if cfg.alphabet_file else MOPOE_ALPHABET
    specs = mst_specs(len(alphabet) + 1, cfg.text_length)
    if cfg.alphabet_file:
        specs[2] = ModalitySpec("text", "text", (cfg.text_length,), vocab_size=len(alphabet) + 1, extra={"alphabet": alphabet})
    seeds = np.random.SeedSequence(cfg.seed).spawn(len(SPLITS) + 1)
    # split -> (MNIST images, SVHN images, MNIST labels, MNIST row per pair, SVHN row per pair)
    pairs: dict[str, tuple[np.ndarray, ...]] = {}
    present = [s for s in SPLITS if _index_files(root, s) is not None]
    for needed in ("train", "test"):
        if needed not in present:
            raise DataError(
                f"{root}: no {needed} pairing files; expected {root / 'MNIST_SVHN' / 'processed'}/"
                f"{needed}-ms-mnist-idx.pt and {needed}-ms-svhn-idx.pt (or the same names in {root})"
            )
    total = len(present)
    for k, split in enumerate(present):
        mnist_path, svhn_path = _index_files(root, split)  # type: ignore[misc]
        mnist_idx, svhn_idx = _as_index(torch_load(mnist_path), mnist_path), _as_index(torch_load(svhn_path), svhn_path)
        if len(mnist_idx) != len(svhn_idx):
            raise DataError(f"{mnist_path}: {len(mnist_idx)} pairs, but {svhn_path.name} has {len(svhn_idx)}")
        if len(mnist_idx) == 0:
            raise DataError(f"{mnist_path}: no pairs")
        m_img, m_lab = read_mnist_split(root, split)
        s_img, s_lab = read_svhn_mat(root / "SVHN" / _FILES[split][2])
        for name, idx, size, path in (("MNIST", mnist_idx, len(m_lab), mnist_path), ("SVHN", svhn_idx, len(s_lab), svhn_path)):
            bad = np.nonzero((idx < 0) | (idx >= size))[0]
            if len(bad):
                raise DataError(f"{path}: pair {int(bad[0])} points to {name} row {int(idx[bad[0]])}, outside 0..{size - 1}")
        mismatch = np.nonzero(m_lab[mnist_idx] != s_lab[svhn_idx])[0]
        if len(mismatch):
            p = int(mismatch[0])
            raise DataError(
                f"{root} ({split}): pair {p} joins MNIST row {int(mnist_idx[p])} (digit {int(m_lab[mnist_idx[p]])}) with "
                f"SVHN row {int(svhn_idx[p])} (digit {int(s_lab[svhn_idx[p]])}); {len(mismatch)} pairs disagree"
            )
        pairs[split] = (m_img, s_img, m_lab, mnist_idx, svhn_idx)
        if progress is not None:
            progress(k + 1, total)

    # Which pairs each split keeps.
    chosen: dict[str, tuple[str, np.ndarray]] = {}  # split -> (source split, pair rows)
    rng_val = np.random.default_rng(seeds[-1])
    if "val" in pairs:
        chosen["val"] = ("val", np.arange(len(pairs["val"][3])))
        chosen["test"] = ("test", np.arange(len(pairs["test"][3])))
    else:
        n_test_pairs = len(pairs["test"][3])
        n_val = max(1, round(cfg.val_fraction * n_test_pairs))
        if n_val >= n_test_pairs:
            raise DataError(f"{root}: the test pairing has {n_test_pairs} pairs, too few to split off a val split")
        perm = rng_val.permutation(n_test_pairs)
        chosen["val"] = ("test", np.sort(perm[:n_val]))
        chosen["test"] = ("test", np.sort(perm[n_val:]))
    chosen["train"] = ("train", np.arange(len(pairs["train"][3])))
    caps = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}

    splits: dict[str, MultimodalDataset] = {}
    for i, split in enumerate(SPLITS):
        src, rows = chosen[split]
        rng = np.random.default_rng(seeds[i])
        rows = rows[_subset(len(rows), caps[split], rng)]
        m_img, s_img, m_lab, mnist_idx, svhn_idx = pairs[src]
        labels = m_lab[mnist_idx[rows]]
        texts = digit_texts(labels, cfg.text_length, rng)
        arrays = {
            "mnist": m_img[mnist_idx[rows]][..., None],  # uint8 [P, 28, 28, 1]
            "svhn": s_img[svhn_idx[rows]],  # uint8 [P, 32, 32, 3]
            "text": encode_text(texts, cfg.text_length, alphabet),
        }
        splits[split] = MultimodalDataset(specs, arrays, labels, CLASS_NAMES, name=f"mst/{split}")
        log.info("mst %s: %d pairs (from %s)", split, len(labels), src)
    info = build_record("mst", BUILDER_VERSION, cfg)
    return SplitDataset("mst", specs, list(CLASS_NAMES), splits, info)


# -- registry entries ------------------------------------------------------------------------


DATASETS = (
    DatasetEntry(
        "mst",
        "MNIST-SVHN-Text from the published MoPoE files (needs --source PATH)",
        MSTConfig,
        {},
        BUILDER_VERSION,
        read_mst,
        external=True,
    ),
)
