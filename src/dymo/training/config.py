"""The backbone's training settings (a validated config that round-trips to JSON)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from dymo.config import Config
from dymo.errors import ConfigError


@dataclass
class TrainConfig(Config):
    """Training budget and loss settings (docs/method.md §3)."""

    # None: a budget that scales with the data (:func:`auto_epochs`); early stopping on the
    # validation split (``patience``) ends training sooner, and the best epoch is kept.
    epochs: int | None = None
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    subsets_per_batch: int | None = None  # None: 5 for >= 4 modalities, else 2
    # "stratified": every singleton and the full set in every batch, plus the K random subsets
    # (the encoders still run once per batch); "random": the paper's K random subsets only.
    subset_schedule: Literal["stratified", "random"] = "stratified"
    proto_weight: float = 1.0
    proto_start_epoch: int = 2  # 0-based: the third epoch, as in the paper
    temperature: float = 0.1
    patience: int = 3
    # Early stopping cannot end training before this many epochs (None: 1, or with an automatic
    # budget about AUTO_MIN_STEPS optimizer steps): a small table's first epochs are a handful of
    # steps, and one lucky early validation score must not end the run.
    min_epochs: int | None = None
    seed: int = 0
    max_train_samples: int | None = None
    eval_batch_size: int = 512

    def validate(self) -> None:
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1:
            raise ConfigError("TrainConfig: epochs and batch_size must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"TrainConfig: lr must be a positive finite number, got {self.lr}")
        for key in ("weight_decay", "proto_weight", "temperature"):
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"TrainConfig: {key} must be finite, got {getattr(self, key)}")
        if self.min_epochs is not None and (self.min_epochs < 1 or (self.epochs is not None and self.min_epochs > self.epochs)):
            raise ConfigError(f"TrainConfig: min_epochs must be in [1, epochs], got {self.min_epochs}")
        if self.subsets_per_batch is not None and self.subsets_per_batch < 1:
            raise ConfigError("TrainConfig: subsets_per_batch must be >= 1")
        if self.temperature <= 0:
            raise ConfigError("TrainConfig: temperature must be positive")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ConfigError(f"TrainConfig: max_train_samples must be >= 1 (or null for all), got {self.max_train_samples}")

    def with_budget(self, num_train: int) -> TrainConfig:
        """This config with ``epochs`` resolved for ``num_train`` training samples (as set, or
        :func:`auto_epochs` when None)."""
        if self.epochs is not None:
            return self
        epochs = auto_epochs(num_train, self.batch_size)
        steps_per_epoch = max(1, math.ceil(num_train / self.batch_size))
        least = self.min_epochs if self.min_epochs is not None else math.ceil(AUTO_MIN_STEPS / steps_per_epoch)
        return self.replace(epochs=epochs, min_epochs=min(epochs, least))


#: The automatic budget: enough epochs for about this many optimizer steps ...
AUTO_STEPS = 1000
#: ... training at least about this many steps before early stopping may end it ...
AUTO_MIN_STEPS = 100
#: ... but at least / at most this many epochs (early stopping usually ends sooner).
AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS = 4, 100


def auto_epochs(num_train: int, batch_size: int) -> int:
    """The maximum epochs of a training budget that scales with the data: about ``AUTO_STEPS``
    optimizer steps, within ``[AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS]``.

    A fixed epoch count undertrains a small table (4 epochs of 605 TCGA rows at batch 256 are 12
    steps) and overspends on a large image set. With early stopping on the validation split
    (``TrainConfig.patience`` epochs without gain; the best epoch is restored) a small table
    trains until it stops improving: 605 rows -> at most 100 epochs (early stopping ends them
    after 5 to 12 on TCGA), 1,200 mfeat rows -> 100 (9 to 14 run), 10,000 PolyMNIST tuples ->
    25, 60,000 -> 5.
    """
    steps_per_epoch = max(1, math.ceil(num_train / batch_size))
    return max(AUTO_MIN_EPOCHS, min(AUTO_MAX_EPOCHS, math.ceil(AUTO_STEPS / steps_per_epoch)))
