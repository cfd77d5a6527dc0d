"""The recovery protocol: fill every missing modality from the observed ones.

A :class:`Recoverer` is fitted once on a training set (which may miss modalities; each
recoverer says how it uses such samples) and then frozen. Its one
inference method, :meth:`Recoverer.recover`, takes a :class:`~dymo.data.batch.MultimodalBatch`
in which every sample may miss a different set of modalities and returns a batch in which

- every observed slot is **bit-identical** to the input (the same values; a modality with no
  missing sample is returned as the very same tensor object);
- every missing slot holds a finite recovery;
- ``observed`` is unchanged (the same tensor), so downstream code still knows which modalities
  were recovered, and ``labels`` are passed through untouched (never read, except by the
  experiment-only wrappers that say so).

What a missing slot held on input must not influence the output: the base class replaces
missing slots with zeros (:meth:`~dymo.data.batch.MultimodalBatch.with_missing_zeroed`) *before* a subclass sees the batch. The one
exception is :class:`~dymo.recovery.oracle.OracleRecoverer` (``reads_missing = True``), an
experiment-only control that returns the true data.

Why a plain class and not an ``nn.Module``: several recoverers are not neural (scikit-learn
imputers, hot-deck retrieval over stored training rows). Neural recoverers own their
``nn.Module`` s as attributes and move them with :meth:`Recoverer.to`.

Writing a recoverer
-------------------
Subclass :class:`Recoverer` (its ``__init__`` must accept ``config=`` as a keyword; :meth:`load`
calls ``cls(config=config)``), set the class attributes ``name`` (the registry kind, also written
to ``config.json``) and ``config_class`` (a :class:`RecovererConfig` dataclass), and implement

- ``_fit(train, progress)``: train; ``self.specs`` / ``self.class_names`` are already set;
- ``_recover_missing(batch) -> dict[str, Tensor]``: full-batch tensors ``[B, *shape]`` (model
  input units and dtype) for each modality that has a missing sample; only the missing rows are
  used. ``batch`` is already validated and sanitised (missing slots are zeros);
- ``state() -> dict[str, Tensor]``: the fitted weights (saved as safetensors);
- ``_load_state(tensors, extra, path)``: restore from ``state()`` + ``extra_state()``;
- optionally ``extra_state(path) -> dict`` (small JSON-able metadata; it may also write extra
  files into the save folder ``path``) and ``to(device)``.

On disk a fitted recoverer is a folder::

    config.json          {"format": 1, "artifact": "recoverer", "kind": name, "dymo_version": ...,
                          "config": {...}, "specs": [...], "class_names": [...],
                          "made_from": {"data_fingerprint": ...}, "extra": {...}}
    weights.safetensors  state() (absent when state() is empty)
    train_data/          (self-contained saves, e.g. in a bundle) the training rows it returns

``config.json`` (the manifest, see :mod:`dymo.utils.artifact`) is written last, so its presence
marks a complete save. No pickles.
"""

from __future__ import annotations

import contextvars
import logging
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.component import Component
from dymo.data.dataset import MultimodalDataset
from dymo.data.specs import ModalitySpec
from dymo.errors import BundleError, ConfigError, DataError
from dymo.utils.artifact import (
    array_fingerprint,
    check_output,
    dataset_fingerprint,
    load_weights,
    read_manifest,
    write_manifest,
)
from dymo.utils.io import save_tensors

FORMAT_VERSION = 1
#: Set while a recoverer is saved self-contained: TrainingData copies its files in.
_SELF_CONTAINED: contextvars.ContextVar[bool] = contextvars.ContextVar("dymo_self_contained_save", default=False)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"

R = TypeVar("R", bound="Recoverer")


@dataclass
class RecovererConfig(Config):
    """Base of every recoverer config (a validated dataclass that round-trips to JSON)."""


