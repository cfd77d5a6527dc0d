"""The baselines' networks. Every encoder comes from the backbone's encoder registry
(:func:`dymo.models.encoders.build_encoder`), and every fusion transformer is the
:class:`~dymo.models.backbone.FlexibleBackbone`, so baselines differ from DyMo in how they are
trained and how they fuse, not in their feature extractors.

Every network zeroes the input rows of modalities it is told are unavailable before any
encoder runs (:func:`~dymo.data.batch.zero_missing`, or ``FlexibleBackbone.encode`` with
``available``), so a missing slot's content (NaN, garbage) cannot reach an output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dymo.baselines.training import (
    BaselineNet,
    accuracy,
    cross_entropy_over,
    dropout_masks,
    gumbel_noise,
    masked_log_softmax_mean,
)
from dymo.config import Config
from dymo.data.batch import MultimodalBatch, zero_missing
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.models.encoders import build_encoder


@dataclass
class EncoderConfig(Config):
    """Per-modality encoders (the backbone's registry; same options as
    :class:`~dymo.models.backbone.BackboneConfig`) and the classifier heads on their features."""

    dim: int = 128
    hidden: int = 128  # hidden units of each classifier head; 0: a linear head
    dropout: float = 0.0
    encoders: dict[str, str] = field(default_factory=dict)
    encoder_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.dim <= 0 or self.hidden < 0:
            raise ConfigError(f"EncoderConfig: dim must be > 0 and hidden >= 0, got {self.dim}, {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"EncoderConfig: dropout {self.dropout} outside [0, 1)")


def _head(in_dim: int, hidden: int, num_classes: int, dropout: float) -> nn.Module:
    if hidden == 0:
        return nn.Linear(in_dim, num_classes)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


class ModalityFeatures(nn.Module):
    """One feature vector per modality: encoder tokens, mean-pooled, layer-normalised."""

    def __init__(self, specs: Sequence[ModalitySpec], cfg: EncoderConfig) -> None:
        super().__init__()
        self.specs = list(specs)
        unknown = set(cfg.encoders) - {s.name for s in self.specs}
        if unknown:
            raise ConfigError(f"EncoderConfig.encoders names unknown modalities {sorted(unknown)}")
        self.encoders = nn.ModuleDict(
            {s.name: build_encoder(s, cfg.dim, cfg.encoders.get(s.name), cfg.encoder_options) for s in self.specs}
        )
        self.norms = nn.ModuleDict({s.name: nn.LayerNorm(cfg.dim) for s in self.specs})

    def forward(self, data: dict[str, torch.Tensor], available: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, M, D]``; rows of unavailable modalities are encoded from zeros."""
        feats = []
        for i, s in enumerate(self.specs):
            x = data[s.name]
            if available is not None:
                x = zero_missing(x, available[:, i])
            feats.append(self.norms[s.name](self.encoders[s.name](x).mean(dim=1)))
        return torch.stack(feats, dim=1)


