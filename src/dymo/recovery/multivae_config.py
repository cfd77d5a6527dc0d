"""The MultiVae extra's setup: whether it imports, the recoverers' config, and the pythae
wrappers around dymo's per-kind VAE networks (the recoverers are in :mod:`dymo.recovery.multivae`)."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from dymo.errors import ConfigError
from dymo.recovery.base import RecovererConfig

INSTALL_HINT = "pip install 'dymo[multivae]' (needs torch==2.14.1 torchvision==0.29.1; see docs/recovery.md)"

#: config ``model`` -> recoverer kind (registry name)
MODEL_KINDS: dict[str, str] = {"mmvae_plus": "mmvae-plus", "cmvae": "cmvae"}
#: loss used when ``loss="auto"``: the settings of MultiVae's PolyMNIST reproductions
_AUTO_LOSS: dict[str, str] = {"mmvae_plus": "dreg_looser", "cmvae": "iwae_looser"}


class MultiVaeUnavailableError(ConfigError, ImportError):
    """MultiVae (or the torchvision it imports) cannot be imported here."""


def import_multivae() -> Any:
    """Import and return the ``multivae`` package, or raise :class:`MultiVaeUnavailableError`.

    Any failure counts (a missing package, or a torchvision that does not load beside this
    torch), and the message says how to install the extra.
    """
    try:
        import multivae

        importlib.import_module("multivae.models")
    except Exception as e:  # ImportError, or torchvision's RuntimeError/OSError on a torch mismatch
        raise MultiVaeUnavailableError(
            f"the MultiVae recoverers (mmvae-plus, cmvae) need the multivae package, which could "
            f"not be imported ({type(e).__name__}: {e}); install it with: {INSTALL_HINT}"
        ) from e
    return multivae


def multivae_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("multivae")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class MultiVaeConfig(RecovererConfig):
    """Options of the MultiVae recoverers.

    ``model``: ``"mmvae_plus"`` or ``"cmvae"`` (set by the recoverer kind: ``mmvae-plus`` /
    ``cmvae``). The defaults follow MultiVae's and the DyMo authors' PolyMNIST settings where
    they apply: shared and private latents of 32 dims (``latent_dim``, ``modality_dim``),
    ``K = 1``, ``beta = 2.5``, Laplace posteriors (``laplace_with_softmax``), Laplace image
    likelihood with scale 0.75, 40 clusters for CMVAE, lr 1e-3. ``loss="auto"`` is
    ``dreg_looser`` for MMVAE+ and ``iwae_looser`` for CMVAE. ``epochs = 0`` builds and
    initialises the model (and the vector statistics) without training.
    """

    model: Literal["mmvae_plus", "cmvae"] = "mmvae_plus"
    latent_dim: int = 32
    modality_dim: int = 32
    K: int = 1
    beta: float = 2.5
    loss: Literal["auto", "dreg_looser", "iwae_looser"] = "auto"
    prior_and_posterior_dist: Literal["laplace_with_softmax", "normal_with_softplus", "normal"] = "laplace_with_softmax"
    reconstruction_option: Literal["joint_prior", "single_prior"] = "joint_prior"
    number_of_clusters: int = 40
    likelihood_rescaling: bool = False
    image_likelihood: Literal["laplace", "normal"] = "laplace"
    likelihood_scale: float = 0.75
    vector_scale: float = 1.0
    image_channels: tuple[int, ...] = (32, 64, 128)
    hidden_dim: int = 256
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    trainer: Literal["dymo", "multivae"] = "dymo"
    seed: int = 0

    def validate(self) -> None:
        for key in ("latent_dim", "modality_dim", "K", "number_of_clusters", "hidden_dim", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"multivae: {key} must be >= 1, got {getattr(self, key)}")
        if self.epochs < 0:
            raise ConfigError(f"multivae: epochs must be >= 0, got {self.epochs}")
        for key in ("likelihood_scale", "vector_scale", "lr"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"multivae: {key} must be a finite number > 0, got {value}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ConfigError(f"multivae: beta must be a finite number >= 0, got {self.beta}")
        if not self.image_channels or min(self.image_channels) < 1:
            raise ConfigError(f"multivae: image_channels must be a non-empty list of positive ints, got {self.image_channels}")

    @property
    def resolved_loss(self) -> str:
        return _AUTO_LOSS[self.model] if self.loss == "auto" else self.loss


# -- networks (built lazily: they subclass pythae's base classes) ---------------------------


def _network_classes() -> tuple[type[nn.Module], type[nn.Module]]:
    """``(Encoder, Decoder)`` wrappers around dymo's MoPoE networks, as MultiVae expects them:
    a multi-latent encoder returning ``embedding``/``log_covariance`` (shared) and
    ``style_embedding``/``style_log_covariance`` (private), and a decoder returning
    ``reconstruction``."""
    import_multivae()
    from multivae.models.nn.base_architectures import BaseMultilatentEncoder
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder

    class Encoder(BaseMultilatentEncoder):
        def __init__(self, net: nn.Module, latent_dim: int, style_dim: int) -> None:
            BaseMultilatentEncoder.__init__(self)
            self.net = net
            self.latent_dim = latent_dim
            self.style_dim = style_dim

        def forward(self, x: torch.Tensor) -> Any:
            mu, logvar = self.net(x)
            d = self.latent_dim
            return ModelOutput(
                embedding=mu[..., :d],
                log_covariance=logvar[..., :d],
                style_embedding=mu[..., d:],
                style_log_covariance=logvar[..., d:],
            )

    class Decoder(BaseDecoder):
        def __init__(self, net: nn.Module) -> None:
            BaseDecoder.__init__(self)
            self.net = net

        def forward(self, z: torch.Tensor) -> Any:
            lead = z.shape[:-1]
            out = self.net(z.reshape(-1, z.shape[-1]))
            return ModelOutput(reconstruction=out.reshape(*lead, *out.shape[1:]))

    return Encoder, Decoder
