"""Modality encoders: each maps a batch of one modality to a short token sequence ``[B, n, D]``.

Encoders are chosen by modality kind through a registry, so a user adds a modality kind (or a
custom encoder for one modality) without touching the fusion code::

    @register_encoder("my-audio")
    def build_audio(spec: ModalitySpec, dim: int, options: dict) -> nn.Module: ...

and then names it in ``BackboneConfig.encoders = {"audio": "my-audio"}``. Every encoder module
exposes ``num_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError
from dymo.models.networks import load_kind_networks

EncoderBuilder = Callable[[ModalitySpec, int, dict[str, Any]], nn.Module]
_REGISTRY: dict[str, EncoderBuilder] = {}


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    def deco(fn: EncoderBuilder) -> EncoderBuilder:
        _REGISTRY[name] = fn
        return fn

    return deco


def registered_encoders() -> list[str]:
    return sorted(_REGISTRY)


def build_encoder(spec: ModalitySpec, dim: int, name: str | None = None, options: dict[str, Any] | None = None) -> nn.Module:
    """Build the encoder registered under ``name`` (default: the modality's kind)."""
    key = name or spec.kind
    if key not in _REGISTRY:
        load_kind_networks(spec)  # a kind's own module registers its encoder under the kind's name
    if key not in _REGISTRY:
        raise ConfigError(f"modality {spec.name!r}: no encoder registered as {key!r}; known: {registered_encoders()}")
    enc = _REGISTRY[key](spec, dim, options or {})
    if not hasattr(enc, "num_tokens"):
        raise ConfigError(f"encoder {key!r} for modality {spec.name!r} does not define num_tokens")
    return enc


class ImageEncoder(nn.Module):
    """The PolyMNIST CNN of the DyMo authors: 3x3 stride-2 convs (3->32->64->128, ReLU), a 1x1
    conv, then a max-pool to a 2x2 grid = 4 tokens of ``dim``. An adaptive pool keeps other
    image sizes working (15x16 digits, 32x32 SVHN, 64x64 CelebA)."""

    def __init__(self, in_channels: int, dim: int, channels: tuple[int, ...] = (32, 64, 128), grid: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c = out
        layers += [nn.Conv2d(c, dim, 1), nn.AdaptiveMaxPool2d(grid)]
        self.net = nn.Sequential(*layers)
        self.num_tokens = grid * grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(2).transpose(1, 2)  # [B, grid*grid, dim]


class PiecewiseLinearEncoding(nn.Module):
    """Each feature as ``bins`` numbers: its position in each of the bins between its training
    quantiles (the piecewise-linear encoding of Gorishniy, Rubachev and Babenko, "On Embeddings
    for Numerical Features in Tabular Deep Learning", NeurIPS 2022).

    ``x`` in bin ``t`` (edges ``e_t <= x < e_(t+1)``) encodes as 1 for the bins below, ``(x - e_t)
    / (e_(t+1) - e_t)`` for bin ``t`` and 0 above. Since the edges are quantiles, a monotone
    change of a feature's scale (a count, a log-normal value, an outlier) leaves its encoding
    unchanged, as it leaves a decision tree unchanged: the reason trees beat MLPs on such tables.
    Unlike the paper's version the first and last bins are clipped too, so a value beyond the
    training range encodes as the range's end (as a tree treats it): extrapolating them linearly
    let one heavy-tailed outlier of a validation row swamp the network.

    The edges are a buffer (saved with the weights, so a bundle predicts with the training
    edges): standard-normal quantiles until :meth:`fit_statistics` sets them from the training
    rows, which :func:`fit_encoder_statistics` does before training.
    """

    def __init__(self, num_features: int, bins: int = 8) -> None:
        super().__init__()
        if bins < 2:
            raise ConfigError(f"piecewise-linear encoding: bins must be >= 2, got {bins}")
        self.num_features, self.bins = num_features, bins
        normal = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0, 1, bins + 1)[1:-1])
        inner = torch.cat([torch.tensor([-3.0]), normal, torch.tensor([3.0])])
        self.register_buffer("edges", inner.expand(num_features, -1).clone())  # [F, bins + 1]

    @torch.no_grad()
    def fit_statistics(self, x: torch.Tensor) -> None:
        """Set the edges to the quantiles ``0, 1/bins, ..., 1`` of each feature over the rows of
        ``x`` (``[N, F]``; NaN values ignored). Repeated quantiles (a binary or constant feature)
        stay as they are: a zero-width bin is a step."""
        import numpy as np

        if x.ndim != 2 or x.shape[1] != self.num_features or len(x) == 0:
            raise ConfigError(f"piecewise-linear encoding: statistics need [N, {self.num_features}] rows, got {tuple(x.shape)}")
        q = np.nanquantile(x.double().cpu().numpy(), np.linspace(0, 1, self.bins + 1), axis=0).T  # [F, bins + 1]
        q = np.where(np.isnan(q), self.edges.double().cpu().numpy(), q)  # a feature with no value keeps its default
        self.edges.copy_(torch.from_numpy(q).to(self.edges))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.edges[:, :-1], self.edges[:, 1:]  # [F, bins]
        width = hi - lo
        x = x.unsqueeze(-1)
        # a zero-width bin (repeated quantiles: a binary feature, many equal values) is a step;
        # any positive width is used as it is, however small (float32 data can hold the whole
        # range of a heavy-tailed feature's bulk within 1e-6)
        t = torch.where(width > 0, (x - lo) / torch.where(width > 0, width, torch.ones_like(width)), (x >= hi).to(x.dtype))
        return t.clamp(0.0, 1.0).flatten(1)  # [B, F * bins]


