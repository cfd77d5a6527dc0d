"""MoPoE: the mixture-of-products-of-experts multimodal VAE as a recoverer.

Sutter, Daunhawer & Vogt, "Generalized Multimodal ELBO", ICLR 2021. Every modality ``m`` has
an encoder giving a diagonal Gaussian expert ``q(z | x_m) = N(mu_m, exp(logvar_m))`` and a
decoder ``p(x_m | z)``. For a subset ``S`` of modalities the posterior is the product of its
experts (PoE), optionally times a standard-normal prior expert; the joint posterior is the
uniform mixture of the ``2^M - 1`` subset posteriors (MoPoE).

Training objective (per sample, minimised)::

    sum_m -log p(x_m | z)  with  z ~ q_S(z | x_S),  S drawn uniformly per sample
    + beta * w * mean_S KL(q_S(z | x_S) || N(0, I))

The reconstruction term samples one mixture component per sample (the stochastic mixture
selection of the authors' code); the KL term is the exact average over *all* subsets (the
authors' upper bound of the mixture's KL by the weighted sum of its components' KLs, cheap in
closed form). ``w`` is a linear KL warm-up.

Recovery (:meth:`MoPoERecoverer.recover`): for each sample the PoE over exactly its observed
modalities (vectorised over samples with different observed sets by masking the experts out
of the precision-weighted sums), its *posterior mean* (deterministic, the most probable latent),
decoded only for the modalities that sample misses. The authors instead decode every modality
for all ``2^M - 1`` subsets and then pick the subset that equals the observed set;
:meth:`MoPoERecoverer.recover_all_subsets` keeps that path as a reference for checks and
benchmarks (``benchmarks/bench_mopoe_recovery.py``).

Likelihoods: images Laplace (the authors' PolyMNIST choice, scale 0.75) or Gaussian with a
fixed scale, on pixels in [0, 1] (decoder mean through a sigmoid); vectors Gaussian with a
fixed scale on per-feature standardised values (statistics of the training set); text
categorical per position. A recovered image is the decoder mean, a vector the de-standardised
mean, a text the per-position argmax token.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.data.specs import ModalitySpec, specs_to_list
from dymo.errors import BundleError, ConfigError, DataError
from dymo.models.image import ImageDecoder, ImageEncoder  # noqa: F401  (re-exported: the networks moved to models/)
from dymo.models.networks import build_network
from dymo.models.text import TextDecoder, TextEncoder  # noqa: F401
from dymo.models.vae import Standardizer
from dymo.models.vector import VectorDecoder, VectorEncoder  # noqa: F401
from dymo.recovery.base import (
    Recoverer,
    RecovererConfig,
    merge_recovered,
    require_weights,
)
from dymo.training.engine import EpochCheckpoint, FitConfig, epoch_seed, fit_module
from dymo.utils.subsets import all_subsets, masks_to_codes

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "mopoe_checkpoint.safetensors"
CHECKPOINT_FORMAT = 1


#: Named settings for :class:`MoPoEConfig`: ``cpu`` (the defaults) and ``paper`` (the authors').
MOPOE_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"beta": 1.0, "likelihood_scale": 0.2, "kl_warmup_epochs": 1},
    "paper": {"beta": 2.5, "likelihood_scale": 0.75, "kl_warmup_epochs": 0},
}


@dataclass
class MoPoEConfig(RecovererConfig):
    """MoPoE options.

    ``latent_dim`` defaults to 64 to keep CPU training fast; the authors use 512 on PolyMNIST.
    ``beta`` 1, the Laplace scale 0.2 and one KL warm-up epoch are the settings that learn on a
    CPU budget (``docs/mopoe.md``); the authors' PolyMNIST settings (beta 2.5, scale 0.75, no
    warm-up) collapse to the mean image there and are kept as the preset ``paper``
    (:data:`MOPOE_PRESETS`, ``dymo train recovery --model mopoe --preset paper``).
    ``prior_expert``: include an N(0, I) expert in every product (training and recovery). The
    authors' code appends it only to the product over all modalities; including it everywhere
    makes every subset posterior a proper PoE with the prior and keeps it defined for any subset.
    ``epochs = 0`` builds and initialises the model (and the vector statistics) without training.
    """

    latent_dim: int = 64
    image_likelihood: Literal["laplace", "gaussian"] = "laplace"
    likelihood_scale: float = 0.2
    vector_scale: float = 1.0
    beta: float = 1.0
    prior_expert: bool = True
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    kl_warmup_epochs: int = 1
    image_channels: tuple[int, ...] = (32, 64, 128)
    hidden_dim: int = 256
    text_embed_dim: int = 64
    seed: int = 0

    def validate(self) -> None:
        for key in ("latent_dim", "batch_size", "hidden_dim", "text_embed_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"mopoe: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("epochs", "kl_warmup_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"mopoe: {key} must be >= 0, got {getattr(self, key)}")
        for key in ("likelihood_scale", "vector_scale", "lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"mopoe: {key} must be > 0, got {getattr(self, key)}")
        if self.beta < 0:
            raise ConfigError(f"mopoe: beta must be >= 0, got {self.beta}")
        if not self.image_channels or min(self.image_channels) < 1:
            raise ConfigError(f"mopoe: image_channels must be a non-empty list of positive ints, got {self.image_channels}")


# -- Gaussian algebra ------------------------------------------------------------------------


def product_of_experts(
    mu: torch.Tensor, logvar: torch.Tensor, use: torch.Tensor, prior_expert: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of the diagonal Gaussian experts selected by ``use``.

    ``mu``, ``logvar``: ``[..., M, D]``; ``use``: bool ``[..., M]`` (broadcast against the
    leading dims). Returns ``(mu, logvar)`` of shape ``[..., D]``:
    precision ``T = [1 +] sum_m use_m / var_m``, mean ``sum_m use_m mu_m / var_m / T``
    (the optional ``1`` is the N(0, I) prior expert). Experts left out contribute exactly zero
    through ``torch.where``, so whatever their slots hold (even NaN) cannot leak in.
    """
    sel = use.unsqueeze(-1)
    prec = torch.exp(-logvar)
    zero = torch.zeros((), dtype=mu.dtype, device=mu.device)
    total = torch.where(sel, prec, zero).sum(-2)
    weighted = torch.where(sel, mu * prec, zero).sum(-2)
    if prior_expert:
        total = total + 1.0
    return weighted / total, -torch.log(total)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the last dim."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)


