"""EXPERIMENT-ONLY wrappers that degrade another recoverer in controlled ways.

They make the two failure modes DyMo guards against measurable on demand:

- :class:`ControlledQualityRecoverer`: per recovered (sample, modality), with probability
  ``p_noise`` a *low-fidelity* recovery (the inner recovery with heavy Gaussian noise, or a
  heavy blur for images), with probability ``p_misaligned`` a *misaligned* one (a real
  training sample of that modality from a class other than the sample's true class), else the
  inner recovery unchanged. It reads ``batch.labels`` to guarantee misalignment: an
  experiment tool, never a method.
- :class:`ShuffledRecoverer`: every recovered modality of a sample comes from another sample
  of the same batch (a random derangement): the label-aware control for an oracle recoverer
  (true data, wrong sample).

Randomness and determinism: each wrapper owns a ``torch.Generator`` seeded with ``seed``, and
each ``recover`` call draws from it a fixed amount for its batch size (independent of the
mask). The draws are therefore deterministic per (call order, sample position, modality): the
same seed and the same sequence of batches give identical outputs; ``reset()`` (or a reload)
starts the sequence again. Shuffling a test loader, or changing its batch size, changes which
sample gets which draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.data.kinds import gaussian_blur  # noqa: F401  (re-exported: it moved to the image kind)
from dymo.data.specs import ModalitySpec
from dymo.errors import BundleError, ConfigError, DataError
from dymo.recovery.base import Recoverer, RecovererConfig, TrainingData, merge_recovered

INNER_DIR = "inner"

#: event codes in ``last_events``
OBSERVED, INNER, LOW_FIDELITY, MISALIGNED = -1, 0, 1, 2


class _Wrapper(Recoverer):
    """A recoverer around an ``inner`` one, saved in the sub-folder ``inner/``."""

    def __init__(self, inner: Recoverer | None = None, config: RecovererConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        """Restart the random sequence (see the module doc)."""
        self._generator = torch.Generator().manual_seed(int(self.config.seed))  # type: ignore[attr-defined]

    def _fit(self, train: MultimodalDataset, progress: bool) -> None:
        if self.inner is None:
            raise ConfigError(f"{self.name}: needs an inner recoverer (inner=...)")
        if not self.inner.fitted:
            self.inner.fit(train, progress=progress)
        elif self.inner.modalities != train.modalities:
            raise DataError(
                f"{self.name}: inner recoverer was fitted on {list(self.inner.modalities)}, "
                f"the training set has {list(train.modalities)}"
            )
        self.reset()

    @property
    def reads_missing(self) -> bool:  # type: ignore[override]
        return bool(self.inner is not None and self.inner.reads_missing)

    def _recover_missing(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # recover() is overridden

    def extra_state(self, path: Path) -> dict[str, Any]:
        assert self.inner is not None
        self.inner.save(path / INNER_DIR)
        return {"inner": INNER_DIR}

    def _load_inner(self, path: Path, train: MultimodalDataset | None) -> None:
        from dymo.recovery.registry import load_recoverer

        self.inner = load_recoverer(path / INNER_DIR, train=train)
        self.reset()


# -- controlled quality ---------------------------------------------------------------------

@dataclass
class ControlledQualityConfig(RecovererConfig):
    p_noise: float = 0.0
    p_misaligned: float = 0.0
    noise: Literal["gaussian", "blur"] = "gaussian"
    seed: int = 0
    #: Gaussian noise std: images in [0, 1] units; vectors in units of the feature's training std
    noise_std: float = 0.5
    #: blur std in pixels (images only; vectors get Gaussian noise, text token noise, either way)
    blur_sigma: float = 3.0
    #: probability that a text token is replaced by a random one in a low-fidelity recovery
    token_noise: float = 0.5
    max_embedded_mb: float = 256.0

    def validate(self) -> None:
        for key in ("p_noise", "p_misaligned", "token_noise"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"config key {key!r}: must be in [0, 1], got {v}")
        if self.p_noise + self.p_misaligned > 1.0 + 1e-12:
            raise ConfigError(f"p_noise + p_misaligned = {self.p_noise + self.p_misaligned} > 1")
        if self.noise_std < 0 or self.blur_sigma <= 0:
            raise ConfigError("config keys noise_std must be >= 0 and blur_sigma > 0")


class ControlledQualityRecoverer(_Wrapper):
    """EXPERIMENT-ONLY: the inner recovery, made low-fidelity or misaligned at set rates.

    ``last_events`` (Long ``[B, M]``) records what each slot got in the last call: -1 observed,
    0 inner recovery, 1 low-fidelity, 2 misaligned; ``last_sources`` the training row used for
    misaligned slots (-1 elsewhere). Misalignment needs ``batch.labels`` (a :class:`DataError`
    otherwise).
    """

    name = "controlled_quality"
    config_class = ControlledQualityConfig
    config: ControlledQualityConfig
    uses_training_data = True

    def __init__(
        self,
        inner: Recoverer | None = None,
        p_noise: float | None = None,
        p_misaligned: float | None = None,
        noise: str | None = None,
        seed: int | None = None,
        *,
        config: ControlledQualityConfig | None = None,
        **overrides: Any,
    ) -> None:
        given = {"p_noise": p_noise, "p_misaligned": p_misaligned, "noise": noise, "seed": seed}
        overrides.update({k: v for k, v in given.items() if v is not None})
        super().__init__(inner, config, **overrides)
        self.train_data: TrainingData | None = None
        self.last_events: torch.Tensor | None = None
        self.last_sources: torch.Tensor | None = None

    def _fit(self, train: MultimodalDataset, progress: bool) -> None:
        data = TrainingData(train)
        if self.config.p_misaligned > 0:
            data.check_storable(self.config.max_embedded_mb, self.name)
        super()._fit(train, progress)
        self._set_training(data)

    def _set_training(self, data: TrainingData) -> None:
        self.train_data = data
        labels = torch.as_tensor(np.asarray(data.dataset.labels, dtype=np.int64))
        self._order = torch.argsort(labels, stable=True)
        self._counts = torch.bincount(labels, minlength=self.num_classes)
        self._starts = torch.cumsum(self._counts, 0) - self._counts
        self._present = torch.nonzero(self._counts > 0).flatten()
        self._feature_std: dict[str, torch.Tensor] = {}
        for s in self.specs:
            if s.kind_object.tabular:
                arr = np.asarray(data.dataset.arrays[s.name], dtype=np.float64)
                self._feature_std[s.name] = torch.from_numpy(np.nanstd(arr, axis=0)).float()

    def recover(self, batch: MultimodalBatch) -> MultimodalBatch:
        self._check_fitted()
        assert self.inner is not None
        rec = self.inner.recover(batch).to("cpu")  # validates the batch; the noise is drawn on the CPU
        b, m = len(batch), len(self.specs)
        g = self._generator
        # Fixed-size draws per call (see the module doc).
        u = torch.rand(b, m, generator=g)
        u_class = torch.rand(b, m, generator=g)
        u_row = torch.rand(b, m, generator=g)
        noisy = {spec.name: self._low_fidelity(spec, rec.data[spec.name], g) for spec in self.specs}
        missing = ~batch.observed.cpu()
        events = torch.full((b, m), INNER, dtype=torch.long)
        events[u < self.config.p_noise] = LOW_FIDELITY
        events[(u >= self.config.p_noise) & (u < self.config.p_noise + self.config.p_misaligned)] = MISALIGNED
        events[~missing] = OBSERVED
        sources = torch.full((b, m), -1, dtype=torch.long)
        if self.config.p_misaligned > 0 and bool(missing.any()) and batch.labels is None:
            raise DataError(f"{self.name}: misaligned recoveries (p_misaligned > 0) need batch.labels (experiment-only)")
        if bool((events == MISALIGNED).any()):
            sources = self._other_class_rows(batch.labels.cpu(), u_class, u_row)
            sources[events != MISALIGNED] = -1
        filled: dict[str, torch.Tensor] = {}
        for j, spec in enumerate(self.specs):
            if not missing[:, j].any():
                continue
            out = rec.data[spec.name].clone()
            lo = events[:, j] == LOW_FIDELITY
            out[lo] = noisy[spec.name][lo].to(out.dtype)
            mis = events[:, j] == MISALIGNED
            if mis.any():
                assert self.train_data is not None
                rows = sources[mis, j].numpy()
                uniq, inv = np.unique(rows, return_inverse=True)
                x = spec.to_tensor(np.ascontiguousarray(self.train_data.dataset.arrays[spec.name][uniq]))
                out[mis] = x[torch.from_numpy(inv.reshape(-1))].to(out.dtype)
            filled[spec.name] = out
        self.last_events, self.last_sources = events, sources
        return merge_recovered(batch, filled)

    def _other_class_rows(self, labels: torch.Tensor, u_class: torch.Tensor, u_row: torch.Tensor) -> torch.Tensor:
        """For each (sample, modality): a training row of a class present in training, not the
        sample's label, chosen uniformly; then a row of it uniformly."""
        present = self._present
        y = labels.view(-1, 1).expand_as(u_class)
        has_y = (present.view(1, 1, -1) == y.unsqueeze(-1)).any(-1)
        n_opts = len(present) - has_y.long()
        if bool((n_opts < 1).any()):
            raise DataError(f"{self.name}: misalignment needs training samples of at least two classes")
        pos = torch.minimum((u_class * n_opts).long(), n_opts - 1)
        y_pos = torch.searchsorted(present, y.contiguous())
        pos = pos + (has_y & (pos >= y_pos)).long()
        cls = present[pos]
        off = torch.minimum((u_row * self._counts[cls]).long(), self._counts[cls] - 1)
        return self._order[self._starts[cls] + off]

    def _low_fidelity(self, spec: ModalitySpec, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return spec.kind_object.degrade(x, spec, self.config, g, self._feature_std.get(spec.name))

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def extra_state(self, path: Path) -> dict[str, Any]:
        assert self.train_data is not None
        extra = super().extra_state(path)
        extra["train_data"] = self.train_data.save(path)
        return extra

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any], path: Path, train: MultimodalDataset | None = None) -> None:
        if "train_data" not in extra:
            raise BundleError(f"{path}: config.json has no training-data reference")
        self._load_inner(path, train)
        self._set_training(TrainingData.load(path, extra["train_data"], self.specs, self.class_names, train=train))


