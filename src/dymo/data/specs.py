"""Modality specs: what a modality is (name, kind, shape), independent of any dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dymo.errors import DataError

if TYPE_CHECKING:
    from dymo.data.kinds.base import ModalityKind


@dataclass(frozen=True)
class ModalitySpec:
    """One modality.

    - ``image``: ``shape = (C, H, W)``; stored as uint8 ``(H, W, C)`` or float, fed as float32 CHW in [0, 1].
    - ``vector``: ``shape = (F,)``; float32 features.
    - ``text``: ``shape = (L,)``; int64 token ids in ``[0, vocab_size)``, 0 = padding.

    ``kind`` names a registered modality kind (:mod:`dymo.data.kinds`), whose object holds every
    per-kind rule (``spec.kind_object``).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    vocab_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        kind = self.kind_object  # raises on an unknown kind
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        kind.check_spec(self)

    @property
    def kind_object(self) -> ModalityKind:
        """The kind's rules (:mod:`dymo.data.kinds`)."""
        from dymo.data.kinds.base import kind_of  # the kinds' modules import this one

        return kind_of(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModalitySpec:
        allowed = {"name", "kind", "shape", "vocab_size", "extra"}
        unknown = set(d) - allowed
        if unknown:
            raise DataError(f"modality spec: unknown keys {sorted(unknown)}")
        return cls(**{**d, "shape": tuple(d["shape"])})

    @property
    def dtype(self) -> torch.dtype:
        return self.kind_object.dtype

    def to_tensor(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Convert a stored batch array (leading batch dim) to the model's input tensor."""
        return self.kind_object.to_tensor(array, self)


class HasModalities:
    """``modalities`` and ``num_modalities`` of an object holding ``specs``."""

    specs: Sequence[ModalitySpec]

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def num_modalities(self) -> int:
        return len(self.specs)


class HasSpecs(HasModalities):
    """Adds ``num_classes`` from ``class_names``."""

    class_names: Sequence[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def specs_to_list(specs: list[ModalitySpec] | tuple[ModalitySpec, ...]) -> list[dict[str, Any]]:
    return [s.to_dict() for s in specs]


def specs_from_list(items: list[dict[str, Any]]) -> list[ModalitySpec]:
    return [ModalitySpec.from_dict(d) for d in items]
