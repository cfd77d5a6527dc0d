"""Baselines that are DyMo's own flexible backbone with a fixed modality policy: ``discard``
(observed only) and ``fuse-all`` (observed + every recovered modality; formerly ``impute-all``,
still accepted with a warning). They are the two
ends DyMo's per-sample selection moves between (docs/method.md §6: the "fuse all recovered" ablation
and the recovery-free backbone), and they take the very backbone DyMo uses
(:meth:`DyMoBackboneBaseline.from_backbone`), or train one with
:func:`~dymo.training.run.train_backbone` (K subsets per batch + prototype loss).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from dymo.baselines.base import Baseline
from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import SplitDataset
from dymo.errors import ConfigError
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.recovery.base import Recoverer
from dymo.training.run import TrainConfig, load_backbone, train_backbone

D = TypeVar("D", bound="DyMoBackboneBaseline")


@dataclass
class DyMoBackboneConfig(Config):
    """The DyMo backbone and its training (:func:`~dymo.training.run.train_backbone`)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    accelerator: str = "cpu"


class DyMoBackboneBaseline(Baseline):
    """Base of the baselines that run the DyMo backbone (``self.net`` is the FlexibleBackbone)."""

    config_class = DyMoBackboneConfig

    @property
    def backbone(self) -> FlexibleBackbone:
        if self.net is None:
            raise ConfigError(f"{self.name}: not fitted")
        assert isinstance(self.net, FlexibleBackbone)
        return self.net

    def _build(self) -> nn.Module:
        return FlexibleBackbone(self.specs, self.num_classes, self.config.backbone)

    def _fit(self, data: SplitDataset, progress: bool) -> None:
        cfg = self.config
        with tempfile.TemporaryDirectory(prefix=f"dymo-{self.name}-") as tmp:
            run = train_backbone(
                data, tmp, cfg.backbone, cfg.train, accelerator=cfg.accelerator, progress=progress, evaluate_test=False
            )
            self.net = load_backbone(run)

    @classmethod
    def from_backbone(
        cls: type[D],
        backbone: FlexibleBackbone,
        recoverer: Recoverer | None = None,
        class_names: Sequence[str] | None = None,
        train: TrainConfig | None = None,
    ) -> D:
        """Wrap an already trained backbone (shared, not copied). ``class_names`` default to
        ``c0 .. c{C-1}``; ``train`` is only recorded in the config."""
        if not isinstance(backbone, FlexibleBackbone):
            raise ConfigError(f"{cls.name}: from_backbone needs a FlexibleBackbone, got {type(backbone).__name__}")
        obj = cls(config=DyMoBackboneConfig(backbone=backbone.config, train=train or TrainConfig()))
        names = list(class_names) if class_names is not None else [f"c{k}" for k in range(backbone.num_classes)]
        if len(names) != backbone.num_classes:
            raise ConfigError(f"{cls.name}: {len(names)} class names for a backbone with {backbone.num_classes} classes")
        obj.specs = list(backbone.specs)
        obj.class_names = names
        obj.net = backbone.eval()
        obj.device = next(backbone.parameters()).device
        if recoverer is not None:
            obj._attach_recoverer(recoverer, obj.specs)
        return obj

    def _probs(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.backbone(data, used).logits, dim=-1)


class DiscardBaseline(DyMoBackboneBaseline):
    """``discard``: the DyMo backbone on the observed modalities only (recovery-free).

    Paper: Du et al., "Inference-Time Dynamic Modality Selection for Incomplete Multimodal
    Classification", ICLR 2026 (the "discard" strategy of its introduction and Table 1; the
    selection method ``discard``).
    """

    name = "discard"
    paper = "Du et al., ICLR 2026 (DyMo), discard strategy"

    def _predict(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> torch.Tensor:
        return self._probs(batch.data, batch.observed)


class FuseAllBaseline(DyMoBackboneBaseline):
    """``fuse-all``: the DyMo backbone on the observed plus *all* recovered modalities
    (recovery-based; the baseline form of DyMo's selection method ``fuse-all``, the "fuse all
    recovered" ablation).

    Paper: Du et al., ICLR 2026 (DyMo), the impute strategy / "fuse all" ablation.
    """

    name = "fuse-all"
    paper = "Du et al., ICLR 2026 (DyMo), fuse-all ablation"
    uses_recovery = True

    def _predict(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> torch.Tensor:
        assert recovered is not None
        return self._probs(recovered.data, torch.ones_like(batch.observed))


#: The former name of :class:`FuseAllBaseline`.
ImputeAllBaseline = FuseAllBaseline