class Recoverer(Component, ABC):
    """Fills missing modalities; observed ones pass through bit-identical. See the module doc."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[RecovererConfig]] = RecovererConfig
    #: True only for the experiment-only oracle: it reads the slots it is told are missing.
    reads_missing: ClassVar[bool] = False
    #: Named config overrides (``dymo train recovery --preset NAME``); none by default.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Whether a sample with no observed modality at all can be recovered (e.g. mean imputation).
    allows_empty: ClassVar[bool] = False
    #: Whether NaN *entries* inside an observed vector modality are accepted (and imputed).
    allows_missing_values: ClassVar[bool] = False
    #: Whether the recoverer returns stored training rows and so accepts ``load(path, train=...)``.
    uses_training_data: ClassVar[bool] = False

    def __init__(self, config: RecovererConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.fitted = False

    # -- fitting ---------------------------------------------------------------------------
    def fit(self: R, train: MultimodalDataset, progress: bool = True) -> R:
        """Fit on a training set (labels may be used at training time). Returns self.

        A sample may miss modalities (``train.observed``); each recoverer documents how it
        uses such samples (docs/data.md, "Incomplete training data").
        """
        if not isinstance(train, MultimodalDataset):
            raise DataError(f"{self.name}: fit needs a MultimodalDataset, got {type(train).__name__}")
        self.specs = list(train.specs)
        self.class_names = list(train.class_names)
        self.made_from = {"data_fingerprint": dataset_fingerprint(train)}
        self._fit(train, progress)
        self.fitted = True
        return self

    @abstractmethod
    def _fit(self, train: MultimodalDataset, progress: bool) -> None: ...

    # -- inference -------------------------------------------------------------------------
    def recover(self, batch: MultimodalBatch) -> MultimodalBatch:
        """Return ``batch`` with every missing slot filled; observed slots bit-identical."""
        self._check_fitted()
        self.check_batch(batch)
        if bool(batch.observed.all()) and not self._has_missing_values(batch):
            return replace(batch, data=dict(batch.data))
        clean = batch if self.reads_missing else batch.with_missing_zeroed()
        with torch.no_grad():
            filled = self._recover_missing(clean)
        return merge_recovered(batch, filled)

    def __call__(self, batch: MultimodalBatch) -> MultimodalBatch:
        return self.recover(batch)

    @abstractmethod
    def _recover_missing(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]: ...

    def to(self: R, device: torch.device | str) -> R:
        """Move any modules to ``device`` (no-op for non-neural recoverers)."""
        return self

    def check_batch(self, batch: MultimodalBatch) -> None:
        """Raise :class:`DataError` naming the sample/modality if ``batch`` does not fit (the
        batch contract's one validator)."""
        batch.validate(
            self.specs, who=self.name, nan_values=self.allows_missing_values,
            need_observed=None if self.allows_empty else "recovery needs at least one",
        )

    def _has_missing_values(self, batch: MultimodalBatch) -> bool:
        if not self.allows_missing_values:
            return False
        return any(
            bool(torch.isnan(batch.data[s.name]).any()) for s in self.specs if s.kind_object.tabular
        )

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise DataError(f"{self.name}: recoverer is not fitted; call fit(train) or load a saved one")

    # -- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """The fitted weights, saved as safetensors."""
        return {}

    def extra_state(self, path: Path) -> dict[str, Any]:
        """Small JSON-able metadata saved in ``config.json``; ``path`` is the save folder
        (use it to write paths relative to the folder, never absolute)."""
        return {}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any], path: Path, **kwargs: Any) -> None:
        """Restore from :meth:`state` / :meth:`extra_state`; ``kwargs`` come from :meth:`load`."""
        if kwargs:
            raise ConfigError(f"{self.name}: load() got unexpected arguments {sorted(kwargs)}")

    def save(self, path_dir: str | os.PathLike, self_contained: bool = False) -> Path:
        """Write the fitted recoverer to a folder (config.json + weights.safetensors).

        ``path_dir`` must be new, empty or a saved recoverer (an OutputError otherwise: a backbone
        run or a user's folder is never written into). ``self_contained``: copy the training rows
        a recoverer returns into the folder instead of referencing the dataset's files, so the
        folder works wherever it is copied (bundles)."""
        self._check_fitted()
        path = Path(path_dir)
        check_output(path, "recoverer", replace=True, option="recoverer folder")
        path.mkdir(parents=True, exist_ok=True)
        tensors = self.state()
        token = _SELF_CONTAINED.set(self_contained)
        try:
            extra = self.extra_state(path)
        finally:
            _SELF_CONTAINED.reset(token)
        if tensors:
            save_tensors(path / WEIGHTS_FILE, tensors, metadata={"kind": self.name})
        elif (path / WEIGHTS_FILE).exists():
            (path / WEIGHTS_FILE).unlink()
        write_manifest(path, "recoverer", self.name, self, extra=extra)
        return path

    @classmethod
    def load(cls: type[R], path_dir: str | os.PathLike, train: MultimodalDataset | None = None, **kwargs: Any) -> R:
        """Load a folder written by :meth:`save`. Use :func:`load_recoverer` when the kind is unknown.

        ``train``: the training set, for recoverers that return training rows
        (``uses_training_data``) when their saved reference cannot be followed; checked against
        the saved fingerprint. Ignored by the others.
        """
        path = Path(path_dir)
        meta = read_recoverer_meta(path)
        if meta["kind"] != cls.name:
            raise BundleError(f"{path / CONFIG_FILE}: holds a {meta['kind']!r} recoverer, not {cls.name!r}")
        obj = cls._from_manifest(meta, path / CONFIG_FILE)
        wpath = path / WEIGHTS_FILE
        tensors: dict[str, torch.Tensor] = load_weights(wpath) if wpath.exists() else {}
        if train is not None and cls.uses_training_data:
            kwargs["train"] = train
        obj._load_state(tensors, meta.get("extra", {}), path, **kwargs)
        obj.fitted = True
        return obj


