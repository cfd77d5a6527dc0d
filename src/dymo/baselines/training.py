"""The one training loop of the baselines: a small LightningModule around a :class:`BaselineNet`.

A baseline network says *what* to minimise (``training_loss``) and how to classify from a
subset of modalities (``log_proba``); Lightning runs the loop (devices, precision, progress
bar, early stopping). Model selection: the epoch with the best validation accuracy averaged
over ``net.val_subsets()`` (all non-empty subsets by default, as for the DyMo backbone); its
weights are kept in memory and loaded back at the end, so fitting writes no files.

Randomness inside a training step (modality dropout masks, Gumbel noise) comes from a
generator seeded by ``seed`` and the global step, so a fit is reproducible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.errors import ConfigError
from dymo.utils.subsets import all_subsets

log = logging.getLogger("dymo.baselines")


@dataclass
class FitConfig(Config):
    """Training budget of the baselines trained by :func:`~dymo.baselines.training.fit_network`.

    Defaults follow :class:`~dymo.training.run.TrainConfig` (Adam, lr 1e-3, a few epochs,
    early stopping on the validation accuracy): small enough for a CPU.
    """

    epochs: int = 4
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3
    seed: int = 0
    max_train_samples: int | None = None
    eval_batch_size: int = 512
    accelerator: str = "cpu"

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("FitConfig: epochs, batch_size and eval_batch_size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"FitConfig: lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"FitConfig: weight_decay must be >= 0, got {self.weight_decay}")
        if self.patience < 1:
            raise ConfigError(f"FitConfig: patience must be >= 1, got {self.patience}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ConfigError("FitConfig: max_train_samples must be >= 1 (or null)")


class BaselineNet(nn.Module):
    """What :func:`fit_network` trains. Subclasses implement the two methods below."""

    num_modalities: int

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, accuracy)`` on a complete training batch; ``generator`` (CPU) for any randomness."""
        raise NotImplementedError

    def log_proba(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[B, C]`` from the modalities ``used`` (bool ``[B, M]``) only."""
        raise NotImplementedError

    def val_subsets(self) -> torch.Tensor:
        """Bool ``[K, M]``: the subsets whose mean validation accuracy selects the epoch."""
        return all_subsets(self.num_modalities)


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


class _LitNet(L.LightningModule):
    def __init__(self, net: BaselineNet, cfg: FitConfig) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.register_buffer("subsets", net.val_subsets(), persistent=False)
        self.best_acc = -1.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self._correct: torch.Tensor | None = None
        self._total = 0

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch.to(device)

    def training_step(self, batch: MultimodalBatch, batch_idx: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.global_step)
        loss, acc = self.net.training_loss(batch, g)
        self.log("train_loss", loss.detach(), prog_bar=True, batch_size=len(batch))
        self.log("train_acc", acc, prog_bar=True, batch_size=len(batch))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._correct = torch.zeros(len(self.subsets), device=self.device)
        self._total = 0

    def validation_step(self, batch: MultimodalBatch, batch_idx: int) -> None:
        assert self._correct is not None
        b = len(batch)
        for j, used in enumerate(self.subsets):
            pred = self.net.log_proba(batch.data, used.expand(b, -1)).argmax(dim=1)
            self._correct[j] += (pred == batch.labels).sum()
        self._total += b

    def on_validation_epoch_end(self) -> None:
        assert self._correct is not None
        acc = float((self._correct / max(self._total, 1)).mean())
        self.log("val_acc", acc, prog_bar=True)
        if acc > self.best_acc:
            self.best_acc = acc
            self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)


def fit_network(net: BaselineNet, data: SplitDataset, cfg: FitConfig, progress: bool = True, name: str = "baseline") -> float:
    """Train ``net`` on ``data['train']`` with early stopping on ``data['val']``; load the best
    epoch's weights into ``net``. Returns the best validation accuracy."""
    from lightning.pytorch.callbacks import EarlyStopping

    train = data["train"]
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        train = train.subset(range(cfg.max_train_samples))
    net.train()  # Lightning keeps the mode it finds; a second fit (DynMM's gate) starts from eval
    lit = _LitNet(net, cfg)
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        max_epochs=cfg.epochs,
        callbacks=[EarlyStopping(monitor="val_acc", mode="max", patience=cfg.patience)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(
        lit,
        train_dataloaders=train.loader(cfg.batch_size, shuffle=True, seed=cfg.seed),
        val_dataloaders=data["val"].loader(cfg.eval_batch_size),
    )
    if lit.best_state is not None:
        net.load_state_dict(lit.best_state)
    net.cpu().eval()
    log.info("%s: best validation accuracy %.4f", name, lit.best_acc)
    return lit.best_acc


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

