"""Reading new samples from disk for ``dymo predict``.

An input folder holds, per modality (named as in the bundle's specs):

- image modalities: a sub-folder ``<modality>/`` with one image file per sample, named
  ``<sample id>.<ext>`` (any format Pillow reads; bit depths and modes are converted by the rule
  of :meth:`dymo.data.kinds.ImageKind.read_file`, sizes resized to the spec's);
- vector modalities: ``<modality>.csv``, UTF-8, a header row ``id,<F feature names>`` then one
  row per sample: the id and the raw feature values (an empty cell = a missing value);
- text modalities: ``<modality>.csv`` with the header ``id,text``, encoded with the alphabet the
  dataset stored in the spec.

The rules (ids, order, what fails one sample and what fails the run) are in ``docs/inputs.md``.
In short: a sample is every id seen in any modality; the output keeps the input order: CSV rows
in file order (first seen, CSVs in the bundle's modality order), then the ids found only as
image files, in natural name order (``s2`` before ``s10``). A modality with no file or row for
a sample is missing for it. A problem with one sample's file or row (unreadable
image, bad row, duplicate or ambiguous id) fails that sample only, with the file named; a problem
with a whole file (no header, not UTF-8, an entry that names no modality) fails the run before
any prediction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dymo.data.batch import MultimodalBatch
from dymo.data.kinds import CsvTable, kind_of, read_csv_table
from dymo.data.specs import ModalitySpec
from dymo.errors import DataError


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value and ignores case first: ``d2`` before ``D3`` before ``d10``."""
    parts = [(0, int(t), "") if t.isdigit() else (1, 0, t.casefold()) for t in re.split(r"(\d+)", name) if t]
    return (parts, name)


