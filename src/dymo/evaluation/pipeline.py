"""Evaluate DyMo and its variants on a test set under a missing-modality scenario.

Per batch: the scenario hides modalities (their slots become NaN, so nothing can read them by
accident), the recoverer fills them once, the encoders run once on observed + recovered data,
and every requested selection method reuses those tokens. Labels are used only to score.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.data.scenarios import parse_scenario
from dymo.errors import ConfigError
from dymo.models.backbone import FlexibleBackbone
from dymo.selection.calibration import Calibration
from dymo.selection.selector import METHODS, SelectionConfig, SelectionResult, select_with_backbone

NEEDS_RECOVERY = {"dymo", "iterative", "simultaneous", "fuse-all"}


@dataclass
class MethodMetrics:
    method: str
    scenario: str
    seed: int
    n: int
    accuracy: float
    auc: float | None
    avg_steps: float
    acceptance_rate: float | None  # recovered modalities used / recovered modalities offered
    acceptance_per_modality: dict[str, float | None]
    accuracy_by_num_observed: dict[int, float]
    missing_rate: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    ece: float | None = None  # expected calibration error of the top-class confidence

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy_by_num_observed"] = {str(k): v for k, v in self.accuracy_by_num_observed.items()}
        return d


def scenario_mask(scenario: str, n: int, modalities: Sequence[str], seed: int) -> torch.Tensor:
    """The observed mask (True = available) a scenario string gives for ``n`` samples."""
    return torch.from_numpy(parse_scenario(scenario).sample(n, len(modalities), seed=seed, names=list(modalities)))


def hide_missing(batch: MultimodalBatch) -> MultimodalBatch:
    """NaN (text: -1) in every missing slot, so that no component can read it unnoticed."""
    return batch.with_missing_filled()


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
) -> dict[str, MethodMetrics] | tuple[dict[str, MethodMetrics], dict[str, list[SelectionResult]]]:
    """Score each selection method (``METHODS``) on ``dataset`` under ``scenario``.

    ``observed`` overrides the scenario's mask (e.g. a mask CSV). ``selection`` holds extra
    :class:`SelectionConfig` fields (``max_added``, ``costs``).

    ``value_missing`` (e.g. ``"value:0.5"``): partly missing tables on top of the scenario
    (:func:`dymo.data.scenarios.apply_value_missing`, seeded by ``seed``). A vector modality
    with missing entries counts as *recovered*, as in the paper's DVM/UKBB setting: the
    recoverer fills its entries from what is there, and it is a candidate that DyMo may add
    (``discard`` leaves it out) - except for a sample with nothing else observed, which starts
    from its imputed table.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown selection method(s) {unknown}; known: {list(METHODS)}")
    if any(m in NEEDS_RECOVERY for m in methods) and recoverer is None:
        raise ConfigError(f"methods {[m for m in methods if m in NEEDS_RECOVERY]} need a recoverer")
    if calibration is None:
        calibration = _dummy_calibration(backbone)
        if any(m in {"dymo", "iterative", "simultaneous"} for m in methods):
            raise ConfigError("dymo/iterative/simultaneous need calibration statistics: run `dymo calibrate RUN` first")
    backbone.eval()
    device = next(backbone.parameters()).device
    n = len(dataset)
    mods = dataset.modalities
    obs_all = observed.bool() if observed is not None else scenario_mask(scenario, n, mods, seed)
    if obs_all.shape != (n, len(mods)):
        raise ConfigError(f"observed mask shape {tuple(obs_all.shape)} does not match the dataset ({n}, {len(mods)})")
    if value_missing is not None:
        from dymo.data.scenarios import apply_value_missing

        dataset = apply_value_missing(dataset.with_observed(obs_all.numpy()), value_missing, seed=seed)
        if recoverer is None:
            raise ConfigError("value missingness needs a recoverer to fill the missing table entries")
    need_rec = any(m in NEEDS_RECOVERY for m in methods) or value_missing is not None
    configs = {m: SelectionConfig.from_dict({**(selection or {}), "method": m}) for m in methods}
    preds = {m: [] for m in methods}
    probs = {m: [] for m in methods}
    steps = {m: [] for m in methods}
    added = {m: [] for m in methods}
    timings = dict.fromkeys(methods, 0.0)
    results: dict[str, list[SelectionResult]] = {m: [] for m in methods}
    labels_all = []
    cand_rows: list[torch.Tensor] = []
    shared_seconds = 0.0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"evaluating {scenario}", total=n)
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            full = dataset.batch(idx).with_observed(obs_all[idx])
            labels_all.append(full.labels)
            t0 = time.perf_counter()
            hidden = hide_missing(full)
            if need_rec:
                rec = recoverer.recover(full if getattr(recoverer, "reads_missing", False) else hidden)
                available = torch.ones_like(hidden.observed)
            else:
                rec, available = hidden, hidden.observed
            rec = rec.to(device)
            tokens = backbone.encode(rec.data, available.to(device))
            shared_seconds += time.perf_counter() - t0
            start_used = hidden.observed
            if value_missing is not None:
                partial = _partial_rows(hidden)
                complete = hidden.observed & ~partial
                nothing = ~complete.any(1, keepdim=True)
                start_used = complete | (partial & nothing)
                cand_full = ~start_used
            else:
                cand_full = ~hidden.observed
            candidates = cand_full if need_rec else torch.zeros_like(hidden.observed)
            cand_rows.append(cand_full)
            for m in methods:
                t1 = time.perf_counter()
                cand = candidates if m in NEEDS_RECOVERY else torch.zeros_like(candidates)
                res = select_with_backbone(backbone, tokens, start_used, cand, calibration, configs[m])
                timings[m] += time.perf_counter() - t1
                preds[m].append(res.predictions)
                probs[m].append(res.probabilities)
                steps[m].append(res.steps)
                added[m].append(res.added)
                if keep_results:
                    results[m].append(res)
            bar.advance(task, len(idx))
    labels = torch.cat(labels_all)
    n_obs = obs_all.sum(1)
    cand_all = torch.cat(cand_rows)
    out: dict[str, MethodMetrics] = {}
    for m in methods:
        p = torch.cat(preds[m])
        pr = torch.cat(probs[m])
        correct = (p == labels).float()
        add = torch.cat(added[m])
        offered = int(cand_all.sum()) if m in NEEDS_RECOVERY else 0
        out[m] = MethodMetrics(
            method=m,
            scenario=scenario,
            seed=seed,
            n=n,
            accuracy=float(correct.mean()),
            auc=_auc(pr, labels),
            avg_steps=float(torch.cat(steps[m]).float().mean()),
            acceptance_rate=(float(add.sum()) / offered) if offered else None,
            acceptance_per_modality={
                name: (float(add[:, i].sum() / cand_all[:, i].sum()) if m in NEEDS_RECOVERY and cand_all[:, i].any() else None)
                for i, name in enumerate(mods)
            },
            accuracy_by_num_observed={int(k): float(correct[n_obs == k].mean()) for k in torch.unique(n_obs).tolist()},
            missing_rate=float(cand_all.float().mean()),
            seconds=round(timings[m] + shared_seconds, 3),
        )
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


def _auc(probs: torch.Tensor, labels: torch.Tensor) -> float | None:
    if probs.shape[1] != 2 or len(torch.unique(labels)) < 2:
        return None
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(probs[:, 1], labels))


def _dummy_calibration(backbone: FlexibleBackbone) -> Calibration:
    """Placeholder statistics for the search-free methods (discard, fuse-all), which never read them."""
    m, c, p = backbone.num_modalities, backbone.num_classes, backbone.config.proj_dim
    return Calibration(
        metric=backbone.config.metric, temperature=0.1, prototypes=torch.zeros(2**m, c, p),
        sigma=torch.ones(2**m, c), overall=torch.zeros(c, p), num_modalities=m, modalities=backbone.modalities,
    )
