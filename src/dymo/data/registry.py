"""Named datasets: build them once into a data folder, then load them (memory-mapped) by name.

A built dataset lives in ``<data root>/<name>`` where the data root is the ``root`` argument,
else ``$DYMO_DATA``, else ``./data``. Its ``meta.json`` records the build options under
``"build"``; :func:`load_or_build` reuses a finished build only when they match exactly.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from dymo.config import Config
from dymo.data.dataset import SplitDataset
from dymo.data.entry import BuildResult, DatasetEntry, Progress, build_record
from dymo.data.polymnist_format import read_polymnist_folder
from dymo.errors import ConfigError, DataError
from dymo.utils.io import read_json, save_npy

__all__ = [
    "BuildResult", "DatasetEntry", "Progress", "REGISTRY", "DATASET_MODULES", "register_dataset",
    "known_datasets", "get_entry", "build_dataset", "load_dataset", "load_or_build", "open_dataset",
]

ENV_VAR = "DYMO_DATA"
DEFAULT_ROOT = "data"

#: Modules whose ``DATASETS`` tuple declares the datasets dymo ships (in listing order). A new
#: dataset module is added here; its entries (name, config class, builder) live in the module.
DATASET_MODULES: tuple[str, ...] = (
    "dymo.data.polymnist",
    "dymo.data.mfeat",
    "dymo.data.tcga",
    "dymo.data.mnist_text",
    "dymo.data.image_table",
    "dymo.data.mst",
    "dymo.data.celeba",
    "dymo.data.folder",
)

REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Make ``entry`` buildable by name (``build_dataset``, ``dymo data build``)."""
    if not isinstance(entry, DatasetEntry):
        raise ConfigError(f"register_dataset needs a DatasetEntry, got {type(entry).__name__}")
    if entry.name in REGISTRY and REGISTRY[entry.name] is not entry:
        raise ConfigError(f"dataset name {entry.name!r} is already registered")
    REGISTRY[entry.name] = entry
    return entry


for _module in DATASET_MODULES:
    for _entry in importlib.import_module(_module).DATASETS:
        register_dataset(_entry)


def parse_set_options(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["seed=3", "source=/data/x"]`` -> ``{"seed": 3, "source": "/data/x"}``.

    A value is read as JSON when it parses (numbers, true/false, null, lists), else as a string.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


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
    info = build_record(name, entry.builder_version, config)
    return json.loads(json.dumps(info))


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    progress: Progress | None = None,
    save: bool = True,
    *,
    out_name: str | None = None,
    **options: Any,
) -> SplitDataset:
    """Build dataset ``name`` with ``options`` (see its config class) and, unless ``save=False``,
    write it to ``<data root>/<out_name or name>``. Returns the in-memory dataset.

    ``out_name`` names the built copy (``dymo data build folder --name clinic``): it is then
    loaded by that name (``open_dataset("clinic")``).
    """
    entry = get_entry(name)
    cfg = make_config(name, **options)
    target = _target_name(name, out_name)
    result = entry.build(cfg, progress)
    if not isinstance(result, BuildResult):
        result = BuildResult(result, {})
    ds = result.dataset
    ds.name = target
    ds.build_info = build_info(name, cfg)
    if save:
        out = data_root(root) / target
        out.mkdir(parents=True, exist_ok=True)
        meta = out / "meta.json"
        if meta.exists():
            meta.unlink()  # the folder is incomplete until the new meta.json lands
        for rel, array in result.extras.items():
            save_npy(out / rel, array)
        ds.save(out)
    return ds


def _target_name(name: str, out_name: str | None) -> str:
    if out_name is None or out_name == name:
        return name
    if not out_name or out_name != Path(out_name).name or out_name.startswith("."):
        raise ConfigError(f"dataset name {out_name!r}: use a plain folder name (no path separators)")
    if out_name in REGISTRY:
        raise ConfigError(f"dataset name {out_name!r} is the name of a registered dataset; choose another")
    return out_name


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
    if not path.is_dir() and (data_root(root) / text / "meta.json").exists() and os.sep not in text:
        return SplitDataset.load(data_root(root) / text)  # a dataset built under another name
    if path.is_dir():
        if (path / "meta.json").exists():
            return SplitDataset.load(path)
        if _is_polymnist_folder(path):
            return read_polymnist_folder(path)
        raise DataError(f"{path}: not a built dymo dataset (no meta.json) nor a PolyMNIST folder (no train/m0)")
    raise DataError(f"unknown dataset {text!r}: not a folder, and known datasets are {', '.join(REGISTRY)}")


def is_built(name: str, root: str | os.PathLike | None = None, *, out_name: str | None = None, **options: Any) -> bool:
    """Whether ``<data root>/<out_name or name>`` holds a finished build made with exactly these options."""
    get_entry(name)
    path = data_root(root) / _target_name(name, out_name) / "meta.json"
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
            f"build it first with `dymo data build {name} --source PATH` or build_dataset({name!r}, source=PATH) (see docs/datasets.md)"
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
