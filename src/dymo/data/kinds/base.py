"""The modality-kind protocol and its registry.

A modality kind (``image``, ``vector``, ``text``, or one of yours) is one object, an instance of
a :class:`ModalityKind` subclass registered under its name. Everything dymo does differently per
kind asks that object; no other module tests ``spec.kind == ...``. A kind says

- **what a spec of it is**: the rank of ``shape`` and other requirements (:meth:`check_spec`),
  the model dtype (:attr:`dtype`), whether it is a table of float feature columns in which NaN
  marks a missing value (:attr:`tabular`: the table imputers fill it, recoverers standardise it
  by column statistics);
- **how values enter**: from a stored array (:meth:`to_tensor`), from a user's array
  (:meth:`prepare`, :meth:`expects`), from input files (:attr:`layout`, :meth:`read_file`,
  :meth:`csv_width`, :meth:`csv_header`, :meth:`parse_cells`), as a column of read samples
  (:meth:`collate`), and how they are written back (:meth:`write_file`, :meth:`to_cells`);
- **how values are judged and degraded**: the recovery error (:attr:`error_name`,
  :meth:`recovery_error`) and the low-fidelity corruption of the quality sweep (:meth:`degrade`);
- **how a sample looks** (:meth:`picture`, :meth:`draw`) and a synthetic class-dependent sample
  for tests (:meth:`synthetic`);
- **where its networks are**: :attr:`networks` names the module that registers its networks by
  role (:mod:`dymo.models.networks`; the backbone encoder is registered under the kind's name
  with :func:`dymo.models.encoders.register_encoder`).

Adding a kind: write ``src/dymo/data/kinds/<name>.py`` with a subclass decorated by
:func:`register_kind` (every module of this package is imported on first look-up, so no list
names it) and its networks in ``src/dymo/models/<name>.py``. Outside dymo, call
``register_kind`` and the network registries from your own module.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from dymo.errors import DataError

if TYPE_CHECKING:
    from dymo.data.specs import ModalitySpec


class ModalityKind:
    """Per-kind rules; subclasses are singletons registered with :func:`register_kind`."""

    name: ClassVar[str] = ""
    #: The registered instance (set by :func:`register_kind`).
    instance: ClassVar[ModalityKind]
    #: The model input's dtype.
    dtype: ClassVar[torch.dtype] = torch.float32
    #: How a sample lies in an input folder: ``"files"`` = one file per sample in
    #: ``<modality>/``, ``"csv"`` = one row per sample in ``<modality>.csv``.
    layout: ClassVar[str] = "csv"
    #: ``len(spec.shape)``, and the shape in words.
    rank: ClassVar[int] = 1
    shape_doc: ClassVar[str] = "(F,)"
    #: Float feature columns where NaN marks a missing value (table imputers fill them).
    tabular: ClassVar[bool] = False
    #: The name of :meth:`recovery_error` in reports.
    error_name: ClassVar[str] = "mse"
    #: Module that registers this kind's networks (imported on first use), or None.
    networks: ClassVar[str | None] = None

    def __repr__(self) -> str:
        return f"<modality kind {self.name}>"

    # -- the spec ---------------------------------------------------------------------------
    def check_spec(self, spec: ModalitySpec) -> None:
        """Raise :class:`DataError` when ``spec`` is not a valid spec of this kind."""
        if len(spec.shape) != self.rank:
            raise DataError(f"{self.name} modality {spec.name!r} needs shape {self.shape_doc}, got {spec.shape}")

    def to_tensor(self, array: Any, spec: ModalitySpec) -> torch.Tensor:
        """A stored batch array (leading batch dim) -> the model's input tensor."""
        return torch.as_tensor(array).float()

    # -- folder input ----------------------------------------------------------------------
    def csv_header(self, spec: ModalitySpec) -> list[str] | None:
        """The expected CSV header (None = any names, only the width is checked)."""
        return None

    def csv_width(self, spec: ModalitySpec) -> int:
        """Cells per CSV row after the id."""
        raise NotImplementedError

    def csv_expected(self, spec: ModalitySpec) -> str:
        """The header an input CSV needs, in words (for error messages)."""
        return f"id + {self.csv_width(spec)} feature names"

    def parse_cells(self, cells: list[str], spec: ModalitySpec) -> Any:
        """One CSV row (the cells after the id) -> a raw value, or None when the row holds nothing
        (the modality is then missing for that sample). Raises :class:`DataError` with the reason."""
        raise NotImplementedError

    def read_file(self, path: Path, spec: ModalitySpec) -> np.ndarray:
        """One sample from its own file (kinds whose :attr:`layout` is ``"files"``)."""
        raise DataError(f"{path}: {self.name} modality {spec.name!r} is read from {spec.name}.csv, not from one file per sample")

    def check_readable(self, spec: ModalitySpec) -> None:
        """Raise :class:`DataError` when raw inputs of ``spec`` cannot be read at all."""

    def collate(self, values: list[Any], spec: ModalitySpec) -> tuple[torch.Tensor, dict[int, str]]:
        """Raw values read per sample (None = not observed) -> a batch tensor (zeros where None)
        and per-row error messages."""
        x = np.zeros((len(values), *spec.shape), dtype=np.float64)
        for i, v in enumerate(values):
            if v is not None:
                x[i] = v
        return torch.from_numpy(x), {}

    # -- folder output ---------------------------------------------------------------------
    def write_file(self, value: np.ndarray, spec: ModalitySpec, path: Path) -> None:
        """Write one sample as its own file (``layout == "files"``)."""
        raise NotImplementedError

    def csv_columns(self, spec: ModalitySpec) -> list[str]:
        """The header (after ``id``) of a written ``<modality>.csv``."""
        return [str(c) for c in spec.extra.get("columns", [f"f{k}" for k in range(spec.shape[0])])]

    def to_cells(self, value: np.ndarray, spec: ModalitySpec) -> list[str]:
        """One sample as CSV cells after the id (the inverse of :meth:`parse_cells`)."""
        return [repr(float(v)) for v in np.asarray(value)]

    # -- arrays ----------------------------------------------------------------------------
    def prepare(
        self, x: Any, spec: ModalitySpec, observed: torch.Tensor, *, preprocessed: bool = False, holes_ok: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A user's array for this modality -> (model input tensor ``[B, *shape]``, bool ``[B]``:
        observed rows with missing entries). Missing rows (``~observed``) are never checked."""
        raise NotImplementedError

    def expects(self, spec: ModalitySpec) -> dict[str, Any]:
        """What a bundle expects for this modality (JSON-able; ``bundle.json`` ``"inputs"``)."""
        raise NotImplementedError

    def shape_hint(self, x: torch.Tensor, spec: ModalitySpec) -> str:
        """A hint appended to a shape-mismatch error (e.g. a transposed layout)."""
        return ""

    # -- recovery --------------------------------------------------------------------------
    def recovery_error(self, recovered: torch.Tensor, true: torch.Tensor) -> float:
        """The summed error of recovered values against the true ones (divided by the element count in reports)."""
        return float(((recovered.double() - true.double()) ** 2).sum())

    def degrade(self, x: torch.Tensor, spec: ModalitySpec, config: Any, generator: torch.Generator, feature_std: torch.Tensor | None) -> torch.Tensor:
        """A low-fidelity version of ``x`` (the quality sweep's noise; ``config`` is a
        :class:`~dymo.recovery.quality.ControlledQualityConfig`)."""
        raise NotImplementedError

    # -- display and tests -----------------------------------------------------------------
    def picture(self, x: torch.Tensor) -> np.ndarray | None:
        """One sample as an ``(H, W, C)`` picture in [0, 1], or None when the kind has none."""
        return None

    def draw(self, ax: Any, x: torch.Tensor) -> None:
        """Draw one sample on a matplotlib axes."""
        pic = self.picture(x)
        if pic is not None:
            ax.imshow(pic.squeeze(-1) if pic.shape[-1] == 1 else pic, cmap="gray" if pic.shape[-1] == 1 else None)
        else:
            ax.plot(x.numpy(), lw=0.6)

    def synthetic(
        self, name: str, y: np.ndarray, num_classes: int, signal: float, proto_rng: np.random.Generator,
        rng: np.random.Generator, options: dict[str, Any],
    ) -> tuple[ModalitySpec, np.ndarray]:
        """A synthetic modality whose samples show class ``y`` with visibility ``signal``
        (:func:`dymo.data.synthetic.make_synthetic`; class patterns drawn from ``proto_rng``)."""
        raise NotImplementedError(f"modality kind {self.name!r} has no synthetic generator")

    # -- shared helpers --------------------------------------------------------------------
    @staticmethod
    def _tensor(x: Any, spec: ModalitySpec) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu()
        if isinstance(x, np.ndarray):
            if x.dtype == object or x.dtype.kind in "USV":
                raise DataError(f"modality {spec.name!r}: a numpy array of {x.dtype}, expected numbers")
            return torch.from_numpy(np.ascontiguousarray(x))
        raise DataError(f"modality {spec.name!r}: expected a torch tensor or numpy array, got {type(x).__name__}")

    def _check_shape(self, x: torch.Tensor, spec: ModalitySpec, b: int) -> None:
        if tuple(x.shape) != (b, *spec.shape):
            raise DataError(f"modality {spec.name!r}: tensor shape {tuple(x.shape)}, expected {(b, *spec.shape)}{self.shape_hint(x, spec)}")

    @staticmethod
    def _first(rows: torch.Tensor, observed: torch.Tensor) -> int:
        """Batch index of the first True in ``rows`` (a mask over the observed rows)."""
        return int(torch.nonzero(observed).flatten()[torch.nonzero(rows).flatten()[0]])


# -- the registry -----------------------------------------------------------------------------

_KINDS: dict[str, ModalityKind] = {}
_discovered = False


def register_kind(cls: type[ModalityKind]) -> type[ModalityKind]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if not cls.name:
        raise DataError(f"modality kind {cls.__name__} has no name")
    cls.instance = _KINDS[cls.name] = cls()
    return cls


def _discover() -> None:
    """Import every module of this package once (each registers its kinds)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = __name__.rsplit(".", 1)[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def registered_kinds() -> tuple[str, ...]:
    _discover()
    return tuple(_KINDS)


def get_kind(name: str) -> ModalityKind:
    """The kind registered as ``name``; :class:`DataError` if there is none."""
    if name not in _KINDS:
        _discover()
    try:
        return _KINDS[name]
    except KeyError:
        raise DataError(f"unknown modality kind {name!r}; expected one of {tuple(_KINDS)}") from None


def kind_of(spec: ModalitySpec) -> ModalityKind:
    """The kind object of a spec."""
    if spec.kind not in _KINDS:
        _discover()
    try:
        return _KINDS[spec.kind]
    except KeyError:
        raise DataError(f"modality {spec.name!r}: unknown kind {spec.kind!r}; expected one of {tuple(_KINDS)}") from None

