"""The baseline protocol: one interface for every method DyMo is compared with.

A :class:`Baseline` is fitted on the *complete* training split of a
:class:`~dymo.data.dataset.SplitDataset` (missingness is simulated during training; model
selection on ``data['val']``) and then classifies incomplete test batches:

- ``predict_proba(batch, recovered=None) -> Tensor[B, C]`` (rows sum to 1, on the CPU).
  ``batch.observed`` marks the available modalities; missing slots may hold anything (NaN
  included) and are never read, except by the experiment-only oracles (``reads_missing``).
- Recovery-based baselines (``uses_recovery``) classify from recovered data: they use
  ``recovered`` (the output of a :class:`~dymo.recovery.base.Recoverer` on ``batch``) when given,
  else call the recoverer passed to :meth:`Baseline.fit` (or :meth:`Baseline.load`).
  Recovery-free baselines ignore ``recovered``, so an evaluation loop can pass it to all.
- ``save(dir)`` / ``load(dir)``: ``config.json`` + ``weights.safetensors`` (+ ``recoverer/``).

Writing a baseline: subclass :class:`Baseline`, set ``name``, ``paper`` and ``config_class``,
implement ``_build()`` (the network for ``self.config`` / ``self.specs``, used by ``load``),
``_fit(data, progress)`` (sets ``self.net``) and ``_predict(batch, recovered)`` (probabilities,
on the network's device; ``batch`` is validated and already there). Register it in
:mod:`dymo.baselines.registry`. Most baselines train through the one shared Lightning helper,
:func:`dymo.baselines.training.fit_network` (see :class:`NetBaseline`: it provides ``_fit``, in
``phases`` if the network trains in several, and a ``_predict`` from the network's ``log_proba``).

On disk::

    config.json          {"format": 1, "kind", "dymo_version", "config", "specs",
                          "class_names", "recoverer": "recoverer" | null}
    weights.safetensors  the network's state dict
    recoverer/           the recoverer's own folder (when the baseline holds one)

``config.json`` is written last, so its presence marks a complete save. No pickles.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

import dymo
from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.component import Component
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.specs import ModalitySpec
from dymo.errors import BundleError, ConfigError, DataError
from dymo.recovery.base import Recoverer
from dymo.selection.selector import DEPRECATED_NAMES
from dymo.utils.artifact import (
    dataset_fingerprint,
    load_weights,
    read_manifest,
    sha256_json,
    write_manifest,
)
from dymo.utils.io import save_tensors

log = logging.getLogger("dymo.baselines")

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
RECOVERER_DIR = "recoverer"

B = TypeVar("B", bound="Baseline")


class Baseline(Component, ABC):
    """A comparison method behind DyMo's interface. See the module docstring."""

    #: Registry name (also written to ``config.json``).
    name: ClassVar[str] = ""
    #: The paper the baseline follows (short citation).
    paper: ClassVar[str] = ""
    config_class: ClassVar[type[Config]] = Config
    #: Classifies from recovered data (needs ``recovered=`` or a recoverer). A plain attribute:
    #: a baseline whose config chooses its inputs may set it per instance.
    uses_recovery: bool = False
    #: EXPERIMENT-ONLY: reads the slots of missing modalities (the true data). Never for results.
    reads_missing: ClassVar[bool] = False
    #: EXPERIMENT-ONLY: ``predict_proba`` reads ``batch.labels``. Never for results.
    uses_labels: ClassVar[bool] = False

    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)  # made_from: the fingerprint of the train + val data
        self.net: nn.Module | None = None
        self.recoverer: Recoverer | None = None
        self.device = torch.device("cpu")

    # -- properties ------------------------------------------------------------------------
    @property
    def experiment_only(self) -> bool:
        """True for upper bounds that read what a real method cannot (missing data, labels)."""
        return self.reads_missing or self.uses_labels

    @property
    def fitted(self) -> bool:
        return self.net is not None

    # -- fitting ---------------------------------------------------------------------------
    def fit(self: B, data: SplitDataset, recoverer: Recoverer | None = None, progress: bool = True) -> B:
        """Train on ``data['train']`` (complete; missingness simulated), select on ``data['val']``.

        ``recoverer``: a fitted recoverer, kept for :meth:`predict_proba` (recovery-based
        baselines only; it is never refitted here, and training never uses it).
        """
        if not isinstance(data, SplitDataset):
            raise DataError(f"{self.name}: fit needs a SplitDataset (train + val splits), got {type(data).__name__}")
        for split in ("train", "val"):
            _check_complete(data[split], split, self.name)
        if recoverer is not None:
            self._attach_recoverer(recoverer, data.specs)
        self.specs = list(data.specs)
        self.class_names = list(data.class_names)
        self.made_from = {"data_fingerprint": sha256_json({s: dataset_fingerprint(data[s]) for s in ("train", "val")})}
        self._fit(data, progress)
        assert self.net is not None, f"{type(self).__name__}._fit did not set self.net"
        self.net.to(self.device).eval()
        return self

    def _attach_recoverer(self, recoverer: Recoverer, specs: Sequence[ModalitySpec]) -> None:
        if not self.uses_recovery:
            log.info("%s does not use recovery; the recoverer is ignored", self.name)
            return
        if not isinstance(recoverer, Recoverer):
            raise ConfigError(f"{self.name}: recoverer must be a Recoverer, got {type(recoverer).__name__}")
        if not recoverer.fitted:
            raise ConfigError(f"{self.name}: the recoverer {recoverer.name!r} is not fitted; fit it first (it stays frozen)")
        names = tuple(s.name for s in specs)
        if recoverer.modalities != names:
            raise ConfigError(
                f"{self.name}: the recoverer knows modalities {list(recoverer.modalities)}, the data has {list(names)}"
            )
        self.recoverer = recoverer

    @abstractmethod
    def _build(self) -> nn.Module:
        """The (untrained) network for ``self.config``, ``self.specs`` and ``self.class_names``."""

    @abstractmethod
    def _fit(self, data: SplitDataset, progress: bool) -> None:
        """Train; set ``self.net``. ``self.specs`` / ``self.class_names`` are already set."""

    # -- inference -------------------------------------------------------------------------
    def to(self: B, device: torch.device | str) -> B:
        self.device = torch.device(device)
        if self.net is not None:
            self.net.to(self.device)
        if self.recoverer is not None:
            self.recoverer.to(self.device)
        return self

    @torch.no_grad()
    def predict_proba(self, batch: MultimodalBatch, recovered: MultimodalBatch | None = None) -> torch.Tensor:
        """Class probabilities ``[B, C]`` (CPU, float32, rows sum to 1).

        ``recovered``: ``batch`` with its missing slots filled by a recoverer; used by
        recovery-based baselines (else they call their own recoverer), ignored by the others.
        """
        batch_dev, rec = self._prepare(batch, recovered)
        probs = self._predict(batch_dev, rec).float()
        if probs.shape != (len(batch), self.num_classes):
            raise AssertionError(f"{self.name}: _predict returned shape {tuple(probs.shape)}")
        return (probs / probs.sum(dim=1, keepdim=True)).cpu()

    def _prepare(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> tuple[MultimodalBatch, MultimodalBatch | None]:
        """Validate ``batch``, get its recovery if this baseline uses one; both on ``self.device``."""
        if not self.fitted:
            raise DataError(f"{self.name}: baseline is not fitted; call fit(data) or load a saved one")
        assert self.net is not None
        if not isinstance(batch, MultimodalBatch):
            raise DataError(f"{self.name}: predict_proba needs a MultimodalBatch, got {type(batch).__name__}")
        self._validate(batch, recovered)
        if len(batch) == 0:
            raise DataError(f"{self.name}: empty batch (no sample)")
        if self.uses_labels and batch.labels is None:
            raise DataError(
                f"{self.name} is an EXPERIMENT-ONLY, label-aware upper bound: it reads batch.labels, "
                "and this batch has none"
            )
        if not self.uses_recovery and not self.reads_missing:
            empty = ~batch.observed.any(dim=1)
            if bool(empty.any()):
                i = int(torch.nonzero(empty).flatten()[0])
                raise DataError(
                    f"{self.name}: sample {i} has no observed modality; this baseline classifies from "
                    "observed modalities only"
                )
        rec = self._recovered(batch, recovered).to(self.device) if self.uses_recovery else None
        self.net.eval()
        return batch.to(self.device), rec

    def predict(self, batch: MultimodalBatch, recovered: MultimodalBatch | None = None) -> torch.Tensor:
        """Predicted classes ``[B]`` (argmax of :meth:`predict_proba`)."""
        return self.predict_proba(batch, recovered).argmax(dim=1)

    def predict_dataset(self, dataset: MultimodalDataset, batch_size: int = 512, progress: bool = False) -> torch.Tensor:
        """:meth:`predict_proba` over a whole dataset (its ``observed`` mask), ``[N, C]``."""
        starts = range(0, len(dataset), batch_size)
        if progress:
            from rich.progress import track

            starts = track(starts, description=f"{self.name}: predicting")
        out = [self.predict_proba(dataset.batch(range(s, min(s + batch_size, len(dataset))))) for s in starts]
        return torch.cat(out)

    @abstractmethod
    def _predict(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> torch.Tensor:
        """Probabilities ``[B, C]`` for a validated batch (and its recovery) on ``self.device``."""

    def _validate(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> None:
        """The batch contract's validator. NaN *entries* of observed vector modalities (partly
        missing tables) are accepted when this baseline reads only recovered data and that
        recovery imputes them (``recovered`` given, or a recoverer with ``allows_missing_values``)."""
        imputes_values = self.uses_recovery and (
            recovered is not None or (self.recoverer is not None and self.recoverer.allows_missing_values)
        )
        batch.validate(self.specs, self.num_classes, nan_values=imputes_values)

    def _recovered(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> MultimodalBatch:
        """``recovered`` checked against ``batch``, or the recoverer's output."""
        if recovered is None:
            if self.recoverer is None:
                raise ConfigError(
                    f"{self.name} is recovery-based: pass recovered= to predict_proba, or a fitted "
                    "recoverer to fit(..., recoverer=) / load(..., recoverer=)"
                )
            return self.recoverer.recover(batch)
        if not isinstance(recovered, MultimodalBatch):
            raise DataError(f"{self.name}: recovered must be a MultimodalBatch, got {type(recovered).__name__}")
        if recovered.modalities != batch.modalities or len(recovered) != len(batch):
            raise DataError(
                f"{self.name}: recovered batch ({len(recovered)} samples, modalities {list(recovered.modalities)}) "
                f"does not match the batch ({len(batch)} samples, {list(batch.modalities)})"
            )
        if not torch.equal(recovered.observed.cpu(), batch.observed.cpu()):
            raise DataError(f"{self.name}: recovered.observed differs from batch.observed; pass the recoverer's output unchanged")
        for spec in self.specs:
            x = recovered.data.get(spec.name)
            if x is None or tuple(x.shape) != (len(batch), *spec.shape):
                got = None if x is None else tuple(x.shape)
                raise DataError(f"{self.name}: recovered modality {spec.name!r} has shape {got}, expected {(len(batch), *spec.shape)}")
            # The model reads every slot of the recovered batch, observed ones included.
            rows = x.reshape(len(batch), -1)
            bad = ~torch.isfinite(rows).all(dim=1) if x.is_floating_point() else (rows < 0).any(dim=1)
            if bool(bad.any()):
                s = int(torch.nonzero(bad).flatten()[0])
                raise DataError(f"{self.name}: sample {s}: recovered modality {spec.name!r} holds no recovery (NaN/Inf or negative ids)")
        return recovered

    # -- persistence -----------------------------------------------------------------------
    def save(self, path_dir: str | os.PathLike) -> Path:
        """Write the fitted baseline (and its recoverer, if any) to a folder."""
        if not self.fitted:
            raise DataError(f"{self.name}: nothing to save; the baseline is not fitted")
        assert self.net is not None
        path = Path(path_dir)
        path.mkdir(parents=True, exist_ok=True)
        save_tensors(path / WEIGHTS_FILE, self.net.state_dict(), metadata={"kind": self.name, "dymo_version": dymo.__version__})
        rec_dir = None
        if self.recoverer is not None:
            self.recoverer.save(path / RECOVERER_DIR)
            rec_dir = RECOVERER_DIR
        write_manifest(path, "baseline", self.name, self, recoverer=rec_dir)
        return path

    @classmethod
    def load(
        cls: type[B],
        path_dir: str | os.PathLike,
        recoverer: Recoverer | None = None,
        map_location: str | torch.device = "cpu",
        **recoverer_kwargs: Any,
    ) -> B:
        """Load a folder written by :meth:`save` by this kind of baseline
        (:func:`~dymo.baselines.registry.load_baseline` loads whatever kind a folder holds).

        ``recoverer``: use this fitted recoverer instead of the saved one;
        ``recoverer_kwargs`` go to :func:`~dymo.recovery.registry.load_recoverer` (e.g. ``train=``).
        """
        path = Path(path_dir)
        if not cls.name:
            raise TypeError("Baseline.load: the abstract base cannot choose a kind; use dymo.baselines.load_baseline(path)")
        meta = read_baseline_meta(path)
        if DEPRECATED_NAMES.get(meta["kind"], meta["kind"]) != cls.name:  # a folder saved under an old name
            raise BundleError(f"{path / CONFIG_FILE}: holds a {meta['kind']!r} baseline, not {cls.name!r}")
        obj = cls._from_manifest(meta, path / CONFIG_FILE)
        net = obj._build()
        wpath = path / WEIGHTS_FILE
        state = load_weights(wpath)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise BundleError(f"{wpath}: weights do not fit this {meta['kind']!r} config/specs ({str(e).splitlines()[0]})") from None
        obj.net = net.eval()
        if recoverer is not None:
            obj._attach_recoverer(recoverer, obj.specs)
        elif meta.get("recoverer"):
            from dymo.recovery.registry import load_recoverer

            obj.recoverer = load_recoverer(path / meta["recoverer"], **recoverer_kwargs)
        return obj.to(map_location)


def read_baseline_meta(path: Path) -> dict[str, Any]:
    """Read and check a baseline folder's ``config.json`` (see :func:`dymo.utils.artifact.read_manifest`)."""
    return read_manifest(path, "baseline", required={"kind": str, "config": dict, "specs": list, "class_names": list})


def _check_complete(ds: MultimodalDataset, split: str, who: str) -> None:
    """Baselines train on complete data (missingness is simulated); say so if it is not."""
    missing = ~ds.observed
    if missing.any():
        i, m = (int(v) for v in np.argwhere(missing)[0])
        raise DataError(
            f"{who}: the {split} split must be complete (missingness is simulated during training), "
            f"but sample {i} misses modality {ds.modalities[m]!r}"
        )


class NetBaseline(Baseline):
    """A baseline whose network (a :class:`~dymo.baselines.training.BaselineNet`) is trained
    by the shared Lightning helper; its config has a ``train: FitConfig`` field."""

    #: Training phases, in order: ``net.phase`` is set (and :meth:`_enter_phase` called) before
    #: each is fitted; trainable again at the end. Empty: one fit.
    phases: ClassVar[tuple[str, ...]] = ()

    def _fit(self, data: SplitDataset, progress: bool) -> None:
        from dymo.baselines.training import fit_network, seed_everything
        from dymo.models.encoders import fit_encoder_statistics

        seed_everything(self.config.train.seed)
        net = self._build()
        fit_encoder_statistics(net, data["train"])  # e.g. the quantiles of vector features, as the DyMo backbone
        if not self.phases:
            fit_network(net, data, self.config.train, progress=progress, name=self.name)
        for phase in self.phases:
            net.phase = phase
            self._enter_phase(net, phase)
            fit_network(net, data, self.config.train, progress=progress, name=f"{self.name} {phase}")
        if self.phases:
            net.requires_grad_(True)
        self._after_fit(net, data)
        self.net = net

    def _enter_phase(self, net: nn.Module, phase: str) -> None:
        """Hook: before fitting ``phase`` (e.g. freezing what the phase must not train)."""

    def _predict(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> torch.Tensor:
        """Class probabilities from the network's ``log_proba(data, observed)`` (the default)."""
        assert self.net is not None
        return self.net.log_proba(batch.data, batch.observed).exp()

    def _after_fit(self, net: nn.Module, data: SplitDataset) -> None:
        """Hook: post-training steps on the best weights (e.g. ranking modalities on val)."""
