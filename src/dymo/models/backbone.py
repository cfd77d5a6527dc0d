"""The flexible backbone: one network that classifies from any subset of modalities.

``encode`` runs every modality encoder once; ``fuse`` runs only the transformer for a
per-sample subset of modalities. Everything downstream (training with K subsets per batch,
calibration over all subsets, DyMo's reward search) encodes once and fuses many times.

Unused modalities are invisible: their tokens are gathered out of the sequence (each sample
keeps only its used tokens; rows of different lengths are fused in separate groups, so there is
no padding and no attention mask), so the output for a subset never depends on the content of
unused modalities, and fusing a small subset costs less than fusing all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dymo.config import Config
from dymo.data.batch import zero_missing
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError
from dymo.models.encoders import build_encoder


@dataclass
class BackboneConfig(Config):
    """Sizes default to the DyMo authors' PolyMNIST backbone."""

    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    proj_dim: int = 64
    metric: Literal["cosine", "euclidean"] = "cosine"
    # Per-modality encoder overrides: modality name -> registered encoder name.
    encoders: dict[str, str] = field(default_factory=dict)
    # Options passed to every encoder builder (image_channels, vector_tokens, text_tokens, ...).
    encoder_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.dim <= 0 or self.depth <= 0 or self.heads <= 0 or self.proj_dim <= 0:
            raise ConfigError("BackboneConfig: dim, depth, heads and proj_dim must be positive")
        if self.dim % self.heads:
            raise ConfigError(f"BackboneConfig: dim {self.dim} is not divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"BackboneConfig: dropout {self.dropout} outside [0, 1)")


class FusionOutput(NamedTuple):
    logits: torch.Tensor  # [B, C]
    z: torch.Tensor  # [B, P], L2-normalised for the cosine metric
    h: torch.Tensor  # [B, D], the CLS feature


class FlexibleBackbone(nn.Module):
    def __init__(self, specs: Sequence[ModalitySpec], num_classes: int, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config or BackboneConfig()
        self.specs = list(specs)
        self.num_classes = num_classes
        cfg = self.config
        unknown = set(cfg.encoders) - {s.name for s in self.specs}
        if unknown:
            raise ConfigError(f"BackboneConfig.encoders names unknown modalities {sorted(unknown)}")
        self.encoders = nn.ModuleDict(
            {s.name: build_encoder(s, cfg.dim, cfg.encoders.get(s.name), cfg.encoder_options) for s in self.specs}
        )
        counts = [self.encoders[s.name].num_tokens for s in self.specs]
        token_modality = torch.repeat_interleave(torch.arange(len(self.specs)), torch.tensor(counts))
        self.register_buffer("token_modality", token_modality, persistent=False)
        num_tokens = int(sum(counts))
        self.modality_embed = nn.Parameter(torch.randn(len(self.specs), cfg.dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(num_tokens, cfg.dim) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.dim, cfg.heads, int(cfg.dim * cfg.mlp_ratio), cfg.dropout,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.classifier = nn.Linear(cfg.dim, num_classes)
        self.projector = nn.Linear(cfg.dim, cfg.proj_dim)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def num_modalities(self) -> int:
        return len(self.specs)

    @property
    def metric(self) -> str:
        return self.config.metric

    def encode(self, data: dict[str, torch.Tensor], available: torch.Tensor | None = None) -> torch.Tensor:
        """Run each encoder once: ``[B, T, D]`` tokens with modality and position embeddings.

        Rows of modalities that ``available`` marks False are replaced by zeros before encoding,
        so NaN or garbage there can never leak into gradients or outputs.
        """
        tokens = []
        for i, spec in enumerate(self.specs):
            if spec.name not in data:
                raise DataError(f"encode: no tensor for modality {spec.name!r}")
            x = data[spec.name]
            if available is not None:
                x = zero_missing(x, available[:, i])
            t = self.encoders[spec.name](x)
            tokens.append(t + self.modality_embed[i])
        return torch.cat(tokens, dim=1) + self.pos_embed

    def fuse(self, tokens: torch.Tensor, used: torch.Tensor) -> FusionOutput:
        """Fuse each sample's used modalities only. ``used``: bool ``[B, M]`` (at least one True per row)."""
        if used.shape != (tokens.shape[0], self.num_modalities):
            raise DataError(f"fuse: used mask shape {tuple(used.shape)}, expected {(tokens.shape[0], self.num_modalities)}")
        token_used = used[:, self.token_modality]  # [B, T]
        counts = token_used.sum(1)
        if bool((counts == 0).any()):
            i = int(torch.nonzero(counts == 0)[0])
            raise DataError(f"sample {i}: no modality is used; fusion needs at least one")
        # Per row: its used tokens first, in their order (a stable sort), then the unused ones.
        order = torch.argsort((~token_used).to(torch.int8), dim=1, stable=True)
        lengths = torch.unique(counts).tolist()
        if len(lengths) == 1:
            keep = order[:, : lengths[0]]
            return self._run(torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])))
        # Rows of different lengths (e.g. DyMo's search: a sample's current subset next to its
        # candidates): fuse each length group on its own, so no row is padded to the longest and
        # no attention mask is needed, then restore the row order.
        parts, rows = [], []
        for length in lengths:
            idx = torch.nonzero(counts == length).flatten()
            parts.append(self._run(tokens[idx.unsqueeze(1), order[idx, :length]]))
            rows.append(idx)
        inverse = torch.argsort(torch.cat(rows))
        return FusionOutput(*(torch.cat(field)[inverse] for field in zip(*parts, strict=True)))

    def fuse_dropped(self, tokens: torch.Tensor, used: torch.Tensor) -> FusionOutput:
        """Reference path: one subset (bool ``[M]``) for the whole batch, unused tokens dropped
        from the sequence with no mask at all. Used by tests to pin ``fuse``."""
        keep = used[self.token_modality]
        return self._run(tokens[:, keep])

    def _run(self, seq: torch.Tensor) -> FusionOutput:
        """Transformer + heads on ``[CLS] + seq`` (every row of ``seq`` is all used tokens)."""
        b = seq.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), seq], dim=1)
        for block in self.blocks[:-1]:
            x = block(x)
        h = self.norm(self._cls_block(self.blocks[-1], x))
        logits = self.classifier(h)
        z = self.projector(h)
        if self.config.metric == "cosine":
            z = F.normalize(z, dim=-1)
        return FusionOutput(logits, z, h)

    @staticmethod
    def _cls_block(block: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
        """The last (pre-norm) block, computed for the CLS position only, ``[B, D]``.

        Only the CLS output of the last block is read, so its attention needs just the CLS query
        (keys and values still come from every token) and its MLP just the CLS row. The same
        function as ``block(x)[:, 0]``, about 40% of the fusion cost saved at depth 2.
        """
        y = block.norm1(x)
        c = x[:, :1] + block.dropout1(block.self_attn(y[:, :1], y, y, need_weights=False)[0])
        f = block.linear2(block.dropout(block.activation(block.linear1(block.norm2(c)))))
        return (c + block.dropout2(f))[:, 0]

    def forward(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> FusionOutput:
        return self.fuse(self.encode(data, used), used)
