"""Accuracy of a backbone for every subset of modalities (encoders run once per sample)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dymo.data.dataset import MultimodalDataset
from dymo.models.backbone import FlexibleBackbone
from dymo.utils.subsets import all_subsets


@torch.no_grad()
def subset_accuracies(backbone: FlexibleBackbone, dataset: MultimodalDataset, batch_size: int = 512) -> torch.Tensor:
    """Accuracy per subset, ``[2**M - 1]``; entry ``r`` is the subset with code ``r + 1``.

    On an incomplete dataset a subset is scored on the samples that observe all of it (NaN
    when none does).
    """
    backbone.eval()
    subsets = all_subsets(backbone.num_modalities)
    correct = torch.zeros(len(subsets))
    total = torch.zeros(len(subsets))
    device = next(backbone.parameters()).device
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(range(start, min(start + batch_size, len(dataset)))).to(device)
        tokens = backbone.encode(batch.data, batch.observed)
        for j, used in enumerate(subsets):
            rows = ~(used.to(device) & ~batch.observed).any(1)
            if not bool(rows.any()):
                continue
            pred = backbone.fuse(tokens[rows], used.to(device).expand(int(rows.sum()), -1)).logits.argmax(1)
            correct[j] += (pred == batch.labels[rows]).sum().item()
            total[j] += int(rows.sum())
    return torch.where(total > 0, correct / total.clamp_min(1), torch.full_like(total, float("nan")))


def subset_accuracy_summary(backbone: FlexibleBackbone, dataset: MultimodalDataset, modalities: Sequence[str], batch_size: int = 512) -> dict:
    acc = subset_accuracies(backbone, dataset, batch_size)
    m = len(modalities)
    subsets = all_subsets(m)
    sizes = subsets.sum(1)

    def num(x: torch.Tensor) -> float | None:
        return None if bool(torch.isnan(x)) else float(x)

    return {
        "all_modalities": num(acc[-1]),
        "single": {name: num(acc[(1 << i) - 1]) for i, name in enumerate(modalities)},
        "mean_over_subsets": num(acc.nanmean()),
        "by_num_modalities": {int(k): num(acc[sizes == k].nanmean()) for k in range(1, m + 1)},
    }
