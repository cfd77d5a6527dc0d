"""``muse``: mutual-consistent graph contrastive learning over a sample-modality graph.

Paper: Wu, Dadu, Nalls, Faghri, Sun, "Multimodal Patient Representation Learning with Missing
Modalities and Labels" (MUSE), ICLR 2024.

Adaptation to dymo: the edge features are our per-modality encoders' features
(:class:`~dymo.baselines.nets.ModalityFeatures`); the modality nodes are learned embeddings per
layer rather than states aggregated from every patient of the (transductive) graph, so a test
sample's representation depends only on its own observed modalities. See :class:`MUSENet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dymo.baselines.base import NetBaseline
from dymo.baselines.nets import EncoderConfig, ModalityFeatures, _head
from dymo.baselines.training import BaselineNet, FitConfig, accuracy, dropout_masks
from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError


@dataclass
class MUSEConfig(Config):
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: FitConfig = field(default_factory=FitConfig)
    layers: int = 2  # message-passing rounds on the sample-modality graph
    proj_dim: int = 64  # contrastive projection
    contrastive_weight: float = 0.1
    temperature: float = 0.2  # of the contrastive losses
    drop_prob: float = 0.5  # edge dropout of the augmented view (per modality and sample)

    def validate(self) -> None:
        if self.layers < 1 or self.proj_dim < 1:
            raise ConfigError("MUSEConfig: layers and proj_dim must be >= 1")
        if self.contrastive_weight < 0 or self.temperature <= 0:
            raise ConfigError("MUSEConfig: contrastive_weight >= 0 and temperature > 0 are required")
        if not 0.0 <= self.drop_prob < 1.0:
            raise ConfigError(f"MUSEConfig: drop_prob {self.drop_prob} outside [0, 1)")


class MUSENet(BaselineNet):
    """A bipartite graph: sample nodes, modality nodes, one edge per *observed* (sample,
    modality) pair carrying that modality's encoder feature. ``layers`` rounds of message
    passing update the sample node: ``p <- LN(p + mean_{m observed} MLP_l([p, q_m^l, e_m]))``
    (``q_m^l`` the learned modality node of layer ``l``). The sample node feeds the classifier
    and a projection head for the contrastive losses.

    Training (MUSE's mutual-consistent contrastive learning): two views of each complete
    training batch, the original graph (every edge) and an augmented one with edges dropped at
    random (``drop_prob``, at least one left per sample). Loss = cross-entropy on both views +
    ``contrastive_weight`` x (an unsupervised cross-view InfoNCE: a sample's two views are
    positives + a supervised contrastive loss over both views: samples of the same class are
    positives), which makes the representation of a sample consistent whichever modalities
    it has.
    """

    def __init__(self, specs: Sequence[ModalitySpec], num_classes: int, cfg: MUSEConfig) -> None:
        super().__init__()
        enc = cfg.encoder
        d = enc.dim
        self.specs = list(specs)
        m = self.num_modalities = len(self.specs)
        self.drop_prob, self.temperature, self.contrastive_weight = cfg.drop_prob, cfg.temperature, cfg.contrastive_weight
        self.features = ModalityFeatures(self.specs, enc)
        self.sample_init = nn.Parameter(torch.zeros(d))
        self.modality_nodes = nn.Parameter(torch.randn(cfg.layers, m, d) * 0.02)
        self.messages = nn.ModuleList(nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, d)) for _ in range(cfg.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(cfg.layers))
        self.head = _head(d, enc.hidden, num_classes, enc.dropout)
        self.projector = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.proj_dim))

    def represent(self, edges: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
        """Sample-node representations ``[B, D]`` from edge features ``[B, M, D]`` (used edges only)."""
        b, m, d = edges.shape
        w = (used.to(edges.dtype) / used.sum(dim=1, keepdim=True).clamp_min(1)).unsqueeze(-1)  # mean over used edges
        p = self.sample_init.expand(b, d)
        for layer, (msg, norm) in enumerate(zip(self.messages, self.norms, strict=True)):
            q = self.modality_nodes[layer].expand(b, m, d)
            out = msg(torch.cat([p.unsqueeze(1).expand(b, m, d), q, edges], dim=-1))
            p = norm(p + (w * out).sum(dim=1))
        return p

    def log_proba(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.represent(self.features(data, used), used)), dim=-1)

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = batch.labels
        assert y is not None
        b, m = len(batch), self.num_modalities
        edges = self.features(batch.data, None)
        full = torch.ones(b, m, dtype=torch.bool, device=edges.device)
        dropped = dropout_masks(b, m, self.drop_prob, generator).to(edges.device)
        # Dropped edges are zeroed in the augmented view too (the encoder saw the true input).
        p_full, p_drop = self.represent(edges, full), self.represent(edges, dropped)
        lp_full, lp_drop = F.log_softmax(self.head(p_full), dim=-1), F.log_softmax(self.head(p_drop), dim=-1)
        loss = 0.5 * (F.nll_loss(lp_full, y) + F.nll_loss(lp_drop, y))
        if self.contrastive_weight > 0:
            z = F.normalize(self.projector(torch.cat([p_full, p_drop])), dim=-1)
            ids = torch.arange(b, device=z.device).repeat(2)
            loss = loss + self.contrastive_weight * (
                contrastive_loss(z, ids, self.temperature) + contrastive_loss(z, y.repeat(2), self.temperature)
            )
        return loss, {"train_acc": accuracy(lp_full, y)}


def contrastive_loss(z: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised-contrastive loss (Khosla et al. 2020) over L2-normalised ``z`` ``[N, P]``:
    rows with the same ``group`` are positives. Groups = sample ids gives the cross-view InfoNCE."""
    n = len(z)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (groups.unsqueeze(0) == groups.unsqueeze(1)) & ~eye
    count = pos.sum(dim=1)
    per_row = -torch.where(pos, log_prob, torch.zeros((), dtype=log_prob.dtype, device=z.device)).sum(dim=1)
    has = count > 0
    return (per_row[has] / count[has]).mean() if bool(has.any()) else z.sum() * 0.0


class MUSEBaseline(NetBaseline):
    """``muse``: a sample-modality bipartite graph with mutual-consistent contrastive learning.

    Every sample is a node linked to the modalities it has; edges carry the modality's
    encoder feature; message passing gives the sample's representation, classified by an MLP.
    Trained on two views of each complete batch (every edge, and edges dropped at random) with
    cross-entropy on both + unsupervised (cross-view) and supervised contrastive losses (see
    :class:`MUSENet`). Adaptations: our per-modality encoders produce the edge features;
    modality nodes are learned per layer instead of being aggregated over all patients of the
    transductive graph (MUSE's patients share one graph), so inference is per sample; MUSE's
    semi-supervised use of unlabelled patients does not apply (every training sample is
    labelled); the augmented view drops each (sample, modality) edge independently.

    Paper: Wu et al., "Multimodal Patient Representation Learning with Missing Modalities and
    Labels" (MUSE), ICLR 2024.
    """

    name = "muse"
    paper = "Wu et al., Multimodal Patient Representation Learning with Missing Modalities and Labels (MUSE), ICLR 2024"
    config_class = MUSEConfig

    def _build(self) -> nn.Module:
        return MUSENet(self.specs, self.num_classes, self.config)
