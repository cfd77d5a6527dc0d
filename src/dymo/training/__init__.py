"""Training: the one engine every trained component uses (:mod:`dymo.training.engine`) and the
flexible backbone's Lightning run (:mod:`dymo.training.run`).

The names below are imported on first use, so that a recoverer importing the engine does not
load Lightning and the backbone until something is trained.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "TrainConfig": "dymo.training.run",
    "load_backbone": "dymo.training.run",
    "train_backbone": "dymo.training.run",
    "prototype_logits": "dymo.training.losses",
    "prototype_loss": "dymo.training.losses",
    "FitConfig": "dymo.training.engine",
    "fit_module": "dymo.training.engine",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dymo.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
