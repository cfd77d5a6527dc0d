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


# Absolute float32 error of ICS = 2 (1 - Phi): Phi lies in [0.5, 1], where one unit in the last
# place is 2**-24 (erf) or 2**-23 (1 + erf); 1 - Phi and the factor 2 are exact. Four units of
# 2**-23 also cover the libm erf's own error and the rounding of its argument d / sigma.
ICS_ROUNDING = 4 * 2.0**-23


def reward_rounding_bound(
    quality_after: torch.Tensor,
    gain_factor: torch.Tensor,
    ics_before: torch.Tensor,
    ics_after: torch.Tensor,
    metric: str,
    floor: float = 1e-5,
) -> torch.Tensor:
    """How far a float32 reward can move when its inputs are rounded differently.

    Two correct float32 evaluations of the same reward (another CPU's kernels, another batch
    shape or thread count) may differ in the last bits of ``z``, the quality and the ICS. The
    quality is well conditioned (``floor`` covers it: the float32 dot products of a
    ``D <= 64``-dimensional unit feature with prototypes, divided by ``T = 0.1``, move a softmax
    probability by at most about 1e-5). The ICS factor is not: ``p = 2 (1 - Phi)`` loses its
    relative precision as ``p -> 0`` (``1 - Phi`` cancels), and ``G = log p_b / log p_u``
    divides by ``log p_u``, which is 0 at ``p_u = 1``. To first order the reward moves by

        q_u * dp / |log p_u| * (1 / p_b + G / p_u)     (cosine, G = log p_b / log p_u)
        q_u * dp / p_b * (1 + G)                       (Euclidean, G = p_u / p_b)

    with ``dp = ICS_ROUNDING``, wherever ``G`` is (or could be, within ``dp``) below 1. Where
    the ICS underflows to 0 the bound is infinite: float32 does not determine that reward
    beyond its sign pattern, and only the decisions should be compared there.
    Returns the bound, same shape as the inputs (float64).
    """
    _check_metric(metric)
    q, g = quality_after.double(), gain_factor.double()
    pb, pu = ics_before.double(), ics_after.double() + 1e-9
    dp = ICS_ROUNDING
    if metric == "cosine":
        # dG = dp / |log p_u| * (1 / p_b + G / p_u)
        dg = dp / torch.log(pu).abs() * (1 / pb + g.abs() / pu)
    else:
        # G = p_u / (p_b + 1e-9): dG = dp / (p_b + 1e-9) * (1 + G)
        dg = dp / (pb + 1e-9) * (1 + g.abs())
    ratio_branch = ics_after.double() < ics_before.double() + 2 * dp
    spread = torch.where(ratio_branch, q.abs() * torch.nan_to_num(dg, nan=math.inf), torch.zeros_like(q))
    return spread + floor