def read_recoverer_meta(path: Path) -> dict[str, Any]:
    """Read and check a recoverer folder's ``config.json`` (see :func:`dymo.utils.artifact.read_manifest`)."""
    return read_manifest(path, "recoverer", required={"kind": str, "config": dict, "specs": list})


def complete_rows(train: MultimodalDataset, who: str, why: str) -> MultimodalDataset:
    """``train`` itself when complete, else its samples that observe every modality (logged as
    a warning naming how many were set aside); ``DataError`` when no sample is complete."""
    if train.observed.all():
        return train
    keep = np.nonzero(train.observed.all(axis=1))[0]
    if len(keep) == 0:
        raise DataError(f"{who}: {why}, and no sample of training set {train.name or '(unnamed)'} observes every modality")
    logging.getLogger("dymo.recovery").warning(
        "%s: %s; training on the %d of %d training samples that observe every modality", who, why, len(keep), len(train)
    )
    return train.subset(keep)


def require_weights(tensors: Mapping[str, torch.Tensor], keys: Sequence[str], path: Path) -> None:
    """Raise :class:`BundleError` naming the file if a weight is absent."""
    absent = [k for k in keys if k not in tensors]
    if absent:
        raise BundleError(f"{path / WEIGHTS_FILE}: weights {absent} missing (file from another version?)")


# -- batch helpers -------------------------------------------------------------------------

