"""What the baselines share for training: :class:`BaselineNet` and small loss helpers.

A baseline network says *what* to minimise (``training_loss``) and how to classify from a
subset of modalities (``log_proba``); the one training engine (:mod:`dymo.training.engine`)
runs the loop. Model selection: the epoch with the best validation accuracy averaged over
``net.val_subsets()`` (all non-empty subsets by default, as for the DyMo backbone), through
:meth:`BaselineNet.validation_scores`; its weights are kept in memory and loaded back at the
end, so fitting writes no files.

Randomness inside a training step (modality dropout masks, Gumbel noise) comes from a
generator seeded by ``seed`` and the global step, so a fit is reproducible.
:class:`FitConfig` is the engine's (re-exported here, where the baseline configs import it).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.training.engine import FitConfig, fit_module
from dymo.utils.subsets import all_subsets

log = logging.getLogger("dymo.baselines")

__all__ = ["BaselineNet", "FitConfig", "fit_network"]


class BaselineNet(nn.Module):
    """What :func:`fit_network` trains. Subclasses implement the two methods below."""

    num_modalities: int

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, {"train_acc": accuracy})`` on a complete training batch; ``generator`` (CPU)
        for any randomness (see :mod:`dymo.training.engine`)."""
        raise NotImplementedError

    def log_proba(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[B, C]`` from the modalities ``used`` (bool ``[B, M]``) only."""
        raise NotImplementedError

    def val_subsets(self) -> torch.Tensor:
        """Bool ``[K, M]``: the subsets whose mean validation accuracy selects the epoch."""
        return all_subsets(self.num_modalities)

    def validation_scores(self, batch: MultimodalBatch) -> torch.Tensor:
        """For the training engine: per sample, 1.0 where ``log_proba`` is right, per subset of
        :meth:`val_subsets` (``[B, K]``); the engine averages it into the validation accuracy."""
        subsets = self.val_subsets().to(batch.labels.device)
        b = len(batch)
        return torch.stack(
            [self.log_proba(batch.data, used.expand(b, -1)).argmax(dim=1) == batch.labels for used in subsets], dim=1
        ).float()


def seed_everything(seed: int) -> None:
    L.seed_everything(seed, workers=True, verbose=False)


def dropout_masks(batch_size: int, num_modalities: int, drop_prob: float, generator: torch.Generator) -> torch.Tensor:
    """ModDrop masks, bool ``[B, M]``: each modality of each sample dropped independently with
    ``drop_prob``; a sample left with nothing gets one modality back, chosen uniformly."""
    keep = torch.rand(batch_size, num_modalities, generator=generator) >= drop_prob
    rescue = torch.randint(num_modalities, (batch_size,), generator=generator)
    empty = ~keep.any(dim=1)
    keep[empty, rescue[empty]] = True
    return keep


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator).clamp(1e-10, 1 - 1e-7)
    return -torch.log(-torch.log(u))


def masked_log_softmax_mean(log_probs: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """``log(mean over used m of p_m)`` from per-modality log-probabilities ``[B, M, C]``."""
    lp = log_probs.masked_fill(~used.unsqueeze(-1), float("-inf"))
    return torch.logsumexp(lp, dim=1) - used.sum(dim=1, keepdim=True).clamp_min(1).log()


def accuracy(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (log_probs.argmax(dim=1) == labels).float().mean().detach()


def fit_network(net: BaselineNet, data: SplitDataset, cfg: FitConfig, progress: bool = True, name: str = "baseline") -> float:
    """Train ``net`` on ``data['train']`` with early stopping on ``data['val']`` (the one training
    engine, :func:`dymo.training.engine.fit_module`); load the best epoch's weights into ``net``.
    Returns the best validation accuracy."""
    best = fit_module(net, data["train"], cfg, val=data["val"], progress=progress, name=name)
    log.info("%s: best validation accuracy %.4f", name, best)
    return float(best) if best is not None else -1.0


@torch.no_grad()
def subset_accuracy(net: BaselineNet, dataset: MultimodalDataset, subsets: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Accuracy of ``net.log_proba`` for each subset (bool ``[K, M]``) on a complete dataset, ``[K]``."""
    net.eval()
    device = next(net.parameters()).device
    correct = torch.zeros(len(subsets))
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(range(start, min(start + batch_size, len(dataset)))).to(device)
        for j, used in enumerate(subsets.to(device)):
            pred = net.log_proba(batch.data, used.expand(len(batch), -1)).argmax(dim=1)
            correct[j] += (pred == batch.labels).sum().item()
    return correct / len(dataset)


def cross_entropy_over(log_probs: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over several passes' log-probabilities."""
    return torch.stack([F.nll_loss(lp, labels) for lp in log_probs]).mean()

