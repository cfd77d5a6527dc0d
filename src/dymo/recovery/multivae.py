"""MMVAE+ and CMVAE from the MultiVae library as recoverers (the optional extra ``dymo[multivae]``).

MultiVae (Senellart et al., https://github.com/AgatheSenellart/MultiVae) implements the two
other multimodal VAEs that the DyMo paper uses to recover missing PolyMNIST modalities:

- **MMVAE+** (Palumbo, Daunhawer & Vogt, ICLR 2023): a shared latent ``z`` whose joint
  posterior is the uniform *mixture* of the unimodal posteriors, plus a private latent ``w_m``
  per modality; a missing modality's ``w_m`` comes from its (learned-scale) prior.
- **CMVAE** (Palumbo et al., ICLR 2024): MMVAE+ with a clustered (mixture-of-Laplace) prior on
  the shared latent.

This module adapts them to dymo's :class:`~dymo.recovery.base.Recoverer` protocol. MultiVae is
imported lazily, inside the methods, so ``import dymo.recovery`` and the registry never need it;
building a recoverer without it raises :class:`MultiVaeUnavailableError` (a
:class:`~dymo.errors.ConfigError` *and* an :class:`ImportError`) with the install command.
MultiVae imports torchvision at import time, so the extra needs a torch/torchvision pair that
load together (``torch==2.14.1 torchvision==0.29.1``; see ``docs/recovery.md``).

Networks. MultiVae's PolyMNIST architectures are fixed to 3x28x28 inputs, so the encoders and
decoders here are dymo's shape-generic VAE networks (roles ``vae-encoder`` / ``vae-decoder`` of
:mod:`dymo.models.networks`: 3x3 stride-2 convolutions for images, MLPs for vectors), wrapped in
the pythae base classes (:mod:`dymo.recovery.multivae_config`)
MultiVae expects. One trunk per modality outputs both the shared ``(mu, logvar)`` and the
private ``(style_mu, style_logvar)``; the decoders take ``[z, w_m]``. Images are float CHW in
[0, 1] with a Laplace (default, scale 0.75) or Gaussian likelihood on the sigmoid decoder mean;
vectors are standardised with training statistics and get a Gaussian likelihood. Text
modalities are not supported.

Training (:meth:`MultiVaeRecoverer.fit`) is on complete samples (an incomplete training set is
reduced to its complete rows, with a warning). ``trainer="dymo"`` (default)
runs MultiVae's objective (``model(inputs).loss``, Adam, ``model.update()`` after each epoch:
what MultiVae's ``BaseTrainer.train_step`` does) in a local loop over dymo's loader, with the
randomness seeded per epoch in a forked RNG and nothing written to disk. ``trainer="multivae"``
runs MultiVae's own ``BaseTrainer`` instead (in a temporary output folder that is deleted
afterwards, since it writes pickled checkpoints, with the global RNG states restored); it keeps
the epoch with the best training loss, as ``BaseTrainer`` does without an eval set.

Recovery (:meth:`MultiVaeRecoverer.recover`): the batch is grouped by observed pattern
(:func:`~dymo.recovery.base.group_by_pattern`), and MultiVae's conditional generation runs once
per pattern: ``model.predict(inputs, cond_mod=<observed>, gen_mod=<missing>, N=1,
return_mean=True)``, where ``inputs`` holds *only* the observed modalities of that group's
samples (missing slots are never passed to MultiVae). ``return_mean=True`` is the deterministic
mode MultiVae offers: no latent is sampled and a missing modality's private latent is its prior
mean. For MMVAE+ the shared latent is then the average of the observed modalities' posterior
means. CMVAE's ``encode`` still draws *which* observed modality supplies the shared latent with
``numpy.random.choice``; that draw is pinned by seeding NumPy's global RNG from ``(seed,
pattern)`` for the call (and restoring it afterwards), so a sample's recovery depends only on
its own data and pattern, never on the rest of the batch. (The DyMo authors' CMVAE wrapper
calls ``predict`` once per *sample* with sampling; this is the grouped, deterministic
equivalent.)

Persistence: dymo's folder format (``config.json`` + ``weights.safetensors``: the MultiVae
model's ``state_dict`` under ``multivae.`` and the vector standardisers under ``scalers.``). On
load the model is rebuilt from the config and specs and the weights are loaded strictly.
MultiVae's own ``model.save`` is not used: it writes ``torch.save`` pickles and cloudpickles
custom architectures.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.errors import BundleError, ConfigError, DataError
from dymo.models.networks import build_network
from dymo.models.vae import Standardizer
from dymo.recovery.base import (
    Recoverer,
    complete_rows,
    group_by_pattern,
    require_weights,
)
from dymo.recovery.mopoe import _epoch_seed
from dymo.recovery.multivae_config import (  # noqa: F401  (re-exported: the extra's setup lives there)
    INSTALL_HINT,
    MODEL_KINDS,
    MultiVaeConfig,
    MultiVaeUnavailableError,
    _network_classes,
    import_multivae,
    multivae_version,
)
from dymo.training.engine import FitConfig, fit_module

log = logging.getLogger(__name__)

# -- the recoverer ---------------------------------------------------------------------------


class MultiVaeRecoverer(Recoverer):
    """MultiVae's MMVAE+ or CMVAE behind the Recoverer protocol. See the module doc.

    Build one with ``get_recoverer("mmvae-plus")`` / ``get_recoverer("cmvae")``, or
    ``MultiVaeRecoverer(model="cmvae", ...)`` (which returns the matching subclass,
    :class:`MMVAEPlusRecoverer` or :class:`CMVAERecoverer`).
    """

    config_class = MultiVaeConfig
    config: MultiVaeConfig
    #: the config ``model`` this class implements (set by the subclasses)
    model_kind: ClassVar[str] = ""

    def __new__(cls, config: MultiVaeConfig | None = None, **overrides: Any) -> MultiVaeRecoverer:
        if cls is MultiVaeRecoverer:
            model = config.model if isinstance(config, MultiVaeConfig) else overrides.get("model", "mmvae_plus")
            if model not in _BY_MODEL:
                raise ConfigError(f"multivae: model must be one of {sorted(_BY_MODEL)}, got {model!r}")
            cls = _BY_MODEL[model]
        return super().__new__(cls)

    def __init__(self, config: MultiVaeConfig | None = None, **overrides: Any) -> None:
        if config is None and "model" not in overrides:
            overrides = {"model": self.model_kind, **overrides}
        super().__init__(config, **overrides)
        if self.config.model != self.model_kind:
            raise ConfigError(
                f"{self.name}: config model {self.config.model!r} does not match this recoverer; "
                f"use get_recoverer({MODEL_KINDS[self.config.model]!r})"
            )
        import_multivae()  # fail early, with the install command, before any training
        self.model: nn.Module | None = None
        self.scalers = nn.ModuleDict()
        self.history: list[dict[str, float]] = []
        self.device = torch.device("cpu")

    # -- building --------------------------------------------------------------------------
    def _multivae_config(self) -> Any:
        from multivae.models import CMVAEConfig, MMVAEPlusConfig

        cfg = self.config
        names = [s.name for s in self.specs]
        likelihoods = [(s, build_network(s, "vae-likelihood", cfg)) for s in self.specs]
        common: dict[str, Any] = dict(
            n_modalities=len(names),
            latent_dim=cfg.latent_dim,
            input_dims={s.name: tuple(s.shape) for s in self.specs},
            uses_likelihood_rescaling=cfg.likelihood_rescaling,
            decoders_dist={s.name: lik.dist for s, lik in likelihoods},
            decoder_dist_params={s.name: {"scale": lik.scale} for s, lik in likelihoods},
            K=cfg.K,
            prior_and_posterior_dist=cfg.prior_and_posterior_dist,
            learn_modality_prior=True,
            beta=cfg.beta,
            modalities_specific_dim=cfg.modality_dim,
            reconstruction_option=cfg.reconstruction_option,
            loss=cfg.resolved_loss,
        )
        if cfg.model == "cmvae":
            return CMVAEConfig(**common, number_of_clusters=cfg.number_of_clusters)
        return MMVAEPlusConfig(**common, learn_shared_prior=False)

    def _build_model(self) -> nn.Module:
        """A freshly initialised MultiVae model for ``self.specs`` (seeded by ``config.seed``)."""
        import_multivae()
        from multivae.models import CMVAE, MMVAEPlus

        cfg = self.config
        for s in self.specs:
            if not build_network(s, "vae-likelihood", cfg).continuous:
                raise DataError(
                    f"{self.name}: modality {s.name!r} is {s.kind}; the MultiVae recoverers support modalities with a "
                    "continuous likelihood (image and vector)"
                )
        Encoder, Decoder = _network_classes()
        width = cfg.latent_dim + cfg.modality_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            encoders: dict[str, nn.Module] = {}
            decoders: dict[str, nn.Module] = {}
            scalers: dict[str, nn.Module] = {}
            for s in self.specs:
                enc = build_network(s, "vae-encoder", cfg, width)
                dec = build_network(s, "vae-decoder", cfg, width)
                if s.kind_object.tabular:
                    scalers[s.name] = Standardizer(s.shape[0])
                encoders[s.name] = Encoder(enc, cfg.latent_dim, cfg.modality_dim)
                decoders[s.name] = Decoder(dec)
            model_cls = CMVAE if cfg.model == "cmvae" else MMVAEPlus
            model = model_cls(self._multivae_config(), encoders=encoders, decoders=decoders)
        self.scalers = nn.ModuleDict(scalers).to(self.device)
        model = model.to(self.device)
        model.device = self.device.type
        return model

    # -- units -----------------------------------------------------------------------------
    def _to_net(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Model-input units -> network units (vectors standardised)."""
        x = x.to(self.device, torch.float32)
        if name in self.scalers:
            sc = self.scalers[name]
            return (x - sc.mean) / sc.std
        return x

    def _from_net(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name in self.scalers:
            sc = self.scalers[name]
            return x * sc.std + sc.mean
        return x

    # -- fitting ---------------------------------------------------------------------------
    def _fit(self, train: MultimodalDataset, progress: bool) -> None:
        cfg = self.config
        train = complete_rows(train, self.name, "the MultiVae recoverers train on complete samples")
        model = self._build_model()
        for name, scaler in self.scalers.items():
            scaler.set(train.arrays[name])  # type: ignore[operator]
        self.model, self.history = model, []
        if cfg.epochs == 0:
            model.eval()
            return
        if cfg.trainer == "multivae":
            self.model = self._fit_with_multivae_trainer(model, train)
        else:
            self._fit_local(model, train, progress)
        self.model.eval()

    def _fit_local(self, model: nn.Module, train: MultimodalDataset, progress: bool) -> None:
        cfg = self.config
        objective = _MultiVaeObjective(self, model, len(train), self.history)
        fit = FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
        with _forked_rng(self.device):
            fit_module(objective, train, fit, progress=progress, name=self.name, device=self.device)

    def _fit_with_multivae_trainer(self, model: nn.Module, train: MultimodalDataset) -> nn.Module:
        """Train with MultiVae's ``BaseTrainer`` (in a temporary output folder, deleted after)."""
        from multivae.data.datasets.base import MultimodalBaseDataset
        from multivae.trainers import BaseTrainer, BaseTrainerConfig

        cfg = self.config
        everything = train.all()
        data = {k: self._to_net(k, v).cpu() for k, v in everything.data.items()}
        with tempfile.TemporaryDirectory(prefix="dymo-multivae-") as tmp, _forked_rng(self.device), _global_rng_restored():
            tcfg = BaseTrainerConfig(
                output_dir=tmp,
                per_device_train_batch_size=cfg.batch_size,
                per_device_eval_batch_size=cfg.batch_size,
                num_epochs=cfg.epochs,
                learning_rate=cfg.lr,
                optimizer_cls="Adam",
                seed=cfg.seed,
                no_cuda=self.device.type != "cuda",
                steps_saving=None,
                steps_predict=None,
                keep_best_on_train=True,
            )
            trainer = BaseTrainer(model, train_dataset=MultimodalBaseDataset(data=data), training_config=tcfg)
            trainer.train()
            best = trainer._best_model
        best = best.to(self.device)
        best.device = self.device.type
        self.history = [{"epoch": cfg.epochs, "best_train_loss": float(trainer.best_train_loss)}]
        return best

    # -- inference -------------------------------------------------------------------------
    def _model(self) -> nn.Module:
        if self.model is None:
            raise DataError(f"{self.name}: recoverer is not fitted; call fit(train) or load a saved one")
        return self.model

    def predict_pattern(self, data: dict[str, torch.Tensor], cond: list[str], gen: list[str], code: int) -> dict[str, torch.Tensor]:
        """MultiVae's conditional generation for one observed pattern: ``data`` holds the
        observed modalities (network units) of the samples sharing that pattern; returns the
        generated missing modalities in network units. Deterministic (see the module doc)."""
        from multivae.data.datasets.base import MultimodalBaseDataset

        model = self._model()
        model.eval()
        with _pinned_rng(_epoch_seed(self.config.seed, code, 2), self.device):
            out = model.predict(MultimodalBaseDataset(data=data), cond_mod=cond, gen_mod=gen, N=1, return_mean=True)
        return {m: out[m] for m in gen}

    def _recover_missing(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        names = list(batch.modalities)
        out: dict[str, torch.Tensor] = {}
        for i, name in enumerate(names):
            if (~batch.observed[:, i]).any():
                x = batch.data[name]
                out[name] = torch.zeros(x.shape, dtype=x.dtype, device=self.device)
        for pattern, idx in group_by_pattern(batch.observed):
            gen = [m for m, p in zip(names, pattern.tolist(), strict=True) if not p]
            if not gen:
                continue
            cond = [m for m, p in zip(names, pattern.tolist(), strict=True) if p]
            code = int(sum(1 << j for j, p in enumerate(pattern.tolist()) if p))
            data = {m: self._to_net(m, batch.data[m][idx.to(batch.data[m].device)]) for m in cond}
            pred = self.predict_pattern(data, cond, gen, code)
            dev_idx = idx.to(self.device)
            for m in gen:
                out[m][dev_idx] = self._from_net(m, pred[m]).to(out[m].dtype)
        return out

    def to(self, device: torch.device | str) -> MultiVaeRecoverer:
        self.device = torch.device(device)
        self.scalers.to(self.device)
        if self.model is not None:
            self.model.to(self.device)
            self.model.device = self.device.type
        return self

    # -- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        tensors = {f"multivae.{k}": v for k, v in self._model().state_dict().items()}
        tensors.update({f"scalers.{k}": v for k, v in self.scalers.state_dict().items()})
        return tensors

    def extra_state(self, path: Path) -> dict[str, Any]:
        return {"history": self.history, "multivae_version": multivae_version()}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any], path: Path, **kwargs: Any) -> None:
        if kwargs:
            raise ConfigError(f"{self.name}: load() got unexpected arguments {sorted(kwargs)}")
        model = self._build_model()
        model_state = {k[len("multivae."):]: v for k, v in tensors.items() if k.startswith("multivae.")}
        scaler_state = {k[len("scalers."):]: v for k, v in tensors.items() if k.startswith("scalers.")}
        require_weights(tensors, [f"multivae.{k}" for k in model.state_dict()] + [f"scalers.{k}" for k in self.scalers.state_dict()], path)
        try:
            model.load_state_dict(model_state)
            self.scalers.load_state_dict(scaler_state)
        except RuntimeError as e:
            raise BundleError(f"{path}: weights do not fit the config ({e})") from None
        model.eval()
        self.model = model
        self.history = list(extra.get("history", []))
        saved = extra.get("multivae_version")
        if saved and saved != multivae_version():
            log.warning("%s: saved with multivae %s, loading with %s", path, saved, multivae_version())


