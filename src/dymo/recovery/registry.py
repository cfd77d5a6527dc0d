"""Recoverers by name, imported lazily (a table, not an if/elif chain).

``get_recoverer("retrieval", epochs=2)`` builds an unfitted recoverer from config overrides;
``load_recoverer(folder)`` reads the saved ``config.json``'s ``kind`` and loads the right class.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from dymo.errors import ConfigError
from dymo.recovery.base import Recoverer, read_recoverer_meta

#: kind -> "module:Class". Heavier or optional recoverers are only imported when asked for.
RECOVERERS: dict[str, str] = {
    "retrieval": "dymo.recovery.retrieval:RetrievalRecoverer",
    "mean": "dymo.recovery.imputers:MeanImputer",
    "knn": "dymo.recovery.imputers:KNNImputerRecoverer",
    "iterative": "dymo.recovery.imputers:IterativeImputerRecoverer",
    "mopoe": "dymo.recovery.mopoe:MoPoERecoverer",
    # optional extra dymo[multivae]; the module imports multivae only when a recoverer is built
    "mmvae-plus": "dymo.recovery.multivae:MMVAEPlusRecoverer",
    "cmvae": "dymo.recovery.multivae:CMVAERecoverer",
    "oracle": "dymo.recovery.oracle:OracleRecoverer",
    "controlled_quality": "dymo.recovery.quality:ControlledQualityRecoverer",
    "shuffled": "dymo.recovery.quality:ShuffledRecoverer",
}
#: Wrappers around another recoverer (built with ``inner=``), never trained on their own.
WRAPPERS: tuple[str, ...] = ("controlled_quality", "shuffled")
#: EXPERIMENT-ONLY: reads the true data of the missing modalities. Never for results.
EXPERIMENT_ONLY: tuple[str, ...] = ("oracle",)


def standalone_recoverers() -> list[str]:
    """Kinds that recover on their own (the benchmark's ``--recovery`` kinds), in table order."""
    return [k for k in RECOVERERS if k not in WRAPPERS]


def trainable_recoverers() -> list[str]:
    """Kinds ``dymo train recovery`` fits: standalone and not experiment-only."""
    return [k for k in standalone_recoverers() if k not in EXPERIMENT_ONLY]


def recoverer_class(name: str) -> type[Recoverer]:
    if name not in RECOVERERS:
        raise ConfigError(f"unknown recoverer {name!r}; known: {sorted(RECOVERERS)}")
    module, cls = RECOVERERS[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise ConfigError(f"recoverer {name!r} is not available ({e})") from None


def get_recoverer(name: str, **kwargs: Any) -> Recoverer:
    """An unfitted recoverer of kind ``name``; ``kwargs`` are its config keys (or ``config=``),
    plus ``inner=`` for the wrappers."""
    return recoverer_class(name)(**kwargs)


def load_recoverer(path: str | os.PathLike, **kwargs: Any) -> Recoverer:
    """Load any saved recoverer folder; ``kwargs`` go to that class's ``load`` (e.g. ``train=``)."""
    meta = read_recoverer_meta(Path(path))
    return recoverer_class(meta["kind"]).load(path, **kwargs)
