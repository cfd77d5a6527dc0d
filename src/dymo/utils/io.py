"""Atomic writes, JSON configs and safetensors weights.

Every file dymo writes (checkpoints, bundles, reports, benchmark results) goes through
:func:`atomic_write`: write to a temporary file beside the target, fsync, then rename. A
killed writer leaves the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


@functools.cache
def _umask() -> int:
    """The process umask, read once: reading it means setting it, and flipping it on every write
    would race with files other threads create meanwhile."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 minus the umask). ``mkstemp`` creates its
    temporary files 0o600, which would otherwise carry over to every file we rename into place."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The mode ``mkdir()`` would give a new folder (0o777 minus the umask); see :func:`default_file_mode`."""
    return 0o777 & ~_umask()


def _named(e: OSError, path: Path) -> OSError:
    """The same OS error, naming the file the user asked for (not a hidden temporary, not an fd)."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def _mkstemp(path: Path) -> tuple[int, str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _named(e, path) from e


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    path = Path(path)
    with _temp_beside(path) as (fd, _tmp), os.fdopen(fd, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_replace_from(tmp_writer, path: str | os.PathLike) -> None:
    """Call ``tmp_writer(tmp_path)`` to write a file, then rename it onto ``path``."""
    path = Path(path)
    with _temp_beside(path) as (fd, tmp):
        os.close(fd)
        tmp_writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[tuple[int, str]]:
    """A temporary file beside ``path`` (its descriptor and name): renamed onto ``path`` (with the
    default file mode) when the block succeeds, removed when it fails; an ``OSError`` names ``path``."""
    fd, tmp = _mkstemp(path)
    try:
        yield fd, tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise _named(e, path) from e
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def read_json_object(path: Path, error: type[Exception], missing: str, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object. Raises ``error``: ``missing`` when the file is
    absent, and a message naming the file when it is corrupt or not an object (``not {what}``)."""
    if not path.exists():
        raise error(missing)
    try:
        meta = read_json(path)
    except ValueError as e:
        raise error(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(meta, dict):
        raise error(f"{path}: expected a JSON object, got {type(meta).__name__}; not {what}")
    return meta


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_replace_from`."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_replace_from(write, path)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except OSError:
            raise
        except Exception as e:  # safetensors reports a failed write as its own error type
            code = re.search(r"code: (\d+)", str(e))
            if code is None and "os error" not in str(e).lower() and "ioerror" not in str(e).lower():
                raise
            num = int(code.group(1)) if code else errno.EIO
            raise OSError(num, os.strerror(num), str(path)) from None

    atomic_replace_from(write, path)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))
