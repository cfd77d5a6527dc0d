"""Recovery: fill missing modalities from observed ones (frozen after fitting).

Import concrete recoverers from their modules or through :func:`get_recoverer`; this package
imports only the protocol so that optional ones (MoPoE) stay lazy.
"""

from dymo.recovery.base import (
    Recoverer,
    RecovererConfig,
    TrainingData,
    group_by_pattern,
    merge_recovered,
)
from dymo.recovery.registry import RECOVERERS, get_recoverer, load_recoverer, recoverer_class

__all__ = [
    "RECOVERERS",
    "Recoverer",
    "RecovererConfig",
    "TrainingData",
    "get_recoverer",
    "group_by_pattern",
    "load_recoverer",
    "merge_recovered",
    "recoverer_class",
]
