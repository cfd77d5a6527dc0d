"""Networks of ``image`` modalities, by role (:mod:`dymo.models.networks`). The backbone's image
encoder is :class:`dymo.models.encoders.ImageEncoder`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dymo.data.specs import ModalitySpec
from dymo.models.networks import register_network
from dymo.models.vae import Likelihood, _conv_sizes


class ImageEncoder(nn.Module):
    """3x3 stride-2 convs (the authors' PolyMNIST encoder: 3->32->64->128, ReLU), then one
    linear layer to ``(mu, logvar)``."""

    def __init__(self, shape: tuple[int, ...], channels: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = shape[0]
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.ReLU()]
            c = out
        self.features = nn.Sequential(*layers, nn.Flatten())
        h, w = _conv_sizes((shape[1], shape[2]), len(channels))[-1]
        self.head = nn.Linear(c * h * w, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=-1)
        return mu, logvar


class ImageDecoder(nn.Module):
    """Mirror of :class:`ImageEncoder` with transposed convs (output padding chosen so any
    input size is reproduced exactly); returns the pixel means in [0, 1]."""

    def __init__(self, shape: tuple[int, ...], channels: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        sizes = _conv_sizes((shape[1], shape[2]), len(channels))
        h, w = sizes[-1]
        self.grid = (channels[-1], h, w)
        self.fc = nn.Sequential(nn.Linear(latent_dim, channels[-1] * h * w), nn.ReLU())
        outs = [shape[0], *channels[:-1]]
        layers: list[nn.Module] = []
        for i in reversed(range(len(channels))):
            (th, tw), (ih, iw) = sizes[i], sizes[i + 1]
            pad = (th - (2 * ih - 1), tw - (2 * iw - 1))
            layers.append(nn.ConvTranspose2d(channels[i], outs[i], 3, stride=2, padding=1, output_padding=pad))
            if i > 0:
                layers.append(nn.ReLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.deconv(self.fc(z).view(-1, *self.grid)))


class ImageJudge(nn.Module):
    def __init__(self, spec: ModalitySpec, cfg: Any) -> None:
        super().__init__()
        c = spec.shape[0]
        w = cfg.width
        self.net = nn.Sequential(
            nn.Conv2d(c, w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(7),  # 28x28 -> 7x7 already; other sizes are pooled to 7x7
            nn.Flatten(),
            nn.Linear(2 * w * 49, cfg.embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)



@register_network("image", "vae-encoder")
def _vae_encoder(spec: ModalitySpec, config: Any, dim: int) -> nn.Module:
    return ImageEncoder(spec.shape, config.image_channels, dim)


@register_network("image", "vae-decoder")
def _vae_decoder(spec: ModalitySpec, config: Any, dim: int) -> nn.Module:
    return ImageDecoder(spec.shape, config.image_channels, dim)


@register_network("image", "vae-likelihood")
def _likelihood(spec: ModalitySpec, config: Any, dim: int) -> Likelihood:
    return Likelihood(config.image_likelihood, config.likelihood_scale)


@register_network("image", "judge")
def _judge(spec: ModalitySpec, config: Any, dim: int) -> nn.Module:
    return ImageJudge(spec, config)
