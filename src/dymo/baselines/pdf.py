"""``pdf``: Predictive Dynamic Fusion (per-sample fusion weights from predicted confidences).

Paper: Cao, Xia, Ding, Zhang, Hu, Zhu, Wang, "Predictive Dynamic Fusion", ICML 2024.

Adaptation to dymo: the unimodal classifiers are our per-modality encoders + MLP heads (the
same :class:`~dymo.baselines.nets.ModalityFeatures` as late fusion and QMF), instead of the
paper's BERT / ResNet branches; the fusion runs over the *observed* modalities of each sample
and generalises the paper's two-modality formulas to ``M`` modalities (below). Trained on
complete data, as in the paper (its missing / noisy inputs appear only at test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dymo.baselines.base import NetBaseline
from dymo.baselines.nets import EncoderConfig, ModalityFeatures, _head
from dymo.baselines.training import BaselineNet, FitConfig, accuracy
from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError

_EPS = 1e-8


@dataclass
class PDFConfig(Config):
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: FitConfig = field(default_factory=FitConfig)
    confidence_hidden: int = 128  # hidden units of each Mono-Confidence predictor
    calibrate: bool = True  # relative calibration of the Co-Belief at test (the paper's RC)

    def validate(self) -> None:
        if self.confidence_hidden < 1:
            raise ConfigError(f"PDFConfig: confidence_hidden must be >= 1, got {self.confidence_hidden}")


class PDFNet(BaselineNet):
    """Per-modality classifiers + per-modality confidence predictors, fused by Co-Belief.

    For the used modalities ``U`` of a sample, with ``c_m`` the predicted Mono-Confidence (a
    sigmoid MLP on the detached features, trained with L1 to the probability of the true
    class, as in PDF's code):

    - Holo-Confidence ``h_m = sum_{j in U, j != m} log c_j / sum_{j in U} log c_j`` (the
      paper's ``log c_other / log(c_m c_other)`` for two modalities);
    - Co-Belief ``b_m = c_m + h_m``;
    - relative calibration (test only): ``b_m *= u_m / max_{j in U} u_j`` with the
      distribution uniformity ``u_m = mean_k |p_m,k - 1/C|`` (the paper's RC, which for two
      modalities leaves the more certain one at 1 and scales the other by the ratio);
    - weights ``w = softmax_{m in U}(b)`` (detached), fused logits ``sum_m w_m logits_m``.

    Loss (complete data): the unimodal cross-entropies + the fused cross-entropy + the L1
    confidence loss.
    """

    def __init__(self, specs: Sequence[ModalitySpec], num_classes: int, cfg: EncoderConfig, confidence_hidden: int, calibrate: bool) -> None:
        super().__init__()
        self.specs = list(specs)
        self.num_modalities = len(self.specs)
        self.calibrate = calibrate
        self.features = ModalityFeatures(self.specs, cfg)
        self.heads = nn.ModuleDict({s.name: _head(cfg.dim, cfg.hidden, num_classes, cfg.dropout) for s in self.specs})
        self.confidence = nn.ModuleDict(
            {
                s.name: nn.Sequential(nn.Linear(cfg.dim, confidence_hidden), nn.GELU(), nn.Linear(confidence_hidden, 1), nn.Sigmoid())
                for s in self.specs
            }
        )

    def modality_outputs(self, data: dict[str, torch.Tensor], available: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality logits ``[B, M, C]`` and predicted Mono-Confidences ``[B, M]``."""
        f = self.features(data, available)
        logits = torch.stack([self.heads[s.name](f[:, i]) for i, s in enumerate(self.specs)], dim=1)
        conf = torch.cat([self.confidence[s.name](f[:, i].detach()) for i, s in enumerate(self.specs)], dim=1)
        return logits, conf

    def co_belief_weights(self, logits: torch.Tensor, conf: torch.Tensor, used: torch.Tensor, calibrate: bool) -> torch.Tensor:
        """Fusion weights ``[B, M]`` (0 for unused modalities, rows sum to 1), no gradient."""
        zero = torch.zeros((), dtype=conf.dtype, device=conf.device)
        log_c = torch.where(used, conf.clamp(_EPS, 1.0).log(), zero)
        total = log_c.sum(dim=1, keepdim=True)
        holo = (total - log_c) / (total - _EPS)  # total <= 0: the denominator never reaches 0
        belief = conf + holo
        if calibrate:
            probs = F.softmax(logits, dim=-1)
            uniformity = (probs - 1.0 / probs.shape[-1]).abs().mean(dim=-1)  # [B, M]
            top = torch.where(used, uniformity, zero).amax(dim=1, keepdim=True)
            belief = belief * torch.where(top > 0, uniformity / top.clamp_min(_EPS), torch.ones_like(uniformity))
        return F.softmax(belief.masked_fill(~used, float("-inf")), dim=1).detach()

    def fuse(self, logits: torch.Tensor, conf: torch.Tensor, used: torch.Tensor, calibrate: bool) -> torch.Tensor:
        w = self.co_belief_weights(logits, conf, used, calibrate)
        return F.log_softmax((w.unsqueeze(-1) * logits).sum(dim=1), dim=-1)

    def log_proba(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        logits, conf = self.modality_outputs(data, used)
        return self.fuse(logits, conf, used, self.calibrate)

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = batch.labels
        assert y is not None
        logits, conf = self.modality_outputs(batch.data, None)
        b, m, _ = logits.shape
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(m), reduction="none").view(b, m).mean(0).sum()
        true_p = F.softmax(logits, dim=-1).gather(-1, y.view(b, 1, 1).expand(b, m, 1)).squeeze(-1).detach()
        loss = loss + F.l1_loss(conf, true_p, reduction="none").mean(0).sum()
        full = torch.ones(b, m, dtype=torch.bool, device=logits.device)
        fused = self.fuse(logits, conf, full, calibrate=False)  # the paper trains without RC
        return loss + F.nll_loss(fused, y), {"train_acc": accuracy(fused, y)}


class PDFBaseline(NetBaseline):
    """``pdf``: Predictive Dynamic Fusion over the observed modalities.

    One classifier and one Mono-Confidence predictor per modality; per sample, the fused
    logits are a softmax(Co-Belief)-weighted sum of the observed modalities' logits, the
    Co-Belief being Mono-Confidence + Holo-Confidence, relatively calibrated at test (see
    :class:`PDFNet`). Adaptation: our per-modality encoders + MLP heads replace the paper's
    BERT / ResNet branches; the two-modality Holo-Confidence and relative calibration are
    generalised to ``M`` observed modalities; trained on complete data.

    Paper: Cao et al., "Predictive Dynamic Fusion", ICML 2024.
    """

    name = "pdf"
    paper = "Cao et al., Predictive Dynamic Fusion, ICML 2024"
    config_class = PDFConfig

    def _build(self) -> nn.Module:
        c = self.config
        return PDFNet(self.specs, self.num_classes, c.encoder, c.confidence_hidden, c.calibrate)

    @torch.no_grad()
    def fusion_weights(self, batch: MultimodalBatch) -> torch.Tensor:
        """The Co-Belief fusion weights ``[B, M]`` (CPU; 0 for missing modalities)."""
        batch_dev, _ = self._prepare(batch, None)
        assert isinstance(self.net, PDFNet)
        logits, conf = self.net.modality_outputs(batch_dev.data, batch_dev.observed)
        return self.net.co_belief_weights(logits, conf, batch_dev.observed, self.net.calibrate).cpu()
