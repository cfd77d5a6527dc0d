"""Recovery-based baselines: classify from observed + recovered modalities (a frozen
recoverer fills every missing slot). ``fuse-all`` (the DyMo backbone on everything) lives in
:mod:`dymo.baselines.dymo_backbone`; here is ``concat``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dymo.baselines.base import NetBaseline
from dymo.baselines.nets import ConcatNet, EncoderConfig
from dymo.baselines.training import FitConfig
from dymo.config import Config
from dymo.data.batch import MultimodalBatch


@dataclass
class ConcatConfig(Config):
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: FitConfig = field(default_factory=FitConfig)


class ConcatBaseline(NetBaseline):
    """``concat``: CONCAT + recovery. Per-modality encoders, features concatenated, an MLP head,
    trained on complete data only; at test every missing slot is taken from the recovery.

    Paper: the CONCAT / imputation baseline of multimodal-VAE classification studies, e.g.
    Sutter, Daunhawer, Vogt, "Generalized Multimodal ELBO" (MoPoE), ICLR 2021, as used in
    DyMo's Table 1 (recovery-based baselines).
    """

    name = "concat"
    paper = "CONCAT + recovery (Sutter et al., MoPoE, ICLR 2021; DyMo Table 1)"
    config_class = ConcatConfig
    uses_recovery = True

    def _build(self) -> nn.Module:
        return ConcatNet(self.specs, self.num_classes, self.config.encoder)

    def _predict(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> torch.Tensor:
        assert recovered is not None and self.net is not None
        return self.net.log_proba(recovered.data, torch.ones_like(batch.observed)).exp()
