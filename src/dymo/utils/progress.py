"""The one look of dymo's progress bars (rich), shared by every loop that shows one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def progress_columns(description: str = "{task.description}", info: bool = False) -> tuple[Any, ...]:
    """Description, bar, done/total, elapsed, remaining (+ the task's ``info`` field)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return (*columns, TextColumn("{task.fields[info]}")) if info else columns


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Any]:
    """A rich ``Progress`` whose tasks carry an ``info`` field (``add_task(..., info="")``), or
    ``None`` when disabled."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress

    with Progress(*progress_columns("[bold]{task.description}", info=True)) as bar:
        yield bar
