"""The prototype loss of DyMo's training (docs/method.md §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prototype_logits(z: torch.Tensor, prototypes: torch.Tensor, metric: str, temperature: float) -> torch.Tensor:
    """``s(z, c_k) / t`` for every class: ``z . c_k`` (cosine) or ``-||z - c_k||^2`` (Euclidean)."""
    if metric == "cosine":
        sim = z @ prototypes.T
    elif metric == "euclidean":
        sim = -torch.cdist(z, prototypes).pow(2)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return sim / temperature


def prototype_loss(z: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, metric: str, temperature: float = 0.1) -> torch.Tensor:
    """Cross-entropy of ``softmax_k(s(z, c_k) / t)`` against the labels."""
    return F.cross_entropy(prototype_logits(z, prototypes, metric, temperature), labels)
