"""CelebA image + attribute text (the MoPoE bimodal CelebA), read from the published layout.

Sources (read, not copied): ``thomassutter/MoPoE`` ``celeba/CelebADataset.py``,
``celeba/experiment.py`` (crop and resize), ``celeba/flags.py``; the DyMo authors' copy
``siyi-wind/DyMo`` ``datasets/CelebADataset.py`` + ``configs/dataset/CelebA.yaml`` (binary label
``Blond_Hair``, a class-balanced partition file, text length 256).

Layout under ``source``::

    img_align_celeba/000001.jpg ...            the aligned 178x218 images (any PIL-readable format)
    list_attr_celeba.csv                       image_id,5_o_Clock_Shadow,...,Young   values -1 / 1
      (or the original list_attr_celeba.txt: a count line, a names line, "000001.jpg -1 1 ...")
    list_eval_partition.csv                    image_id,partition   0 train, 1 val, 2 test
      (DyMo: list_eval_partition_<label>_balanced.csv, preferred when present; other values skip a row)
    list_attr_text_<LLL>_<ordering>_<start>_celeba.csv   optional, image_id,text (MoPoE's text file)

Rows of the three files are joined by ``image_id`` (MoPoE relies on equal row order; we check).

Image: MoPoE's transform, a centred ``crop_size`` (148) square crop (offsets (218-148)//2 = 35
rows and (178-148)//2 = 15 columns for an aligned image), bicubic resize to ``image_size`` (64),
stored uint8 ``[N, 64, 64, 3]``; an image smaller than ``crop_size`` is centre-cropped to its
largest square. Text: the ``text`` column of the MoPoE text file when there is one (``text_file``,
or the only ``list_attr_text_*.csv`` in ``source``); otherwise generated here from the attributes
(our definition: the names of the attributes that are 1, lower-cased, ``_`` -> space, joined by
``", "`` in file order, written at a seeded random offset into ``text_length`` blanks, MoPoE's
``random_text_startindex``). Characters are encoded with :func:`dymo.data.mst.encode_text`.
Label: attribute ``label`` (default the DyMo authors' ``Blond_Hair``), 1 where the value is > 0.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dymo.config import Config
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.entry import DatasetEntry, build_record, source_folder
from dymo.data.mst import MOPOE_ALPHABET, encode_text, read_alphabet
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BUILDER_VERSION = 1
Progress = Callable[[int, int], None]
PARTITIONS = {0: "train", 1: "val", 2: "test"}
_TEXT_FILE_RE = re.compile(r"^list_attr_text_.*_celeba\.csv$")


@dataclass
class CelebAConfig(Config):
    source: str = ""
    label: str = "Blond_Hair"
    image_size: int = 64
    crop_size: int = 148
    text_length: int = 256
    text_file: str = ""  # "" = the only list_attr_text_*_celeba.csv in source, else generated text
    partition_file: str = ""  # "" = list_eval_partition_<label>_balanced.csv if present, else list_eval_partition.csv
    alphabet_file: str = ""  # "" = MoPoE's alphabet
    random_text_start: bool = True  # generated text only
    label_in_text: bool = True  # generated text only: False leaves the label attribute out of the text
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.image_size < 8 or self.crop_size < 8:
            raise ConfigError(f"image_size and crop_size must be >= 8, got {self.image_size}, {self.crop_size}")
        if self.text_length < 1:
            raise ConfigError(f"text_length must be >= 1, got {self.text_length}")
        for key in ("n_train", "n_val", "n_test"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"{key} must be >= 1 or null, got {v}")


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """``list_attr_celeba.csv`` (or ``.txt``) -> (image ids, attribute names, int8 values [N, A])."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: attribute file missing")
    try:
        if path.suffix == ".txt":
            lines = path.read_text().splitlines()
            names = lines[1].split()
            table = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, names=["image_id", *names])
        else:
            table = pd.read_csv(path)
    except (OSError, ValueError, IndexError) as e:
        raise DataError(f"{path}: unreadable attribute file ({e})") from None
    if "image_id" not in table.columns:
        raise DataError(f"{path}: no 'image_id' column (columns: {list(table.columns)[:5]} ...)")
    names = [c for c in table.columns if c != "image_id"]
    values = table[names].to_numpy()
    if not np.isin(values, (-1, 0, 1)).all():
        row = int(np.nonzero(~np.isin(values, (-1, 0, 1)).all(axis=1))[0][0])
        raise DataError(f"{path}: row {row + 2} ({table['image_id'].iloc[row]}) holds a value other than -1/0/1")
    return [str(v) for v in table["image_id"]], names, values.astype(np.int8)


