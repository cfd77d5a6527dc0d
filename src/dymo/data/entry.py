"""What a dataset module declares to be buildable by name (see :mod:`dymo.data.registry`).

A dataset module ends with ``DATASETS = (DatasetEntry(...), ...)``; the registry collects them
from the modules it lists (or from :func:`dymo.data.registry.register_dataset`). This module
imports nothing from the dataset modules, so they can import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from dymo.config import Config
from dymo.data.dataset import SplitDataset

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


def done(progress: Progress | None) -> None:
    """Report a one-step build as finished."""
    if progress is not None:
        progress(1, 1)