class VectorEncoder(nn.Module):
    """A tabular/feature-vector encoder: an MLP whose output is split into ``num_tokens`` tokens.

    ``encoding="ple"`` (opt-in: ``BackboneConfig(encoder_defaults=2)`` or the encoder option
    ``vector_encoding``) feeds the MLP each feature's :class:`PiecewiseLinearEncoding` instead
    of its value; ``"linear"`` (the default) the values as they are.
    """

    def __init__(
        self, in_features: int, dim: int, num_tokens: int = 2, hidden: int = 256, encoding: str = "linear", bins: int = 8
    ) -> None:
        super().__init__()
        if encoding not in ("linear", "ple"):
            raise ConfigError(f"vector encoder: encoding must be 'linear' or 'ple', got {encoding!r}")
        self.num_tokens = num_tokens
        self.encoding = PiecewiseLinearEncoding(in_features, bins) if encoding == "ple" else None
        width = in_features * bins if self.encoding is not None else in_features
        self.net = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * dim)
        )
        self.dim = dim

    def fit_statistics(self, x: torch.Tensor) -> None:
        if self.encoding is not None:
            self.encoding.fit_statistics(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoding is not None:
            x = self.encoding(x)
        return self.net(x).view(x.shape[0], self.num_tokens, self.dim)


def fit_encoder_statistics(module: nn.Module, dataset: Any) -> list[str]:
    """Before training: every encoder of ``module`` (in any sub-module's ``encoders``, a
    ``ModuleDict`` keyed by modality name) that keeps statistics of its inputs
    (``fit_statistics(x)``, e.g. the piecewise-linear encoding's quantiles) computes them from
    the observed rows of its modality in ``dataset`` (a :class:`~dymo.data.dataset.MultimodalDataset`).
    Returns the modalities fitted."""
    fitted = []
    names = list(dataset.modalities)
    for sub in module.modules():
        encoders = getattr(sub, "encoders", None)
        if not isinstance(encoders, nn.ModuleDict):
            continue
        for name, enc in encoders.items():
            if not hasattr(enc, "fit_statistics") or name not in names:
                continue
            import numpy as np

            rows = np.nonzero(dataset.observed[:, names.index(name)])[0]
            if len(rows) == 0:
                continue
            x = torch.as_tensor(np.asarray(dataset.arrays[name])[rows], dtype=torch.float64)
            enc.fit_statistics(x.flatten(1))
            fitted.append(name)
    return fitted


class TextEncoder(nn.Module):
    """Character/token embedding + two 1-D convolutions, max-pooled to ``num_tokens`` tokens.
    Token id 0 is padding."""

    def __init__(self, vocab_size: int, dim: int, embed_dim: int = 64, num_tokens: int = 4) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.conv = nn.Sequential(
            nn.Conv1d(embed_dim, dim, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv1d(dim, dim, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool1d(num_tokens),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.embed(x.clamp_min(0)).transpose(1, 2)).transpose(1, 2)


@register_encoder("image")
def _image(spec: ModalitySpec, dim: int, options: dict[str, Any]) -> nn.Module:
    return ImageEncoder(spec.shape[0], dim, tuple(options.get("image_channels", (32, 64, 128))), options.get("image_grid", 2))


@register_encoder("vector")
def _vector(spec: ModalitySpec, dim: int, options: dict[str, Any]) -> nn.Module:
    """Options: ``vector_tokens`` (2), ``vector_hidden`` (256), ``vector_encoding`` (``"ple"``:
    piecewise-linear encoding of each feature between its training quantiles; ``"linear"``: the
    values as they are) and ``vector_bins`` (8)."""
    return VectorEncoder(
        spec.shape[0], dim, options.get("vector_tokens", 2), options.get("vector_hidden", 256),
        options.get("vector_encoding", "linear"), options.get("vector_bins", 8),
    )


#: The encoder options a backbone config's ``encoder_defaults`` version stands for (its own
#: ``encoder_options`` come on top): 1 = before the piecewise-linear encoding of vector features
#: (what a run or bundle saved without the key was trained with), 2 = now.
ENCODER_DEFAULTS: dict[int, dict[str, Any]] = {1: {"vector_encoding": "linear"}, 2: {"vector_encoding": "ple"}}


@register_encoder("text")
def _text(spec: ModalitySpec, dim: int, options: dict[str, Any]) -> nn.Module:
    assert spec.vocab_size is not None
    return TextEncoder(spec.vocab_size, dim, options.get("text_embed", 64), options.get("text_tokens", 4))


class TabularEncoder(nn.Module):
    """A table encoder that understands categorical codes and missing values.

    Feature tokenizer as in FT-Transformer (Gorishniy et al. 2021): every column ``j`` becomes a
    small embedding (``token_dim``, default 8): ``x_j * w_j + b_j`` for a continuous column; a
    learned embedding of the integer code for a categorical one (``field_lengths[j] = K > 1``,
    codes clamped to ``0..K-1``, as TIP's ``tabular_lengths`` files describe); a learned
    per-column "missing" embedding where the value is NaN. So NaN entries of a partly missing
    table are read as missing, never propagated. The column embeddings are then concatenated and
    an MLP maps them to ``[B, num_tokens, dim]``, like :class:`VectorEncoder`.

    Why not attention over the column tokens (FT-Transformer proper): with hundreds of columns
    (mfeat-image-table has 409) that was 25 times slower per step on CPU, and a cheaper
    attention pooling learned much more slowly than the MLP (measurements in
    ``docs/datasets.md``).
    """

    def __init__(
        self,
        num_features: int,
        dim: int,
        num_tokens: int = 2,
        field_lengths: list[int] | None = None,
        token_dim: int = 8,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if field_lengths is not None and len(field_lengths) != num_features:
            raise ConfigError(f"tabular encoder: {len(field_lengths)} field lengths for {num_features} features")
        lengths = torch.tensor(field_lengths or [1] * num_features, dtype=torch.long)
        self.num_tokens = num_tokens
        self.dim = dim
        self.weight = nn.Parameter(torch.randn(num_features, token_dim))
        self.bias = nn.Parameter(torch.randn(num_features, token_dim) * 0.1)
        self.missing = nn.Parameter(torch.randn(num_features, token_dim) * 0.1)
        cat = lengths > 1
        self.register_buffer("cat_columns", torch.nonzero(cat).flatten(), persistent=False)
        self.register_buffer("cat_max", (lengths[cat] - 1), persistent=False)
        offsets = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), lengths[cat][:-1]]), 0)
        self.register_buffer("cat_offsets", offsets, persistent=False)
        self.categories = nn.Embedding(int(lengths[cat].sum()), token_dim) if bool(cat.any()) else None
        self.net = nn.Sequential(
            nn.Linear(num_features * token_dim, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * dim)
        )

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Per-column embeddings ``[B, F, token_dim]``."""
        nan = torch.isnan(x)
        x0 = torch.where(nan, torch.zeros((), dtype=x.dtype, device=x.device), x)
        tok = torch.addcmul(self.bias, x0.unsqueeze(-1), self.weight)
        if self.categories is not None:
            codes = x0[:, self.cat_columns].round().long().clamp(min=0)
            codes = torch.minimum(codes, self.cat_max) + self.cat_offsets
            tok = tok.index_copy(1, self.cat_columns, self.categories(codes))
        return torch.where(nan.unsqueeze(-1), self.missing, tok)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.tokens(x).flatten(1)).view(x.shape[0], self.num_tokens, self.dim)


@register_encoder("tabular")
def _tabular(spec: ModalitySpec, dim: int, options: dict[str, Any]) -> nn.Module:
    """Options: ``tabular_tokens`` (default 2), ``tabular_token_dim`` (8), ``tabular_hidden``
    (256); categorical columns come from ``spec.extra["field_lengths"]`` when present."""
    lengths = spec.extra.get("field_lengths")
    return TabularEncoder(
        spec.shape[0], dim, options.get("tabular_tokens", 2), list(lengths) if lengths else None,
        options.get("tabular_token_dim", 8), options.get("tabular_hidden", 256),
    )
