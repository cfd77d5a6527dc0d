"""A dataset from a folder of your own files: the layout ``dymo predict`` reads, plus labels.

::

    DIR/labels.csv           id,label[,split]   one row per sample; split = train | val | test
    DIR/<modality>/<id>.png  an image modality (.png/.jpg/.jpeg/.bmp), one file per sample
    DIR/<modality>.csv       a table modality: header ``id,<feature>,...``, one row per sample
    DIR/text.csv             a text modality: ``id,text`` (any CSV whose header is ``id,text``)

``dymo data build folder --source DIR --name NAME`` (or ``build_dataset("folder",
source=DIR, out_name=NAME)``) reads it into the usual dataset folder ``<data root>/NAME``:

- **modalities** are the sub-folders (images) and CSV files (tables, text) beside ``labels.csv``,
  in name order; an image modality's size is the most common size of its files (others are
  resized) and it has 1 channel when every file is greyscale, else 3 (``--set image_height=H
  image_width=W channels=C`` overrides); a table's width is its header's; text is encoded per
  character with the alphabet of the training texts (stored in the spec);
- **missing modalities** are allowed in every split: a sample with no file, no row, or a row
  whose cells are all empty misses that modality (stored in ``<split>/observed.npy``). A row
  with *some* empty cells is observed and its empty cells get the training mean (0 after
  standardisation); the build log counts them. A sample that observes nothing is dropped (logged);
- **split**: the ``split`` column when ``labels.csv`` has one (without ``val`` rows, a stratified
  ``val_fraction`` of ``train`` becomes ``val``), else a seeded stratified split
  (``val_fraction``, ``test_fraction`` of each class);
- **preprocessing**: table columns are standardised with the mean and standard deviation of the
  *training split's* observed rows; both are stored in the spec (``extra["mean"]``,
  ``extra["std"]``), and ``dymo predict`` applies them to raw CSV rows;
- **classes** are the distinct label values, sorted (numerically when every label is a number).

The sample ids of each split are saved as ``<split>/ids.npy``.

Files are read with the same per-kind readers as ``dymo predict`` (:mod:`dymo.data.kinds`), so
a sample is preprocessed the same way at training and at prediction time.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dymo.config import Config
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.entry import BuildResult, DatasetEntry, Progress
from dymo.data.kinds import IMAGE, VECTOR, kind_of
from dymo.data.mst import encode_text
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BUILDER_VERSION = 1
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
LABELS_FILE = "labels.csv"
SPLITS = ("train", "val", "test")
MAX_TEXT_LENGTH = 1024


@dataclass
class FolderConfig(Config):
    """Options of the folder dataset (``--set key=value``)."""

    source: str = ""
    seed: int = 0
    val_fraction: float = 0.1  # used when labels.csv has no split column (or no val rows)
    test_fraction: float = 0.2  # used when labels.csv has no split column
    image_height: int = 0  # 0: the most common height of the files
    image_width: int = 0
    channels: int = 0  # 0: 1 if every file is greyscale, else 3
    text_length: int = 0  # 0: the longest text (at most 1024 characters)
    standardize: bool = True

    def validate(self) -> None:
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ConfigError("folder dataset: val_fraction and test_fraction must be in [0, 1) with a sum below 1")
        if self.channels not in (0, 1, 3):
            raise ConfigError(f"folder dataset: channels must be 1 or 3 (0 = infer), got {self.channels}")
        if min(self.image_height, self.image_width, self.text_length) < 0:
            raise ConfigError("folder dataset: image_height, image_width and text_length must be >= 0")


# -- files (samples themselves are read by dymo.data.kinds) ----------------------------------


def read_csv_rows(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Header and ``{id: cells after the id}`` of a CSV file; duplicate ids are an error."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file (expected a header row)")
            rows: dict[str, list[str]] = {}
            for line, row in enumerate(reader, start=2):
                if not row or not any(c.strip() for c in row):
                    continue
                sid = row[0].strip()
                if not sid:
                    raise DataError(f"{path}, line {line}: empty sample id")
                if sid in rows:
                    raise DataError(f"{path}, line {line}: sample id {sid!r} appears twice")
                rows[sid] = row[1:]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e})") from None
    return [h.strip() for h in header], rows


def image_size_and_mode(path: Path) -> tuple[int, int, str]:
    """``(height, width, PIL mode)`` of an image file, without decoding its pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0], im.mode
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None


