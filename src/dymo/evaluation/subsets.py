"""Accuracy of a backbone for every subset of modalities (encoders run once per sample)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dymo.data.dataset import MultimodalDataset
from dymo.models.backbone import FlexibleBackbone
from dymo.utils.subsets import all_subsets


@torch.no_grad()
def subset_accuracies(backbone: FlexibleBackbone, dataset: MultimodalDataset, batch_size: int = 512) -> torch.Tensor:
    """Accuracy per subset, ``[2**M - 1]``; entry ``r`` is the subset with code ``r + 1``."""
    backbone.eval()
    subsets = all_subsets(backbone.num_modalities)
    correct = torch.zeros(len(subsets))
    device = next(backbone.parameters()).device
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(range(start, min(start + batch_size, len(dataset)))).to(device)
        tokens = backbone.encode(batch.data)
        for j, used in enumerate(subsets):
            pred = backbone.fuse(tokens, used.to(device).expand(len(batch), -1)).logits.argmax(1)
            correct[j] += (pred == batch.labels).sum().item()
    return correct / len(dataset)


def subset_accuracy_summary(backbone: FlexibleBackbone, dataset: MultimodalDataset, modalities: Sequence[str], batch_size: int = 512) -> dict:
    acc = subset_accuracies(backbone, dataset, batch_size)
    m = len(modalities)
    subsets = all_subsets(m)
    sizes = subsets.sum(1)
    return {
        "all_modalities": float(acc[-1]),
        "single": {name: float(acc[(1 << i) - 1]) for i, name in enumerate(modalities)},
        "mean_over_subsets": float(acc.mean()),
        "by_num_modalities": {int(k): float(acc[sizes == k].mean()) for k in range(1, m + 1)},
    }
