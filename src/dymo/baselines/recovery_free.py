"""Recovery-free baselines: classify from the observed modalities only.

``moddrop`` and ``mtl`` are the DyMo backbone architecture trained the way their papers train
(no prototype loss, no K random subsets); ``late-fusion`` and ``unimodal`` are per-modality
classifiers. All train on complete data with missingness simulated, through the shared
:func:`~dymo.baselines.training.fit_network`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dymo.baselines.base import NetBaseline
from dymo.baselines.nets import EncoderConfig, PerModalityNet, SubsetBackboneNet
from dymo.baselines.training import FitConfig, subset_accuracy
from dymo.config import Config
from dymo.data.dataset import SplitDataset
from dymo.errors import ConfigError
from dymo.models.backbone import BackboneConfig


@dataclass
class ModDropConfig(Config):
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: FitConfig = field(default_factory=FitConfig)
    drop_prob: float = 0.5  # per modality and sample

    def validate(self) -> None:
        if not 0.0 <= self.drop_prob < 1.0:
            raise ConfigError(f"ModDropConfig: drop_prob {self.drop_prob} outside [0, 1)")


@dataclass
class MultiTaskConfig(Config):
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class PerModalityConfig(Config):
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: FitConfig = field(default_factory=FitConfig)


class ModDropBaseline(NetBaseline):
    """``moddrop``: the flexible-backbone architecture trained with ModDrop, i.e. per-sample
    random modality dropout (each modality of each training sample dropped independently with
    ``drop_prob``; a sample left empty gets one modality back), plain cross-entropy. Missing
    modalities are masked out of the fusion at test time.

    Paper: Neverova, Wolf, Taylor, Nebout, "ModDrop: adaptive multi-modal gesture
    recognition", IEEE TPAMI 38(8), 2016 (arXiv 1501.00102, 2015).
    """

    name = "moddrop"
    paper = "Neverova et al., ModDrop, TPAMI 2016 (arXiv 2015)"
    config_class = ModDropConfig

    def _build(self) -> nn.Module:
        return SubsetBackboneNet(self.specs, self.num_classes, self.config.backbone, "dropout", self.config.drop_prob)


class MultiTaskBaseline(NetBaseline):
    """``mtl``: a multimodal transformer (the flexible backbone: hidden modalities masked out of
    attention) trained multi-task: every batch is classified with all modalities and with each
    single modality, loss = mean of the task losses. At test it fuses the observed modalities.

    Paper: Ma, Ren, Zhao, Testuggine, Peng, "Are Multimodal Transformers Robust to Missing
    Modality?", CVPR 2022.
    """

    name = "mtl"
    paper = "Ma et al., Are Multimodal Transformers Robust to Missing Modality?, CVPR 2022"
    config_class = MultiTaskConfig

    def _build(self) -> nn.Module:
        return SubsetBackboneNet(self.specs, self.num_classes, self.config.backbone, "tasks")


class LateFusionBaseline(NetBaseline):
    """``late-fusion``: one classifier per modality (encoder + MLP head, trained independently
    on complete data); the prediction is the average of the observed modalities' probabilities.

    Paper: the classic late-fusion (decision-level) baseline, e.g. Snoek, Worring, Smeulders,
    "Early versus late fusion in semantic video analysis", ACM Multimedia 2005.
    """

    name = "late-fusion"
    paper = "Snoek et al., Early versus late fusion, ACM MM 2005"
    config_class = PerModalityConfig
    fusion = "mean"

    def _build(self) -> nn.Module:
        return PerModalityNet(self.specs, self.num_classes, self.config.encoder, self.fusion)  # type: ignore[arg-type]


class UnimodalBaseline(LateFusionBaseline):
    """``unimodal``: the single modality with the best validation accuracy.

    The per-modality classifiers are trained as for ``late-fusion``; after training the
    modalities are ranked by their validation accuracy (ties: modality order). A sample is
    classified by its best-ranked *observed* modality: the best one when it is observed, else
    the best of those that are (the fallback the brief asks for; a strict unimodal baseline
    would be undefined when its modality is missing). ``ranking`` gives the order.

    Paper: the unimodal baseline of DyMo's Table 1 (Du et al., ICLR 2026).
    """

    name = "unimodal"
    paper = "Du et al., ICLR 2026 (DyMo), unimodal baseline"
    fusion = "best"

    def _after_fit(self, net: nn.Module, data: SplitDataset) -> None:
        assert isinstance(net, PerModalityNet)
        singles = torch.eye(net.num_modalities, dtype=torch.bool)
        acc = subset_accuracy(net, data["val"], singles, self.config.train.eval_batch_size)
        order = sorted(range(len(acc)), key=lambda i: (-float(acc[i]), i))
        rank = torch.empty(len(acc), dtype=torch.long)
        rank[torch.tensor(order)] = torch.arange(len(acc))
        net.rank.copy_(rank)
        net.val_accuracy.copy_(acc)

    @property
    def ranking(self) -> list[str]:
        """Modalities from best to worst validation accuracy."""
        if self.net is None:
            raise ConfigError("unimodal: not fitted")
        rank = self.net.rank.cpu().tolist()  # type: ignore[union-attr]
        return [self.modalities[i] for i in sorted(range(len(rank)), key=lambda i: rank[i])]