# -- shuffled ------------------------------------------------------------------------------

@dataclass
class ShuffledConfig(RecovererConfig):
    seed: int = 0


class ShuffledRecoverer(_Wrapper):
    """EXPERIMENT-ONLY: each sample's recovered modalities come from another sample of the
    batch (a random derangement, one per call; a batch of one is left as is). With an oracle
    inner this gives real data of the wrong sample: the label-aware control for the oracle.
    The donor's slot may be one it observed (then it is its real data). ``last_permutation``
    holds the donor of each sample.
    """

    name = "shuffled"
    config_class = ShuffledConfig
    config: ShuffledConfig
    uses_training_data = True  # only passes ``train`` on to the inner recoverer at load

    def __init__(self, inner: Recoverer | None = None, seed: int | None = None, *, config: ShuffledConfig | None = None, **overrides: Any) -> None:
        if seed is not None:
            overrides["seed"] = seed
        super().__init__(inner, config, **overrides)
        self.last_permutation: torch.Tensor | None = None

    def recover(self, batch: MultimodalBatch) -> MultimodalBatch:
        self._check_fitted()
        assert self.inner is not None
        rec = self.inner.recover(batch)
        b = len(batch)
        sigma = torch.randperm(b, generator=self._generator)
        perm = torch.arange(b)
        if b > 1:
            perm[sigma] = sigma.roll(-1)  # one cycle through all samples: nobody keeps its own
        self.last_permutation = perm
        filled = {name: rec.data[name][perm.to(rec.data[name].device)] for name in self.modalities}
        return merge_recovered(batch, filled)

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any], path: Path, train: MultimodalDataset | None = None) -> None:
        self._load_inner(path, train)


__all__ = [
    "ControlledQualityConfig",
    "ControlledQualityRecoverer",
    "ShuffledConfig",
    "ShuffledRecoverer",
    "gaussian_blur",
]
