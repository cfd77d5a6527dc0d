"""Helpers shared by CLI commands: turning DymoError into a clean message and exit code 2."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from dymo.errors import DymoError

console = Console(stderr=True)
log = logging.getLogger("dymo")


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a DymoError as one clear line (no traceback) and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DymoError as e:
            console.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(code=2) from None

    return wrapper
