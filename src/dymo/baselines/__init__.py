"""Baselines behind one interface (:class:`Baseline`): fit on complete data, classify
incomplete batches with ``predict_proba(batch, recovered=None)``, save/load.

Names (see ``docs/baselines.md``): recovery-free ``discard``, ``moddrop``, ``mtl``,
``late-fusion``, ``unimodal``; recovery-based ``fuse-all`` (formerly ``impute-all``), ``concat``; dynamic fusion
``qmf``, ``dynmm``, ``pdf``; incomplete-multimodal learning ``m3care`` (latent imputation from
similar samples), ``muse`` (sample-modality graph, contrastive), ``map`` (missing-aware prompts); EXPERIMENT-ONLY upper bounds ``oracle-complete``, ``oracle-selection``.
"""

from dymo.baselines.base import Baseline, read_baseline_meta
from dymo.baselines.registry import (
    BASELINES,
    EXPERIMENT_ONLY,
    baseline_class,
    get_baseline,
    load_baseline,
    registered_baselines,
)
from dymo.baselines.training import FitConfig

__all__ = [
    "BASELINES",
    "EXPERIMENT_ONLY",
    "Baseline",
    "FitConfig",
    "baseline_class",
    "get_baseline",
    "load_baseline",
    "read_baseline_meta",
    "registered_baselines",
]
