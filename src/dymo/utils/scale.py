"""Run inference-time work over many processes / machines with Lightning (``Trainer.predict``).

The work is cut into numbered *chunks* with fixed boundaries (a chunk = one batch of samples).
``Trainer.predict`` hands the chunk numbers to the processes (Lightning injects a distributed
sampler that does not repeat items), each process computes its chunks and writes each result
atomically to ``parts_dir/chunk-<i>``, and after a barrier the first process reads the parts in
chunk order and assembles the output. A chunk is computed the same way whichever process runs
it, so the output is identical to one process (given the same number of threads per process:
set ``OMP_NUM_THREADS``; Lightning otherwise divides the cores among the processes). Memory is
bounded by one chunk per process plus what the caller streams.

With ``strategy="ddp"`` Lightning starts the other processes by re-running the current command
(``python -m dymo.cli.main ...`` or the ``dymo`` script); ``parts_dir`` must be on a file system
every process sees (for ``num_nodes > 1``, a shared one).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from dymo.errors import ConfigError, DataError
from dymo.utils.io import atomic_write


@dataclass
class ScaleOptions:
    """Where the work runs (Lightning Trainer arguments)."""

    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    progress: bool = True

    def validate(self) -> None:
        if self.num_nodes < 1:
            raise ConfigError(f"--num-nodes must be >= 1, got {self.num_nodes}")
        if isinstance(self.devices, int) and self.devices < 1:
            raise ConfigError(f"--devices must be >= 1 (or 'auto'), got {self.devices}")


def parse_devices(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text.strip()


def torch_device(text: str, option: str = "--device") -> torch.device:
    """``text`` (``cpu``, ``cuda``, ``cuda:1``, ...) as a device this machine has; a
    :class:`ConfigError` naming ``option`` otherwise."""
    try:
        dev = torch.device(text)
    except RuntimeError as e:
        raise ConfigError(f"{option} {text!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} {text!r}: no CUDA device is available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{option} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ConfigError(f"{option} {text!r}: expected cpu or cuda[:N]")
    return dev


def lightning_target(dev: torch.device) -> tuple[str, int | list[int]]:
    """Lightning's ``(accelerator, devices)`` for one torch device."""
    if dev.type == "cuda":
        return "gpu", [dev.index or 0]
    return "cpu", 1


class _Chunks(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _part(parts_dir: Path, i: int) -> Path:
    return parts_dir / f"chunk-{i:08d}"


def _make_module(
    process: Callable[[int, torch.device], bytes], parts_dir: Path, model: torch.nn.Module | None, num_chunks: int
) -> Any:
    import lightning as L

    class ChunkModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # registered, so Lightning moves it to the process's device

        def predict_step(self, batch: Any, batch_idx: int) -> None:
            i = int(batch)
            if i >= num_chunks:  # padding, so that every process has an item
                return
            data = process(i, self.device)
            with atomic_write(_part(parts_dir, i), "wb") as f:
                f.write(data)

    return ChunkModule()


def run_chunks(
    num_chunks: int,
    process: Callable[[int, torch.device], bytes],
    parts_dir: str | os.PathLike,
    options: ScaleOptions,
    model: torch.nn.Module | None = None,
    target: str | os.PathLike | None = None,
) -> Iterator[bytes] | None:
    """Compute ``process(i, device)`` for every chunk ``i`` over the processes of ``options``.

    Returns, in the first process only, an iterator over the chunk results in order (each read
    from disk when reached; the parts folder is removed once it is exhausted); ``None`` in the
    other processes, which should then simply return. ``target``: the file the parts are for;
    a failure to write a part (full or read-only disk) is reported for it, and the parts folder
    is removed.
    """
    import lightning as L

    options.validate()
    parts_dir = Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*predict returned None.*")
    trainer = L.Trainer(
        accelerator=options.accelerator, devices=options.devices, strategy=options.strategy,
        num_nodes=options.num_nodes, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=options.progress,
    )
    # at least one item per process (a process without any fails in Lightning's predict loop)
    loader = DataLoader(_Chunks(max(num_chunks, trainer.world_size)), batch_size=None, shuffle=False)
    module = _make_module(process, parts_dir, model, num_chunks)
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    except OSError as e:
        shutil.rmtree(parts_dir, ignore_errors=True)
        if target is None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(target)) from None
    except BaseException:
        shutil.rmtree(parts_dir, ignore_errors=True)
        raise
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    missing = [i for i in range(num_chunks) if not _part(parts_dir, i).exists()]
    if missing:
        raise DataError(f"{parts_dir}: results of chunk(s) {missing[:5]} are missing; did a process fail?")

    def read() -> Iterator[bytes]:
        for i in range(num_chunks):
            yield _part(parts_dir, i).read_bytes()
        shutil.rmtree(parts_dir, ignore_errors=True)

    return read()

