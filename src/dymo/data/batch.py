"""The one multimodal contract every component uses.

A batch is a dict of modality tensors keyed by modality name (leading batch dim), an
``observed`` boolean matrix ``[B, M]`` (True = the modality is available; column ``i`` is
``modalities[i]``) and optional labels. Anything that claims not to read missing modalities
must give the same result when their slots hold NaN: :meth:`MultimodalBatch.with_missing_filled`
makes that easy to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

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

    def validate(self, specs: Sequence[ModalitySpec], num_classes: int | None = None) -> None:
        """Raise :class:`DataError` naming the sample/modality at fault."""
        names = [s.name for s in specs]
        unknown = [k for k in self.data if k not in names]
        if unknown:
            raise DataError(f"unknown modality name(s) {unknown}; this model knows {names}")
        if tuple(names) != self.modalities:
            raise DataError(f"batch modalities {list(self.modalities)} do not match specs {names}")
        b = len(self)
        if self.observed.ndim != 2 or self.observed.shape[1] != len(specs):
            raise DataError(
                f"observed mask has shape {tuple(self.observed.shape)}; expected ({b}, {len(specs)})"
            )
        for i, spec in enumerate(specs):
            if spec.name not in self.data:
                raise DataError(f"modality {spec.name!r} is missing from the batch data dict")
            x = self.data[spec.name]
            if tuple(x.shape) != (b, *spec.shape):
                raise DataError(
                    f"modality {spec.name!r}: tensor shape {tuple(x.shape)}, expected {(b, *spec.shape)}"
                )
            if spec.kind == "text":
                if x.is_floating_point():
                    raise DataError(f"text modality {spec.name!r} needs integer token ids, got {x.dtype}")
            elif not x.is_floating_point():
                raise DataError(f"modality {spec.name!r} needs a floating dtype, got {x.dtype}")
            obs = self.observed[:, i]
            if obs.any() and x.is_floating_point():
                bad = ~torch.isfinite(x[obs].reshape(int(obs.sum()), -1)).all(dim=1)
                if bad.any():
                    sample = int(torch.nonzero(obs).flatten()[torch.nonzero(bad).flatten()[0]])
                    raise DataError(f"sample {sample}: observed modality {spec.name!r} holds NaN or Inf")
        if self.labels is not None and num_classes is not None:
            lab = self.labels
            bad = (lab < 0) | (lab >= num_classes)
            if bad.any():
                i = int(torch.nonzero(bad).flatten()[0])
                raise DataError(f"sample {i}: label {int(lab[i])} outside [0, {num_classes})")