class LossTerms(NamedTuple):
    """Batch means: ``loss = rec + beta * kl_weight * kl``; ``rec`` is the negative
    log-likelihood summed over modalities and elements, ``kl`` the mean over subsets."""

    loss: torch.Tensor
    rec: torch.Tensor
    kl: torch.Tensor


class MoPoEModel(nn.Module):
    """Encoders and decoders keyed by modality name (``encoders.<name>``, ``decoders.<name>``,
    as in MultiVae), plus ``scalers.<name>`` for vector modalities."""

    def __init__(self, specs: list[ModalitySpec], config: MoPoEConfig) -> None:
        super().__init__()
        self.specs = list(specs)
        self.config = config
        d = config.latent_dim
        enc: dict[str, nn.Module] = {}
        dec: dict[str, nn.Module] = {}
        scalers: dict[str, nn.Module] = {}
        for s in self.specs:
            enc[s.name] = build_network(s, "vae-encoder", config, d)
            dec[s.name] = build_network(s, "vae-decoder", config, d)
            if s.kind_object.tabular:
                scalers[s.name] = Standardizer(s.shape[0])
        self.likelihoods = {s.name: build_network(s, "vae-likelihood", config) for s in self.specs}
        self.encoders = nn.ModuleDict(enc)
        self.decoders = nn.ModuleDict(dec)
        self.scalers = nn.ModuleDict(scalers)
        self.register_buffer("subsets", all_subsets(len(self.specs)), persistent=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    # -- per modality ----------------------------------------------------------------------
    def prepare(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Model-input units -> network units (vectors standardised)."""
        if name in self.scalers:
            sc = self.scalers[name]
            return (x - sc.mean) / sc.std
        return x

    def encode(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` in network units (see :meth:`prepare`) -> ``(mu, logvar)`` ``[B, D]``."""
        return self.encoders[name](x)

    def decode(self, name: str, z: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters: image means, standardised vector means or text logits."""
        return self.decoders[name](z)

    def nll(self, spec: ModalitySpec, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood (summed over elements); ``x`` in network units."""
        return self.likelihoods[spec.name].nll(params, x)

    def to_output(self, spec: ModalitySpec, params: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters -> a recovery in model-input units and dtype."""
        out = self.likelihoods[spec.name].output(params)
        if spec.name in self.scalers:
            sc = self.scalers[spec.name]
            return out * sc.std + sc.mean
        return out

    # -- joint -----------------------------------------------------------------------------
    def encode_all(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert of every sample: ``(mu, logvar)`` ``[B, M, D]`` (data in network units)."""
        pairs = [self.encode(name, data[name]) for name in self.modalities]
        return torch.stack([p[0] for p in pairs], 1), torch.stack([p[1] for p in pairs], 1)

    def loss(
        self,
        data: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        kl_weight: float = 1.0,
        observed: torch.Tensor | None = None,
    ) -> LossTerms:
        """The MoPoE objective (see the module doc) on data in network units.

        With ``observed`` (bool ``[B, M]``, an incomplete training set) a sample's mixture runs
        over the subsets of what it observes only (PoE of observed experts; KL averaged over
        those subsets; the sampled subset drawn among them) and only its observed modalities
        are reconstructed. Complete data take the original path.
        """
        mu, logvar = self.encode_all(data)
        b = mu.shape[0]
        subsets = self.subsets
        mu_s, logvar_s = product_of_experts(mu.unsqueeze(0), logvar.unsqueeze(0), subsets[:, None, :], self.config.prior_expert)
        rows = torch.arange(b, device=mu.device)
        if observed is None or bool(observed.all()):
            kl = kl_to_standard_normal(mu_s, logvar_s).mean(0)  # [B], uniform mixture weights
            pick = torch.randint(len(subsets), (b,), generator=generator).to(mu.device)
            seen = None
        else:
            seen = observed.to(mu.device)
            valid = ~(subsets[:, None, :] & ~seen[None, :, :]).any(-1)  # [S, B]: subset within observed
            if not bool(valid.any(0).all()):
                raise DataError(f"mopoe: sample {int(torch.nonzero(~valid.any(0))[0])} of the batch observes no modality")
            w = valid.float()
            kl = (kl_to_standard_normal(mu_s, logvar_s) * w).sum(0) / w.sum(0)
            u = torch.rand(valid.shape, generator=generator).to(mu.device)
            pick = torch.where(valid, u, torch.full_like(u, -1.0)).argmax(0)
        m, lv = mu_s[pick, rows], logvar_s[pick, rows]
        eps = torch.randn(m.shape, generator=generator).to(mu.device)
        z = m + torch.exp(0.5 * lv) * eps
        rec = torch.zeros(b, device=mu.device)
        for j, spec in enumerate(self.specs):
            nll = self.nll(spec, self.decode(spec.name, z), data[spec.name])
            rec = rec + (nll if seen is None else nll * seen[:, j])
        rec_mean, kl_mean = rec.mean(), kl.mean()
        return LossTerms(rec_mean + self.config.beta * kl_weight * kl_mean, rec_mean, kl_mean)


# -- training --------------------------------------------------------------------------------


class _MoPoEObjective(nn.Module):
    """The MoPoE objective for the training engine (:mod:`dymo.training.engine`).

    Epoch ``e`` shuffles and draws its noise from seeds derived from ``(seed, e)`` (so a
    resumed fit replays it); the KL warm-up weight follows the step within the epoch. Its only
    part is ``model``, so a checkpoint holds ``model.*`` weights. ``history`` gets one record per
    epoch (sample-weighted means of the loss terms).
    """

    divergence_hint = "lower lr or raise likelihood_scale"

    def __init__(self, model: MoPoEModel, steps_per_epoch: int, history: list[dict[str, float]]) -> None:
        super().__init__()
        self.model = model
        self.steps_per_epoch = steps_per_epoch
        self.history = history
        self._epoch = self._step = self._n = 0
        self._sums = {"loss": 0.0, "rec": 0.0, "kl": 0.0}

    def epoch_seeds(self, epoch: int) -> tuple[int, int]:
        seed = self.model.config.seed
        return epoch_seed(seed, epoch, 0), epoch_seed(seed, epoch, 1)

    def on_resume(self, epochs_done: int, extra: dict[str, Any]) -> None:
        self.history[:] = list(extra.get("history", []))

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch, self._step, self._n = epoch, 0, 0
        self._sums = dict.fromkeys(self._sums, 0.0)

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = self.model
        w = _kl_weight(self._epoch, self._step, self.steps_per_epoch, model.config.kl_warmup_epochs)
        if bool(batch.observed.all()):
            terms = model.loss({k: model.prepare(k, v) for k, v in batch.data.items()}, generator, w)
        else:
            clean = batch.with_missing_zeroed()
            terms = model.loss({k: model.prepare(k, v) for k, v in clean.data.items()}, generator, w, clean.observed)
        self._step += 1
        self._n += len(batch)
        for k, v in zip(("loss", "rec", "kl"), terms, strict=True):
            self._sums[k] += float(v.detach()) * len(batch)
        return terms.loss, {"rec": terms.rec, "kl": terms.kl}

    def on_epoch_end(self, epoch: int) -> None:
        record = {"epoch": epoch + 1, **{k: v / max(self._n, 1) for k, v in self._sums.items()}}
        self.history.append(record)
        log.info("mopoe epoch %d: loss %.2f rec %.2f kl %.2f", epoch + 1, record["loss"], record["rec"], record["kl"])


# -- the recoverer ---------------------------------------------------------------------------


class MoPoERecoverer(Recoverer):
    """MoPoE (Sutter et al., ICLR 2021) recovery: PoE over the observed modalities, posterior
    mean, decode only the missing ones. See the module doc.

    ``fit(train, progress=True, run_dir=None)``: with ``run_dir`` a checkpoint is written
    atomically after every epoch (``run_dir/mopoe_checkpoint.safetensors``: weights, Adam
    state, finished epochs, history) and training resumes from it. Epoch ``e`` shuffles and
    draws its noise from seeds derived from ``(seed, e)``, so a resumed run gives the same
    weights as an uninterrupted one. Resuming with a larger ``epochs`` extends training; any
    other config change is a :class:`ConfigError`.
    """

    name = "mopoe"
    presets: ClassVar[dict[str, dict[str, Any]]] = MOPOE_PRESETS
    config_class = MoPoEConfig
    config: MoPoEConfig

    def __init__(self, config: MoPoEConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.model: MoPoEModel | None = None
        self.history: list[dict[str, float]] = []
        self.device = torch.device("cpu")
        self._run_dir: Path | None = None

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, train: MultimodalDataset, progress: bool = True, run_dir: str | os.PathLike | None = None) -> MoPoERecoverer:
        self._run_dir = None if run_dir is None else Path(run_dir)
        try:
            return super().fit(train, progress)
        finally:
            self._run_dir = None

    def _build_model(self) -> MoPoEModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            model = MoPoEModel(self.specs, self.config)
        return model.to(self.device)

    def _fit(self, train: MultimodalDataset, progress: bool) -> None:
        cfg = self.config
        # Incomplete training sets are fine: each sample trains on the subsets it observes (see
        # MoPoEModel.loss); the vector scalers are fitted on observed rows only.
        model = self._build_model()
        complete = bool(train.observed.all())
        for name, scaler in model.scalers.items():
            rows = train.observed[:, train.modalities.index(name)]
            scaler.set(np.asarray(train.arrays[name]) if complete else np.asarray(train.arrays[name])[rows])  # type: ignore[operator]
        self.model, self.history = model, []
        objective = _MoPoEObjective(model, math.ceil(len(train) / cfg.batch_size), self.history)
        ckpt = None
        if self._run_dir is not None:
            ckpt = EpochCheckpoint(
                self._run_dir / CHECKPOINT_FILE, "mopoe-checkpoint", CHECKPOINT_FORMAT,
                identity={"config": self.config.to_dict(), "specs": specs_to_list(self.specs)},
                extra=lambda: {"history": self.history},
            )
        if cfg.epochs == 0:  # build (and load a finished checkpoint) without training
            if ckpt is not None and ckpt.path.exists():
                objective.on_resume(*ckpt.load(objective))
            model.eval()
            return
        fit = FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
        fit_module(objective, train, fit, progress=progress, name="mopoe", checkpoint=ckpt, device=self.device)
        model.eval()

    # -- inference -------------------------------------------------------------------------
    def _model(self) -> MoPoEModel:
        if self.model is None:
            raise DataError("mopoe: recoverer is not fitted; call fit(train) or load a saved one")
        return self.model

    def posterior(self, batch: MultimodalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """PoE over exactly each sample's observed modalities: ``(mu, logvar)`` ``[B, D]``.

        Each modality's encoder runs only on the samples that observe it; missing slots are
        neither read by an encoder nor counted in the product.
        """
        model = self._model()
        obs = batch.observed.to(self.device)
        b, d = len(batch), self.config.latent_dim
        mus = torch.zeros(b, len(self.specs), d, device=self.device)
        logvars = torch.zeros_like(mus)
        for i, name in enumerate(batch.modalities):
            rows = torch.nonzero(obs[:, i]).flatten()
            if rows.numel() == 0:
                continue
            x = model.prepare(name, batch.data[name].to(self.device)[rows])
            mus[rows, i], logvars[rows, i] = model.encode(name, x)
        return product_of_experts(mus, logvars, obs, self.config.prior_expert)

    def _recover_missing(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        model = self._model()
        model.eval()
        mu, _ = self.posterior(batch)
        obs = batch.observed.to(self.device)
        out: dict[str, torch.Tensor] = {}
        for i, spec in enumerate(self.specs):
            rows = torch.nonzero(~obs[:, i]).flatten()
            if rows.numel() == 0:
                continue
            x = batch.data[spec.name]
            full = torch.zeros(x.shape, dtype=x.dtype, device=self.device)
            full[rows] = model.to_output(spec, model.decode(spec.name, mu[rows])).to(x.dtype)
            out[spec.name] = full
        return out

    @torch.no_grad()
    def recover_all_subsets(self, batch: MultimodalBatch) -> MultimodalBatch:
        """REFERENCE ONLY (slow): the authors' recovery. Encode every modality of every sample,
        then for each of the ``2^M - 1`` subsets take the PoE posterior mean and decode *every*
        modality for *every* sample, keeping per sample the decodes of the subset equal to its
        observed set. Gives what :meth:`recover` gives (up to float rounding) at about
        ``(2^M - 1) * M`` decoder passes per sample instead of one per missing modality.
        """
        self._check_fitted()
        self.check_batch(batch)
        model = self._model()
        model.eval()
        clean = batch.with_missing_zeroed()
        data = {k: model.prepare(k, v.to(self.device)) for k, v in clean.data.items()}
        mus, logvars = model.encode_all(data)
        obs = batch.observed.to(self.device)
        codes = masks_to_codes(obs)
        out = {s.name: torch.zeros(clean.data[s.name].shape, dtype=clean.data[s.name].dtype, device=self.device) for s in self.specs}
        for r, subset in enumerate(model.subsets):
            mu, _ = product_of_experts(mus, logvars, subset.expand_as(obs), self.config.prior_expert)
            picked = codes == r + 1
            for spec in self.specs:
                decoded = model.to_output(spec, model.decode(spec.name, mu))
                out[spec.name][picked] = decoded[picked].to(out[spec.name].dtype)
        return merge_recovered(batch, out)

    def to(self, device: torch.device | str) -> MoPoERecoverer:
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    # -- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        return dict(self._model().state_dict())

    def extra_state(self, path: Path) -> dict[str, Any]:
        return {"history": self.history}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any], path: Path, **kwargs: Any) -> None:
        if kwargs:
            raise ConfigError(f"mopoe: load() got unexpected arguments {sorted(kwargs)}")
        model = self._build_model()
        require_weights(tensors, list(model.state_dict()), path)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise BundleError(f"{path}: weights do not fit the config ({e})") from None
        model.eval()
        self.model = model
        self.history = list(extra.get("history", []))


#: Kept under its old name for the MultiVae adapter and the benchmarks.
_epoch_seed = epoch_seed


def _kl_weight(epoch: int, step: int, steps: int, warmup_epochs: int) -> float:
    """Linear KL warm-up from 0 to 1 over ``warmup_epochs`` epochs (1 when 0)."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + step / max(steps, 1)) / warmup_epochs)
