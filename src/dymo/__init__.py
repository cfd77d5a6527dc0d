"""dymo: inference-time dynamic modality selection for incomplete multimodal data.

The main entry points are importable from here (``from dymo import DyMoClassifier``). Only the
batch contract is imported eagerly; every other name is imported on first use (PEP 562), so
``import dymo`` stays as cheap as importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from dymo.data.batch import MultimodalBatch  # noqa: E402
from dymo.data.specs import ModalitySpec  # noqa: E402

#: name -> module that defines it, imported on first attribute access.
_LAZY: dict[str, str] = {
    # prediction with a bundle
    "DyMoClassifier": "dymo.inference.classifier",
    "Prediction": "dymo.inference.classifier",
    # data
    "open_dataset": "dymo.data.registry",
    "load_dataset": "dymo.data.registry",
    "build_dataset": "dymo.data.registry",
    # backbone
    "BackboneConfig": "dymo.models.backbone",
    "FlexibleBackbone": "dymo.models.backbone",
    "TrainConfig": "dymo.training.run",
    "train_backbone": "dymo.training.run",
    "load_backbone": "dymo.training.run",
    # selection
    "Calibration": "dymo.selection.calibration",
    "compute_calibration": "dymo.selection.calibration",
    "SelectionConfig": "dymo.selection.selector",
    "SelectionResult": "dymo.selection.selector",
    "select": "dymo.selection.selector",
    "select_with_backbone": "dymo.selection.selector",
    # recoverers and baselines
    "get_recoverer": "dymo.recovery.registry",
    "load_recoverer": "dymo.recovery.registry",
    "get_baseline": "dymo.baselines.registry",
    "load_baseline": "dymo.baselines.registry",
    # errors
    "DymoError": "dymo.errors",
}

__all__ = ["MultimodalBatch", "ModalitySpec", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dymo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
