"""Evaluate DyMo and its variants on a test set under a missing-modality scenario.

The batch loop is the shared engine (:mod:`dymo.evaluation.engine`): per batch the scenario
hides modalities (their slots become NaN, so nothing can read them by accident), the recoverer
fills them once, the encoders run once on observed + recovered data, and every requested
selection method reuses those tokens. Labels are used only to score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.progress import Progress

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.data.scenarios import parse_scenario, scenario_mask  # noqa: F401 - scenario_mask re-exported
from dymo.errors import ConfigError
from dymo.evaluation.engine import SelectionMethod, run_methods
from dymo.evaluation.metrics import MethodMetrics, method_metrics
from dymo.models.backbone import FlexibleBackbone
from dymo.selection.calibration import Calibration
from dymo.selection.selector import (
    METHODS,
    SEARCHING,
    SelectionConfig,
    SelectionResult,
    canonical_name,
)

NEEDS_RECOVERY = {"dymo", "iterative", "simultaneous", "fuse-all"}


@torch.no_grad()
def evaluate_methods(
    backbone: FlexibleBackbone,
    calibration: Calibration | None,
    recoverer: Any,
    dataset: MultimodalDataset,
    scenario: str,
    methods: Sequence[str] = ("discard", "fuse-all", "dymo"),
    seed: int = 0,
    batch_size: int = 512,
    progress: bool = True,
    selection: dict[str, Any] | None = None,
    observed: torch.Tensor | None = None,
    keep_results: bool = False,
    value_missing: str | None = None,
    scale: Any = None,
    parts_dir: Any = None,
) -> dict[str, MethodMetrics] | tuple[dict[str, MethodMetrics], dict[str, list[SelectionResult]]] | None:
    """Score each selection method (``METHODS``) on ``dataset`` under ``scenario``.

    ``observed`` overrides the scenario's mask (e.g. a mask CSV). ``selection`` holds extra
    :class:`SelectionConfig` fields (``max_added``, ``costs``).

    ``value_missing`` (e.g. ``"value:0.5"``): partly missing tables on top of the scenario
    (:func:`dymo.data.scenarios.apply_value_missing`, seeded by ``seed``). A vector modality
    with missing entries counts as *recovered*, as in the paper's DVM/UKBB setting: the
    recoverer fills its entries from what is there, and it is a candidate that DyMo may add
    (``discard`` leaves it out) - except for a sample with nothing else observed, which starts
    from its imputed table.

    ``scale`` (a :class:`dymo.utils.scale.ScaleOptions`): run the batches through Lightning
    over several processes (``parts_dir``: a folder every process sees); the metrics are the
    same as in one process, returned by the first process (``None`` in the others).
    """
    methods = [canonical_name(m) for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown selection method(s) {unknown}; known: {list(METHODS)}")
    if any(m in NEEDS_RECOVERY for m in methods) and recoverer is None:
        raise ConfigError(f"methods {[m for m in methods if m in NEEDS_RECOVERY]} need a recoverer")
    if calibration is None and any(m in SEARCHING for m in methods):
        raise ConfigError("dymo/iterative/simultaneous need calibration statistics: run `dymo calibrate RUN` first")
    backbone.eval()
    n = len(dataset)
    mods = dataset.modalities
    obs_all = observed.bool() if observed is not None else scenario_mask(scenario, n, mods, seed)
    if obs_all.shape != (n, len(mods)):
        raise ConfigError(f"observed mask shape {tuple(obs_all.shape)} does not match the dataset ({n}, {len(mods)})")
    own = torch.as_tensor(dataset.observed, dtype=torch.bool)
    if not bool(own.all()):
        # The split itself misses modalities (e.g. a folder dataset): what it lacks stays missing
        # whatever the scenario says; a sample the scenario would leave empty keeps its first own one.
        obs_all = obs_all & own
        empty = torch.nonzero(~obs_all.any(1)).flatten()
        obs_all[empty, own[empty].float().argmax(1)] = True
    if value_missing is not None:
        from dymo.data.scenarios import apply_value_missing

        dataset = apply_value_missing(dataset.with_observed(obs_all.numpy()), value_missing, seed=seed)
        if recoverer is None:
            raise ConfigError("value missingness needs a recoverer to fill the missing table entries")
    need_rec = any(m in NEEDS_RECOVERY for m in methods) or value_missing is not None
    label = "recovery" if need_rec else None
    runners = [
        SelectionMethod(
            m, backbone, calibration, SelectionConfig.from_dict({**(selection or {}), "method": m}), label, keep_results
        )
        for m in methods
    ]
    recoverers = {"recovery": recoverer} if need_rec else {}
    masks = _value_missing_masks if value_missing is not None else None
    if scale is not None:
        from dymo.evaluation.scale import run_methods_scaled

        if keep_results:
            raise ConfigError("keep_results is not available with several processes")
        ran = run_methods_scaled(dataset, obs_all, runners, recoverers, batch_size, masks, scale, parts_dir)
        if ran is None:  # not the first process
            return None
    else:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"evaluating {scenario}", total=n)
            ran = run_methods(
                dataset, obs_all, runners, recoverers, batch_size, masks=masks, on_batch=lambda k: bar.advance(task, k)
            )
    shared = sum(ran.recovery_seconds.values())
    out = {}
    for m in methods:
        r = ran.runs[m]
        out[m] = method_metrics(
            m, scenario, seed, probs=r.probs, predictions=r.predictions, labels=ran.labels,
            observed=obs_all, candidates=ran.candidates, offers_recovery=m in NEEDS_RECOVERY,
            steps=r.steps, added=r.added, modalities=mods, seconds=r.seconds + r.shared_seconds + shared,
        )
    results = {m: ran.runs[m].results for m in methods}
    if keep_results:
        return out, results
    return out


def _partial_rows(batch: MultimodalBatch) -> torch.Tensor:
    """Bool ``[B, M]``: observed vector modalities holding at least one NaN entry."""
    out = torch.zeros_like(batch.observed)
    for i, name in enumerate(batch.modalities):
        x = batch.data[name]
        if x.is_floating_point() and x.ndim == 2:
            out[:, i] = batch.observed[:, i] & torch.isnan(x).any(1)
    return out


def _value_missing_masks(hidden: MultimodalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """With partly missing tables: a table with missing entries is a candidate (its imputed
    copy), not a starting modality, unless the sample has nothing else observed."""
    partial = _partial_rows(hidden)
    complete = hidden.observed & ~partial
    nothing = ~complete.any(1, keepdim=True)
    start_used = complete | (partial & nothing)
    return start_used, ~start_used
