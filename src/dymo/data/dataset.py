"""In-memory (or memory-mapped) multimodal datasets and their on-disk array format.

On disk a built dataset is a folder::

    meta.json               {"name", "format": 1, "specs": [...], "class_names": [...], "splits": {...}}
    <split>/labels.npy      int64 [N]
    <split>/<modality>.npy  one array per modality, leading dim N (uint8 images stay uint8)
    <split>/observed.npy    bool [N, M], only when some sample of the split misses a modality
                            (a missing slot's array row holds zeros and is never read)

Arrays are opened memory-mapped, so building a batch reads only its rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dymo.data.batch import MultimodalBatch
from dymo.data.specs import HasSpecs, ModalitySpec, specs_from_list, specs_to_list
from dymo.errors import DataError
from dymo.utils.io import read_json_object, save_npy, write_json

FORMAT_VERSION = 1


class MultimodalDataset(HasSpecs, Dataset):
    """Arrays keyed by modality name + labels (+ an optional observed mask, default all True).

    ``dataset[[i, j, k]]`` (or ``__getitems__``) returns a :class:`MultimodalBatch` built by
    fancy indexing, which is much faster than collating single samples.
    """

    def __init__(
        self,
        specs: Sequence[ModalitySpec],
        arrays: dict[str, np.ndarray],
        labels: np.ndarray,
        class_names: Sequence[str],
        observed: np.ndarray | None = None,
        name: str = "",
    ) -> None:
        self.specs = list(specs)
        self.arrays = arrays
        self.labels = np.asarray(labels)
        self.class_names = list(class_names)
        self.name = name
        n = len(self.labels)
        if n == 0:
            raise DataError(f"dataset {name or '(unnamed)'} is empty")
        for s in self.specs:
            if s.name not in arrays:
                raise DataError(f"dataset {name}: no array for modality {s.name!r}")
            if len(arrays[s.name]) != n:
                raise DataError(
                    f"dataset {name}: modality {s.name!r} has {len(arrays[s.name])} rows, labels have {n}"
                )
        extra = set(arrays) - {s.name for s in self.specs}
        if extra:
            raise DataError(f"dataset {name}: arrays for unknown modalities {sorted(extra)}")
        if self.labels.ndim != 1:
            raise DataError(f"dataset {name}: labels must be 1-D, got shape {self.labels.shape}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            bad = int(np.nonzero((self.labels < 0) | (self.labels >= len(self.class_names)))[0][0])
            raise DataError(
                f"dataset {name}: sample {bad} has label {int(self.labels[bad])}, outside "
                f"[0, {len(self.class_names)})"
            )
        if observed is None:
            observed = np.ones((n, len(self.specs)), dtype=bool)
        observed = np.asarray(observed)
        if observed.shape != (n, len(self.specs)):
            raise DataError(f"dataset {name}: observed mask shape {observed.shape}, expected {(n, len(self.specs))}")
        self.observed = observed.astype(bool)

    # -- basic protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> MultimodalBatch:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # sorted reads are faster on memmaps
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        sidx = idx[order]
        data = {s.name: s.to_tensor(np.ascontiguousarray(self.arrays[s.name][sidx][inv])) for s in self.specs}
        return MultimodalBatch(
            data=data,
            observed=torch.from_numpy(self.observed[idx].copy()),
            modalities=self.modalities,
            labels=torch.from_numpy(self.labels[idx].astype(np.int64)),
            preprocessed=True,  # the stored arrays are the dataset's preprocessed values
        )

    def __getitems__(self, indices: list[int]) -> MultimodalBatch:
        return self.batch(indices)

    def __getitem__(self, index: int | Sequence[int]) -> MultimodalBatch:
        if isinstance(index, (int, np.integer)):
            return self.batch([int(index)])
        return self.batch(index)

    def all(self) -> MultimodalBatch:
        return self.batch(np.arange(len(self)))

    # -- derived datasets -----------------------------------------------------------------
    def subset(self, indices: Sequence[int] | np.ndarray) -> MultimodalDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return MultimodalDataset(
            self.specs,
            {k: v[idx] for k, v in self.arrays.items()},
            self.labels[idx],
            self.class_names,
            self.observed[idx],
            self.name,
        )

    def with_observed(self, observed: np.ndarray | torch.Tensor) -> MultimodalDataset:
        observed = np.asarray(observed)
        return MultimodalDataset(self.specs, self.arrays, self.labels, self.class_names, observed, self.name)

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0, drop_last: bool = False) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        return DataLoader(
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=g if shuffle else None,
            num_workers=num_workers,
            collate_fn=_identity,
            drop_last=drop_last,
        )


def _identity(batch: MultimodalBatch) -> MultimodalBatch:
    return batch


@dataclass
class SplitDataset(HasSpecs):
    """A built dataset: its splits (``train``/``val``/``test``) sharing specs and class names."""

    name: str
    specs: list[ModalitySpec]
    class_names: list[str]
    splits: dict[str, MultimodalDataset]
    # How the dataset was built (builder name + options); saved in meta.json under "build" so that a
    # later call can tell whether a finished build on disk matches the options it was asked for.
    build_info: dict | None = None
    # What the build read and what it left out (source file hashes, rows dropped, values filled),
    # saved in meta.json under "provenance"; informative, not compared when reusing a build.
    provenance: dict | None = None

    def __getitem__(self, split: str) -> MultimodalDataset:
        if split not in self.splits:
            raise DataError(f"dataset {self.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]

    def save(self, root: str | os.PathLike) -> Path:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        # Over an existing build: drop its meta.json first, so that an interrupted re-save reads
        # as "not built" instead of a silent mix of old and new arrays.
        (root / "meta.json").unlink(missing_ok=True)
        for split, ds in self.splits.items():
            (root / split).mkdir(exist_ok=True)
            for s in self.specs:
                save_npy(root / split / f"{s.name}.npy", np.asarray(ds.arrays[s.name]))
            save_npy(root / split / "labels.npy", ds.labels.astype(np.int64))
            observed_path = root / split / "observed.npy"
            if ds.observed.all():
                observed_path.unlink(missing_ok=True)
            else:
                save_npy(observed_path, ds.observed.astype(bool))
        # meta.json last: its presence marks a complete build.
        meta = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "specs": specs_to_list(self.specs),
            "class_names": self.class_names,
            "splits": {k: len(v) for k, v in self.splits.items()},
        }
        if self.build_info is not None:
            meta["build"] = self.build_info
        if self.provenance:
            meta["provenance"] = self.provenance
        write_json(root / "meta.json", meta)
        return root

    @classmethod
    def load(cls, root: str | os.PathLike, mmap: bool = True) -> SplitDataset:
        root = Path(root)
        meta_path = root / "meta.json"
        meta = read_json_object(
            meta_path, DataError, f"{root}: no meta.json; this folder is not a built dymo dataset (or its build did not finish)",
            "a dymo dataset description",
        )
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{meta_path}: dataset format {meta.get('format')!r}, this dymo reads {FORMAT_VERSION}")
        for key, typ in (("name", str), ("specs", list), ("class_names", list), ("splits", dict)):
            if not isinstance(meta.get(key), typ):
                raise DataError(f"{meta_path}: key {key!r} missing or not a JSON {typ.__name__.replace('str', 'string')}")
        try:
            specs = specs_from_list(meta["specs"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{meta_path}: malformed 'specs' ({e})") from None
        splits = {}
        for split, n in meta["splits"].items():
            arrays = {s.name: _load_npy(root / split / f"{s.name}.npy", mmap) for s in specs}
            labels = _load_npy(root / split / "labels.npy", False)
            if len(labels) != n:
                raise DataError(f"{root / split / 'labels.npy'}: {len(labels)} rows, meta.json says {n}")
            observed = None
            if (root / split / "observed.npy").exists():
                observed = _load_npy(root / split / "observed.npy", False)
                if observed.dtype != np.bool_:
                    raise DataError(f"{root / split / 'observed.npy'}: dtype {observed.dtype}, expected bool")
            splits[split] = MultimodalDataset(
                specs, arrays, labels, meta["class_names"], observed, name=f"{meta['name']}/{split}"
            )
        provenance = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else None
        return cls(meta["name"], specs, list(meta["class_names"]), splits, meta.get("build"), provenance)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: file missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: corrupt or unreadable array file ({e})") from None
