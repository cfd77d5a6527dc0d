"""Table imputers for vector modalities (scikit-learn), fitted on the training split only.

All vector modalities of a dataset are concatenated, in spec order, into one table
(e.g. UCI mfeat: 6 views -> 649 columns) and imputed jointly, so an observed view helps to
recover a missing one. Two kinds of missingness are handled:

- **whole-modality** missingness: ``observed[:, m]`` is False; the slot's content is ignored
  (it may hold anything, NaN included) and every column of the modality is imputed;
- **value** missingness: a NaN *entry* inside an observed vector modality (the convention for
  "partly missing" tables, e.g. DyMo's DVM/UKBB value-rate scenarios) is imputed too. These
  are the only observed values that change; every other observed value is returned
  bit-identical.

Non-vector modalities (images, text) are not used as features, and a sample that misses one
is an error: these imputers recover tables only. A sample with nothing observed gets the
imputer's answer from no evidence (the training means for ``mean`` / ``iterative`` chains).

Recoverers (registry kinds):

- ``mean``: :class:`MeanImputer`, per-column training mean (``SimpleImputer(strategy="mean")``).
- ``knn``: :class:`KNNImputerRecoverer`, ``KNNImputer`` (nan-Euclidean, k neighbours).
- ``iterative``: :class:`IterativeImputerRecoverer`, ``IterativeImputer`` with its default
  ``BayesianRidge`` regressors; DyMo's "IMI" table recovery.

Persistence without pickles: the mean imputer saves its statistics; the KNN imputer's fitted
state *is* its training table, saved as safetensors, and ``KNNImputer.fit`` (which only
stores and validates it) is re-run on load, which is exact. The iterative imputer saves the
fitted arrays (initial means, clip bounds, and each round-robin step's feature index,
neighbour indices, linear coefficients and intercept) and applies them with its own
:func:`apply_imputation_sequence`, equal to scikit-learn's ``transform`` to float rounding
(pinned by a test), with one deliberate difference: scikit-learn returns the initial means
when *every* value of the batch is missing, which would make a sample's recovery depend on
the rest of its batch; ours always runs the chain, row by row.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.errors import ConfigError, DataError
from dymo.recovery.base import Recoverer, RecovererConfig, require_weights

log = logging.getLogger("dymo.recovery")


class _TableImputer(Recoverer):
    """Shared table handling: concatenation of vector modalities and the value-NaN convention."""

    allows_empty = True
    allows_missing_values = True

    @property
    def columns(self) -> list[tuple[str, slice]]:
        """``(modality, column slice)`` of every vector modality in the table."""
        out, start = [], 0
        for s in self.specs:
            if s.kind_object.tabular:
                out.append((s.name, slice(start, start + s.shape[0])))
                start += s.shape[0]
        return out

    @property
    def num_columns(self) -> int:
        return sum(s.shape[0] for s in self.specs if s.kind_object.tabular)

    def _fit(self, train: MultimodalDataset, progress: bool) -> None:
        if not any(s.kind_object.tabular for s in self.specs):
            raise ConfigError(
                f"{self.name}: imputers recover vector modalities, and dataset {train.name!r} has none "
                f"(kinds: {[s.kind for s in self.specs]})"
            )
        # Incomplete training sets are fine: an unobserved modality's columns are NaN, as the
        # sklearn imputers expect for missing entries.
        parts = []
        for name, _ in self.columns:
            x = np.array(train.arrays[name], dtype=np.float64)
            x[~train.observed[:, train.modalities.index(name)]] = np.nan
            parts.append(x)
        table = np.concatenate(parts, axis=1)
        if np.isinf(table).any():
            raise DataError(f"{self.name}: training table of {train.name!r} holds Inf")
        log.info("%s: fitting on a %d x %d training table", self.name, *table.shape)
        self._fit_table(table, progress)

    def _fit_table(self, table: np.ndarray, progress: bool) -> None:
        raise NotImplementedError

    def _impute(self, table: np.ndarray) -> np.ndarray:
        """Fill every NaN of ``table [B, F]`` (float64); rows are independent."""
        raise NotImplementedError

    def _table(self, batch: MultimodalBatch) -> np.ndarray:
        parts = []
        for j, spec in enumerate(self.specs):
            if not spec.kind_object.tabular:
                continue
            x = batch.data[spec.name].detach().cpu().double().numpy().copy()
            x[~batch.observed[:, j].cpu().numpy()] = np.nan  # whatever a missing slot held
            parts.append(x)
        return np.concatenate(parts, axis=1)

    def recover(self, batch: MultimodalBatch) -> MultimodalBatch:
        """Fill missing vector modalities and NaN entries of observed ones (see the module doc)."""
        self._check_fitted()
        self.check_batch(batch)
        for j, spec in enumerate(self.specs):
            miss = ~batch.observed[:, j]
            if not spec.kind_object.tabular and miss.any():
                raise DataError(
                    f"{self.name}: sample {int(torch.nonzero(miss).flatten()[0])} misses {spec.kind} "
                    f"modality {spec.name!r}; table imputers recover vector modalities only"
                )
        filled = self._recover_missing(batch)
        data = dict(batch.data)
        for name, _ in self.columns:
            x = batch.data[name]
            j = self.modalities.index(name)
            holes = torch.isnan(x) | ~batch.observed[:, j].view(-1, 1).to(x.device)
            if holes.any():
                data[name] = torch.where(holes, filled[name].to(device=x.device, dtype=x.dtype), x)
        return replace(batch, data=data)

    def _recover_missing(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        table = self._table(batch)
        if np.isnan(table).any():
            table = self._impute(table)
        if not np.isfinite(table).all():
            row = int(np.nonzero(~np.isfinite(table).all(1))[0][0])
            raise DataError(f"{self.name}: imputation of sample {row} is not finite")
        return {name: torch.from_numpy(np.ascontiguousarray(table[:, sl])) for name, sl in self.columns}


# -- mean ----------------------------------------------------------------------------------

@dataclass
class MeanConfig(RecovererConfig):
    """No options: the per-column training mean."""


class MeanImputer(_TableImputer):
    """Per-column training mean (``SimpleImputer(strategy="mean")``)."""

    name = "mean"
    config_class = MeanConfig

    def _fit_table(self, table: np.ndarray, progress: bool) -> None:
        from sklearn.impute import SimpleImputer

        imp = SimpleImputer(strategy="mean", keep_empty_features=True).fit(table)
        self.statistics = np.asarray(imp.statistics_, dtype=np.float64)

    def _impute(self, table: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(table), self.statistics[None, :], table)

    def state(self) -> dict[str, torch.Tensor]:
        return {"statistics": torch.from_numpy(self.statistics)}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any], path: Path) -> None:
        require_weights(tensors, ["statistics"], path)
        self.statistics = tensors["statistics"].double().numpy()


# -- KNN -----------------------------------------------------------------------------------

@dataclass
class KNNConfig(RecovererConfig):
    n_neighbors: int = 5
    weights: Literal["uniform", "distance"] = "uniform"

    def validate(self) -> None:
        if self.n_neighbors < 1:
            raise ConfigError("config key 'n_neighbors' must be >= 1")


class KNNImputerRecoverer(_TableImputer):
    """``KNNImputer``: mean of the k nearest training rows (nan-Euclidean on observed columns)."""

    name = "knn"
    config_class = KNNConfig
    config: KNNConfig

    def _fit_table(self, table: np.ndarray, progress: bool) -> None:
        from sklearn.impute import KNNImputer

        self.train_table = table
        self.imputer = KNNImputer(
            n_neighbors=self.config.n_neighbors, weights=self.config.weights, keep_empty_features=True
        ).fit(table)

    def _impute(self, table: np.ndarray) -> np.ndarray:
        return np.asarray(self.imputer.transform(table), dtype=np.float64)

    def state(self) -> dict[str, torch.Tensor]:
        return {"train_table": torch.from_numpy(self.train_table)}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any], path: Path) -> None:
        require_weights(tensors, ["train_table"], path)
        self._fit_table(tensors["train_table"].double().numpy(), progress=False)


# -- iterative -----------------------------------------------------------------------------

@dataclass
class IterativeConfig(RecovererConfig):
    max_iter: int = 10
    tol: float = 1e-3
    n_nearest_features: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.max_iter < 1:
            raise ConfigError("config key 'max_iter' must be >= 1")
        if self.n_nearest_features is not None and self.n_nearest_features < 1:
            raise ConfigError("config key 'n_nearest_features' must be >= 1 or null")


SEQUENCE_KEYS = ("initial", "min_value", "max_value", "feat_idx", "neighbor_idx", "coef", "intercept")


class IterativeImputerRecoverer(_TableImputer):
    """``IterativeImputer`` (round-robin ``BayesianRidge`` regressions, ascending order)."""

    name = "iterative"
    config_class = IterativeConfig
    config: IterativeConfig

    def _fit_table(self, table: np.ndarray, progress: bool) -> None:
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer

        imp = IterativeImputer(
            max_iter=self.config.max_iter,
            tol=self.config.tol,
            n_nearest_features=self.config.n_nearest_features,
            random_state=self.config.seed,
            keep_empty_features=True,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ee]arly stopping criterion not reached.*")
            imp.fit(table)
        self.sklearn_imputer = imp  # kept in memory only (for comparisons); never saved
        seq = imp.imputation_sequence_
        self.arrays = {
            "initial": np.asarray(imp.initial_imputer_.statistics_, dtype=np.float64),
            "min_value": np.broadcast_to(np.asarray(imp._min_value, dtype=np.float64), (table.shape[1],)).copy(),
            "max_value": np.broadcast_to(np.asarray(imp._max_value, dtype=np.float64), (table.shape[1],)).copy(),
            "feat_idx": np.asarray([t.feat_idx for t in seq], dtype=np.int64),
            "neighbor_idx": np.stack([np.asarray(t.neighbor_feat_idx, dtype=np.int64) for t in seq])
            if seq else np.zeros((0, 0), dtype=np.int64),
            "coef": np.stack([np.asarray(t.estimator.coef_, dtype=np.float64) for t in seq])
            if seq else np.zeros((0, 0)),
            "intercept": np.asarray([float(t.estimator.intercept_) for t in seq], dtype=np.float64),
        }

    def _impute(self, table: np.ndarray) -> np.ndarray:
        return apply_imputation_sequence(table, **self.arrays)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.arrays.items()}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any], path: Path) -> None:
        require_weights(tensors, SEQUENCE_KEYS, path)
        self.arrays = {k: tensors[k].numpy() for k in SEQUENCE_KEYS}


def apply_imputation_sequence(
    table: np.ndarray,
    initial: np.ndarray,
    min_value: np.ndarray,
    max_value: np.ndarray,
    feat_idx: np.ndarray,
    neighbor_idx: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
) -> np.ndarray:
    """scikit-learn's ``IterativeImputer.transform`` from saved arrays (``sample_posterior``
    off): start from the initial means, then for each saved step predict feature
    ``feat_idx[t]`` of the rows that miss it as ``X[:, neighbor_idx[t]] @ coef[t] +
    intercept[t]``, clipped to ``[min_value, max_value]``. Row by row independent."""
    missing = np.isnan(table)
    x = np.where(missing, initial[None, :], table)
    for t in range(len(feat_idx)):
        f = int(feat_idx[t])
        rows = missing[:, f]
        if not rows.any():
            continue
        pred = x[np.ix_(rows, neighbor_idx[t])] @ coef[t] + intercept[t]
        x[rows, f] = np.clip(pred, min_value[f], max_value[f])
    return x