class MMVAEPlusRecoverer(MultiVaeRecoverer):
    """MMVAE+ (MultiVae's ``MMVAEPlus``) as a recoverer: kind ``mmvae-plus``."""

    name = "mmvae-plus"
    model_kind = "mmvae_plus"


class CMVAERecoverer(MultiVaeRecoverer):
    """CMVAE (MultiVae's ``CMVAE``) as a recoverer: kind ``cmvae``."""

    name = "cmvae"
    model_kind = "cmvae"


_BY_MODEL: dict[str, type[MultiVaeRecoverer]] = {"mmvae_plus": MMVAEPlusRecoverer, "cmvae": CMVAERecoverer}


# -- RNG helpers -----------------------------------------------------------------------------


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


class _MultiVaeObjective(nn.Module):
    """A MultiVae model's own loss for the training engine (:mod:`dymo.training.engine`).

    Epoch ``e`` shuffles with ``(seed, e, 0)`` and seeds torch's global RNG (MultiVae samples
    from it) with ``(seed, e, 1)``; ``model.update()`` runs after every epoch. ``history`` gets
    the loss per sample of every epoch.
    """

    divergence_hint = "lower lr or raise likelihood_scale"

    def __init__(self, recoverer: MultiVaeRecoverer, model: nn.Module, dataset_size: int, history: list[dict[str, float]]) -> None:
        super().__init__()
        self.model = model
        self.to_net = recoverer._to_net
        self.seed = recoverer.config.seed
        self.component = recoverer.name
        self.dataset_size = dataset_size
        self.steps = math.ceil(dataset_size / recoverer.config.batch_size)
        self.history = history
        self._epoch = self._step = self._n = 0
        self._total = 0.0

    def epoch_seeds(self, epoch: int) -> tuple[int, int]:
        return _epoch_seed(self.seed, epoch, 0), _epoch_seed(self.seed, epoch, 1)

    def on_epoch_start(self, epoch: int) -> None:
        torch.manual_seed(_epoch_seed(self.seed, epoch, 1))
        self._epoch, self._step, self._n, self._total = epoch, 0, 0, 0.0

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> torch.Tensor:
        from pythae.data.datasets import DatasetOutput

        inputs = DatasetOutput(data={k: self.to_net(k, v) for k, v in batch.data.items()})
        out = self.model(inputs, epoch=self._epoch + 1, dataset_size=self.dataset_size, batch_ratio=self._step / self.steps)
        self._step += 1
        self._total += float(out.get("loss_sum", out.loss).detach())
        self._n += len(batch)
        return out.loss

    def on_epoch_end(self, epoch: int) -> None:
        self.model.update()
        record = {"epoch": epoch + 1, "loss": self._total / max(self._n, 1)}
        self.history.append(record)
        log.info("%s epoch %d: loss/sample %.2f", self.component, epoch + 1, record["loss"])


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Torch RNG changes inside stay inside (CPU, and the CUDA device in use)."""
    with torch.random.fork_rng(devices=_rng_devices(device)):
        yield


@contextlib.contextmanager
def _global_rng_restored() -> Iterator[None]:
    """Restore Python's and NumPy's global RNG states afterwards (MultiVae's trainer reseeds them)."""
    import random

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def _pinned_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed NumPy's global RNG and torch's RNG with ``seed`` inside, restore both afterwards."""
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)):
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
