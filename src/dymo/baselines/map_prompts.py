"""``map``: missing-aware prompts for a (frozen) multimodal transformer.

Paper: Lee, Tsai, Chiu, Lee, "Multimodal Prompting with Missing Modalities for Visual
Recognition" (MAP, missing-aware prompts), CVPR 2023.

Adaptation to dymo: the multimodal transformer is our
:class:`~dymo.models.backbone.FlexibleBackbone` (its encoders + fusion transformer) instead of
a pretrained ViLT, "pretrained" here on the complete training data; the missing modalities'
tokens are dropped from the sequence (ViLT fills them with dummy inputs). See :class:`MAPNet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dymo.baselines.base import NetBaseline
from dymo.baselines.training import (
    BaselineNet,
    FitConfig,
    accuracy,
    dropout_masks,
)
from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.utils.subsets import masks_to_codes

MAX_MODALITIES = 10  # one prompt per missing-case: 2**M - 1 of them


@dataclass
class MAPConfig(Config):
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: FitConfig = field(default_factory=FitConfig)  # used for both phases (pretrain, prompts)
    prompt_length: int = 4  # prompt tokens per missing-case
    drop_prob: float = 0.5  # simulated missingness while the prompts are learned
    freeze_backbone: bool = True  # MAP's setting: only prompts + classifier are learned in phase 2

    def validate(self) -> None:
        if self.prompt_length < 1:
            raise ConfigError(f"MAPConfig: prompt_length must be >= 1, got {self.prompt_length}")
        if not 0.0 <= self.drop_prob < 1.0:
            raise ConfigError(f"MAPConfig: drop_prob {self.drop_prob} outside [0, 1)")


class MAPNet(BaselineNet):
    """A :class:`FlexibleBackbone` with one learnable prompt (``prompt_length`` tokens) per
    missing-case (subset of available modalities, ``2**M - 1`` cases), inserted after the
    CLS token in front of the available modalities' tokens: ``[CLS, prompt(case), tokens]``
    (MAP's input-level prompts).

    Phase ``pretrain``: the backbone alone (no prompt) on complete data, cross-entropy (the
    stand-in for ViLT's pretraining). Phase ``prompts``: the backbone is frozen except its
    final norm and classifier (MAP trains the prompts, the pooler and the classifier), and the
    prompts are learned on batches with modalities dropped at random (``drop_prob``).
    """

    def __init__(self, specs: Sequence[ModalitySpec], num_classes: int, cfg: BackboneConfig, prompt_length: int, drop_prob: float) -> None:
        super().__init__()
        if len(specs) > MAX_MODALITIES:
            raise ConfigError(f"map: one prompt per missing-case needs 2**M - 1 prompts; {len(specs)} modalities is more than {MAX_MODALITIES}")
        self.backbone = FlexibleBackbone(specs, num_classes, cfg)
        m = self.num_modalities = len(specs)
        self.drop_prob = drop_prob
        self.prompts = nn.Parameter(torch.randn(2**m, prompt_length, cfg.dim) * 0.02)  # row 0 (nothing available) unused
        self.phase: Literal["pretrain", "prompts"] = "prompts"

    def fuse_prompted(self, tokens: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]``: each sample's used tokens after its missing-case prompt."""
        bb = self.backbone
        codes = masks_to_codes(used)
        logits = torch.empty(len(tokens), bb.num_classes, dtype=tokens.dtype, device=tokens.device)
        for code in torch.unique(codes).tolist():
            rows = torch.nonzero(codes == code).flatten()
            keep = used[rows[0]][bb.token_modality]
            seq = tokens[rows][:, keep]
            x = torch.cat([bb.cls_token.expand(len(rows), -1, -1), self.prompts[code].expand(len(rows), -1, -1), seq], dim=1)
            for block in bb.blocks:
                x = block(x)
            logits[rows] = bb.classifier(bb.norm(x[:, 0]))
        return logits

    def log_proba(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        if self.phase == "pretrain":
            return F.log_softmax(self.backbone(data, used).logits, dim=-1)
        return F.log_softmax(self.fuse_prompted(self.backbone.encode(data, used), used), dim=-1)

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = batch.labels
        assert y is not None
        b, m = len(batch), self.num_modalities
        if self.phase == "pretrain":
            lp = F.log_softmax(self.backbone(batch.data, torch.ones(b, m, dtype=torch.bool, device=y.device)).logits, dim=-1)
            return F.nll_loss(lp, y), {"train_acc": accuracy(lp, y)}
        used = dropout_masks(b, m, self.drop_prob, generator).to(y.device)
        lp = F.log_softmax(self.fuse_prompted(self.backbone.encode(batch.data, used), used), dim=-1)
        return F.nll_loss(lp, y), {"train_acc": accuracy(lp, y)}

    def val_subsets(self) -> torch.Tensor:
        if self.phase == "pretrain":
            return torch.ones(1, self.num_modalities, dtype=torch.bool)
        return super().val_subsets()


class MAPBaseline(NetBaseline):
    """``map``: missing-aware prompts on a (frozen) multimodal transformer.

    A multimodal transformer is first trained on complete data; then one learnable prompt per
    missing-case (which modalities are available) is prepended to the token sequence, and the
    prompts (+ the classifier) are learned with modalities dropped at random while the rest of
    the transformer stays frozen (``freeze_backbone``). At test the prompt of the sample's
    case is used (see :class:`MAPNet`). Adaptations: our flexible backbone (per-modality
    encoders + fusion transformer), pretrained here on the complete training split, replaces the
    large-scale pretrained ViLT; missing modalities' tokens are left out of the sequence instead
    of being fed as dummy inputs; input-level prompts only (MAP also studies attention-level
    prompts, prepended at several layers); a prompt per subset of available modalities, which
    for MAP's two modalities are its three missing-cases.

    Paper: Lee et al., "Multimodal Prompting with Missing Modalities for Visual Recognition",
    CVPR 2023.
    """

    name = "map"
    paper = "Lee et al., Multimodal Prompting with Missing Modalities for Visual Recognition (MAP), CVPR 2023"
    config_class = MAPConfig
    phases = ("pretrain", "prompts")

    def _build(self) -> nn.Module:
        c = self.config
        return MAPNet(self.specs, self.num_classes, c.backbone, c.prompt_length, c.drop_prob)

    def _enter_phase(self, net: nn.Module, phase: str) -> None:
        if phase == "prompts" and self.config.freeze_backbone:
            assert isinstance(net, MAPNet)
            net.backbone.requires_grad_(False)
            net.backbone.norm.requires_grad_(True)
            net.backbone.classifier.requires_grad_(True)
