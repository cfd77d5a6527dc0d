"""Networks of ``vector`` modalities, by role (:mod:`dymo.models.networks`). The backbone's
vector encoders are :class:`dymo.models.encoders.VectorEncoder` and ``TabularEncoder``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dymo.data.specs import ModalitySpec
from dymo.models.networks import register_network
from dymo.models.vae import Likelihood


class VectorEncoder(nn.Module):
    def __init__(self, features: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


class VectorDecoder(nn.Module):
    """Returns the mean of standardised features."""

    def __init__(self, features: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, features)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VectorJudge(nn.Module):
    def __init__(self, spec: ModalitySpec, cfg: Any) -> None:
        super().__init__()
        f = spec.shape[0]
        self.register_buffer("mean", torch.zeros(f))
        self.register_buffer("std", torch.ones(f))
        self.net = nn.Sequential(nn.Linear(f, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)



@register_network("vector", "vae-encoder")
def _vae_encoder(spec: ModalitySpec, config: Any, dim: int) -> nn.Module:
    return VectorEncoder(spec.shape[0], config.hidden_dim, dim)


@register_network("vector", "vae-decoder")
def _vae_decoder(spec: ModalitySpec, config: Any, dim: int) -> nn.Module:
    return VectorDecoder(spec.shape[0], config.hidden_dim, dim)


@register_network("vector", "vae-likelihood")
def _likelihood(spec: ModalitySpec, config: Any, dim: int) -> Likelihood:
    return Likelihood("normal", config.vector_scale)


@register_network("vector", "judge")
def _judge(spec: ModalitySpec, config: Any, dim: int) -> nn.Module:
    return VectorJudge(spec, config)
