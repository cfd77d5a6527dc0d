"""Dynamic-fusion baselines: the fusion adapts per sample (QMF: confidence-weighted late
fusion; DynMM: a gate choosing an expert path)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from dymo.baselines.base import NetBaseline
from dymo.baselines.nets import DynMMNet, EncoderConfig, PerModalityNet
from dymo.baselines.recovery_free import LateFusionBaseline
from dymo.baselines.training import FitConfig
from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.errors import ConfigError
from dymo.models.backbone import BackboneConfig


@dataclass
class QMFConfig(Config):
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: FitConfig = field(default_factory=FitConfig)
    energy_temperature: float = 10.0  # QMF divides the energy by 10
    rank_weight: float = 0.1  # weight of the confidence-ranking regulariser

    def validate(self) -> None:
        if self.energy_temperature <= 0:
            raise ConfigError(f"QMFConfig: energy_temperature must be positive, got {self.energy_temperature}")
        if self.rank_weight < 0:
            raise ConfigError(f"QMFConfig: rank_weight must be >= 0, got {self.rank_weight}")


class QMFBaseline(LateFusionBaseline):
    """``qmf``: Quality-aware Multimodal Fusion over the observed modalities.

    Per-modality classifiers; the fused logits are ``sum_m w_m * logits_m`` over the observed
    modalities with per-sample weights ``w_m = logsumexp(logits_m) / T`` (the negative
    energy score, ``T = energy_temperature``, detached as in QMF). Loss = sum of the unimodal
    cross-entropies + the fused cross-entropy + ``rank_weight`` x QMF's ranking regulariser
    (a more confident modality prediction should have a lower loss).
    Simplification: QMF ranks samples by their correctness *history* over past epochs; we rank
    by the current (detached) per-sample loss, so no per-sample state crosses batches.

    Paper: Zhang et al., "Provable Dynamic Fusion for Low-Quality Multimodal Data", ICML 2023
    (the QMF method).
    """

    name = "qmf"
    paper = "Zhang et al., Provable Dynamic Fusion for Low-Quality Multimodal Data, ICML 2023"
    config_class = QMFConfig
    fusion = "energy"

    def _build(self) -> nn.Module:
        cfg = self.config
        return PerModalityNet(self.specs, self.num_classes, cfg.encoder, "energy", cfg.energy_temperature, cfg.rank_weight)


@dataclass
class DynMMConfig(Config):
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: FitConfig = field(default_factory=FitConfig)  # used for both phases (experts, gate)
    gate_hidden: int = 64
    tau: float = 1.0  # Gumbel-softmax temperature
    cost_weight: float = 0.01  # DynMM's resource-aware loss weight
    drop_prob: float = 0.5
    complete_prob: float = 0.5  # gate training: fraction of samples left complete
    inputs: Literal["observed", "recovered"] = "observed"

    def validate(self) -> None:
        if self.gate_hidden < 1 or self.tau <= 0 or self.cost_weight < 0:
            raise ConfigError("DynMMConfig: gate_hidden >= 1, tau > 0 and cost_weight >= 0 are required")
        for key in ("drop_prob", "complete_prob"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0 or (key == "drop_prob" and v == 1.0):
                raise ConfigError(f"DynMMConfig: {key} {v} outside its range")


class DynMMBaseline(NetBaseline):
    """``dynmm``: Dynamic Multimodal Fusion, a gate choosing one expert path per sample.

    Our simplification (see :class:`~dymo.baselines.nets.DynMMNet`): the experts are paths of
    one shared flexible backbone (each single modality, and all available modalities) rather
    than separately trained networks; the gate is an MLP on the pooled tokens. Training:
    experts first (all + a ModDrop subset + each single modality per batch), then the gate
    with straight-through Gumbel-softmax on complete and randomly dropped inputs and DynMM's
    resource term. Test: the gate's argmax over the experts that can run. With ``inputs =
    "observed"`` (default, recovery-free) only observed modalities are available; with
    ``"recovered"`` every modality is, missing ones taken from the recovery (then it is
    recovery-based: ``uses_recovery`` is True for that instance).

    Paper: Xue, Marculescu, "Dynamic Multimodal Fusion", CVPR Workshops (MULA) 2023.
    """

    name = "dynmm"
    paper = "Xue & Marculescu, Dynamic Multimodal Fusion, CVPR-W 2023"
    config_class = DynMMConfig
    phases = ("experts", "gate")

    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.uses_recovery = self.config.inputs == "recovered"

    def _build(self) -> nn.Module:
        c = self.config
        return DynMMNet(self.specs, self.num_classes, c.backbone, c.gate_hidden, c.tau, c.cost_weight, c.drop_prob, c.complete_prob)

    def _enter_phase(self, net: nn.Module, phase: str) -> None:
        if phase == "gate":
            assert isinstance(net, DynMMNet)
            net.backbone.requires_grad_(False)

    def _inputs(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self.uses_recovery:
            assert recovered is not None
            return recovered.data, torch.ones_like(batch.observed)
        return batch.data, batch.observed

    def _predict(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> torch.Tensor:
        assert isinstance(self.net, DynMMNet)
        return self.net.choose(*self._inputs(batch, recovered))[1].exp()

    @torch.no_grad()
    def expert_choice(self, batch: MultimodalBatch, recovered: MultimodalBatch | None = None) -> torch.Tensor:
        """The expert chosen per sample, long ``[B]`` (CPU): ``m < M`` = modality ``m`` alone,
        ``M`` = every available modality fused."""
        batch_dev, rec = self._prepare(batch, recovered)
        assert isinstance(self.net, DynMMNet)
        return self.net.choose(*self._inputs(batch_dev, rec))[0].cpu()
