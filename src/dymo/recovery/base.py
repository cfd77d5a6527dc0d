"""The recovery protocol: fill every missing modality from the observed ones.

A :class:`Recoverer` is fitted once on a complete training set and then frozen. Its one
inference method, :meth:`Recoverer.recover`, takes a :class:`~dymo.data.batch.MultimodalBatch`
in which every sample may miss a different set of modalities and returns a batch in which

- every observed slot is **bit-identical** to the input (the same values; a modality with no
  missing sample is returned as the very same tensor object);
- every missing slot holds a finite recovery;
- ``observed`` is unchanged (the same tensor), so downstream code still knows which modalities
  were recovered, and ``labels`` are passed through untouched (never read, except by the
  experiment-only wrappers that say so).

What a missing slot held on input must not influence the output: the base class replaces
missing slots with zeros (:func:`sanitize_missing`) *before* a subclass sees the batch. The one
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

    config.json          {"format": 1, "kind": name, "config": {...}, "specs": [...],
                          "class_names": [...], "extra": {...}}
    weights.safetensors  state() (absent when state() is empty)

``config.json`` is written last, so its presence marks a complete save. No pickles.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset
from dymo.data.specs import ModalitySpec, specs_from_list, specs_to_list
from dymo.errors import BundleError, ConfigError, DataError
from dymo.utils.io import load_tensors, read_json, save_tensors, write_json

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"

R = TypeVar("R", bound="Recoverer")


@dataclass
class RecovererConfig(Config):
    """Base of every recoverer config (a validated dataclass that round-trips to JSON)."""


class Recoverer(ABC):
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
        if config is None:
            config = self.config_class.from_dict(overrides)
        else:
            if not isinstance(config, self.config_class):
                raise ConfigError(
                    f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
                )
            if overrides:
                config = config.replace(**overrides)
        self.config = config
        self.specs: list[ModalitySpec] = []
        self.class_names: list[str] = []
        self.fitted = False

    # -- properties ------------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"{type(self).__name__}({self.config}, {state}, modalities={list(self.modalities)})"

    # -- fitting ---------------------------------------------------------------------------
    def fit(self: R, train: MultimodalDataset, progress: bool = True) -> R:
        """Fit on a complete training set (labels may be used at training time). Returns self."""
        if not isinstance(train, MultimodalDataset):
            raise DataError(f"{self.name}: fit needs a MultimodalDataset, got {type(train).__name__}")
        self.specs = list(train.specs)
        self.class_names = list(train.class_names)
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
        clean = batch if self.reads_missing else sanitize_missing(batch)
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
        """Raise :class:`DataError` naming the sample/modality if ``batch`` does not fit."""
        if batch.modalities != self.modalities:
            raise DataError(
                f"{self.name}: batch modalities {list(batch.modalities)} do not match the "
                f"recoverer's {list(self.modalities)}"
            )
        b = len(batch)
        if tuple(batch.observed.shape) != (b, len(self.specs)):
            raise DataError(
                f"{self.name}: observed mask has shape {tuple(batch.observed.shape)}, "
                f"expected {(b, len(self.specs))}"
            )
        for i, spec in enumerate(self.specs):
            if spec.name not in batch.data:
                raise DataError(f"{self.name}: modality {spec.name!r} is absent from the batch data dict")
            x = batch.data[spec.name]
            if tuple(x.shape) != (b, *spec.shape):
                raise DataError(
                    f"{self.name}: modality {spec.name!r} has shape {tuple(x.shape)}, expected {(b, *spec.shape)}"
                )
            if spec.kind == "text" and x.is_floating_point():
                raise DataError(f"{self.name}: text modality {spec.name!r} needs integer token ids, got {x.dtype}")
            if spec.kind != "text" and not x.is_floating_point():
                raise DataError(f"{self.name}: modality {spec.name!r} needs a floating dtype, got {x.dtype}")
            obs = batch.observed[:, i]
            if x.is_floating_point() and obs.any():
                vals = x[obs].reshape(int(obs.sum()), -1)
                ok = ~torch.isinf(vals) if (self.allows_missing_values and spec.kind == "vector") else torch.isfinite(vals)
                bad = ~ok.all(dim=1)
                if bad.any():
                    sample = int(torch.nonzero(obs).flatten()[torch.nonzero(bad).flatten()[0]])
                    raise DataError(
                        f"{self.name}: sample {sample}: observed modality {spec.name!r} holds NaN or Inf"
                    )
        if not self.allows_empty:
            empty = ~batch.observed.any(dim=1)
            if empty.any():
                i = int(torch.nonzero(empty).flatten()[0])
                raise DataError(
                    f"{self.name}: sample {i} has no observed modality; recovery needs at least one"
                )

    def _has_missing_values(self, batch: MultimodalBatch) -> bool:
        if not self.allows_missing_values:
            return False
        return any(
            bool(torch.isnan(batch.data[s.name]).any()) for s in self.specs if s.kind == "vector"
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

    def save(self, path_dir: str | os.PathLike) -> Path:
        """Write the fitted recoverer to a folder (config.json + weights.safetensors)."""
        self._check_fitted()
        path = Path(path_dir)
        path.mkdir(parents=True, exist_ok=True)
        tensors = self.state()
        extra = self.extra_state(path)
        if tensors:
            save_tensors(path / WEIGHTS_FILE, tensors, metadata={"kind": self.name})
        elif (path / WEIGHTS_FILE).exists():
            (path / WEIGHTS_FILE).unlink()
        write_json(
            path / CONFIG_FILE,
            {
                "format": FORMAT_VERSION,
                "kind": self.name,
                "config": self.config.to_dict(),
                "specs": specs_to_list(self.specs),
                "class_names": list(self.class_names),
                "extra": extra,
            },
        )
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
        try:
            config = cls.config_class.from_dict(meta["config"])
        except ConfigError as e:
            raise BundleError(f"{path / CONFIG_FILE}: bad config ({e})") from None
        obj = cls(config=config)
        obj.specs = specs_from_list(meta["specs"])
        obj.class_names = list(meta.get("class_names", []))
        tensors: dict[str, torch.Tensor] = {}
        wpath = path / WEIGHTS_FILE
        if wpath.exists():
            try:
                tensors = load_tensors(wpath)
            except Exception as e:  # safetensors raises its own error types
                raise BundleError(f"{wpath}: truncated or corrupt weights ({e})") from None
        if train is not None and cls.uses_training_data:
            kwargs["train"] = train
        obj._load_state(tensors, meta.get("extra", {}), path, **kwargs)
        obj.fitted = True
        return obj


def read_recoverer_meta(path: Path) -> dict[str, Any]:
    """Read and check a recoverer folder's ``config.json`` (format, kind present)."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.exists():
        raise BundleError(f"{path}: no {CONFIG_FILE}; not a saved recoverer (or its save did not finish)")
    try:
        meta = read_json(cfg)
    except ValueError as e:
        raise BundleError(f"{cfg}: corrupt JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise BundleError(f"{cfg}: recoverer format {meta.get('format') if isinstance(meta, dict) else None!r}, this dymo reads {FORMAT_VERSION}")
    for key in ("kind", "config", "specs"):
        if key not in meta:
            raise BundleError(f"{cfg}: key {key!r} missing")
    return meta


def require_complete(train: MultimodalDataset, who: str, why: str) -> None:
    """``DataError`` naming the first missing entry unless every training sample is complete."""
    if not train.observed.all():
        r, c = (int(v[0]) for v in np.nonzero(~train.observed))
        raise DataError(
            f"{who}: training set {train.name or '(unnamed)'}: sample {r} misses modality "
            f"{train.modalities[c]!r}; {why}"
        )


def require_weights(tensors: Mapping[str, torch.Tensor], keys: Sequence[str], path: Path) -> None:
    """Raise :class:`BundleError` naming the file if a weight is absent."""
    absent = [k for k in keys if k not in tensors]
    if absent:
        raise BundleError(f"{path / WEIGHTS_FILE}: weights {absent} missing (file from another version?)")


# -- batch helpers -------------------------------------------------------------------------

def sanitize_missing(batch: MultimodalBatch) -> MultimodalBatch:
    """A batch whose missing slots hold zeros (text: padding id 0), whatever they held before.

    Modalities with no missing sample keep their tensor object; others are cloned.
    """
    data = {}
    for i, name in enumerate(batch.modalities):
        x = batch.data[name]
        missing = ~batch.observed[:, i]
        if missing.any():
            x = x.clone()
            x[missing] = 0
        data[name] = x
    return replace(batch, data=data)


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
        n = len(array)
        rows = np.unique(np.linspace(0, n - 1, num=min(n, 1024)).round().astype(np.int64))
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{array.shape}|{np.dtype(array.dtype).str}".encode())
        h.update(np.ascontiguousarray(np.asarray(array[rows])).tobytes())
        return h.hexdigest()

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
            if f is not None:
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
        try:
            embedded = load_tensors(fpath)
        except FileNotFoundError:
            raise BundleError(f"{fpath}: file missing") from None
        except Exception as e:
            raise BundleError(f"{fpath}: truncated or corrupt ({e})") from None
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
