"""Modality kinds: what an ``image``, a ``vector`` and a ``text`` modality are, as objects.

One object per kind (:data:`IMAGE`, :data:`VECTOR`, :data:`TEXT`, each in its own module;
:func:`kind_of` maps a :class:`~dymo.data.specs.ModalitySpec` to its kind, :func:`register_kind`
adds one; the protocol is :class:`~dymo.data.kinds.base.ModalityKind`). Each kind knows

- its model dtype, its shape rule and how a sample lies in an input folder (``layout``:
  ``"files"`` = one file per sample in ``<modality>/``, ``"csv"`` = one row per sample in
  ``<modality>.csv``);
- how to read one sample from disk (:meth:`ImageKind.read_file`, :meth:`ModalityKind.parse_cells`);
- how to turn a user's array into the model's input (:meth:`ModalityKind.prepare`): dtype and
  shape check, value/range check, then the preprocessing the dataset applied before training,
  read from the spec (vector standardisation ``extra["mean"]`` / ``extra["std"]``, text
  alphabet ``extra["alphabet"]`` and length ``shape[0]``);
- what a bundle expects for the modality (:meth:`ModalityKind.expects`, written to
  ``bundle.json`` under ``"inputs"``);
- its recovery error, its low-fidelity degradation, its picture and its networks (see
  :mod:`dymo.data.kinds.base`).

:func:`prepare_batch` applies this to a whole :class:`~dymo.data.batch.MultimodalBatch`; it is the
one validator behind ``DyMoClassifier.predict`` and ``dymo predict``. The rules, one per row
with the test that pins it, are in ``docs/inputs.md``.

Raw vs model space: a batch read from a built dymo dataset holds the dataset's stored values,
already preprocessed (``batch.preprocessed`` is True); any other batch holds raw values, and
the spec's preprocessing is applied here. Images and token ids are the same in both spaces.
"""

from dymo.data.kinds.base import ModalityKind, get_kind, kind_of, register_kind, registered_kinds
from dymo.data.kinds.image import IMAGE, ImageKind, gaussian_blur
from dymo.data.kinds.inputs import (
    CSV_ENCODING,
    CsvTable,
    describe_inputs,
    prepare_batch,
    read_csv_table,
)
from dymo.data.kinds.text import TEXT, TextKind
from dymo.data.kinds.vector import EMPTY_CELLS, VECTOR, VectorKind

#: Every registered kind by name (the built-in ones; see :func:`registered_kinds` for all).
KINDS: dict[str, ModalityKind] = {k.name: k for k in (IMAGE, VECTOR, TEXT)}

__all__ = [
    "CSV_ENCODING",
    "EMPTY_CELLS",
    "IMAGE",
    "KINDS",
    "TEXT",
    "VECTOR",
    "CsvTable",
    "ImageKind",
    "ModalityKind",
    "TextKind",
    "VectorKind",
    "describe_inputs",
    "gaussian_blur",
    "get_kind",
    "kind_of",
    "prepare_batch",
    "read_csv_table",
    "register_kind",
    "registered_kinds",
]
