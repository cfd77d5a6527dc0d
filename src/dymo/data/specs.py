"""Modality specs: what a modality is (name, kind, shape), independent of any dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from dymo.errors import DataError

Kind = Literal["image", "vector", "text"]
KINDS: tuple[str, ...] = ("image", "vector", "text")


@dataclass(frozen=True)
class ModalitySpec:
    """One modality.

    - ``image``: ``shape = (C, H, W)``; stored as uint8 ``(H, W, C)`` or float, fed as float32 CHW in [0, 1].
    - ``vector``: ``shape = (F,)``; float32 features.
    - ``text``: ``shape = (L,)``; int64 token ids in ``[0, vocab_size)``, 0 = padding.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    vocab_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"modality {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.kind == "image" and len(self.shape) != 3:
            raise DataError(f"image modality {self.name!r} needs shape (C, H, W), got {self.shape}")
        if self.kind in ("vector", "text") and len(self.shape) != 1:
            raise DataError(f"{self.kind} modality {self.name!r} needs shape (F,), got {self.shape}")
        if self.kind == "text" and not self.vocab_size:
            raise DataError(f"text modality {self.name!r} needs vocab_size")

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
        return torch.long if self.kind == "text" else torch.float32

    def to_tensor(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Convert a stored batch array (leading batch dim) to the model's input tensor."""
        x = torch.as_tensor(array)
        if self.kind == "text":
            return x.long()
        if self.kind == "image":
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            if x.ndim == 4 and x.shape[-1] == self.shape[0] and x.shape[1] != self.shape[0]:
                x = x.permute(0, 3, 1, 2)  # HWC -> CHW
            return x.float().contiguous()
        return x.float()


def specs_to_list(specs: list[ModalitySpec] | tuple[ModalitySpec, ...]) -> list[dict[str, Any]]:
    return [s.to_dict() for s in specs]


def specs_from_list(items: list[dict[str, Any]]) -> list[ModalitySpec]:
    return [ModalitySpec.from_dict(d) for d in items]
