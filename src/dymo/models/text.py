"""Networks of ``text`` modalities, by role (:mod:`dymo.models.networks`). The backbone's text
encoder is :class:`dymo.models.encoders.TextEncoder`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dymo.data.specs import ModalitySpec
from dymo.models.networks import register_network
from dymo.models.vae import Likelihood


class TextEncoder(nn.Module):
    """Token embedding (0 = padding) + two 1-D convs, max-pooled over positions."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.conv = nn.Sequential(
            nn.Conv1d(embed_dim, hidden, 3, padding=1), nn.ReLU(), nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(self.embed(x.clamp_min(0)).transpose(1, 2)).amax(dim=-1)
        mu, logvar = self.head(h).chunk(2, dim=-1)
        return mu, logvar


class TextDecoder(nn.Module):
    """Returns logits ``[B, L, vocab]``."""

    def __init__(self, length: int, vocab_size: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.shape = (length, vocab_size)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, length * vocab_size))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


class TextJudge(nn.Module):
    def __init__(self, spec: ModalitySpec, cfg: Any) -> None:
        super().__init__()
        self.embed = nn.Embedding(int(spec.vocab_size or 1), cfg.text_embed, padding_idx=0)
        self.conv = nn.Conv1d(cfg.text_embed, cfg.hidden, 3, padding=1)
        self.out = nn.Linear(cfg.hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.clamp(min=0)
        h = F.relu(self.conv(self.embed(tokens).transpose(1, 2)))  # [B, H, L]
        pad = (tokens == 0).unsqueeze(1)
        h = h.masked_fill(pad, float("-inf")).amax(dim=2)
        h = torch.where(torch.isfinite(h), h, torch.zeros_like(h))  # all-padding rows
        return self.out(h)



@register_network("text", "vae-encoder")
def _vae_encoder(spec: ModalitySpec, config: Any, dim: int) -> nn.Module:
    assert spec.vocab_size is not None
    return TextEncoder(spec.vocab_size, config.text_embed_dim, config.hidden_dim, dim)


@register_network("text", "vae-decoder")
def _vae_decoder(spec: ModalitySpec, config: Any, dim: int) -> nn.Module:
    assert spec.vocab_size is not None
    return TextDecoder(spec.shape[0], spec.vocab_size, config.hidden_dim, dim)


@register_network("text", "vae-likelihood")
def _likelihood(spec: ModalitySpec, config: Any, dim: int) -> Likelihood:
    return Likelihood("categorical")


@register_network("text", "judge")
def _judge(spec: ModalitySpec, config: Any, dim: int) -> nn.Module:
    return TextJudge(spec, config)