# -- the build -----------------------------------------------------------------------------


@dataclass
class _Modality:
    name: str
    kind: str
    files: dict[str, Path] | None = None  # image: id -> file
    header: list[str] | None = None  # table / text
    rows: dict[str, list[str]] | None = None

    def ids(self) -> set[str]:
        return set(self.files or {}) | set(self.rows or {})


def _discover(root: Path) -> list[_Modality]:
    mods: list[_Modality] = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            files = {f.stem: f for f in sorted(p.iterdir()) if f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")}
            if not files:
                raise DataError(f"{p}: a modality folder with no image file ({', '.join(IMAGE_EXTS)})")
            dup = [s for s, n in Counter(f.stem for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS).items() if n > 1]
            if dup:
                raise DataError(f"{p}: sample id {dup[0]!r} has several image files")
            mods.append(_Modality(p.name, "image", files=files))
        elif p.suffix.lower() == ".csv" and p.name != LABELS_FILE:
            header, rows = read_csv_rows(p)
            is_text = p.stem == "text" or [h.lower() for h in header] == ["id", "text"]
            if is_text and len(header) != 2:
                raise DataError(f"{p}: a text modality needs the header id,text; got {header}")
            if len(header) < 2:
                raise DataError(f"{p}: header {header} has no feature column after the id column")
            mods.append(_Modality(p.stem, "text" if is_text else "vector", header=header, rows=rows))
    if not mods:
        raise DataError(
            f"{root}: no modality found; expected <modality>/<id>.png folders and/or <modality>.csv tables beside {LABELS_FILE}"
        )
    return mods


def _read_labels(root: Path) -> tuple[list[str], list[str], list[str] | None]:
    path = root / LABELS_FILE
    if not path.exists():
        raise DataError(f"{root}: no {LABELS_FILE} (columns id,label[,split])")
    header, rows = read_csv_rows(path)
    cols = [h.lower() for h in header]
    if cols[:2] != ["id", "label"] or len(cols) > 3 or (len(cols) == 3 and cols[2] != "split"):
        raise DataError(f"{path}: header {header}; expected id,label or id,label,split")
    if not rows:
        raise DataError(f"{path}: no sample rows")
    ids, labels, splits = [], [], []
    for sid, cells in rows.items():
        if len(cells) != len(cols) - 1:
            raise DataError(f"{path}, sample {sid!r}: {len(cells) + 1} cells, the header has {len(cols)}")
        label = cells[0].strip()
        if not label:
            raise DataError(f"{path}, sample {sid!r}: empty label")
        ids.append(sid)
        labels.append(label)
        if len(cols) == 3:
            split = cells[1].strip().lower()
            if split not in SPLITS:
                raise DataError(f"{path}, sample {sid!r}: split {cells[1]!r}; expected one of {', '.join(SPLITS)}")
            splits.append(split)
    return ids, labels, (splits if len(cols) == 3 else None)


def _class_names(labels: list[str]) -> list[str]:
    distinct = set(labels)
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


def _stratified(y: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of each part: per class, a seeded permutation cut by ``fractions`` (the last part takes the rest)."""
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        members = rng.permutation(np.nonzero(y == c)[0])
        cuts = np.round(np.cumsum(fractions[:-1]) * len(members)).astype(int)
        for k, chunk in enumerate(np.split(members, cuts)):
            parts[k].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _assign_splits(y: np.ndarray, given: list[str] | None, cfg: FolderConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    if given is None:
        train, val, test = _stratified(y, (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction), rng)
        out = {"train": train, "val": val, "test": test}
    else:
        split = np.asarray(given)
        out = {s: np.nonzero(split == s)[0] for s in SPLITS}
        if len(out["val"]) == 0 and cfg.val_fraction > 0:
            tr = out["train"]
            keep, val = _stratified(y[tr], (1 - cfg.val_fraction, cfg.val_fraction), rng)
            out["train"], out["val"] = tr[keep], tr[val]
            log.info("folder dataset: no val rows in the split column; %d training samples became val", len(val))
    if len(out["train"]) == 0:
        raise DataError("folder dataset: the training split is empty")
    return {k: v for k, v in out.items() if len(v)}


def _image_shape(mod: _Modality, cfg: FolderConfig) -> tuple[int, int, int]:
    assert mod.files is not None
    sizes: Counter[tuple[int, int]] = Counter()
    grey = True
    for path in mod.files.values():
        h, w, mode = image_size_and_mode(path)
        sizes[(h, w)] += 1
        grey = grey and mode in ("1", "L", "LA", "I", "I;16", "F")
    (h, w), n = sizes.most_common(1)[0]
    if len(sizes) > 1 and not (cfg.image_height and cfg.image_width):
        log.info("folder dataset: %s: %d of %d images are not %dx%d and are resized", mod.name, len(mod.files) - n, len(mod.files), h, w)
    c = cfg.channels or (1 if grey else 3)
    return c, cfg.image_height or h, cfg.image_width or w


def read_folder(config: FolderConfig | None = None, progress: Progress | None = None, **options: Any) -> BuildResult:
    """Read a folder dataset (see the module doc); ``progress(done, total)`` counts modalities."""
    cfg = config or FolderConfig()
    if options:
        cfg = cfg.replace(**options)
    if not cfg.source:
        raise ConfigError("the folder dataset needs source=DIR (`dymo data build folder --source DIR --name NAME`)")
    root = Path(cfg.source).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    ids, labels, given = _read_labels(root)
    mods = _discover(root)
    class_names = _class_names(labels)
    index = {c: k for k, c in enumerate(class_names)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    n, m = len(ids), len(mods)
    known = set(ids)
    for mod in mods:
        unlabeled = mod.ids() - known
        if unlabeled:
            log.warning(
                "folder dataset: %s: %d sample(s) have no row in %s and are ignored (e.g. %r)",
                mod.name, len(unlabeled), LABELS_FILE, sorted(unlabeled)[0],
            )
    splits = _assign_splits(y, given, cfg)
    train_rows = np.zeros(n, dtype=bool)
    train_rows[splits["train"]] = True

    observed = np.zeros((n, m), dtype=bool)
    arrays: dict[str, np.ndarray] = {}
    specs: list[ModalitySpec] = []
    for j, mod in enumerate(mods):
        arr, spec = _COLUMN_READERS[mod.kind](mod, ids, observed[:, j], train_rows, root, cfg)
        specs.append(spec)
        arr[~observed[:, j]] = 0
        arrays[mod.name] = arr
        if progress is not None:
            progress(j + 1, m)

    empty = ~observed.any(axis=1)
    if empty.any():
        log.warning(
            "folder dataset: %d sample(s) observe no modality and are dropped (e.g. %r)",
            int(empty.sum()), ids[int(np.nonzero(empty)[0][0])],
        )
    built: dict[str, MultimodalDataset] = {}
    extras: dict[str, np.ndarray] = {}
    name = root.name
    for split, rows in splits.items():
        rows = rows[~empty[rows]]
        if len(rows) == 0:
            continue
        built[split] = MultimodalDataset(
            specs, {k: v[rows] for k, v in arrays.items()}, y[rows], class_names, observed[rows], name=f"{name}/{split}"
        )
        extras[f"{split}/ids.npy"] = np.array([ids[i] for i in rows])
    if "train" not in built:
        raise DataError(f"{root}: no training sample observes any modality")
    for split, ds in built.items():
        missing = 1 - ds.observed.mean(0)
        log.info("folder dataset: %s: %d samples; missing per modality: %s", split, len(ds),
                 ", ".join(f"{s.name} {v:.0%}" for s, v in zip(specs, missing, strict=True)))
    return BuildResult(SplitDataset(name, specs, class_names, built), extras)


# -- one modality's column, per kind (the layout says the kind: a folder of images, an id,text
# CSV, or a table) --------------------------------------------------------------------------


def _image_column(
    mod: _Modality, ids: list[str], observed: np.ndarray, train_rows: np.ndarray, root: Path, cfg: FolderConfig
) -> tuple[np.ndarray, ModalitySpec]:
    c, h, w = _image_shape(mod, cfg)
    arr = np.zeros((len(ids), h, w, c), dtype=np.uint8)
    assert mod.files is not None
    spec = ModalitySpec(mod.name, "image", (c, h, w))
    for i, sid in enumerate(ids):
        path = mod.files.get(sid)
        if path is not None:
            x = IMAGE.read_file(path, spec)  # float32 (C, H, W) in [0, 1], as dymo predict reads it
            arr[i] = np.rint(np.moveaxis(x, 0, -1) * 255.0).astype(np.uint8)
            observed[i] = True
    return arr, spec


def _vector_column(
    mod: _Modality, ids: list[str], observed: np.ndarray, train_rows: np.ndarray, root: Path, cfg: FolderConfig
) -> tuple[np.ndarray, ModalitySpec]:
    assert mod.header is not None and mod.rows is not None
    width = len(mod.header) - 1
    raw_spec = ModalitySpec(mod.name, "vector", (width,), extra={"columns": mod.header[1:]})
    table = np.full((len(ids), width), np.nan)
    for i, sid in enumerate(ids):
        cells = mod.rows.get(sid)
        if cells is not None:
            try:
                row = VECTOR.parse_cells(cells, raw_spec)
            except DataError as e:
                raise DataError(f"{root / (mod.name + '.csv')}, sample {sid!r}: {e}") from None
            if row is not None:
                table[i] = row
    observed[:] = ~np.isnan(table).all(axis=1)
    arr, extra = _standardize(mod.name, table, observed & train_rows, observed, cfg)
    return arr, ModalitySpec(mod.name, "vector", (width,), extra={"columns": mod.header[1:], **extra})


def _text_column(
    mod: _Modality, ids: list[str], observed: np.ndarray, train_rows: np.ndarray, root: Path, cfg: FolderConfig
) -> tuple[np.ndarray, ModalitySpec]:
    assert mod.rows is not None
    texts = [(mod.rows.get(sid) or [""])[0] for sid in ids]
    observed[:] = np.array([bool(t) for t in texts])
    return _encode_text(mod.name, texts, observed & train_rows, cfg)


_COLUMN_READERS = {"image": _image_column, "vector": _vector_column, "text": _text_column}


def _standardize(
    name: str, table: np.ndarray, fit_rows: np.ndarray, observed: np.ndarray, cfg: FolderConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Standardise with statistics of ``fit_rows`` (the training split's observed rows); fill the
    empty cells of observed rows with the training mean (0 after standardisation)."""
    if not fit_rows.any():
        raise DataError(f"folder dataset: no training sample observes table {name!r}; cannot fit its standardisation")
    fit = table[fit_rows]
    with np.errstate(all="ignore"):
        mean = np.nanmean(fit, axis=0)
        std = np.nanstd(fit, axis=0)
    never = np.isnan(mean)
    if never.any():
        raise DataError(
            f"folder dataset: table {name!r}: column {int(np.nonzero(never)[0][0]) + 2} is empty in every training row"
        )
    std = np.where(std > 1e-12, std, 1.0)
    holes = np.isnan(table) & observed[:, None]
    if holes.any():
        log.info("folder dataset: table %s: %d empty cell(s) in observed rows filled with the training mean", name, int(holes.sum()))
    if cfg.standardize:
        out = (table - mean) / std
        out[holes] = 0.0
        extra = {"mean": mean.tolist(), "std": std.tolist()}
    else:
        out = np.where(holes, mean[None, :], table)
        extra = {}
    out[~observed] = 0.0
    return out.astype(np.float32), extra


def _encode_text(name: str, texts: list[str], fit_rows: np.ndarray, cfg: FolderConfig) -> tuple[np.ndarray, ModalitySpec]:
    alphabet = "".join(sorted({ch for t, use in zip(texts, fit_rows, strict=True) if use for ch in t}))
    if not alphabet:
        raise DataError(f"folder dataset: no training sample has text in {name!r}")
    length = cfg.text_length or min(MAX_TEXT_LENGTH, max(len(t) for t in texts))
    arr = encode_text(texts, length, alphabet).astype(np.int64)  # id = position + 1; 0 = padding / unknown
    return arr, ModalitySpec(name, "text", (length,), vocab_size=len(alphabet) + 1, extra={"alphabet": alphabet})


def write_folder(
    dataset: SplitDataset | MultimodalDataset,
    out: str | Path,
    *,
    splits: tuple[str, ...] = SPLITS,
    labels: bool = True,
    observed: dict[str, np.ndarray] | None = None,
    id_prefix: str = "",
) -> Path:
    """Write ``dataset`` in the folder layout (the inverse of :func:`read_folder`).

    ``observed`` (``{split: bool [N, M]}``, default the dataset's own mask) decides which files
    and rows are written: an unobserved image has no file, an unobserved table row is absent.
    Images become PNGs (float images in [0, 1] are scaled to 0..255), tables CSVs with a header,
    text ``<modality>.csv`` with ``id,text``. With ``labels``, ``labels.csv`` holds
    ``id,label,split``; without, the folder is a ``dymo predict`` input. A
    :class:`MultimodalDataset` is written as one split named ``test``.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    parts = {"test": dataset} if isinstance(dataset, MultimodalDataset) else {s: dataset[s] for s in splits if s in dataset.splits}
    first = next(iter(parts.values()))
    specs, class_names = first.specs, first.class_names
    kinds = [kind_of(s) for s in specs]
    tables: dict[str, list[list[str]]] = {s.name: [] for s, k in zip(specs, kinds, strict=True) if k.layout == "csv"}
    label_rows = []
    for split, ds in parts.items():
        mask = ds.observed if observed is None or split not in observed else np.asarray(observed[split], dtype=bool)
        ids = [f"{id_prefix}{split}{i:06d}" for i in range(len(ds))]
        for j, (spec, kind) in enumerate(zip(specs, kinds, strict=True)):
            rows = np.nonzero(mask[:, j])[0]
            arr = ds.arrays[spec.name]
            if kind.layout == "files":
                folder = root / spec.name
                folder.mkdir(exist_ok=True)
                for i in rows:
                    kind.write_file(arr[i], spec, folder / f"{ids[i]}.png")
            else:
                tables[spec.name].extend([ids[i], *kind.to_cells(arr[i], spec)] for i in rows)
        label_rows.extend([ids[i], class_names[int(ds.labels[i])], split] for i in range(len(ds)))
    for spec, kind in zip(specs, kinds, strict=True):
        if kind.layout == "csv":
            _write_csv(root / f"{spec.name}.csv", ["id", *kind.csv_columns(spec)], tables[spec.name])
    if labels:
        _write_csv(root / LABELS_FILE, ["id", "label", "split"], label_rows)
    return root


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    from dymo.utils.io import atomic_replace_from

    def write(tmp: Any) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    atomic_replace_from(write, path)


def _build_entry(cfg: FolderConfig, progress: Progress | None) -> BuildResult:
    return read_folder(cfg, progress)


DATASETS = (
    DatasetEntry(
        "folder",
        "your own files: <modality>/<id>.png images, <modality>.csv tables, text.csv, labels.csv (needs --source DIR)",
        FolderConfig,
        {},
        BUILDER_VERSION,
        _build_entry,
        external=True,
    ),
)
