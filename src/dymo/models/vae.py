"""What the multimodal VAEs (MoPoE, the MultiVae adapter) share across kinds: the likelihood
of a decoder's output, the per-feature standardiser of table modalities and the conv size rule.
The per-kind encoders and decoders are in :mod:`dymo.models.image`, :mod:`dymo.models.vector`
and :mod:`dymo.models.text` (roles ``vae-encoder``, ``vae-decoder``, ``vae-likelihood`` of
:mod:`dymo.models.networks`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Likelihood:
    """A decoder's likelihood: ``"laplace"`` or ``"gaussian"`` / ``"normal"`` with a fixed
    ``scale`` on the decoder's mean, or ``"categorical"`` over logits ``[B, L, V]``."""

    dist: str
    scale: float = 1.0

    @property
    def continuous(self) -> bool:
        return self.dist != "categorical"

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood of ``x`` (summed over elements)."""
        if self.dist == "categorical":
            return F.cross_entropy(params.transpose(1, 2), x.clamp_min(0), reduction="none").sum(-1)
        if self.dist == "laplace":
            b = self.scale
            per = (x - params).abs() / b + math.log(2 * b)
        else:
            s = self.scale
            per = 0.5 * ((x - params) / s).pow(2) + math.log(s) + 0.5 * _LOG_2PI
        return per.flatten(1).sum(-1)

    def output(self, params: torch.Tensor) -> torch.Tensor:
        """The recovery the parameters give: the mean, or the most likely token."""
        return params.argmax(-1) if self.dist == "categorical" else params


class Standardizer(nn.Module):
    """Per-feature mean/std of a vector modality (buffers, saved with the weights)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def set(self, array: np.ndarray) -> None:
        a = np.asarray(array, dtype=np.float64)
        mean = np.nanmean(a, axis=0) if a.size else np.zeros(a.shape[1:])
        std = np.nanstd(a, axis=0) if a.size else np.ones(a.shape[1:])
        std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))


def _conv_sizes(size: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """Spatial sizes after each 3x3 stride-2 pad-1 conv, input size first."""
    sizes = [size]
    for _ in range(n):
        h, w = sizes[-1]
        sizes.append(((h - 1) // 2 + 1, (w - 1) // 2 + 1))
    return sizes
