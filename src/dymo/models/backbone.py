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
from dymo.data.specs import HasModalities, ModalitySpec
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
    # Which defaults an option not in encoder_options takes (models.encoders.ENCODER_DEFAULTS):
    # 1 = vector values as they are (a config saved without the key is 1); 2 = vector features
    # piecewise-linear encoded between their training quantiles (opt-in for now: the tests' tiny
    # fixtures were calibrated on 1).
    encoder_defaults: int = 1

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> BackboneConfig:
        """A config read from a run or bundle: one saved before ``encoder_defaults`` existed
        keeps the defaults it was trained with."""
        return cls.from_dict({"encoder_defaults": 1, **d})

    def resolved_encoder_options(self) -> dict[str, Any]:
        from dymo.models.encoders import ENCODER_DEFAULTS

        return {**ENCODER_DEFAULTS[self.encoder_defaults], **self.encoder_options}

    def validate(self) -> None:
        if self.dim <= 0 or self.depth <= 0 or self.heads <= 0 or self.proj_dim <= 0:
            raise ConfigError("BackboneConfig: dim, depth, heads and proj_dim must be positive")
        if self.dim % self.heads:
            raise ConfigError(f"BackboneConfig: dim {self.dim} is not divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"BackboneConfig: dropout {self.dropout} outside [0, 1)")
        from dymo.models.encoders import ENCODER_DEFAULTS

        if self.encoder_defaults not in ENCODER_DEFAULTS:
            raise ConfigError(f"BackboneConfig: encoder_defaults {self.encoder_defaults} is not one of {sorted(ENCODER_DEFAULTS)}")


class FusionOutput(NamedTuple):
    logits: torch.Tensor  # [B, C]
    z: torch.Tensor  # [B, P], L2-normalised for the cosine metric
    h: torch.Tensor  # [B, D], the CLS feature


class Prepared(NamedTuple):
    """Per-sample work shared by every subset a sample is fused with (evaluation mode):
    ``x`` ``[B, 1 + T, D]`` is the CLS token followed by the sample's tokens, ``qkv`` ``[B, 1 + T, 3 D]``
    the first block's LayerNorm + query/key/value projection of each of them
    (:meth:`FlexibleBackbone.prepare`)."""

    x: torch.Tensor
    qkv: torch.Tensor


class FlexibleBackbone(HasModalities, nn.Module):
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
            {s.name: build_encoder(s, cfg.dim, cfg.encoders.get(s.name), cfg.resolved_encoder_options()) for s in self.specs}
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

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first block's per-token work that does not depend on the subset: LayerNorm and
        the query/key/value projection of every token, ``[B, T, 3 D]``.

        A token's projection is the same in every subset it takes part in, so code that fuses
        one sample with many subsets (DyMo's search, calibration) computes it once per sample
        and passes it to :meth:`fuse` (``projected=``); only evaluation mode uses it."""
        blk = self.blocks[0]
        return F.linear(blk.norm1(tokens), blk.self_attn.in_proj_weight, blk.self_attn.in_proj_bias)

    def prepare(self, tokens: torch.Tensor, projected: torch.Tensor | None = None) -> Prepared:
        """The per-sample tables :meth:`fuse` reads in evaluation mode when a sample is fused with
        many subsets (DyMo's search, calibration): CLS + tokens and their first-block projections
        (``projected``: :meth:`project` of ``tokens`` when already computed). Each row then gathers
        its used tokens and their projections in one indexing operation, with no per-row
        concatenation of the CLS token and no per-row projection."""
        b = tokens.shape[0]
        cls = self.cls_token.expand(b, -1, -1).to(tokens.dtype)
        if projected is None:
            projected = self.project(tokens)
        qkv = torch.cat([self.project(self.cls_token).to(projected.dtype).expand(b, -1, -1), projected], dim=1)
        return Prepared(torch.cat([cls, tokens], dim=1), qkv)

    def fuse(
        self,
        tokens: torch.Tensor,
        used: torch.Tensor,
        rows: torch.Tensor | None = None,
        projected: torch.Tensor | Prepared | None = None,
    ) -> FusionOutput:
        """Fuse each sample's used modalities only. ``used``: bool ``[N, M]`` (at least one True
        per row). ``rows`` (long ``[N]``): row ``n`` fuses sample ``rows[n]`` of ``tokens``
        (default: sample ``n``), so a sample fused with many subsets is not copied per subset.
        ``projected``: :meth:`prepare` of ``tokens`` (or :meth:`project` of them), reused in
        evaluation mode (computed here for the used tokens when not given)."""
        n = tokens.shape[0] if rows is None else rows.shape[0]
        if used.shape != (n, self.num_modalities):
            raise DataError(f"fuse: used mask shape {tuple(used.shape)}, expected {(n, self.num_modalities)}")
        token_used = used[:, self.token_modality]  # [N, T]
        counts = token_used.sum(1)
        if bool((counts == 0).any()):
            i = int(torch.nonzero(counts == 0)[0])
            raise DataError(f"sample {i}: no modality is used; fusion needs at least one")
        if self.training:
            projected = None
        if projected is not None and not isinstance(projected, Prepared):
            projected = self.prepare(tokens, projected)
        if rows is None:
            rows = torch.arange(n, device=tokens.device)
        # Per row: its used tokens first, in their order (a stable sort), then the unused ones.
        order = torch.argsort((~token_used).to(torch.int8), dim=1, stable=True)
        lengths = torch.unique(counts).tolist()
        if projected is not None:
            # flat row indices into the prepared [B * (1 + T), .] tables: CLS, then the used tokens
            width = projected.x.shape[1]
            start = (rows * width).unsqueeze(1)
            flat = torch.cat([start, order + 1 + start], dim=1)
            x_table, qkv_table = projected.x.flatten(0, 1), projected.qkv.flatten(0, 1)
        # Rows of different lengths (e.g. DyMo's search: a sample's current subset next to its
        # candidates) are fused in one group per length, so no row is padded to the longest and
        # no attention mask is needed; then the row order is restored.
        parts, groups = [], []
        for length in lengths:
            idx = torch.nonzero(counts == length).flatten() if len(lengths) > 1 else None
            if projected is not None:
                f = flat[:, : length + 1] if idx is None else flat[idx, : length + 1]
                shape = (f.shape[0], length + 1, -1)
                f = f.reshape(-1)
                parts.append(self._run_prepared(x_table.index_select(0, f).view(shape), qkv_table.index_select(0, f).view(shape)))
            else:
                r = rows if idx is None else rows[idx]
                keep = order[:, :length] if idx is None else order[idx, :length]
                parts.append(self._run(tokens[r.unsqueeze(1), keep]))
            groups.append(idx)
        if len(parts) == 1:
            return parts[0]
        inverse = torch.argsort(torch.cat(groups))
        return FusionOutput(*(torch.cat(field)[inverse] for field in zip(*parts, strict=True)))

    def fuse_dropped(self, tokens: torch.Tensor, used: torch.Tensor) -> FusionOutput:
        """Reference path: one subset (bool ``[M]``) for the whole batch, unused tokens dropped
        from the sequence with no mask at all. Used by tests to pin ``fuse``."""
        keep = used[self.token_modality]
        return self._run(tokens[:, keep])

    def _run(self, seq: torch.Tensor) -> FusionOutput:
        """Transformer + heads on ``[CLS] + seq`` (every row of ``seq`` is all used tokens).

        In evaluation mode the first block runs from the projection of ``[CLS] + seq``
        (:meth:`_run_prepared`). Training uses the modules as they are."""
        b = seq.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), seq], dim=1)
        if not self.training:
            return self._run_prepared(x, self.project(x))
        blocks = list(self.blocks)
        for block in blocks[:-1]:
            x = block(x)
        h = self.norm(self._cls_block(blocks[-1], x))
        return self._heads(h)

    def _run_prepared(self, x: torch.Tensor, qkv: torch.Tensor) -> FusionOutput:
        """Evaluation mode: transformer + heads on ``x`` = ``[CLS] + used tokens`` (``[N, S, D]``)
        whose first-block projection ``qkv`` (``[N, S, 3 D]``) is given."""
        blocks = list(self.blocks)
        if len(blocks) == 1:
            return self._heads(self.norm(self._projected_block(blocks[0], x, qkv, cls_only=True)[:, 0]))
        x = self._projected_block(blocks[0], x, qkv, cls_only=False)
        for block in blocks[1:-1]:
            x = block(x)
        return self._heads(self.norm(self._cls_block_eval(blocks[-1], x)))

    def _heads(self, h: torch.Tensor) -> FusionOutput:
        logits = self.classifier(h)
        z = self.projector(h)
        if self.config.metric == "cosine":
            z = F.normalize(z, dim=-1)
        return FusionOutput(logits, z, h)

    @staticmethod
    def _projected_block(block: nn.TransformerEncoderLayer, x: torch.Tensor, qkv: torch.Tensor, cls_only: bool) -> torch.Tensor:
        """A pre-norm block in evaluation mode from the precomputed ``qkv = in_proj(norm1(x))``:
        attention, output projection, residual, MLP. ``cls_only``: the CLS position only."""
        attn = block.self_attn
        b, s, d = x.shape
        heads = attn.num_heads
        q, k, v = qkv.view(b, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # each [B, H, S, d/H]
        if cls_only:
            q, x = q[:, :, :1], x[:, :1]
        s = q.shape[2]
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * s, d)
        # residual + projection in one matrix product each (flat rows: every token alike)
        c = torch.addmm(x.reshape(b * s, d), o, attn.out_proj.weight.t()).add_(attn.out_proj.bias)
        g = block.activation(F.linear(block.norm2(c), block.linear1.weight, block.linear1.bias))
        return torch.addmm(c, g, block.linear2.weight.t()).add_(block.linear2.bias).view(b, s, d)

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

    @staticmethod
    def _cls_block_eval(block: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_cls_block` in evaluation mode without projecting every token to keys and values.

        With one query (CLS) per head ``h``, ``q_h . (W_k,h y_j + b_k,h) = (W_k,h^T q_h) . y_j +
        const``, and the constant cancels in the softmax; and ``sum_j a_hj (W_v,h y_j + b_v,h) =
        W_v,h (sum_j a_hj y_j) + b_v,h`` since the weights sum to 1. So the per-token work is two
        dot products per head with the normalised tokens ``y`` instead of the two D x D
        projections: the same function, about a fifth of the fusion's multiply-adds saved."""
        attn = block.self_attn
        b, s, d = x.shape
        heads = attn.num_heads
        dh = d // heads
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, _, b_v = attn.in_proj_bias.chunk(3)
        y = block.norm1(x)  # [B, S, D]
        q = F.linear(y[:, 0], w_q, b_q).view(b, heads, dh) * dh**-0.5
        qk = torch.einsum("bhk,hkd->bhd", q, w_k.view(heads, dh, d))  # [B, H, D]
        a = torch.softmax(torch.bmm(qk, y.transpose(1, 2)), dim=-1)  # [B, H, S]
        ya = torch.bmm(a, y)  # [B, H, D]
        o = torch.einsum("bhd,hkd->bhk", ya, w_v.view(heads, dh, d)).reshape(b, d) + b_v
        c = x[:, 0] + attn.out_proj(o)
        return c + block.linear2(block.activation(block.linear1(block.norm2(c))))

    def forward(self, data: dict[str, torch.Tensor], used: torch.Tensor) -> FusionOutput:
        return self.fuse(self.encode(data, used), used)
