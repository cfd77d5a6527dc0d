"""``m3care``: missing modalities imputed in latent space from similar samples.

Paper: Zhang, Chu, Gao, Ma, Zhang, Wang, Zhao, "M3Care: Learning with Missing Modalities in
Multimodal Healthcare Data", KDD 2022.

Adaptation to dymo: the unimodal extractors are our per-modality encoders
(:class:`~dymo.baselines.nets.ModalityFeatures`), the fusion is a small transformer over one
token per modality, and the similar-sample graph is built against a fixed *bank* of training
samples at test time (M3Care builds it over the patients of the batch, which makes a test
prediction depend on its batch-mates; ours does not). See :class:`M3CareNet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dymo.baselines.base import NetBaseline
from dymo.baselines.nets import EncoderConfig, ModalityFeatures, _head
from dymo.baselines.training import BaselineNet, FitConfig, accuracy, dropout_masks
from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import SplitDataset
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError


@dataclass
class M3CareConfig(Config):
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: FitConfig = field(default_factory=FitConfig)
    similarity_dim: int = 64  # per-modality projection the similarity kernel compares
    neighbours: int = 16  # top-k similar samples a missing modality is imputed from
    temperature: float = 0.1  # softmax temperature over the neighbours' similarities
    bank_size: int = 1024  # training samples kept as the test-time neighbour pool
    fusion_depth: int = 1
    fusion_heads: int = 4
    drop_prob: float = 0.5  # simulated missingness during training (per modality and sample)
    # Training references: "batch" (the other samples of the batch, as M3Care) or "bank" (the
    # features of the latest bank_size training samples, the sample itself excluded: the same
    # pool size as at test).
    train_references: Literal["batch", "bank"] = "batch"

    def validate(self) -> None:
        if min(self.similarity_dim, self.neighbours, self.bank_size, self.fusion_depth, self.fusion_heads) < 1:
            raise ConfigError("M3CareConfig: similarity_dim, neighbours, bank_size, fusion_depth and fusion_heads must be >= 1")
        if self.temperature <= 0:
            raise ConfigError(f"M3CareConfig: temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.drop_prob < 1.0:
            raise ConfigError(f"M3CareConfig: drop_prob {self.drop_prob} outside [0, 1)")
        if self.train_references not in ("batch", "bank"):
            raise ConfigError(f"M3CareConfig: train_references must be 'batch' or 'bank', got {self.train_references!r}")
        if self.encoder.dim % self.fusion_heads:
            raise ConfigError(f"M3CareConfig: encoder.dim {self.encoder.dim} is not divisible by fusion_heads {self.fusion_heads}")


class M3CareNet(BaselineNet):
    """Encoders -> similar-sample imputation of missing modality features -> fusion transformer.

    Similarity between a query sample and a reference sample (M3Care's patient-similarity
    kernel): the mean over the modalities both have of the cosine between learned per-modality
    projections of their features. A missing modality ``m`` of the query is replaced by the
    softmax(similarity / ``temperature``)-weighted mean of modality ``m``'s features of its
    ``neighbours`` most similar references that have ``m`` (M3Care's task-guided latent
    imputation; its learned similarity threshold is replaced by a fixed top-k).

    References: during training, the other samples of the batch (``train_references =
    "batch"``, as in M3Care), or the bank of the latest ``bank_size`` training samples'
    features (``"bank"``: the test-time pool size; a sample is kept out of its own neighbours by
    a fingerprint of its raw input), with each sample's modalities dropped at random
    (``drop_prob``) to simulate missingness; at test, the **bank**: the features of
    ``bank_size`` training samples, computed with the final weights after training (a buffer,
    saved with the weights). Until then (validation during training) the bank holds the
    latest training batches' features.

    Loss: cross-entropy of the fused prediction on the dropped view + on the complete view.
    """

    def __init__(self, specs: Sequence[ModalitySpec], num_classes: int, cfg: M3CareConfig) -> None:
        super().__init__()
        enc = cfg.encoder
        self.specs = list(specs)
        m = self.num_modalities = len(self.specs)
        self.neighbours, self.temperature, self.drop_prob = cfg.neighbours, cfg.temperature, cfg.drop_prob
        self.train_references = cfg.train_references
        self.features = ModalityFeatures(self.specs, enc)
        self.similarity = nn.ModuleList(nn.Linear(enc.dim, cfg.similarity_dim) for _ in range(m))
        self.modality_embed = nn.Parameter(torch.randn(m, enc.dim) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, enc.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(enc.dim, cfg.fusion_heads, 4 * enc.dim, enc.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, cfg.fusion_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(enc.dim)
        self.head = _head(enc.dim, enc.hidden, num_classes, enc.dropout)
        self.register_buffer("bank", torch.zeros(cfg.bank_size, m, enc.dim))
        self.register_buffer("bank_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("bank_next", torch.zeros((), dtype=torch.long))
        # Training only (not saved): a fingerprint of each bank row's raw input, so a sample is
        # never its own neighbour when the training references are the bank.
        self.register_buffer("bank_fingerprint", torch.full((cfg.bank_size,), float("nan"), dtype=torch.float64), persistent=False)
        g = torch.Generator().manual_seed(1234)
        self._fp_dirs = [torch.randn(int(torch.tensor(s.shape).prod()), generator=g, dtype=torch.float64) for s in self.specs]

    # -- the similar-sample graph --------------------------------------------------------------
    def _keys(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-modality similarity keys ``[N, M, S]`` (L2-normalised)."""
        return F.normalize(torch.stack([p(feats[:, i]) for i, p in enumerate(self.similarity)], dim=1), dim=-1)

    def impute(self, feats: torch.Tensor, used: torch.Tensor, ref: torch.Tensor, ref_used: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """``feats`` ``[B, M, D]`` with the rows of unused modalities replaced by the weighted mean
        of the same modality of the most similar references (``ref`` ``[N, M, D]``, ``ref_used``)."""
        q, k = self._keys(feats), self._keys(ref)
        both = used.unsqueeze(1) & ref_used.unsqueeze(0)  # [B, N, M]
        cos = torch.einsum("bms,nms->bnm", q, k)
        zero = torch.zeros((), dtype=cos.dtype, device=cos.device)
        shared = both.sum(-1)
        sim = torch.where(both, cos, zero).sum(-1) / shared.clamp_min(1)  # [B, N]
        sim = sim.masked_fill(shared == 0, float("-inf"))
        if exclude is not None:  # bool [B, N]: pairs that may not be neighbours (a sample and itself)
            sim = sim.masked_fill(exclude, float("-inf"))
        out = feats
        for m in range(self.num_modalities):
            missing = ~used[:, m]
            if not bool(missing.any()):
                continue
            s = sim.masked_fill(~ref_used[:, m].unsqueeze(0), float("-inf"))  # references that have m
            top, idx = s.topk(min(self.neighbours, s.shape[1]), dim=1)
            valid = torch.isfinite(top)
            # Invalid slots (fewer usable references than k) get weight 0; a row with none at all
            # imputes zeros. No -inf reaches the softmax, so no NaN reaches the gradient.
            w = torch.softmax(top.masked_fill(~valid, -1e9) / self.temperature, dim=1) * valid
            filled = torch.einsum("bk,bkd->bd", w, ref[:, m][idx])
            out = torch.where(missing.view(-1, 1, 1) & (torch.arange(self.num_modalities, device=out.device) == m).view(1, -1, 1), filled.unsqueeze(1), out)
        return out

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Log-probabilities from complete (observed + imputed) features ``[B, M, D]``."""
        x = torch.cat([self.cls_token.expand(len(feats), -1, -1), feats + self.modality_embed], dim=1)
        return F.log_softmax(self.head(self.norm(self.fusion(x)[:, 0])), dim=-1)

    # -- BaselineNet -----------------------------------------------------------------------------
    def log_proba(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> torch.Tensor:
        feats = self.features(data, used)
        n = int(self.bank_filled)
        if n == 0:
            raise ConfigError("m3care: the neighbour bank is empty; the network was never trained")
        ref = self.bank[:n]
        ref_used = torch.ones(n, self.num_modalities, dtype=torch.bool, device=feats.device)
        return self.classify(self.impute(feats, used, ref, ref_used))

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = batch.labels
        assert y is not None
        b, m = len(batch), self.num_modalities
        feats = self.features(batch.data, None)
        fp = self._fingerprint(batch.data)
        used = dropout_masks(b, m, self.drop_prob, generator).to(feats.device)
        n = int(self.bank_filled)
        if self.train_references == "bank" and n > 0:
            ref = self.bank[:n]
            exclude = (self.bank_fingerprint[:n].unsqueeze(0) - fp.unsqueeze(1)).abs() <= 1e-9 * (fp.abs().unsqueeze(1) + 1.0)
        else:
            ref = feats
            exclude = torch.eye(b, dtype=torch.bool, device=feats.device)
        self._push(feats.detach(), fp)
        everything = torch.ones(len(ref), m, dtype=torch.bool, device=feats.device)  # references are complete, as the bank
        dropped = self.classify(self.impute(feats, used, ref, everything, exclude))
        full = self.classify(feats)
        return 0.5 * (F.nll_loss(dropped, y) + F.nll_loss(full, y)), {"train_acc": accuracy(full, y)}

    @torch.no_grad()
    def _fingerprint(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """A float64 ``[B]`` random projection of each sample's raw input (equal inputs, equal
        fingerprints up to rounding; different inputs, different ones)."""
        out = None
        for s, r in zip(self.specs, self._fp_dirs, strict=True):
            x = data[s.name]
            v = x.reshape(len(x), -1).to(torch.float64) @ r.to(x.device)
            out = v if out is None else out + v
        assert out is not None
        return out

    @torch.no_grad()
    def _push(self, feats: torch.Tensor, fingerprint: torch.Tensor) -> None:
        """Ring-buffer write of training features into the bank (used until it is rebuilt)."""
        size = self.bank.shape[0]
        feats, fingerprint = feats[-size:], fingerprint[-size:]
        idx = (int(self.bank_next) + torch.arange(len(feats), device=feats.device)) % size
        self.bank[idx] = feats
        self.bank_fingerprint[idx] = fingerprint.to(self.bank_fingerprint.device)
        self.bank_next.fill_((int(self.bank_next) + len(feats)) % size)
        self.bank_filled.fill_(min(size, int(self.bank_filled) + len(feats)))

    @torch.no_grad()
    def rebuild_bank(self, feats: torch.Tensor) -> None:
        """The bank = these features ``[N, M, D]`` of complete training samples."""
        feats = feats[: self.bank.shape[0]]
        self.bank.zero_()
        self.bank[: len(feats)] = feats
        self.bank_filled.fill_(len(feats))
        self.bank_next.fill_(len(feats) % self.bank.shape[0])


class M3CareBaseline(NetBaseline):
    """``m3care``: missing modalities imputed in latent space from similar training samples.

    Per-modality encoders; a learned similarity kernel over the shared observed modalities
    finds each sample's most similar references; every missing modality's feature is the
    similarity-weighted mean of theirs; a transformer fuses the (observed + imputed) modality
    features (see :class:`M3CareNet`). Adaptations: our encoders and a small fusion
    transformer instead of M3Care's clinical extractors; a top-``neighbours`` softmax instead
    of its learned similarity threshold and GCN; at test the references are a fixed bank of
    ``bank_size`` training samples instead of the test batch, so a prediction never depends on
    the rest of the batch; no label-aware stabilisation term. Trained on complete data with
    random modality dropout (``drop_prob``).

    Paper: Zhang et al., "M3Care: Learning with Missing Modalities in Multimodal Healthcare
    Data", KDD 2022.
    """

    name = "m3care"
    paper = "Zhang et al., M3Care: Learning with Missing Modalities in Multimodal Healthcare Data, KDD 2022"
    config_class = M3CareConfig

    def _build(self) -> nn.Module:
        return M3CareNet(self.specs, self.num_classes, self.config)

    def _after_fit(self, net: nn.Module, data: SplitDataset) -> None:
        assert isinstance(net, M3CareNet)
        train = data["train"]
        n = min(self.config.bank_size, len(train))
        g = torch.Generator().manual_seed(self.config.train.seed)
        idx = torch.randperm(len(train), generator=g)[:n].sort().values
        net.eval()
        device = next(net.parameters()).device
        step = self.config.train.eval_batch_size
        with torch.no_grad():
            feats = [net.features(train.batch(idx[s : s + step].tolist()).to(device).data, None) for s in range(0, n, step)]
        net.rebuild_bank(torch.cat(feats))