class PerModalityNet(BaselineNet):
    """One classifier per modality (encoder + head), trained on complete data, combined over the
    used modalities by ``fusion``:

    - ``mean``: average of the per-modality probabilities (late fusion);
    - ``best``: the probabilities of the used modality ranked best on validation (``rank``
      buffer, set after training; 0 = best);
    - ``energy``: QMF, ``softmax(sum_m w_m * logits_m)`` with per-sample weights
      ``w_m = logsumexp(logits_m) / T`` (the negative free energy, detached).
    """

    def __init__(
        self,
        specs: Sequence[ModalitySpec],
        num_classes: int,
        cfg: EncoderConfig,
        fusion: Literal["mean", "best", "energy"],
        energy_temperature: float = 10.0,
        rank_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.specs = list(specs)
        self.num_modalities = len(self.specs)
        self.fusion = fusion
        self.energy_temperature = energy_temperature
        self.rank_weight = rank_weight
        self.features = ModalityFeatures(self.specs, cfg)
        self.heads = nn.ModuleDict({s.name: _head(cfg.dim, cfg.hidden, num_classes, cfg.dropout) for s in self.specs})
        self.register_buffer("rank", torch.arange(self.num_modalities))
        self.register_buffer("val_accuracy", torch.zeros(self.num_modalities))

    def modality_logits(self, data: dict[str, torch.Tensor], available: torch.Tensor | None) -> torch.Tensor:
        f = self.features(data, available)
        return torch.stack([self.heads[s.name](f[:, i]) for i, s in enumerate(self.specs)], dim=1)

    def energy_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """QMF's per-sample, per-modality weights ``[B, M]`` (no gradient, as in QMF)."""
        return (torch.logsumexp(logits, dim=-1) / self.energy_temperature).detach()

    def fuse(self, logits: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[B, C]`` from per-modality logits ``[B, M, C]``."""
        if self.fusion == "mean":
            return masked_log_softmax_mean(F.log_softmax(logits, dim=-1), used)
        if self.fusion == "best":
            key = self.rank.to(logits.device).float().expand_as(used).masked_fill(~used, float("inf"))
            best = key.argmin(dim=1)
            return F.log_softmax(logits[torch.arange(len(best), device=logits.device), best], dim=-1)
        w = torch.where(used, self.energy_weights(logits), torch.zeros((), dtype=logits.dtype, device=logits.device))
        return F.log_softmax((w.unsqueeze(-1) * logits).sum(dim=1), dim=-1)

    def log_proba(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.modality_logits(data, used), used)

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = batch.labels
        assert y is not None
        logits = self.modality_logits(batch.data, None)
        b, m, _ = logits.shape
        per = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(m), reduction="none").view(b, m)
        loss = per.mean(dim=0).sum()  # the classifiers are independent: a sum keeps their gradients apart
        full = torch.ones(b, m, dtype=torch.bool, device=logits.device)
        fused = self.fuse(logits, full)
        if self.fusion == "energy":
            loss = loss + F.nll_loss(fused, y)
            if self.rank_weight > 0:
                conf = F.softmax(logits, dim=-1).amax(dim=-1)  # [B, M]
                loss = loss + self.rank_weight * sum(_rank_loss(conf[:, i], per[:, i].detach()) for i in range(m))
        return loss, {"train_acc": accuracy(fused, y)}

    def val_subsets(self) -> torch.Tensor:
        if self.fusion == "best":  # the ranking is not known yet: select on the single modalities
            return torch.eye(self.num_modalities, dtype=torch.bool)
        return super().val_subsets()


def _rank_loss(confidence: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """QMF's confidence regulariser: a sample with a lower loss should get a higher confidence.
    Pairs are (i, i+1) of the batch, as in QMF; ties give no loss."""
    target = torch.sign(loss.roll(-1) - loss)
    return F.margin_ranking_loss(confidence, confidence.roll(-1), target, margin=0.0)


class SubsetBackboneNet(BaselineNet):
    """A :class:`FlexibleBackbone` trained with plain cross-entropy on simulated subsets:

    - ``dropout`` (ModDrop): one pass per batch, each sample with its own random subset
      (each modality dropped with ``drop_prob``);
    - ``tasks`` (MTL): one pass per task for the whole batch: all modalities, then each single
      modality; loss = mean over tasks.
    """

    def __init__(
        self,
        specs: Sequence[ModalitySpec],
        num_classes: int,
        cfg: BackboneConfig,
        scheme: Literal["dropout", "tasks"],
        drop_prob: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = FlexibleBackbone(specs, num_classes, cfg)
        self.num_modalities = len(specs)
        self.scheme = scheme
        self.drop_prob = drop_prob

    def training_masks(self, b: int, generator: torch.Generator) -> list[torch.Tensor]:
        m = self.num_modalities
        if self.scheme == "dropout":
            return [dropout_masks(b, m, self.drop_prob, generator)]
        masks = [torch.ones(b, m, dtype=torch.bool)]
        if m > 1:
            eye = torch.eye(m, dtype=torch.bool)
            masks += [eye[i].expand(b, m) for i in range(m)]
        return masks

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert batch.labels is not None
        tokens = self.backbone.encode(batch.data)
        lps = [
            F.log_softmax(self.backbone.fuse(tokens, mask.to(tokens.device)).logits, dim=-1)
            for mask in self.training_masks(len(batch), generator)
        ]
        return cross_entropy_over(lps, batch.labels), {"train_acc": accuracy(lps[0], batch.labels)}

    def log_proba(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.backbone(data, used).logits, dim=-1)


class ConcatNet(BaselineNet):
    """CONCAT: per-modality features concatenated, an MLP head; trained on complete data only.
    Unused modalities' features are zeros (it is meant to get every modality, recovered or not)."""

    def __init__(self, specs: Sequence[ModalitySpec], num_classes: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.num_modalities = len(specs)
        self.features = ModalityFeatures(specs, cfg)
        self.head = _head(self.num_modalities * cfg.dim, cfg.hidden, num_classes, cfg.dropout)

    def log_proba(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        f = self.features(data, used)
        f = torch.where(used.unsqueeze(-1), f, torch.zeros((), dtype=f.dtype, device=f.device))
        return F.log_softmax(self.head(f.flatten(1)), dim=-1)

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert batch.labels is not None
        full = torch.ones(len(batch), self.num_modalities, dtype=torch.bool, device=batch.labels.device)
        lp = self.log_proba(batch.data, full)
        return F.nll_loss(lp, batch.labels), {"train_acc": accuracy(lp, batch.labels)}

    def val_subsets(self) -> torch.Tensor:
        return torch.ones(1, self.num_modalities, dtype=torch.bool)


class DynMMNet(BaselineNet):
    """DynMM-style dynamic fusion over expert paths of one shared :class:`FlexibleBackbone`.

    Experts ``e = 0..M-1``: the backbone on modality ``e`` alone; expert ``M``: the backbone on
    every available modality. A gating MLP reads the mean-pooled tokens of each available
    modality (zeros for the others) plus the availability mask and picks one expert per
    sample; a unimodal expert whose modality is unavailable can never be picked.

    Two phases (``phase``): ``experts`` trains the backbone (all modalities + a ModDrop subset +
    each single modality per batch); ``gate`` freezes it and trains the gate with straight-through
    Gumbel-softmax on complete and randomly dropped inputs, with DynMM's resource term
    ``cost_weight * E[cost]`` (cost = fraction of the modalities the expert fuses).
    """

    def __init__(
        self,
        specs: Sequence[ModalitySpec],
        num_classes: int,
        cfg: BackboneConfig,
        gate_hidden: int = 64,
        tau: float = 1.0,
        cost_weight: float = 0.01,
        drop_prob: float = 0.5,
        complete_prob: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = FlexibleBackbone(specs, num_classes, cfg)
        m = self.num_modalities = len(specs)
        self.num_experts = m + 1
        self.gate = nn.Sequential(nn.Linear(m * cfg.dim + m, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, self.num_experts))
        self.tau, self.cost_weight = tau, cost_weight
        self.drop_prob, self.complete_prob = drop_prob, complete_prob
        self.phase: Literal["experts", "gate"] = "gate"

    def gate_logits(self, tokens: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """``[B, E]``; experts that cannot run (unavailable modality) get ``-inf``."""
        m = self.num_modalities
        onehot = F.one_hot(self.backbone.token_modality, m).to(tokens.dtype)  # [T, M]
        pooled = torch.einsum("btd,tm->bmd", tokens.detach(), onehot) / onehot.sum(0).view(1, m, 1)
        pooled = torch.where(available.unsqueeze(-1), pooled, torch.zeros((), dtype=pooled.dtype, device=pooled.device))
        logits = self.gate(torch.cat([pooled.flatten(1), available.to(tokens.dtype)], dim=1))
        return logits.masked_fill(~self.valid_experts(available), float("-inf"))

    def valid_experts(self, available: torch.Tensor) -> torch.Tensor:
        return torch.cat([available, torch.ones_like(available[:, :1])], dim=1)

    def expert_log_probs(self, tokens: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """``[B, E, C]``: every expert's log-probabilities."""
        b, m = tokens.shape[0], self.num_modalities
        eye = torch.eye(m, dtype=torch.bool, device=tokens.device)
        outs = [self.backbone.fuse(tokens, eye[i].expand(b, m)).logits for i in range(m)]
        outs.append(self.backbone.fuse(tokens, available).logits)
        return F.log_softmax(torch.stack(outs, dim=1), dim=-1)

    def choose(self, data: dict[str, torch.Tensor], available: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(expert [B], log-probabilities [B, C])`` at inference (the gate's argmax)."""
        tokens = self.backbone.encode(data, available)
        expert = self.gate_logits(tokens, available).argmax(dim=1)
        lp = self.expert_log_probs(tokens, available)
        return expert, lp[torch.arange(len(expert), device=lp.device), expert]

    def log_proba(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        if self.phase == "experts":
            return F.log_softmax(self.backbone(data, used).logits, dim=-1)
        return self.choose(data, used)[1]

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = batch.labels
        assert y is not None
        b, m = len(batch), self.num_modalities
        if self.phase == "experts":
            tokens = self.backbone.encode(batch.data)
            eye = torch.eye(m, dtype=torch.bool)
            masks = [torch.ones(b, m, dtype=torch.bool), dropout_masks(b, m, self.drop_prob, generator)]
            masks += [eye[i].expand(b, m) for i in range(m)] if m > 1 else []
            lps = [F.log_softmax(self.backbone.fuse(tokens, k.to(tokens.device)).logits, dim=-1) for k in masks]
            return cross_entropy_over(lps, y), {"train_acc": accuracy(lps[0], y)}
        avail = dropout_masks(b, m, self.drop_prob, generator)
        avail[torch.rand(b, generator=generator) < self.complete_prob] = True
        avail = avail.to(y.device)
        with torch.no_grad():
            tokens = self.backbone.encode(batch.data, avail)
            experts = self.expert_log_probs(tokens, avail)
        logits = self.gate_logits(tokens, avail)
        soft = F.softmax((logits + gumbel_noise(tuple(logits.shape), generator).to(logits.device)) / self.tau, dim=-1)
        hard = F.one_hot(soft.argmax(dim=1), self.num_experts).to(soft.dtype)
        weights = hard - soft.detach() + soft  # straight-through: hard forward, soft gradient
        mixed = (weights.unsqueeze(-1) * experts).sum(dim=1)
        cost = torch.cat([torch.full((b, m), 1.0 / m, device=y.device), avail.sum(1, keepdim=True) / m], dim=1)
        loss = F.nll_loss(mixed, y) + self.cost_weight * (F.softmax(logits, dim=-1) * cost).sum(dim=1).mean()
        chosen = experts[torch.arange(b, device=y.device), logits.argmax(dim=1)]
        return loss, {"train_acc": accuracy(chosen, y)}
