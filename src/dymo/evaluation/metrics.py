"""The scores of one method on one (scenario, seed): one definition for ``dymo evaluate`` and
``dymo benchmark``.

- accuracy, and accuracy by number of observed modalities;
- balanced accuracy (the mean recall over the classes present in the labels) and macro-F1
  (the mean F1 over the classes present in the labels or the predictions): on unbalanced
  classes (TCGA kidney: 108 / 522 / 279 patients) accuracy alone rewards the majority class;
- AUC (:func:`auc`): binary AUROC for two classes, macro one-vs-rest AUROC above two
  (torchmetrics), ``None`` when a class needed by the average is absent from the labels;
- selection statistics: mean number of added modalities and the share of offered recovered
  modalities that were used (overall and per modality).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


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
    ece: float | None = None  # expected calibration error of the top-class confidence (15 bins)
    balanced_accuracy: float | None = None  # mean recall over the classes present in the labels
    macro_f1: float | None = None  # mean F1 over the classes in the labels or the predictions

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy_by_num_observed"] = {str(k): v for k, v in self.accuracy_by_num_observed.items()}
        return d


def auc(probs: torch.Tensor, labels: torch.Tensor) -> float | None:
    """AUROC of class probabilities ``[N, C]``: binary for ``C = 2``, else macro one-vs-rest.

    ``None`` when it is undefined: fewer than two classes in ``labels``, or (``C > 2``) a class
    that never occurs, since the macro average would then mix in a meaningless per-class score.
    """
    num_classes = probs.shape[1]
    present = torch.unique(labels)
    if len(present) < 2:
        return None
    if num_classes == 2:
        from torchmetrics.functional.classification import binary_auroc

        return float(binary_auroc(probs[:, 1], labels))
    if len(present) < num_classes:
        return None
    from torchmetrics.functional.classification import multiclass_auroc

    return float(multiclass_auroc(probs, labels, num_classes=num_classes, average="macro"))


def ece(probs: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Expected calibration error of the top-class confidence (15 equal-width bins, L1);
    ``None`` for an empty set."""
    if len(labels) == 0:
        return None
    from torchmetrics.functional.classification import (
        binary_calibration_error,
        multiclass_calibration_error,
    )

    if probs.shape[1] == 2:
        return float(binary_calibration_error(probs[:, 1], labels, n_bins=15))
    return float(multiclass_calibration_error(probs, labels, num_classes=probs.shape[1], n_bins=15))


def balanced_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Mean recall over the classes present in ``labels`` (scikit-learn's definition);
    ``None`` for an empty set."""
    if len(labels) == 0:
        return None
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels.cpu().numpy(), predictions.cpu().numpy()))


def macro_f1(predictions: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Unweighted mean of the per-class F1 over the classes in ``labels`` or ``predictions``
    (a class never predicted and never present does not count); ``None`` for an empty set."""
    if len(labels) == 0:
        return None
    from sklearn.metrics import f1_score

    return float(f1_score(labels.cpu().numpy(), predictions.cpu().numpy(), average="macro", zero_division=0))


def method_metrics(
    method: str,
    scenario: str,
    seed: int,
    *,
    probs: torch.Tensor,
    labels: torch.Tensor,
    observed: torch.Tensor,
    candidates: torch.Tensor,
    offers_recovery: bool,
    seconds: float,
    steps: torch.Tensor | None = None,
    added: torch.Tensor | None = None,
    predictions: torch.Tensor | None = None,
    modalities: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> MethodMetrics:
    """Score one method's outputs over the whole test set.

    ``observed``: bool ``[N, M]``, the scenario's mask; ``candidates``: bool ``[N, M]``, the
    recovered modalities a recovery-using method may add (``offers_recovery``). ``steps`` /
    ``added``: the selection's per-sample additions (zeros for methods without a search).
    ``predictions`` defaults to ``probs.argmax(1)``.
    """
    n = len(labels)
    pred = probs.argmax(1) if predictions is None else predictions
    correct = (pred == labels).float()
    steps = torch.zeros(n, dtype=torch.long) if steps is None else steps
    added = torch.zeros_like(observed) if added is None else added
    offered = int(candidates.sum()) if offers_recovery else 0
    n_obs = observed.sum(1)
    return MethodMetrics(
        method=method,
        scenario=scenario,
        seed=seed,
        n=n,
        accuracy=float(correct.mean()),
        balanced_accuracy=balanced_accuracy(pred, labels),
        macro_f1=macro_f1(pred, labels),
        auc=auc(probs, labels),
        ece=ece(probs, labels),
        avg_steps=float(steps.float().mean()),
        acceptance_rate=(float(added.sum()) / offered) if offered else None,
        acceptance_per_modality={
            name: (float(added[:, i].sum() / candidates[:, i].sum()) if offered and candidates[:, i].any() else None)
            for i, name in enumerate(modalities)
        },
        accuracy_by_num_observed={int(k): float(correct[n_obs == k].mean()) for k in torch.unique(n_obs).tolist()},
        missing_rate=float(candidates.float().mean()),
        seconds=round(seconds, 3),
        extra=dict(extra or {}),
    )
