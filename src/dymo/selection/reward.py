"""DyMo's label-free reward, vectorised over any number of (sample, mask) rows.

The arithmetic follows the authors' reference implementation operation by operation (float32,
``torch.erf`` for the normal CDF, the ``1e-9`` guards), because the greedy search branches on
the sign of rewards that can be a few ulps away from zero: ``tests/test_golden.py`` pins it to
the golden vectors in ``shared/golden``.

- quality(z) = max_k softmax_k(s(z, Q_k) / T), s = z.Q_k (cosine) or -||z - Q_k||^2 (Euclidean).
- ICS(z) = 2 (1 - Phi(d / sigma[S, k*])), k* = argmax of the classifier logits, d = 1 - z.P[S,k*]
  (cosine) or ||z - P[S,k*]|| (Euclidean, not squared): a half-normal tail probability saying
  how typical ``z`` is of the class the classifier predicts, for the subset ``S`` it came from.
- G = 1 if ICS(after) >= ICS(before), else log ICS(before) / log(ICS(after) + 1e-9) (cosine) or
  ICS(after) / (ICS(before) + 1e-9) (Euclidean).
- R = quality(after) * G - quality(before).
"""

from __future__ import annotations

import math

import torch

METRICS = ("cosine", "euclidean")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def prototype_scores(z: torch.Tensor, prototypes: torch.Tensor, metric: str, temperature: float) -> torch.Tensor:
    """Logits ``s(z, Q_k) / T`` of the prototype classifier, ``[N, C]``."""
    _check_metric(metric)
    if metric == "cosine":
        return torch.mm(z, prototypes.t()) / temperature
    return -((z.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(dim=2)) / temperature


def quality(z: torch.Tensor, prototypes: torch.Tensor, metric: str, temperature: float) -> torch.Tensor:
    """Max prototype-softmax probability of each row of ``z`` (``[N, D]`` -> ``[N]``)."""
    return torch.softmax(prototype_scores(z, prototypes, metric, temperature), dim=-1).max(dim=1).values


def ics_distance(z: torch.Tensor, class_prototypes: torch.Tensor, metric: str) -> torch.Tensor:
    """Distance of each ``z[n]`` to ``class_prototypes[n]`` (both ``[N, D]``)."""
    _check_metric(metric)
    if metric == "cosine":
        return 1 - torch.bmm(class_prototypes.unsqueeze(1), z.unsqueeze(2)).reshape(-1)
    return torch.linalg.vector_norm(class_prototypes - z, dim=-1)


def ics(
    z: torch.Tensor,
    logits: torch.Tensor,
    codes: torch.Tensor,
    prototypes: torch.Tensor,
    sigma: torch.Tensor,
    metric: str,
) -> torch.Tensor:
    """Intra-class-similarity probability ``[N]``.

    ``codes``: subset code of each row; ``prototypes``: ``[2**M, C, D]``; ``sigma``: ``[2**M, C]``.
    """
    predicted = logits.argmax(dim=1)
    d = ics_distance(z, prototypes[codes, predicted], metric)
    s = sigma[codes, predicted]
    # Normal(0, s).cdf(d), spelled as torch.distributions does it.
    cdf = 0.5 * (1 + torch.erf(d * s.reciprocal() / math.sqrt(2)))
    return 2 * (1 - cdf)


def gain(ics_before: torch.Tensor, ics_after: torch.Tensor, metric: str) -> torch.Tensor:
    """The ICS calibration factor G (1 unless the addition makes the sample less typical)."""
    _check_metric(metric)
    if metric == "cosine":
        ratio = torch.log(ics_before) / torch.log(ics_after + 1e-9)
    else:
        ratio = ics_after / (ics_before + 1e-9)
    return torch.where(ics_after < ics_before, ratio, torch.ones_like(ratio))


def reward(
    quality_before: torch.Tensor,
    quality_after: torch.Tensor,
    ics_before: torch.Tensor | None,
    ics_after: torch.Tensor | None,
    metric: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, G)``. Pass ``ics_* = None`` for the plain iterative variant (G = 1)."""
    if ics_before is None or ics_after is None:
        g = torch.ones_like(quality_after)
    else:
        g = gain(ics_before, ics_after, metric)
    return quality_after * g - quality_before, g
