"""The input boundary over whole batches and files: :func:`prepare_batch` (the one validator
behind ``DyMoClassifier.predict`` and ``dymo predict``), :func:`describe_inputs` (what a bundle
expects) and :func:`read_csv_table` (one modality's CSV). Per-modality rules come from the kind
objects (:mod:`dymo.data.kinds.base`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dymo.data.batch import MultimodalBatch, check_layout
from dymo.data.kinds.base import kind_of
from dymo.data.specs import ModalitySpec
from dymo.errors import DataError

#: Text encodings of CSV inputs: UTF-8, with or without a byte-order mark.
CSV_ENCODING = "utf-8-sig"


def describe_inputs(specs: Sequence[ModalitySpec]) -> dict[str, Any]:
    """What a model with these specs expects, per modality (``bundle.json`` ``"inputs"``)."""
    return {
        "default": "raw",
        "doc": "docs/inputs.md",
        "modalities": {s.name: kind_of(s).expects(s) for s in specs},
    }


# -- batches ----------------------------------------------------------------------------------


def prepare_batch(
    batch: MultimodalBatch, specs: Sequence[ModalitySpec], *, holes_ok: bool = False
) -> tuple[MultimodalBatch, torch.Tensor]:
    """Check a user's batch against ``specs`` and convert it to model inputs.

    Returns the prepared batch (float32 / int64 tensors, preprocessing applied unless
    ``batch.preprocessed``; labels dropped) and a bool ``[B, M]`` matrix of observed vector rows
    with missing entries (NaN), which only ``holes_ok`` allows. Raises :class:`DataError` naming
    the sample and modality at fault.
    """
    if not isinstance(batch, MultimodalBatch):
        raise DataError(f"predict needs a MultimodalBatch, got {type(batch).__name__}")
    names = [s.name for s in specs]
    observed = batch.observed
    if isinstance(observed, np.ndarray):
        observed = torch.from_numpy(observed)
    if not isinstance(observed, torch.Tensor):
        raise DataError(f"the observed mask must be a bool tensor or numpy array, got {type(observed).__name__}")
    observed = observed.detach().cpu().bool()
    check_layout(batch.data, batch.modalities, observed, specs)  # the batch contract's structure
    data: dict[str, torch.Tensor] = {}
    holes = torch.zeros_like(observed)
    for j, spec in enumerate(specs):
        data[spec.name], holes[:, j] = kind_of(spec).prepare(
            batch.data[spec.name], spec, observed[:, j], preprocessed=batch.preprocessed, holes_ok=holes_ok
        )
    return MultimodalBatch(data, observed, tuple(names), None, preprocessed=True), holes


# -- CSV tables -------------------------------------------------------------------------------


@dataclass
class CsvTable:
    """One modality's CSV, read by :func:`read_csv_table`: rows keyed by sample id."""

    path: Path
    header: list[str]
    rows: dict[str, tuple[int, list[str]]] = field(default_factory=dict)  # id -> (line, cells after the id)
    order: list[str] = field(default_factory=list)  # ids in the order first seen
    duplicates: dict[str, list[int]] = field(default_factory=dict)  # id -> every line it is on


def read_csv_table(path: Path, spec: ModalitySpec) -> CsvTable:
    """Read ``<modality>.csv``: UTF-8 (BOM allowed), a header row ``id,...`` of the modality's
    width, then one row per sample (blank lines skipped). Raises :class:`DataError` naming the
    file (and line) when the file as a whole cannot be read; rows are checked per sample later."""
    kind = kind_of(spec)
    raw = path.read_bytes()
    try:
        text = raw.decode(CSV_ENCODING)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    width = kind.csv_width(spec)
    expected = kind.csv_expected(spec)
    try:
        header = next(reader, None)
        while header is not None and not any(c.strip() for c in header):
            header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file (expected a header row: {expected})")
        first = header[0].strip().lower()
        if first != "id":
            raise DataError(
                f"{path}: line {reader.line_num}: the first row must be a header starting with 'id' "
                f"({expected}), found {header[0]!r}; header-less files are not read"
            )
        if len(header) != width + 1:
            raise DataError(f"{path}: the header has {len(header) - 1} columns after 'id', modality {spec.name!r} needs {width} ({expected})")
        names = kind.csv_header(spec)
        if names is not None and [h.strip() for h in header[1:]] != names:
            diff = next(k for k, (a, n) in enumerate(zip(header[1:], names, strict=True)) if a.strip() != n)
            raise DataError(
                f"{path}: header column {diff + 2} is {header[diff + 1]!r}, the model's column there is {names[diff]!r} "
                "(the columns must be in the model's order)"
            )
        table = CsvTable(path, header)
        start = reader.line_num + 1
        for row in reader:
            line = start
            start = reader.line_num + 1
            if not row or not any(c.strip() for c in row):
                continue
            sid = row[0].strip()
            if not sid:
                raise DataError(f"{path}: line {line}: empty sample id")
            if sid in table.duplicates:
                table.duplicates[sid].append(line)
            elif sid in table.rows:
                table.duplicates[sid] = [table.rows.pop(sid)[0], line]
            else:
                table.rows[sid] = (line, row[1:])
                table.order.append(sid)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None
    return table
