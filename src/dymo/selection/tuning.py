"""Tuning the acceptance rule (:mod:`dymo.selection.acceptance`) on validation data.

It runs the selection itself, so it lives above the selector; the rule it produces
(:class:`~dymo.selection.acceptance.ThresholdTuning`) is stored with the calibration.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dymo.errors import ConfigError, DataError
from dymo.selection.acceptance import (
    DEFAULT_GRID,
    DEFAULT_SCENARIOS,
    DEFAULT_SEEDS,
    SEED_OFFSET,
    ThresholdTuning,
    blend_added,
    pick_blend,
    pick_temperatures_by_count,
    pick_thresholds_pooled,
)

log = logging.getLogger("dymo.selection")


@torch.no_grad()
def tune_threshold(
    backbone: Any,
    calibration: Any,
    recoverer: Any,
    val: Any,
    *,
    method: str = "dymo",
    scenarios: Sequence[str] = DEFAULT_SCENARIOS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    grid: Sequence[float] = DEFAULT_GRID,
    batch_size: int = 256,
    recoverer_name: str = "",
    on_batch: Callable[[int], None] | None = None,
) -> ThresholdTuning:
    """Choose tau per number of observed modalities on ``val`` (a
    :class:`MultimodalDataset`, NOT the test split) under simulated missingness.

    For every scenario and mask seed: hide modalities, recover them once, encode once, run the
    selection with each grid value and count correct predictions per number of observed
    modalities. Returns the :class:`ThresholdTuning` (attach it to the calibration to use it).

    An incomplete ``val`` (training data with missing modalities) works too: the simulated
    mask is intersected with what each sample observes, and a sample the intersection leaves
    empty keeps one of its own modalities (drawn with the mask's seed). Its missing slots are
    recovered like the hidden ones and never read otherwise.
    """
    from dymo.data.scenarios import scenario_mask
    from dymo.selection.selector import SelectionConfig, select_with_backbone

    grid = [float(t) for t in grid]
    if not grid or any(math.isnan(t) for t in grid):
        raise ConfigError(f"tune_threshold: the grid must be non-empty numbers, got {grid}")
    if not scenarios or not seeds:
        raise ConfigError("tune_threshold: give at least one scenario and one seed")
    if method not in ("dymo", "iterative", "simultaneous"):
        raise ConfigError(f"tune_threshold: method {method!r} has no acceptance rule (dymo, iterative, simultaneous)")
    n, mods = len(val), tuple(val.modalities)
    if n == 0:
        raise DataError("tune_threshold: the validation set is empty")
    have = torch.from_numpy(np.asarray(val.observed, dtype=bool))
    if not bool(have.all()) and getattr(recoverer, "reads_missing", False):
        raise DataError(
            f"tune_threshold: the validation set misses modalities, and the recoverer {recoverer_name or getattr(recoverer, 'name', type(recoverer).__name__)!r} "
            "reads the true missing data (experiment-only); it needs a complete validation set"
        )
    m = len(mods)
    correct = np.zeros((m, len(grid)), dtype=np.int64)
    counts = np.zeros(m, dtype=np.int64)
    # (k_obs, labels, logits [G,B,C], added [G,B], observed-only logits [B,C])
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    per_sample: list[tuple[np.ndarray, np.ndarray]] = []  # (correct [G, B'], k_obs [B']) of samples with a candidate
    device = next(backbone.parameters()).device
    for scenario in scenarios:
        for seed in seeds:
            obs_all = within_observed(scenario_mask(scenario, n, mods, seed + SEED_OFFSET), have, seed + SEED_OFFSET)
            for start in range(0, n, batch_size):
                idx = np.arange(start, min(start + batch_size, n))
                full = val.batch(idx).with_observed(obs_all[idx])
                hidden = full.with_missing_filled()  # NaN in missing slots: nothing reads them unnoticed
                rec = recoverer.recover(full if getattr(recoverer, "reads_missing", False) else hidden)
                tokens = backbone.encode(rec.to(device).data, torch.ones_like(hidden.observed).to(device))
                k_obs = hidden.observed.sum(1).numpy()
                labels = full.labels.numpy()
                keep = k_obs < m  # complete samples have no candidate: tau does not matter
                np.add.at(counts, k_obs[keep], 1)
                logits_j, added_j, ok_j = [], [], []
                observed_logits = None
                for j, tau in enumerate(grid):
                    res = select_with_backbone(
                        backbone, tokens, hidden.observed, ~hidden.observed, calibration,
                        SelectionConfig(method=method, threshold=tau, added_temperature=1.0, added_weight=1.0),  # type: ignore[arg-type]
                    )
                    if observed_logits is None and res.observed_logits is not None:
                        observed_logits = res.observed_logits.float()
                    ok = (res.predictions.numpy() == labels) & keep
                    np.add.at(correct[:, j], k_obs[ok], 1)
                    logits_j.append(res.logits.float())
                    ok_j.append(ok[keep])
                    added_j.append(res.steps > 0)
                if observed_logits is None:  # nothing observed anywhere in the batch
                    observed_logits = torch.full_like(logits_j[0], float("nan"))
                kept.append((torch.as_tensor(k_obs), full.labels, torch.stack(logits_j), torch.stack(added_j), observed_logits))
                per_sample.append((np.stack(ok_j), k_obs[keep]))
                if on_batch is not None:
                    on_batch(len(idx))
    ok_all = np.concatenate([o for o, _ in per_sample], axis=1)
    k_all = np.concatenate([k for _, k in per_sample])
    taus, _ = pick_thresholds_pooled(ok_all, k_all, grid, m)
    for k in range(m):
        if counts[k] == 0:
            taus[k] = 0.0  # never seen on validation: keep the paper's rule
            log.info("tune_threshold: no validation sample with %d observed modalities; tau[%d] = 0 (paper's rule)", k, k)
    # The tuned rule's samples that added a recovery: the weight of their selected mask against
    # their observed modalities alone, and their temperature, by validation NLL.
    col = {k: grid.index(taus[k]) for k in range(m)}
    sel_logits, obs_logits, sel_labels, sel_k = [], [], [], []
    for k_obs_b, labels_b, logits_b, added_b, observed_b in kept:
        j = torch.tensor([col.get(int(k), 0) for k in k_obs_b.tolist()], dtype=torch.long)
        rows = torch.arange(len(j))
        add = added_b[j, rows] & (k_obs_b < m)
        sel_logits.append(logits_b[j, rows][add])
        obs_logits.append(observed_b[add])
        sel_labels.append(labels_b[add])
        sel_k.append(k_obs_b[add])
    weight, temperature, temperatures = 1.0, 1.0, [1.0] * m
    if kept:
        z_sel, z_obs, y_sel, k_sel = torch.cat(sel_logits), torch.cat(obs_logits), torch.cat(sel_labels), torch.cat(sel_k)
        weight, temperature = pick_blend(z_sel, z_obs, y_sel)
        blended, _ = blend_added(z_sel, z_obs, torch.ones(len(y_sel), dtype=torch.bool), weight, None)
        temperatures = pick_temperatures_by_count(blended, y_sel, k_sel, m, temperature)
    return ThresholdTuning(
        thresholds=taus, method=method, grid=grid, scenarios=list(scenarios), seeds=[int(s) for s in seeds],
        n_val=n, recoverer=recoverer_name, correct=correct.tolist(), counts=counts.tolist(), added_temperature=temperature,
        added_weight=weight, added_temperatures=temperatures,
    )


def within_observed(simulated: torch.Tensor, have: torch.Tensor, seed: int) -> torch.Tensor:
    """``simulated & have`` (bool ``[N, M]``), where a row the intersection leaves with nothing
    keeps one of the modalities it has, drawn uniformly with ``seed``. With a complete ``have``
    this is ``simulated``."""
    obs = simulated & have
    empty = ~obs.any(1) & simulated.any(1) & have.any(1)
    if bool(empty.any()):
        g = torch.Generator().manual_seed(int(seed))
        score = torch.rand(have.shape, generator=g).masked_fill(~have, -1.0)
        pick = score.argmax(1)
        rows = torch.nonzero(empty).flatten()
        obs[rows, pick[rows]] = True
    return obs