def merge_recovered(batch: MultimodalBatch, filled: Mapping[str, torch.Tensor]) -> MultimodalBatch:
    """Write ``filled[name]`` into the *missing* slots of ``batch`` only.

    ``filled[name]`` is a full-batch tensor ``[B, *shape]``; its rows for observed samples are
    ignored. A modality without missing samples may be absent from ``filled`` and keeps its
    tensor object. Raises :class:`DataError` if a needed modality is absent or a recovered
    value is not finite.
    """
    data: dict[str, torch.Tensor] = {}
    for i, name in enumerate(batch.modalities):
        x = batch.data[name]
        missing = ~batch.observed[:, i]
        if not missing.any():
            data[name] = x
            continue
        if name not in filled:
            raise DataError(f"recovery returned nothing for modality {name!r}, which sample "
                            f"{int(torch.nonzero(missing).flatten()[0])} misses")
        f = filled[name]
        if tuple(f.shape) != tuple(x.shape):
            raise DataError(f"recovery for modality {name!r} has shape {tuple(f.shape)}, expected {tuple(x.shape)}")
        f = f.to(device=x.device, dtype=x.dtype)
        if f.is_floating_point():
            rows = f[missing].reshape(int(missing.sum()), -1)
            bad = ~torch.isfinite(rows).all(dim=1)
            if bad.any():
                s = int(torch.nonzero(missing).flatten()[torch.nonzero(bad).flatten()[0]])
                raise DataError(f"recovery for sample {s}, modality {name!r} is not finite")
        shape = (-1,) + (1,) * (x.ndim - 1)
        data[name] = torch.where(missing.to(x.device).view(shape), f, x)
    return replace(batch, data=data)