def _read_two_columns(path: Path, column: str) -> dict[str, Any]:
    import pandas as pd

    try:
        table = pd.read_csv(path, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable CSV ({e})") from None
    for c in ("image_id", column):
        if c not in table.columns:
            raise DataError(f"{path}: no {c!r} column (columns: {list(table.columns)})")
    if table["image_id"].duplicated().any():
        dup = table["image_id"][table["image_id"].duplicated()].iloc[0]
        raise DataError(f"{path}: image_id {dup!r} appears twice")
    return dict(zip(table["image_id"].astype(str), table[column], strict=True))


def attribute_text(names: list[str], row: np.ndarray, skip: str | None = None) -> str:
    """Our generated text: present attribute names, lower-cased, ``_`` -> space, joined by ``", "``."""
    return ", ".join(n.lower().replace("_", " ") for n, v in zip(names, row, strict=True) if v > 0 and n != skip)


def _place(text: str, length: int, rng: np.random.Generator | None) -> str:
    if len(text) >= length or rng is None:
        return text[:length].ljust(length)
    start = int(rng.integers(0, length - len(text) + 1))
    return (" " * start + text).ljust(length)


def read_image(path: Path, size: int, crop: int) -> np.ndarray:
    """MoPoE's CelebA transform: centred ``crop`` square crop, bicubic resize to ``size``; uint8 HWC RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({e})") from None
    w, h = img.size
    side = min(crop, w, h)
    top, left = (h - side) // 2, (w - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _find_text_file(root: Path, cfg: CelebAConfig) -> Path | None:
    if cfg.text_file:
        p = Path(cfg.text_file)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise DataError(f"{p}: text file missing")
        return p
    found = sorted(p for p in root.iterdir() if _TEXT_FILE_RE.match(p.name))
    if len(found) > 1:
        raise DataError(f"{root}: several MoPoE text files {[p.name for p in found]}; choose one with text_file=")
    return found[0] if found else None


def _find_partition_file(root: Path, cfg: CelebAConfig) -> Path:
    if cfg.partition_file:
        p = Path(cfg.partition_file)
        p = p if p.is_absolute() else root / p
    else:
        balanced = root / f"list_eval_partition_{cfg.label}_balanced.csv"
        p = balanced if balanced.is_file() else root / "list_eval_partition.csv"
    if not p.is_file():
        raise DataError(f"{p}: partition file missing (image_id,partition with 0 train / 1 val / 2 test)")
    return p


def read_celeba(config: CelebAConfig | None = None, progress: Progress | None = None, **options: Any) -> SplitDataset:
    """Read CelebA image + text from ``config.source`` (see the module docstring)."""
    cfg = config or CelebAConfig(**options)
    root = source_folder(cfg.source, "celeba", "img_align_celeba/ and list_attr_celeba.csv", "CelebA")
    alphabet = read_alphabet(cfg.alphabet_file) if cfg.alphabet_file else MOPOE_ALPHABET
    attr_path = root / "list_attr_celeba.csv"
    if not attr_path.is_file() and (root / "list_attr_celeba.txt").is_file():
        attr_path = root / "list_attr_celeba.txt"
    ids, names, values = read_attributes(attr_path)
    if cfg.label not in names:
        raise ConfigError(f"celeba: label {cfg.label!r} is not an attribute of {attr_path.name}; choose one of {names}")
    label_col = names.index(cfg.label)
    row_of = {image_id: r for r, image_id in enumerate(ids)}
    part_path = _find_partition_file(root, cfg)
    partition = _read_two_columns(part_path, "partition")
    text_path = _find_text_file(root, cfg)
    if text_path is not None and not cfg.label_in_text:
        raise ConfigError(f"celeba: label_in_text=false applies to generated text only, but {text_path.name} is used")
    texts = _read_two_columns(text_path, "text") if text_path is not None else None
    img_dir = root / "img_align_celeba"
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder missing")

    members: dict[str, list[str]] = {s: [] for s in PARTITIONS.values()}
    for image_id, p in partition.items():
        try:
            split = PARTITIONS.get(int(p))
        except (TypeError, ValueError):
            raise DataError(f"{part_path}: image {image_id!r} has partition {p!r}, not an integer") from None
        if split is None:
            continue  # e.g. rows a balanced partition file leaves out
        if image_id not in row_of:
            raise DataError(f"{part_path}: image {image_id!r} is not in {attr_path.name}")
        if texts is not None and image_id not in texts:
            raise DataError(f"{text_path}: no text for image {image_id!r}")
        members[split].append(image_id)
    for split in ("train", "test"):
        if not members[split]:
            raise DataError(f"{part_path}: no image in the {split} partition")

    seeds = np.random.SeedSequence(cfg.seed).spawn(3)
    caps = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    specs = [
        ModalitySpec("img", "image", (3, cfg.image_size, cfg.image_size)),
        ModalitySpec(
            "text", "text", (cfg.text_length,), vocab_size=len(alphabet) + 1,
            extra={"alphabet": "mopoe" if not cfg.alphabet_file else alphabet,
                   "source": text_path.name if text_path is not None else "generated"},
        ),
    ]
    chosen = {}
    for seed, split in zip(seeds, PARTITIONS.values(), strict=True):
        ids_split = members[split]
        rng = np.random.default_rng(seed)
        if caps[split] is not None and caps[split] < len(ids_split):
            keep = np.sort(rng.choice(len(ids_split), size=caps[split], replace=False))
            ids_split = [ids_split[i] for i in keep]
        chosen[split] = (ids_split, rng)
    total = sum(len(v[0]) for v in chosen.values())
    done = 0
    splits: dict[str, MultimodalDataset] = {}
    skip = None if cfg.label_in_text else cfg.label
    for split, (ids_split, rng) in chosen.items():
        if not ids_split:
            continue
        rows = np.array([row_of[i] for i in ids_split])
        images = np.empty((len(rows), cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        for k, image_id in enumerate(ids_split):
            path = img_dir / image_id
            if not path.is_file():
                raise DataError(f"{path}: image listed in {part_path.name} is missing")
            images[k] = read_image(path, cfg.image_size, cfg.crop_size)
            done += 1
            if progress is not None and (done % 500 == 0 or done == total):
                progress(done, total)
        if texts is not None:
            strings = [str(texts[i]) for i in ids_split]
        else:
            place_rng = rng if cfg.random_text_start else None
            strings = [_place(attribute_text(names, values[r], skip), cfg.text_length, place_rng) for r in rows]
        labels = (values[rows, label_col] > 0).astype(np.int64)
        arrays = {"img": images, "text": encode_text(strings, cfg.text_length, alphabet)}
        class_names = [f"not {cfg.label}", cfg.label]
        splits[split] = MultimodalDataset(specs, arrays, labels, class_names, name=f"celeba/{split}")
        log.info("celeba %s: %d images, %.1f%% %s", split, len(labels), 100 * labels.mean(), cfg.label)
    info = build_record("celeba", BUILDER_VERSION, cfg)
    return SplitDataset("celeba", specs, [f"not {cfg.label}", cfg.label], splits, info)


# -- registry entries ------------------------------------------------------------------------


DATASETS = (
    DatasetEntry(
        "celeba",
        "CelebA image + attribute text, MoPoE layout (needs --source PATH)",
        CelebAConfig,
        {},
        BUILDER_VERSION,
        read_celeba,
        external=True,
    ),
)
