"""The published PolyMNIST layout ``root/{train,test}/m<i>/{index}.{label}.png``, read into a
:class:`~dymo.data.dataset.SplitDataset` (the offline build is :mod:`dymo.data.polymnist`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.entry import Progress
from dymo.data.specs import ModalitySpec
from dymo.errors import DataError

NUM_CLASSES = 10
CLASS_NAMES: list[str] = [str(d) for d in range(NUM_CLASSES)]

_FILE_RE = re.compile(r"^(\d+)\.(\d+)\.png$")
_MOD_RE = re.compile(r"^m(\d+)$")


def _list_modality(folder: Path) -> dict[int, tuple[int, Path]]:
    """``{index: (label, path)}`` of one ``<split>/m<i>`` folder of ``{index}.{label}.png`` files."""
    items: dict[int, tuple[int, Path]] = {}
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        match = _FILE_RE.match(entry.name)
        if match is None:
            raise DataError(f"{folder / entry.name}: unexpected file; PolyMNIST files are named '{{index}}.{{label}}.png'")
        index, label = int(match.group(1)), int(match.group(2))
        if index in items:
            raise DataError(f"{folder}: index {index} appears twice ({items[index][1].name}, {entry.name})")
        if label >= NUM_CLASSES:
            raise DataError(f"{folder / entry.name}: label {label} outside 0..{NUM_CLASSES - 1}")
        items[index] = (label, folder / entry.name)
    return items


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or unreadable PNG ({e})") from None


def _read_split(folder: Path, modalities: list[str], progress: Progress | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    listings = {m: _list_modality(folder / m) for m in modalities}
    counts = {m: len(v) for m, v in listings.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"{folder}: modalities hold different numbers of files: {counts}")
    ref_mod = modalities[0]
    ref = listings[ref_mod]
    if not ref:
        raise DataError(f"{folder}: no PNG files in {folder / ref_mod}")
    order = sorted(ref)
    for m in modalities[1:]:
        other = listings[m]
        if set(other) != set(ref):
            diff = sorted(set(ref) ^ set(other))[:5]
            raise DataError(f"{folder}: {m} and {ref_mod} hold different sample indices (e.g. {diff})")
        for i in order:
            if other[i][0] != ref[i][0]:
                raise DataError(
                    f"{folder}: sample {i} has label {ref[i][0]} in {ref_mod} but {other[i][0]} in {m} "
                    f"({other[i][1].name})"
                )
    labels = np.array([ref[i][0] for i in order], dtype=np.int64)
    arrays: dict[str, np.ndarray] = {}
    shape: tuple[int, ...] | None = None
    done = 0
    total = len(order) * len(modalities)
    for m in modalities:
        images = None
        for row, i in enumerate(order):
            path = listings[m][i][1]
            img = _read_png(path)
            if shape is None:
                shape = img.shape
            if img.shape != shape:
                raise DataError(f"{path}: image of shape {img.shape}, the others are {shape}")
            if images is None:
                images = np.empty((len(order), *shape), dtype=np.uint8)
            images[row] = img
            done += 1
            if progress is not None and done % 1000 == 0:
                progress(done, total)
        arrays[m] = images
    return arrays, labels


def read_polymnist_folder(
    root: str | os.PathLike,
    n_val: int = 0,
    seed: int = 0,
    progress: Progress | None = None,
) -> SplitDataset:
    """Read the published PolyMNIST layout ``root/{train,test}/m<i>/{index}.{label}.png``.

    Files with the same index in every modality folder form one tuple. ``n_val > 0`` moves a
    seeded random ``n_val`` test tuples into a ``val`` split (the paper's 60k/3k/7k splits take
    val and test from the published 10k test tuples).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: PolyMNIST folder not found")
    splits_found = [s for s in ("train", "test") if (root / s).is_dir()]
    if not splits_found:
        raise DataError(f"{root}: no 'train' or 'test' folder; expected {root}/train/m0 ... {root}/test/m4")
    for s in ("train", "test"):
        if s not in splits_found:
            raise DataError(f"{root}: missing folder {s!r} (found {splits_found})")
    mods_per_split = {}
    for s in splits_found:
        found = sorted(
            (int(m.group(1)) for d in (root / s).iterdir() if d.is_dir() and (m := _MOD_RE.match(d.name))),
        )
        if not found:
            raise DataError(f"{root / s}: no modality folders m0, m1, ...")
        if found != list(range(len(found))):
            missing = sorted(set(range(max(found) + 1)) - set(found))
            raise DataError(f"{root / s}: missing modality folder(s) {[f'm{i}' for i in missing]}")
        mods_per_split[s] = [f"m{i}" for i in found]
    if mods_per_split["train"] != mods_per_split["test"]:
        raise DataError(
            f"{root}: train has modalities {mods_per_split['train']} but test has {mods_per_split['test']}"
        )
    modalities = mods_per_split["train"]
    data = {s: _read_split(root / s, modalities, progress) for s in ("train", "test")}
    shape = data["train"][0][modalities[0]].shape[1:]
    if data["test"][0][modalities[0]].shape[1:] != shape:
        raise DataError(f"{root}: train and test images differ in shape")
    specs = [ModalitySpec(m, "image", (shape[2], shape[0], shape[1])) for m in modalities]
    splits = {}
    for s, (arrays, labels) in data.items():
        splits[s] = MultimodalDataset(specs, arrays, labels, CLASS_NAMES, name=f"polymnist/{s}")
    if n_val > 0:
        test = splits["test"]
        if n_val >= len(test):
            raise DataError(f"n_val={n_val} leaves no test tuples (the test split has {len(test)})")
        perm = np.random.default_rng(seed).permutation(len(test))
        splits["val"] = test.subset(np.sort(perm[:n_val]))
        splits["val"].name = "polymnist/val"
        splits["test"] = test.subset(np.sort(perm[n_val:]))
    ordered = {k: splits[k] for k in ("train", "val", "test") if k in splits}
    return SplitDataset(
        "polymnist",
        specs,
        list(CLASS_NAMES),
        ordered,
        {"dataset": "polymnist-folder", "path": str(root.resolve()), "n_val": n_val, "seed": seed},
    )
