"""Modality kinds: what an ``image``, a ``vector`` and a ``text`` modality are at the input boundary.

One object per kind (:data:`IMAGE`, :data:`VECTOR`, :data:`TEXT`; :func:`kind_of` maps a
:class:`~dymo.data.specs.ModalitySpec` to its kind). Each kind knows

- its model dtype and how a sample lies in an input folder (``layout``: ``"files"`` = one file
  per sample in ``<modality>/``, ``"csv"`` = one row per sample in ``<modality>.csv``);
- how to read one sample from disk (:meth:`ImageKind.read_file`, :meth:`ModalityKind.parse_cells`);
- how to turn a user's array into the model's input (:meth:`ModalityKind.prepare`): dtype and
  shape check, value/range check, then the preprocessing the dataset applied before training,
  read from the spec (vector standardisation ``extra["mean"]`` / ``extra["std"]``, text
  alphabet ``extra["alphabet"]`` and length ``shape[0]``);
- what a bundle expects for the modality (:meth:`ModalityKind.expects`, written to
  ``bundle.json`` under ``"inputs"``).

:func:`prepare_batch` applies this to a whole :class:`~dymo.data.batch.MultimodalBatch`; it is the
one validator behind ``DyMoClassifier.predict`` and ``dymo predict``. The rules, one per row
with the test that pins it, are in ``docs/inputs.md``.

Raw vs model space: a batch read from a built dymo dataset holds the dataset's stored values,
already preprocessed (``batch.preprocessed`` is True); any other batch holds raw values, and
the spec's preprocessing is applied here. Images and token ids are the same in both spaces.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from dymo.data.batch import MultimodalBatch, check_layout
from dymo.data.specs import ModalitySpec
from dymo.errors import DataError

#: Text encodings of CSV inputs: UTF-8, with or without a byte-order mark.
CSV_ENCODING = "utf-8-sig"
#: Cells that mean "no value" in a vector CSV (besides an empty cell), compared case-insensitively.
EMPTY_CELLS = frozenset({"", "nan", "na", "n/a"})


class ModalityKind:
    """Per-kind input rules; subclasses are singletons (:data:`IMAGE`, :data:`VECTOR`, :data:`TEXT`)."""

    name: ClassVar[str] = ""
    dtype: ClassVar[torch.dtype] = torch.float32
    layout: ClassVar[str] = "csv"

    def __repr__(self) -> str:
        return f"<modality kind {self.name}>"

    # -- folder input ----------------------------------------------------------------------
    def csv_header(self, spec: ModalitySpec) -> list[str] | None:
        """The expected CSV header (None = any names, only the width is checked)."""
        return None

    def csv_width(self, spec: ModalitySpec) -> int:
        """Cells per CSV row after the id."""
        raise NotImplementedError

    def parse_cells(self, cells: list[str], spec: ModalitySpec) -> Any:
        """One CSV row (the cells after the id) -> a raw value, or None when the row holds nothing
        (the modality is then missing for that sample). Raises :class:`DataError` with the reason."""
        raise NotImplementedError

    def read_file(self, path: Path, spec: ModalitySpec) -> np.ndarray:
        """One sample from its own file. Only image modalities are stored one file per sample."""
        raise DataError(f"{path}: {self.name} modality {spec.name!r} is read from {spec.name}.csv, not from one file per sample")

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

    @staticmethod
    def _check_shape(x: torch.Tensor, spec: ModalitySpec, b: int) -> None:
        if tuple(x.shape) != (b, *spec.shape):
            hint = ""
            if kind_of(spec) is IMAGE and x.ndim == 4 and tuple(x.shape[1:]) == (*spec.shape[1:], spec.shape[0]):
                hint = " (this looks like (B, H, W, C): images are (B, C, H, W); use x.permute(0, 3, 1, 2))"
            raise DataError(f"modality {spec.name!r}: tensor shape {tuple(x.shape)}, expected {(b, *spec.shape)}{hint}")

    @staticmethod
    def _first(rows: torch.Tensor, observed: torch.Tensor) -> int:
        """Batch index of the first True in ``rows`` (a mask over the observed rows)."""
        return int(torch.nonzero(observed).flatten()[torch.nonzero(rows).flatten()[0]])


# -- image ------------------------------------------------------------------------------------

#: Pillow modes read as 8-bit grey / colour (alpha, if any, is dropped).
_GREY8 = frozenset({"1", "L", "LA", "La"})
_COLOUR8 = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
_GREY16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageKind(ModalityKind):
    """``shape = (C, H, W)``; model input float32 in [0, 1]."""

    name = "image"
    dtype = torch.float32
    layout = "files"

    def read_file(self, path: Path, spec: ModalitySpec) -> np.ndarray:
        """An image file (any format Pillow reads) -> float32 ``(C, H, W)`` in [0, 1].

        Rule (``docs/inputs.md``): 8-bit modes (1, L, P, RGB, CMYK, YCbCr, ...) are divided by
        255; 16-bit grey (``I;16*``) by 65535; 32-bit integer ``I`` images must hold 0..65535 and
        are divided by 65535; float ``F`` images must hold values in [0, 1]. Alpha is dropped.
        Grey -> 3 channels repeats the grey; colour -> 1 channel is the luminance
        ``0.299 R + 0.587 G + 0.114 B``. Other sizes are resized to (H, W) (bilinear, aspect not
        kept). Multi-frame files and files above ``PIL.Image.MAX_IMAGE_PIXELS`` pixels are refused.
        Any failure is a :class:`DataError` naming the file and the reason.
        """
        from PIL import Image, ImageOps

        c, h, w = spec.shape
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    limit = Image.MAX_IMAGE_PIXELS
                    if limit is not None and im.size[0] * im.size[1] > limit:
                        raise DataError(
                            f"{path}: refused, {im.size[0]}x{im.size[1]} = {im.size[0] * im.size[1]:,} pixels is above "
                            f"the decompression-bomb limit of {limit:,} (PIL.Image.MAX_IMAGE_PIXELS)"
                        )
                    frames = getattr(im, "n_frames", 1)
                    if frames > 1:
                        raise DataError(f"{path}: refused, a multi-frame image ({frames} frames); give one frame per file")
                    im.load()
                    im = ImageOps.exif_transpose(im)
                    arr = _to_float(im, path)
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"{path}: refused, decompression bomb ({e})") from None
        except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
            raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None
        k = arr.shape[2]
        if k != c:
            if k == 1 and c == 3:
                arr = np.repeat(arr, 3, axis=2)
            elif k == 3 and c == 1:
                arr = (arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
            else:
                raise DataError(f"{path}: refused, an image of {k} channel(s) for modality {spec.name!r} of {c}")
        if arr.shape[:2] != (h, w):
            arr = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(arr[:, :, i])).resize((w, h), Image.BILINEAR)) for i in range(c)], axis=2)
            arr = np.clip(arr, 0.0, 1.0)
        return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)

    def prepare(self, x, spec, observed, *, preprocessed=False, holes_ok=False):
        x = self._tensor(x, spec)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif not x.is_floating_point():
            raise DataError(f"modality {spec.name!r} needs a floating dtype, got {x.dtype} (images: floats in [0, 1] or uint8 0..255)")
        x = x.float()
        self._check_shape(x, spec, len(observed))
        if observed.any():
            vals = x[observed].reshape(int(observed.sum()), -1)
            bad = ~torch.isfinite(vals).all(dim=1)
            if bad.any():
                raise DataError(f"sample {self._first(bad, observed)}: observed modality {spec.name!r} holds NaN or Inf")
            out = (vals < 0).any(dim=1) | (vals > 1).any(dim=1)
            if out.any():
                i = self._first(out, observed)
                lo, hi = float(x[i].min()), float(x[i].max())
                raise DataError(
                    f"sample {i}: image modality {spec.name!r} holds values in [{lo:g}, {hi:g}]; images are floats "
                    "in [0, 1] (divide 0..255 values by 255) or uint8"
                )
        return x, torch.zeros(len(observed), dtype=torch.bool)

    def expects(self, spec):
        c, h, w = spec.shape
        return {
            "kind": "image",
            "folder": f"{spec.name}/<id>.<ext>: one image file per sample, any format Pillow reads",
            "array": f"float (B, {c}, {h}, {w}) in [0, 1], or uint8 0..255",
            "channels": c,
            "size": [h, w],
        }


def _to_float(im: Any, path: Path) -> np.ndarray:
    """A loaded Pillow image -> float32 ``(H, W, 1 or 3)`` in [0, 1] by the rule of :meth:`ImageKind.read_file`."""
    mode = im.mode
    if mode in _GREY8:
        a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    elif mode in _COLOUR8:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    elif mode in _GREY16:
        a = np.asarray(im).astype(np.float32) / 65535.0
    elif mode == "I":
        raw = np.asarray(im)
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise DataError(f"{path}: refused, a 32-bit integer image with values {raw.min()}..{raw.max()} (only 0..65535 is read, as 16 bits)")
        a = raw.astype(np.float32) / 65535.0
    elif mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise DataError(f"{path}: refused, a float image must hold values in [0, 1], found {np.nanmin(a):g}..{np.nanmax(a):g}")
    else:
        raise DataError(f"{path}: refused, image mode {mode!r} has no documented conversion")
    return a[:, :, None] if a.ndim == 2 else a


# -- vector -----------------------------------------------------------------------------------


class VectorKind(ModalityKind):
    """``shape = (F,)``; model input float32 (standardised when the spec stores mean/std)."""

    name = "vector"
    dtype = torch.float32
    layout = "csv"

    def csv_width(self, spec):
        return spec.shape[0]

    def csv_header(self, spec):
        cols = spec.extra.get("columns")
        return [str(c) for c in cols] if isinstance(cols, list) and len(cols) == spec.shape[0] else None

    def parse_cells(self, cells, spec):
        f = spec.shape[0]
        if len(cells) != f:
            raise DataError(f"{len(cells)} values, modality {spec.name!r} has {f} features")
        out = np.empty(f, dtype=np.float64)
        for k, cell in enumerate(cells):
            v = cell.strip()
            if v.lower() in EMPTY_CELLS:
                out[k] = math.nan
                continue
            try:
                out[k] = float(v)
            except ValueError:
                raise DataError(f"column {k + 2}: {cell!r} is not a number") from None
            if math.isinf(out[k]):
                raise DataError(f"column {k + 2}: infinite value {cell!r}")
        return None if np.isnan(out).all() else out

    @staticmethod
    def statistics(spec: ModalitySpec) -> tuple[np.ndarray, np.ndarray] | None:
        """The spec's standardisation ``(mean, std)`` (float64 ``[F]``), or None."""
        mean, std = spec.extra.get("mean"), spec.extra.get("std")
        if mean is None and std is None:
            return None
        f = spec.shape[0]
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if mean.shape != (f,) or std.shape != (f,) or not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise DataError(f"modality {spec.name!r}: the spec's mean/std must be {f} finite values each (std > 0)")
        return mean, std

    def preprocess(self, x: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
        """Raw values -> model values: ``(x - mean) / std`` in float64 (as the dataset builders), then float32."""
        stats = self.statistics(spec)
        if stats is None:
            return x.float()
        mean, std = (torch.from_numpy(s) for s in stats)
        return ((x.double() - mean) / std).float()

    def prepare(self, x, spec, observed, *, preprocessed=False, holes_ok=False):
        x = self._tensor(x, spec)
        if not x.is_floating_point():
            raise DataError(f"modality {spec.name!r} needs a floating dtype, got {x.dtype}")
        self._check_shape(x, spec, len(observed))
        holes = torch.zeros(len(observed), dtype=torch.bool)
        if observed.any():
            vals = x[observed].double()
            inf = torch.isinf(vals).any(dim=1)
            nan = torch.isnan(vals).any(dim=1)
            if inf.any() or (nan.any() and not holes_ok):
                bad = inf | nan
                i = self._first(bad, observed)
                msg = f"sample {i}: observed modality {spec.name!r} holds NaN or Inf"
                if not bool(torch.isinf(x[i].double()).any()):
                    msg += (
                        " (NaN = an empty value: only a recoverer that fills values, such as mean / knn / iterative, "
                        "accepts it, and this one does not)"
                    )
                raise DataError(msg)
            empty = torch.isnan(vals).all(dim=1)
            if empty.any():
                raise DataError(
                    f"sample {self._first(empty, observed)}: observed modality {spec.name!r} has no value at all; "
                    "mark it as not observed"
                )
            holes[observed] = nan
        x = x.float() if preprocessed else self.preprocess(x, spec)
        self._check_codes(x, spec, observed)
        return x, holes

    @staticmethod
    def _check_codes(x: torch.Tensor, spec: ModalitySpec, observed: torch.Tensor) -> None:
        """Categorical columns (``extra["field_lengths"]`` > 1) hold integer codes ``0..L-1``."""
        lengths = spec.extra.get("field_lengths")
        if not lengths or not observed.any():
            return
        lengths_t = torch.as_tensor(lengths, dtype=torch.float64)
        cat = lengths_t > 1
        if not cat.any():
            return
        codes = x[observed][:, cat].double()
        ok = torch.isnan(codes) | ((codes == codes.round()) & (codes >= 0) & (codes < lengths_t[cat]))
        bad = ~ok.all(dim=1)
        if bad.any():
            i = ModalityKind._first(bad, observed)
            col = int(torch.nonzero(cat).flatten()[torch.nonzero(~ok[torch.nonzero(bad).flatten()[0]]).flatten()[0]])
            raise DataError(
                f"sample {i}: modality {spec.name!r} column {col} holds {float(x[i, col]):g}, not a category code "
                f"in 0..{int(lengths[col]) - 1}"
            )

    def expects(self, spec):
        stats = spec.extra.get("mean") is not None
        out = {
            "kind": "vector",
            "csv": f"{spec.name}.csv: header id + {spec.shape[0]} feature columns, one row per sample",
            "array": f"float (B, {spec.shape[0]})",
            "features": spec.shape[0],
            "values": "raw, as in the source data; predict standardises them with the spec's mean/std"
            if stats
            else "used as given (the dataset stored no standardisation)",
        }
        if self.csv_header(spec):
            out["columns"] = self.csv_header(spec)
        return out


# -- text -------------------------------------------------------------------------------------

#: Alphabets a spec may name instead of storing the characters (``extra["alphabet"]``).
def _named_alphabets() -> dict[str, str]:
    from dymo.data.mst import MOPOE_ALPHABET

    return {"mopoe": MOPOE_ALPHABET}


class TextKind(ModalityKind):
    """``shape = (L,)``; model input int64 character ids in ``[0, vocab_size)`` (0 = padding)."""

    name = "text"
    dtype = torch.long
    layout = "csv"

    def csv_width(self, spec):
        return 1

    @staticmethod
    def alphabet(spec: ModalitySpec) -> str:
        """The spec's alphabet: ``extra["alphabet"]`` is a name (``"mopoe"``) or the characters themselves."""
        value = spec.extra.get("alphabet")
        if not isinstance(value, str) or not value:
            raise DataError(f"text modality {spec.name!r}: the spec stores no alphabet, so text must be given as token ids")
        return _named_alphabets().get(value, value)

    def parse_cells(self, cells, spec):
        if len(cells) != 1:
            raise DataError(f"{len(cells)} cells after the id, expected 1 (quote a text that holds commas)")
        return cells[0] if cells[0] != "" else None

    def encode(self, texts: Sequence[str | None], spec: ModalitySpec) -> tuple[torch.Tensor, dict[int, str]]:
        """Strings -> int64 ids ``[N, L]`` with the spec's alphabet (as the dataset builders:
        ``alphabet.find(c) + 1``, cut to ``L``, padded with 0), and per-row errors for texts with
        characters outside the alphabet. ``None`` rows give zeros."""
        from dymo.data.mst import encode_text

        if all(t is None for t in texts):
            return torch.zeros((len(texts), spec.shape[0]), dtype=torch.long), {}
        alphabet = self.alphabet(spec)
        known = set(alphabet)
        errors: dict[int, str] = {}
        clean: list[str] = []
        for r, t in enumerate(texts):
            if t is None:
                clean.append("")
                continue
            if not isinstance(t, str):
                raise DataError(f"sample {r}: text modality {spec.name!r} holds a {type(t).__name__}, expected a string")
            unknown = sorted({ch for ch in t[: spec.shape[0]] if ch not in known})
            if unknown:
                errors[r] = f"text modality {spec.name!r}: character(s) {''.join(unknown)!r} are outside the model's alphabet"
            clean.append(t)
        return torch.from_numpy(encode_text(clean, spec.shape[0], alphabet)), errors

    def prepare(self, x, spec, observed, *, preprocessed=False, holes_ok=False):
        if isinstance(x, (list, tuple)):
            if len(x) != len(observed):
                raise DataError(f"modality {spec.name!r}: {len(x)} texts for a batch of {len(observed)}")
            texts = [t if bool(o) else None for t, o in zip(x, observed.tolist(), strict=True)]
            missing = [i for i, t in enumerate(texts) if observed[i] and t is None]
            if missing:
                raise DataError(f"sample {missing[0]}: observed text modality {spec.name!r} is None")
            x, errors = self.encode(texts, spec)
            if errors:
                i = min(errors)
                raise DataError(f"sample {i}: {errors[i]}")
        x = self._tensor(x, spec)
        if x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
            raise DataError(f"text modality {spec.name!r} needs integer token ids, got {x.dtype}")
        x = x.long()
        self._check_shape(x, spec, len(observed))
        if observed.any() and spec.vocab_size:
            vals = x[observed]
            bad = ((vals < 0) | (vals >= spec.vocab_size)).any(dim=1)
            if bad.any():
                i = self._first(bad, observed)
                v = x[i][(x[i] < 0) | (x[i] >= spec.vocab_size)][0]
                raise DataError(f"sample {i}: text modality {spec.name!r} holds token id {int(v)}, outside [0, {spec.vocab_size})")
        return x, torch.zeros(len(observed), dtype=torch.bool)

    def expects(self, spec):
        value = spec.extra.get("alphabet")
        out: dict[str, Any] = {
            "kind": "text",
            "csv": f"{spec.name}.csv: header id,text, one row per sample",
            "array": f"int token ids (B, {spec.shape[0]}) in [0, {spec.vocab_size}), or a list of strings",
            "length": spec.shape[0],
        }
        if isinstance(value, str) and value:
            out["alphabet"] = value if value in _named_alphabets() else f"custom ({len(value)} characters, in the spec)"
            out["values"] = f"characters of the alphabet; cut to {spec.shape[0]}, padded with id 0"
        else:
            out["values"] = "token ids only (the spec stores no alphabet)"
        return out


IMAGE = ImageKind()
VECTOR = VectorKind()
TEXT = TextKind()
KINDS: dict[str, ModalityKind] = {k.name: k for k in (IMAGE, VECTOR, TEXT)}


def kind_of(spec: ModalitySpec) -> ModalityKind:
    try:
        return KINDS[spec.kind]
    except KeyError:
        raise DataError(f"modality {spec.name!r}: unknown kind {spec.kind!r}; expected one of {tuple(KINDS)}") from None


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
    expected = "id,text" if kind is TEXT else f"id + {width} feature names"
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
