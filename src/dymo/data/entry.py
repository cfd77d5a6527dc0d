"""What a dataset module declares to be buildable by name (see :mod:`dymo.data.registry`).

A dataset module ends with ``DATASETS = (DatasetEntry(...), ...)``; the registry collects them
from the modules it lists (or from :func:`dymo.data.registry.register_dataset`). This module
imports nothing from the dataset modules, so they can import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dymo.config import Config
from dymo.data.dataset import SplitDataset
from dymo.errors import ConfigError, DataError

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
    #: ``build(config, progress)``: the dataset, or a :class:`BuildResult` when extras go beside it.
    build: Callable[[Any, Progress | None], BuildResult | SplitDataset]
    # Built from files the user supplies (``source=PATH``): ``load_or_build(name)`` with no
    # options then loads whatever finished build is there instead of rebuilding.
    external: bool = False


def build_record(name: str, builder_version: int, config: Config) -> dict[str, Any]:
    """What a built dataset records about its build (``meta.json`` ``"build"``)."""
    return {"dataset": name, "builder_version": builder_version, "config": config.to_dict()}


def source_folder(source: str | None, dataset: str, holds: str, what: str) -> Path:
    """The folder an external dataset is read from (``source=PATH``): ConfigError when it is not
    set (saying what it must hold), DataError when it is not a folder."""
    if not source:
        raise ConfigError(f"{dataset}: set source=PATH, the folder holding {holds} (Python: build_dataset({dataset!r}, source=PATH))")
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: {what} folder not found")
    return root


def done(progress: Progress | None) -> None:
    """Report a one-step build as finished."""
    if progress is not None:
        progress(1, 1)


def one_step(build: Callable[[Any], SplitDataset]) -> Callable[[Any, Progress | None], SplitDataset]:
    """The entry's build function for ``build(config)``, a builder that reports no progress:
    the progress bar completes when it returns."""

    def run(config: Any, progress: Progress | None) -> SplitDataset:
        ds = build(config)
        done(progress)
        return ds

    return run
