"""EXPERIMENT-ONLY: the oracle "recoverer" that returns the true data of missing modalities."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.errors import DataError
from dymo.recovery.base import Recoverer, RecovererConfig


@dataclass
class OracleConfig(RecovererConfig):
    """No options."""


class OracleRecoverer(Recoverer):
    """EXPERIMENT-ONLY upper bound: "recovers" a missing modality by returning what its slot
    already holds, i.e. the true data.

    It is the one recoverer that reads the slots it is told are missing (``reads_missing``), so
    the batch must carry the complete data there (build it from the complete test set and set
    ``observed`` to the scenario mask). A NaN or Inf in a missing slot is a :class:`DataError`:
    it means the caller gave a batch without the true data. Never use it to report results of
    a method; it measures what perfect recovery would give.
    """

    name = "oracle"
    config_class = OracleConfig
    reads_missing = True

    def _fit(self, train: MultimodalDataset, progress: bool) -> None:
        """Nothing to learn."""

    def _recover_missing(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        for i, name in enumerate(batch.modalities):
            x = batch.data[name]
            missing = ~batch.observed[:, i]
            if not missing.any():
                continue
            rows = x[missing].reshape(int(missing.sum()), -1)
            bad = ~torch.isfinite(rows).all(dim=1) if x.is_floating_point() else (rows < 0).any(dim=1)
            if bad.any():
                s = int(torch.nonzero(missing).flatten()[torch.nonzero(bad).flatten()[0]])
                raise DataError(
                    f"oracle: sample {s}, modality {name!r} is missing and its slot holds no true data "
                    "(NaN/Inf or negative token ids); the oracle needs the complete data in missing slots"
                )
        return dict(batch.data)