def group_by_pattern(observed: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Group samples by observed pattern: ``[(pattern Bool[M], sample indices Long[n]), ...]``.

    Patterns come in ascending bit-code order, indices ascending within a group.
    """
    m = observed.shape[1]
    codes = (observed.long().cpu() * (2 ** torch.arange(m))).sum(-1)
    out = []
    for code in torch.unique(codes).tolist():
        idx = torch.nonzero(codes == code).flatten()
        pattern = ((code >> torch.arange(m)) & 1).bool()
        out.append((pattern, idx))
    return out


# -- training-data references ---------------------------------------------------------------

class TrainingData:
    """The training rows a recoverer returns at inference (hot-deck retrieval, misaligned
    controls), saved by *reference* when possible.

    When the training arrays are memory-mapped ``.npy`` files (a dataset opened with
    :meth:`SplitDataset.load`), the save folder records each file's path relative to the
    save folder plus a size/dtype check and a fingerprint (blake2b over up to 1024 evenly
    spaced rows; a sample, not a full-file hash, so loading stays fast). At load the
    files are re-opened memory-mapped and checked; a mismatch is a :class:`BundleError`.
    In-memory training sets up to ``max_embedded_mb`` are copied into the save folder
    (``train_data.safetensors``) instead. Labels are always embedded (small).
    """

    FILE = "train_data.safetensors"

    def __init__(self, dataset: MultimodalDataset) -> None:
        self.dataset = dataset

    @staticmethod
    def fingerprint(array: np.ndarray) -> str:
        return array_fingerprint(array)

    @staticmethod
    def _file_of(array: np.ndarray) -> Path | None:
        """The ``.npy`` file a memory-mapped array views in full, else None."""
        fname = getattr(array, "filename", None)  # np.memmap (np.load(..., mmap_mode="r"))
        if not fname or not str(fname).endswith(".npy"):
            return None
        try:
            ref = np.load(fname, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if ref.shape != array.shape or ref.dtype != array.dtype:
            return None
        if TrainingData.fingerprint(ref) != TrainingData.fingerprint(array):
            return None
        return Path(fname).resolve()

    def check_storable(self, max_embedded_mb: float, who: str) -> None:
        """Raise early (before training) when the data could be neither referenced nor embedded."""
        total = 0
        for s in self.dataset.specs:
            arr = self.dataset.arrays[s.name]
            if self._file_of(arr) is None:
                total += arr.nbytes
        if total > max_embedded_mb * 2**20:
            raise ConfigError(
                f"{who}: the training set {self.dataset.name or '(unnamed)'} is held in memory "
                f"({total / 2**20:.0f} MB not memory-mapped) and is larger than max_embedded_mb="
                f"{max_embedded_mb}; save it with SplitDataset.save and open it with SplitDataset.load "
                "(memory-mapped) so the recoverer can store a reference, or raise max_embedded_mb"
            )

    def save(self, path: Path) -> dict[str, Any]:
        """Write embedded arrays (if any) into ``path``; return the JSON reference."""
        ds = self.dataset
        ref: dict[str, Any] = {"name": ds.name, "num_rows": len(ds), "modalities": {}}
        embedded: dict[str, torch.Tensor] = {"__labels__": torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))}
        for s in ds.specs:
            arr = ds.arrays[s.name]
            entry: dict[str, Any] = {
                "shape": list(arr.shape),
                "dtype": np.dtype(arr.dtype).str,
                "fingerprint": self.fingerprint(arr),
            }
            f = self._file_of(arr)
            if f is not None and _SELF_CONTAINED.get():
                # A copy travels with the folder (bundles); referenced relative to the folder.
                local = path / "train_data" / f"{s.name}.npy"
                local.parent.mkdir(parents=True, exist_ok=True)
                if not local.exists() or local.resolve() != f:
                    shutil.copyfile(f, local)
                entry["file"] = local.relative_to(path).as_posix()
            elif f is not None:
                entry["file"] = os.path.relpath(f, path.resolve())
            else:
                embedded[s.name] = torch.from_numpy(np.ascontiguousarray(np.asarray(arr)))
            ref["modalities"][s.name] = entry
        save_tensors(path / self.FILE, embedded)
        return ref

    @classmethod
    def load(
        cls,
        path: Path,
        ref: dict[str, Any],
        specs: Sequence[ModalitySpec],
        class_names: Sequence[str],
        train: MultimodalDataset | None = None,
    ) -> TrainingData:
        """Re-open the referenced training data (or check and use ``train`` if given)."""
        fpath = path / cls.FILE
        embedded = load_weights(fpath)
        labels = embedded["__labels__"].numpy()
        arrays: dict[str, np.ndarray] = {}
        for s in specs:
            entry = ref["modalities"].get(s.name)
            if entry is None:
                raise BundleError(f"{path / CONFIG_FILE}: no training-data reference for modality {s.name!r}")
            if train is not None:
                if s.name not in train.arrays:
                    raise BundleError(f"the training set given to load() has no modality {s.name!r}")
                arr = train.arrays[s.name]
                where = f"training set {train.name or '(given)'}"
            elif s.name in embedded:
                arr = embedded[s.name].numpy()
                where = str(fpath)
            else:
                file = (path / entry["file"]).resolve()
                where = str(file)
                if not file.exists():
                    raise BundleError(
                        f"{path}: the training data for modality {s.name!r} was at {entry['file']} "
                        f"(relative to the save folder), which does not exist; rebuild the dataset "
                        f"{ref.get('name')!r} there, or pass train= to load()"
                    )
                try:
                    arr = np.load(file, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as e:
                    raise BundleError(f"{file}: unreadable array ({e})") from None
            if list(arr.shape) != list(entry["shape"]) or np.dtype(arr.dtype).str != entry["dtype"]:
                raise BundleError(
                    f"{where}: modality {s.name!r} has shape {list(arr.shape)} dtype {np.dtype(arr.dtype).str}, "
                    f"but the recoverer was fitted on shape {entry['shape']} dtype {entry['dtype']}"
                )
            if cls.fingerprint(arr) != entry["fingerprint"]:
                raise BundleError(
                    f"{where}: modality {s.name!r} differs from the training data the recoverer "
                    f"was fitted on (fingerprint mismatch)"
                )
            arrays[s.name] = arr
        if len(labels) != ref["num_rows"]:
            raise BundleError(f"{fpath}: {len(labels)} labels, expected {ref['num_rows']}")
        return cls(MultimodalDataset(specs, arrays, labels, class_names, name=ref.get("name", "")))
