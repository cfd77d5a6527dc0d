"""Baselines by name (a table, imported lazily).

``get_baseline("moddrop", train={"epochs": 2})`` builds an unfitted baseline from config
overrides (nested configs as dicts); ``load_baseline(folder)`` loads any saved one.
"""

from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from typing import Any

from dymo.baselines.base import Baseline, read_baseline_meta
from dymo.config import Config
from dymo.errors import ConfigError
from dymo.selection.selector import canonical_name

#: name -> "module:Class"
BASELINES: dict[str, str] = {
    "discard": "dymo.baselines.dymo_backbone:DiscardBaseline",
    "moddrop": "dymo.baselines.recovery_free:ModDropBaseline",
    "mtl": "dymo.baselines.recovery_free:MultiTaskBaseline",
    "late-fusion": "dymo.baselines.recovery_free:LateFusionBaseline",
    "unimodal": "dymo.baselines.recovery_free:UnimodalBaseline",
    "fuse-all": "dymo.baselines.dymo_backbone:FuseAllBaseline",
    "concat": "dymo.baselines.recovery_based:ConcatBaseline",
    "qmf": "dymo.baselines.dynamic:QMFBaseline",
    "dynmm": "dymo.baselines.dynamic:DynMMBaseline",
    "pdf": "dymo.baselines.pdf:PDFBaseline",
    "m3care": "dymo.baselines.m3care:M3CareBaseline",
    "muse": "dymo.baselines.muse:MUSEBaseline",
    "map": "dymo.baselines.map_prompts:MAPBaseline",
    "oracle-complete": "dymo.baselines.oracles:OracleCompleteBaseline",
    "oracle-selection": "dymo.baselines.oracles:OracleSelectionBaseline",
}

#: The upper bounds that read missing data or labels: for experiments only, never results.
EXPERIMENT_ONLY: tuple[str, ...] = ("oracle-complete", "oracle-selection")


def registered_baselines() -> list[str]:
    return list(BASELINES)


def baseline_class(name: str) -> type[Baseline]:
    name = canonical_name(name) if isinstance(name, str) else name  # a deprecated alias warns
    if not isinstance(name, str) or name not in BASELINES:
        close = difflib.get_close_matches(str(name), BASELINES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown baseline {name!r}{hint}; known: {list(BASELINES)}")
    module, cls = BASELINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_baseline(name: str, config: Config | None = None, **overrides: Any) -> Baseline:
    """An unfitted baseline ``name``; ``overrides`` are its config keys (or pass ``config=``)."""
    return baseline_class(name)(config, **overrides)


def load_baseline(path: str | os.PathLike, **kwargs: Any) -> Baseline:
    """Load any saved baseline folder (its kind is read from it); ``kwargs`` go to
    :meth:`Baseline.load`."""
    return baseline_class(read_baseline_meta(Path(path))["kind"]).load(path, **kwargs)
