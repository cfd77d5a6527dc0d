"""One artefact format and one safe-output policy.

Every artefact dymo writes is recognisable by its manifest, a JSON file at a fixed place:

=================  ==============================================================
kind               recognised by
=================  ==============================================================
``backbone-run``   ``config.json`` with ``"kind": "backbone"``
``recoverer``      ``config.json`` with ``format``, ``kind``, ``config``, ``specs``
``baseline``       ``config.json`` with a ``recoverer`` entry (baselines)
``classifier``     ``config.json`` with ``"kind": "unimodal-classifier"``
``bundle``         ``bundle.json``
``dataset``        ``meta.json`` (or, for an interrupted build, only split folders of ``.npy``)
``benchmark``      ``benchmark.json`` or ``cells/``
``calibration``    a safetensors file whose metadata says ``kind: dymo-calibration``
``predictions``    a ``.csv`` whose header is dymo's, or a ``.json`` list of prediction records
``metrics``        a ``.json`` written by ``dymo evaluate --out`` (``{method: {"accuracy": ...}}``)
``grid``           a ``.png`` carrying ``Software: dymo`` in its metadata
=================  ==============================================================

Manifests also record what the artefact was made from (:func:`made_from`): the sha256 of the
weights it used and the fingerprint of its data, so that a stale calibration, a resumed run on
other data or a benchmark cell computed with other models is noticed.

The output policy (:func:`check_output`): dymo writes only into a path that does not exist, an
empty folder, or a path holding a dymo artefact of the same kind; replacing an existing artefact
needs ``force`` (``--force``), and nothing replaces a foreign file or folder, another kind of
artefact, the current folder or one of the command's own inputs. Folders are built beside their
target and renamed into place (:func:`staged_dir`), so a failed command leaves no partial output.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dymo.errors import BundleError, OutputError
from dymo.utils.io import default_dir_mode, read_json, read_json_object, write_json

ARTIFACT_FORMAT = 1
PREDICTIONS_HEADER = "sample,status,predicted_class"
LOCK_FILE = ".dymo.lock"

#: The manifest file of each folder kind.
MARKERS = {"bundle": "bundle.json", "dataset": "meta.json", "benchmark": "benchmark.json"}


# -- hashes ------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """A stable hash of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def array_fingerprint(array: Any) -> str:
    """A fast fingerprint of an array: shape, dtype and up to 1024 evenly spaced rows (blake2b).
    A sample, not a full hash, so that opening a large memory-mapped dataset stays fast."""
    import numpy as np

    n = len(array)
    rows = np.unique(np.linspace(0, n - 1, num=min(n, 1024)).round().astype(np.int64))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{array.shape}|{np.dtype(array.dtype).str}".encode())
    h.update(np.ascontiguousarray(np.asarray(array[rows])).tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """The fingerprint of a :class:`~dymo.data.dataset.MultimodalDataset`: its arrays and labels."""
    parts = {name: array_fingerprint(arr) for name, arr in sorted(dataset.arrays.items())}
    parts["__labels__"] = array_fingerprint(dataset.labels)
    return sha256_json(parts)


def file_hashes(folder: str | os.PathLike, skip: Iterable[str] = ()) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every regular file under ``folder``; hidden files
    (temporaries, the lock) and the names in ``skip`` are left out."""
    root = Path(folder)
    skip = set(skip)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if name.startswith(".") or rel in skip:
                continue
            out[rel] = sha256_file(Path(dirpath) / name)
    return out


def verify_files(folder: str | os.PathLike, expected: Mapping[str, str], skip: Iterable[str] = ()) -> None:
    """Raise :class:`BundleError` naming the first file that is missing, changed or unexpected."""
    root = Path(folder)
    if not isinstance(expected, Mapping):
        raise BundleError(f"{root}: the manifest's file list is malformed")
    for rel, digest in sorted(expected.items()):
        p = root / rel
        if not p.is_file():
            raise BundleError(f"{p}: file missing (listed in the manifest)")
        if sha256_file(p) != digest:
            raise BundleError(
                f"{p}: truncated or corrupt: its sha256 differs from the manifest (changed or damaged after it was "
                "written); rebuild the bundle (or pass --no-verify to load it anyway)"
            )
    found = file_hashes(root, skip=skip)
    extra = sorted(set(found) - set(expected))
    if extra:
        raise BundleError(f"{root / extra[0]}: file not listed in the manifest; it was added after the bundle was written")


def made_from(**parts: Any) -> dict[str, Any]:
    """The ``made_from`` record of a manifest, e.g. ``made_from(backbone_sha256=..., data=...)``."""
    return {k: v for k, v in parts.items() if v is not None}


# -- the component manifest: one format, one version policy, one corrupt-file message ------------


def component_manifest(artifact: str, kind: str, **fields: Any) -> dict[str, Any]:
    """The ``config.json`` (or ``bundle.json``) of a component: ``format``, ``artifact`` (the
    family: backbone-run, recoverer, baseline, classifier, bundle), ``kind`` (e.g. the recoverer
    name), ``dymo_version``, then ``fields`` (config, specs, class_names, made_from, ...)."""
    import dymo

    return {"format": ARTIFACT_FORMAT, "artifact": artifact, "kind": kind, "dymo_version": dymo.__version__, **fields}


def write_manifest(folder: Path, artifact: str, kind: str, component: Any, **fields: Any) -> None:
    """Write ``folder/config.json`` for ``component``: its ``config``, ``specs``, ``class_names``
    and (when it records one) ``made_from``, then ``fields``."""
    base: dict[str, Any] = {
        "config": component.config.to_dict(),
        "specs": [s.to_dict() for s in component.specs],
        "class_names": list(component.class_names),
    }
    if hasattr(component, "made_from"):
        base["made_from"] = component.made_from
    write_json(folder / "config.json", component_manifest(artifact, kind, **base, **fields))


def read_manifest(
    folder: str | os.PathLike,
    artifact: str,
    *,
    file: str = "config.json",
    required: Mapping[str, type] | Iterable[str] = (),
    what: str | None = None,
) -> dict[str, Any]:
    """Read and check a component's manifest, the same way for every artefact: present, valid
    JSON, an object, a format this dymo reads, written by this dymo version (when recorded), of
    the expected family, with the ``required`` keys (and types). BundleError naming the file."""
    import dymo

    folder = Path(folder)
    what = what or artifact
    path = folder / file
    meta = read_json_object(path, BundleError, f"{folder}: no {file}; not a saved {what} (or its save did not finish)", f"a saved {what}")
    fmt = meta.get("format", ARTIFACT_FORMAT)  # the first backbone runs recorded none
    if fmt != ARTIFACT_FORMAT:
        raise BundleError(f"{path}: {what} format {fmt!r}, this dymo reads {ARTIFACT_FORMAT}")
    family = meta.get("artifact", artifact)
    if family != artifact:
        raise BundleError(f"{path}: holds a dymo {family}, not {_article(artifact)} {artifact}")
    version = meta.get("dymo_version")
    if version is not None and version != dymo.__version__:
        raise BundleError(
            f"{folder}: {what} written by dymo {version!r}; this is dymo {dymo.__version__}. Install that version or rebuild it."
        )
    types = required if isinstance(required, Mapping) else {k: object for k in required}
    for key, typ in types.items():
        if key not in meta or not isinstance(meta[key], typ):
            kind = "" if typ is object else f" or not a JSON {'list' if typ is list else 'object' if typ is dict else 'string'}"
            raise BundleError(f"{path}: key {key!r} missing{kind}; not a saved {what}")
    return meta


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """A component's safetensors weights; BundleError naming the file when missing or damaged."""
    from dymo.utils.io import load_tensors

    try:
        return load_tensors(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: file missing") from None
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise BundleError(f"{path}: truncated or corrupt weights ({e})") from None


# -- recognising artefacts -----------------------------------------------------------------------


def _json_or_none(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _identify_dir(path: Path) -> str | None:
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        return ""
    names = {p.name for p in entries}
    for kind, marker in MARKERS.items():
        if marker in names:
            return kind
    if names == {"mopoe_checkpoint.safetensors"}:
        return "recoverer"  # a MoPoE fit interrupted before its first save (resumable)
    if "cells" in names and (path / "cells").is_dir():
        return "benchmark"
    if "config.json" in names:
        cfg = _json_or_none(path / "config.json")
        if isinstance(cfg, dict):
            if isinstance(cfg.get("artifact"), str):
                return cfg["artifact"]
            if cfg.get("kind") == "backbone":
                return "backbone-run"
            if cfg.get("kind") == "unimodal-classifier":
                return "classifier"
            if "recoverer" in cfg and "kind" in cfg:
                return "baseline"
            if {"format", "kind", "config", "specs"} <= set(cfg):
                return "recoverer"
        return None
    if names <= {"train", "val", "test"} and all(p.is_dir() for p in entries) and all(
        all(f.suffix == ".npy" or f.name.startswith(".") for f in p.iterdir() if f.is_file()) for p in entries
    ):
        if any(f.suffix == ".npy" for p in entries for f in p.iterdir()):
            return "dataset"  # a build interrupted before its meta.json
    return None


def _identify_file(path: Path) -> str | None:
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            return "calibration" if meta.get("kind") == "dymo-calibration" else None
        if suffix == ".csv":
            with open(path, encoding="utf-8", errors="replace") as f:
                first = f.readline()
            return "predictions" if first.startswith(PREDICTIONS_HEADER) else None
        if suffix == ".json":
            obj = _json_or_none(path)
            if isinstance(obj, list) and all(isinstance(r, dict) and {"sample", "status"} <= set(r) for r in obj):
                return "predictions"
            if isinstance(obj, dict) and obj and all(isinstance(v, dict) and "accuracy" in v for v in obj.values()):
                return "metrics"  # {method: metrics} from `dymo evaluate --out`
            if isinstance(obj, dict) and obj.get("format") == ARTIFACT_FORMAT and isinstance(obj.get("kind"), str):
                return obj["kind"]
            return None
        if suffix == ".png":
            with open(path, "rb") as f:
                head = f.read(4096)
            return "grid" if b"Software\x00dymo" in head else None
    except Exception:  # an unreadable file is not ours
        return None
    return None


def identify(path: str | os.PathLike) -> str | None:
    """The kind of dymo artefact at ``path``: ``""`` when nothing is there (or an empty folder),
    ``None`` for anything dymo did not write."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return ""
    if p.is_dir():
        return _identify_dir(p)
    if p.is_file():
        return _identify_file(p)
    return None


def _article(kind: str) -> str:
    return "an" if kind[:1] in "aeiou" else "a"


def _describe(found: str | None) -> str:
    return "files dymo did not write" if found is None else f"{_article(found)} dymo {found}"


def check_output(
    path: str | os.PathLike,
    kind: str,
    *,
    force: bool = False,
    replace: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    option: str = "--out",
) -> bool:
    """Refuse to write ``path`` unless it is new, an empty folder, or (with ``force``, or
    ``replace`` for in-place updates) a dymo artefact of the same ``kind``; never the current
    folder or one of ``inputs``. Returns whether something is there to be replaced."""
    p = Path(path)
    target = p.resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise OutputError(f"{option} {path}: is the current folder (or holds it); dymo never replaces it, name a new folder")
    for item in inputs:
        src = Path(item).resolve()
        if target == src or src in target.parents or target in src.parents:
            raise OutputError(
                f"{option} {path}: overlaps the input {item}; writing there would destroy it, choose another {option}"
            )
    found = identify(p)
    if found == "":
        return False
    if found == kind:
        if force or replace:
            return True
        raise OutputError(f"{option} {path}: holds {_describe(found)} already; pass --force to replace it, or choose another {option}")
    hint = "" if found is None else " (--force replaces only an artefact of the same kind)"
    raise OutputError(
        f"{option} {path}: holds {_describe(found)}, not {_article(kind)} {kind}; dymo will not replace it{hint}. "
        f"Choose another {option}"
    )


# -- writing folders -----------------------------------------------------------------------------


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``). False
    where the system or the file system cannot (then nothing was changed); other errors raise."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(os.fspath(a)), _AT_FDCWD, os.fsencode(os.fspath(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``path``; on success rename it onto ``path``.

    Over an existing folder (checked with :func:`check_output` first) the two are swapped in one
    atomic step where the system can (Linux ``renameat2`` with ``RENAME_EXCHANGE``), and the old
    one, now under the hidden temporary name, is removed: ``path`` never disappears. Elsewhere the
    old one is renamed to ``.NAME.old`` and removed after the new one is in place; a process
    killed between those two renames leaves the old folder under ``.NAME.old``, which the bundle
    reader falls back to. On failure the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:  # name the folder the user asked for, not the hidden temporary
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    os.chmod(tmp, default_dir_mode())  # mkdtemp makes it 0o700
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink() and exchange_paths(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # the old folder, swapped out
        elif path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if path.is_dir():
                os.replace(path, old)
            else:
                path.unlink()
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "training") -> Iterator[None]:
    """Hold ``folder/.dymo.lock`` (an OS file lock: released if the process dies) while writing.
    A second writer fails at once with an :class:`OutputError`."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputError(
            f"{folder}: another dymo {what} is writing this folder right now (lock {folder / LOCK_FILE}); "
            "wait for it to finish or choose another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()
