"""Reading new samples from disk for ``dymo predict``.

An input folder holds, per modality (named as in the bundle's specs):

- image modalities: a sub-folder ``<modality>/`` of image files named by sample id
  (``<modality>/<sample_id>.png``; .png/.jpg/.jpeg/.bmp), resized to the spec's size if needed;
- vector modalities: ``<modality>.csv`` with a header, the first column the sample id and then
  one column per feature (an empty cell = a missing value, kept as NaN for the recoverer);
- text modalities: ``<modality>.csv`` with columns ``id,text``, encoded with the alphabet the
  dataset stored in the spec (``spec.extra['alphabet']``).

A sample is every id seen in any modality; a modality with no file for a sample is missing for
that sample. A file that cannot be read fails that sample (with the file named), not the run.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dymo.data.batch import MultimodalBatch
from dymo.data.folder import standardize_values
from dymo.data.specs import ModalitySpec
from dymo.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class InputFolder:
    root: Path
    specs: list[ModalitySpec]
    ids: list[str]
    images: dict[str, dict[str, Path]] = field(default_factory=dict)
    tables: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def scan(cls, root: str | Path, specs: Sequence[ModalitySpec]) -> InputFolder:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: input folder does not exist")
        images: dict[str, dict[str, Path]] = {}
        tables: dict[str, dict[str, list[str]]] = {}
        known = {s.name for s in specs}
        for spec in specs:
            if spec.kind == "image":
                folder = root / spec.name
                files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS) if folder.is_dir() else []
                images[spec.name] = {p.stem: p for p in files}
            else:
                path = root / f"{spec.name}.csv"
                rows: dict[str, list[str]] = {}
                if path.exists():
                    with open(path, newline="") as f:
                        reader = csv.reader(f)
                        next(reader, None)  # header
                        for row in reader:
                            if row:
                                rows[row[0]] = row[1:]
                tables[spec.name] = rows
        extra = [p.name for p in root.iterdir() if p.is_dir() and p.name not in known]
        if extra:
            raise DataError(f"{root}: sub-folder(s) {extra} name no modality of this model; modalities: {sorted(known)}")
        ids = sorted({i for d in images.values() for i in d} | {i for d in tables.values() for i in d})
        if not ids:
            raise DataError(f"{root}: no samples found (expected {', '.join(_expected(s) for s in specs)})")
        return cls(root, list(specs), ids, images, tables)

    def load(self, ids: Sequence[str]) -> tuple[MultimodalBatch, dict[str, str]]:
        """A batch for ``ids`` (missing slots zero) and per-sample error messages."""
        n, m = len(ids), len(self.specs)
        observed = torch.zeros(n, m, dtype=torch.bool)
        errors: dict[str, str] = {}
        data = {s.name: torch.zeros((n, *s.shape), dtype=s.dtype) for s in self.specs}
        for j, spec in enumerate(self.specs):
            for i, sid in enumerate(ids):
                try:
                    x = self._read(spec, sid)
                except DataError as e:
                    errors.setdefault(sid, str(e))
                    continue
                if x is not None:
                    data[spec.name][i] = x
                    observed[i, j] = True
        for i, sid in enumerate(ids):
            if sid not in errors and not observed[i].any():
                errors[sid] = "no observed modality: dymo needs at least one"
        return MultimodalBatch(data, observed, tuple(s.name for s in self.specs)), errors

    def _read(self, spec: ModalitySpec, sid: str) -> torch.Tensor | None:
        if spec.kind == "image":
            path = self.images[spec.name].get(sid)
            return None if path is None else read_image(path, spec)
        row = self.tables[spec.name].get(sid)
        if row is None:
            return None
        where = f"{self.root / (spec.name + '.csv')}, sample {sid!r}"
        if spec.kind == "vector":
            if len(row) != spec.shape[0]:
                raise DataError(f"{where}: {len(row)} values, modality {spec.name!r} has {spec.shape[0]} features")
            try:
                vals = [float(v) if v.strip() else math.nan for v in row]
            except ValueError as e:
                raise DataError(f"{where}: {e}") from None
            x = torch.tensor(vals, dtype=torch.float32)
            if torch.isinf(x).any():
                raise DataError(f"{where}: infinite value")
            if torch.isnan(x).all():
                return None
            return standardize_values(spec, x)  # a folder dataset's training standardisation, if any
        alphabet = spec.extra.get("alphabet")
        if alphabet is None:
            raise DataError(f"modality {spec.name!r}: the bundle's spec stores no alphabet to encode text")
        text = row[0] if row else ""
        ids = [alphabet.index(c) + 1 if c in alphabet else 0 for c in text[: spec.shape[0]]]
        x = torch.zeros(spec.shape[0], dtype=torch.long)
        x[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return x


def read_image(path: Path, spec: ModalitySpec) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    c, h, w = spec.shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _expected(spec: ModalitySpec) -> str:
    return f"{spec.name}/<id>.png" if spec.kind == "image" else f"{spec.name}.csv"