@dataclass
class InputFolder:
    root: Path
    specs: list[ModalitySpec]
    ids: list[str]  # every sample id, in input order (see the module doc)
    images: dict[str, dict[str, list[Path]]] = field(default_factory=dict)  # modality -> id -> file(s)
    tables: dict[str, CsvTable] = field(default_factory=dict)  # modality -> its CSV
    problems: dict[str, str] = field(default_factory=dict)  # id -> why it cannot be read (duplicates, ...)
    notes: list[str] = field(default_factory=list)  # what was not read, said once

    @classmethod
    def scan(cls, root: str | Path, specs: Sequence[ModalitySpec]) -> InputFolder:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: input folder does not exist")
        specs = list(specs)
        known = {s.name: s for s in specs}
        folder = cls(root, specs, [])
        entries = sorted(root.iterdir(), key=lambda p: natural_key(p.name))
        unknown_dirs = [p.name for p in entries if p.is_dir() and not p.name.startswith(".") and p.name not in known]
        if unknown_dirs:
            raise DataError(f"{root}: sub-folder(s) {unknown_dirs} name no modality of this model; modalities: {sorted(known)}")
        unknown_csv = [p.name for p in entries if p.is_file() and p.suffix.lower() == ".csv" and p.stem not in known]
        if unknown_csv:
            raise DataError(f"{root}: file(s) {unknown_csv} name no modality of this model; modalities: {sorted(known)}")
        for p in entries:
            spec = known.get(p.stem if p.is_file() else p.name)
            if spec is not None and (kind_of(spec).layout == "files") != p.is_dir():
                want = f"a sub-folder {spec.name}/ of image files" if kind_of(spec).layout == "files" else f"a file {spec.name}.csv"
                raise DataError(f"{p}: modality {spec.name!r} is a {spec.kind} modality; it needs {want}")
        other = [p.name for p in entries if p.is_file() and p.suffix.lower() != ".csv"]
        if other:
            folder.notes.append(f"not read (names no modality): {', '.join(other)}")

        seen: dict[str, None] = {}  # ids of CSV rows, first seen
        from_files: set[str] = set()  # ids of image files
        for spec in specs:
            if kind_of(spec).layout == "files":
                from_files.update(folder._scan_images(spec))
                continue
            path = root / f"{spec.name}.csv"
            if not path.is_file():
                folder.notes.append(f"modality {spec.name!r}: no {path.name}, missing for every sample")
                continue
            kind_of(spec).check_readable(spec)  # e.g. a text CSV needs the spec's alphabet: fail the run here, not per sample
            table = read_csv_table(path, spec)
            folder.tables[spec.name] = table
            for sid, lines in table.duplicates.items():
                folder._problem(sid, f"{path}: id {sid!r} is on lines {', '.join(map(str, lines))}; ids must be unique")
            seen.update(dict.fromkeys(table.order))
        folder.ids = [*seen, *sorted(from_files - seen.keys(), key=natural_key)]
        folder._check_case_collisions()
        if not folder.ids:
            raise DataError(f"{root}: no samples found (expected {', '.join(_expected(s) for s in specs)})")
        return folder

    def _scan_images(self, spec: ModalitySpec) -> list[str]:
        path = self.root / spec.name
        files: dict[str, list[Path]] = {}
        self.images[spec.name] = files
        if not path.is_dir():
            self.notes.append(f"modality {spec.name!r}: no folder {spec.name}/, missing for every sample")
            return []
        hidden, dirs = [], []
        for p in sorted(path.iterdir(), key=lambda p: natural_key(p.name)):
            if p.name.startswith("."):
                hidden.append(p.name)
            elif p.is_dir():
                dirs.append(p.name)
            else:
                files.setdefault(p.stem, []).append(p)
        if hidden:
            self.notes.append(f"{path}: hidden file(s) not read: {', '.join(hidden)}")
        if dirs:
            self.notes.append(f"{path}: sub-folder(s) not read: {', '.join(dirs)}")
        for sid, paths in files.items():
            if len(paths) > 1:
                self._problem(sid, f"{path}: id {sid!r} is ambiguous, {len(paths)} files: {', '.join(p.name for p in paths)}")
        return list(files)

    def _check_case_collisions(self) -> None:
        groups: dict[str, list[str]] = {}
        for sid in self.ids:
            groups.setdefault(sid.casefold(), []).append(sid)
        for group in groups.values():
            if len(group) > 1:
                for sid in group:
                    self._problem(sid, f"id {sid!r} is ambiguous: ids {group} differ only in case")

    def _problem(self, sid: str, msg: str) -> None:
        self.problems.setdefault(sid, msg)

    def load(self, ids: Sequence[str]) -> tuple[MultimodalBatch, dict[str, str]]:
        """A raw batch for ``ids`` (missing slots zero; ``preprocessed`` False: the model's
        preprocessing is applied by ``predict``) and per-sample error messages."""
        n = len(ids)
        observed = torch.zeros(n, len(self.specs), dtype=torch.bool)
        errors: dict[str, str] = {sid: self.problems[sid] for sid in ids if sid in self.problems}
        data: dict[str, torch.Tensor] = {}
        for j, spec in enumerate(self.specs):
            values: list[object | None] = [None] * n
            for i, sid in enumerate(ids):
                if sid in errors:
                    continue
                try:
                    value = self._read(spec, sid)
                except DataError as e:
                    errors[sid] = str(e)
                    continue
                if value is None:
                    continue
                values[i] = value
                observed[i, j] = True
            data[spec.name], bad = kind_of(spec).collate(values, spec)
            for i, msg in bad.items():
                errors.setdefault(ids[i], f"{self._where(spec, ids[i])}: {msg}")
        for i, sid in enumerate(ids):
            if sid not in errors and not observed[i].any():
                errors[sid] = "no observed modality: dymo needs at least one"
        return MultimodalBatch(data, observed, tuple(s.name for s in self.specs), preprocessed=False), errors

    def _where(self, spec: ModalitySpec, sid: str) -> str:
        table = self.tables.get(spec.name)
        if table is None or sid not in table.rows:
            return f"{self.root / (spec.name + '.csv')}, sample {sid!r}"
        return f"{table.path}, sample {sid!r} (line {table.rows[sid][0]})"

    def _read(self, spec: ModalitySpec, sid: str) -> object | None:
        kind = kind_of(spec)
        if kind.layout == "files":
            paths = self.images[spec.name].get(sid)
            return None if not paths else kind.read_file(paths[0], spec)
        table = self.tables.get(spec.name)
        if table is None or sid not in table.rows:
            return None
        try:
            return kind.parse_cells(table.rows[sid][1], spec)
        except DataError as e:
            raise DataError(f"{self._where(spec, sid)}: {e}") from None


def _expected(spec: ModalitySpec) -> str:
    return f"{spec.name}/<id>.png" if kind_of(spec).layout == "files" else f"{spec.name}.csv"
