"""The one multimodal contract every component uses.

A batch is a dict of modality tensors keyed by modality name (leading batch dim), an
``observed`` boolean matrix ``[B, M]`` (True = the modality is available; column ``i`` is
``modalities[i]``) and optional labels. Anything that claims not to read missing modalities
must give the same result when their slots hold NaN: :meth:`MultimodalBatch.with_missing_filled`
makes that easy to test.

The contract has one of each tool, and every component uses these:

- one validator, :meth:`MultimodalBatch.validate` (at the door of the backbone's users,
  recoverers, baselines and ``predict``): names, shapes, dtypes, finite observed values;
- one poison, :meth:`MultimodalBatch.with_missing_filled`: NaN (text: -1) in missing slots, so
  that a component that reads them by mistake is caught;
- one zeroing primitive, :func:`zero_missing` (batch form :meth:`MultimodalBatch.with_missing_zeroed`):
  missing rows replaced by zeros (text: padding id 0) just before a network reads the tensor;
  and :func:`zero_nan_values` for NaN *entries* of partly missing tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from dymo.data.specs import ModalitySpec
from dymo.errors import DataError


@dataclass
class MultimodalBatch:
    data: dict[str, torch.Tensor]
    observed: torch.Tensor  # bool [B, M]
    modalities: tuple[str, ...]
    labels: torch.Tensor | None = None
    #: True when ``data`` already holds model inputs (a built dataset's stored, preprocessed
    #: values); False (the default) when it holds raw values, which ``DyMoClassifier.predict``
    #: preprocesses with the model's specs (see ``docs/inputs.md``).
    preprocessed: bool = False

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        if not isinstance(self.observed, torch.Tensor):  # a numpy array or nested lists
            self.observed = torch.as_tensor(self.observed)
        if self.observed.dtype != torch.bool:
            self.observed = self.observed.bool()

    def __len__(self) -> int:
        return int(self.observed.shape[0])

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def to(self, device: torch.device | str) -> MultimodalBatch:
        return MultimodalBatch(
            data={k: v.to(device) for k, v in self.data.items()},
            observed=self.observed.to(device),
            modalities=self.modalities,
            labels=None if self.labels is None else self.labels.to(device),
            preprocessed=self.preprocessed,
        )

    def index(self, idx: torch.Tensor | slice | Sequence[int]) -> MultimodalBatch:
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long)
        return MultimodalBatch(
            data={k: v[idx] for k, v in self.data.items()},
            observed=self.observed[idx],
            modalities=self.modalities,
            labels=None if self.labels is None else self.labels[idx],
            preprocessed=self.preprocessed,
        )

    def with_observed(self, observed: torch.Tensor) -> MultimodalBatch:
        return replace(self, observed=observed.bool())

    def with_missing_filled(self, value: float = float("nan")) -> MultimodalBatch:
        """A copy whose missing slots hold ``value`` (NaN by default; text gets -1)."""
        data = {}
        for i, name in enumerate(self.modalities):
            x = self.data[name].clone()
            missing = ~self.observed[:, i]
            if x.is_floating_point():
                x[missing] = value
            else:
                x[missing] = -1
            data[name] = x
        return replace(self, data=data)

    def with_missing_zeroed(self) -> MultimodalBatch:
        """A copy whose missing slots hold zeros (text: padding id 0), whatever they held before.
        A modality with no missing sample keeps its tensor object."""
        data = {}
        for i, name in enumerate(self.modalities):
            x, keep = self.data[name], self.observed[:, i]
            data[name] = x if bool(keep.all()) else zero_missing(x, keep)
        return replace(self, data=data)

    def validate(
        self,
        specs: Sequence[ModalitySpec],
        num_classes: int | None = None,
        *,
        who: str | None = None,
        nan_values: bool = False,
        need_observed: str | None = None,
    ) -> None:
        """Raise :class:`DataError` naming the sample/modality at fault (prefixed ``who: ``).

        ``nan_values``: NaN entries of observed *vector* modalities are accepted (partly missing
        tables, for components that impute them); Inf never is. ``need_observed``: every sample
        must have an observed modality, and the message gives this reason.
        """
        try:
            self._validate(specs, num_classes, nan_values, need_observed)
        except DataError as e:
            if who:
                raise DataError(f"{who}: {e}") from None
            raise

    def _validate(
        self, specs: Sequence[ModalitySpec], num_classes: int | None, nan_values: bool, need_observed: str | None
    ) -> None:
        check_layout(self.data, self.modalities, self.observed, specs)
        b = len(self)
        for i, spec in enumerate(specs):
            x = self.data[spec.name]
            if tuple(x.shape) != (b, *spec.shape):
                raise DataError(
                    f"modality {spec.name!r}: tensor shape {tuple(x.shape)}, expected {(b, *spec.shape)}"
                )
            kind = spec.kind_object
            if not kind.dtype.is_floating_point:
                if x.is_floating_point():
                    raise DataError(f"{spec.kind} modality {spec.name!r} needs integer token ids, got {x.dtype}")
            elif not x.is_floating_point():
                raise DataError(f"modality {spec.name!r} needs a floating dtype, got {x.dtype}")
            obs = self.observed[:, i]
            if obs.any() and x.is_floating_point():
                vals = x[obs].reshape(int(obs.sum()), -1)
                ok = ~torch.isinf(vals) if (nan_values and kind.tabular) else torch.isfinite(vals)
                bad = ~ok.all(dim=1)
                if bad.any():
                    sample = int(torch.nonzero(obs).flatten()[torch.nonzero(bad).flatten()[0]])
                    raise DataError(f"sample {sample}: observed modality {spec.name!r} holds NaN or Inf")
        if need_observed is not None:
            empty = ~self.observed.any(dim=1)
            if bool(empty.any()):
                i = int(torch.nonzero(empty).flatten()[0])
                raise DataError(f"sample {i} has no observed modality; {need_observed}")
        if self.labels is not None and num_classes is not None:
            lab = self.labels
            bad = (lab < 0) | (lab >= num_classes)
            if bad.any():
                i = int(torch.nonzero(bad).flatten()[0])
                raise DataError(f"sample {i}: label {int(lab[i])} outside [0, {num_classes})")


def check_layout(
    data: Mapping[str, Any], modalities: Sequence[str], observed: torch.Tensor, specs: Sequence[ModalitySpec]
) -> None:
    """The structure every batch must have for ``specs`` (the part of the validator shared with
    ``dymo.data.kinds.prepare_batch``, which then converts a user's arrays): no unknown modality
    name, the specs' modalities in their order, an ``observed`` mask ``[B, M]``, a tensor for every
    modality. Raises :class:`DataError` naming what is wrong."""
    names = [s.name for s in specs]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise DataError(f"unknown modality name(s) {unknown}; this model knows {names}")
    if tuple(names) != tuple(modalities):
        raise DataError(f"batch modalities {list(modalities)} do not match specs {names}")
    b = int(observed.shape[0]) if observed.ndim >= 1 else 0
    if observed.ndim != 2 or observed.shape[1] != len(specs):
        raise DataError(f"observed mask has shape {tuple(observed.shape)}; expected ({b}, {len(specs)})")
    for spec in specs:
        if spec.name not in data:
            raise DataError(f"modality {spec.name!r} is missing from the batch data dict")


def zero_missing(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` with the rows where ``keep`` (bool ``[B]``) is False replaced by zeros (text:
    padding id 0): what a network reads in place of a missing modality, so that NaN or garbage
    there never reaches its output or its gradients."""
    keep = keep.view(-1, *([1] * (x.ndim - 1)))
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def zero_nan_values(x: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN entries (missing values of a partly missing table) set to 0; integer
    tensors unchanged."""
    return torch.nan_to_num(x, nan=0.0) if x.is_floating_point() else x
