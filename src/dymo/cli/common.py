"""Helpers shared by CLI commands: turning DymoError into a clean message and exit code 2."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

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
            # One line, unwrapped (paths stay greppable); the message itself is not markup.
            console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper
