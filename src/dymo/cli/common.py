"""Helpers shared by CLI commands, above all the one error boundary :func:`friendly_errors`.

Every command is wrapped in :func:`friendly_errors`: whatever a user can cause (bad options, bad
or foreign files, a full or read-only disk, Ctrl-C) ends in ONE line ``error: ...`` on stderr
naming the file or option, and exit status 2 (130 for Ctrl-C, with the command that resumes).
No traceback unless ``dymo --debug ...`` (or ``DYMO_DEBUG=1``). The boundary is a decorator, so
it works however the commands are assembled into apps.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import shlex
from collections.abc import Callable
from typing import Any

import typer
import typer.models
from rich.console import Console
from rich.markup import escape

from dymo.errors import ConfigError, DymoError

console = Console(stderr=True)
log = logging.getLogger("dymo")

#: Set by ``dymo --debug``: errors propagate with their traceback.
DEBUG = {"on": False}

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def debug_enabled() -> bool:
    return DEBUG["on"] or os.environ.get("DYMO_DEBUG", "") not in ("", "0")


def root_callback(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (for bug reports)."),
) -> None:
    """dymo: classification with incomplete multimodal data (DyMo, ICLR 2026)."""
    DEBUG["on"] = debug


def print_error(message: str) -> None:
    # One line, unwrapped (paths stay greppable); the message itself is not markup.
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def describe_os_error(e: OSError) -> str:
    """``<file>: <what happened>; <what to do>`` for an OSError (disk full, read-only, ...)."""
    where = e.filename if e.filename is not None else None
    what = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.ENOSPC:
        hint = "the disk is full; free some space or write elsewhere, then run the command again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "the location is read-only or not yours; choose a writable --out"
    elif e.errno == errno.ENOENT:
        hint = "check the path"
    else:
        hint = "check the path and the disk"
    return f"{where}: {what}; {hint}" if where else f"{what}; {hint}"


_LIGHTNING_OPTIONS = ("accelerator", "devices", "strategy", "precision", "num_nodes")


def describe_lightning_error(e: Exception) -> str:
    """A Lightning configuration error, naming the option it is about."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    low = msg.lower()
    named = [o for o in _LIGHTNING_OPTIONS if o in low or o.replace("_", " ") in low]
    opts = ", ".join(f"--{o.replace('_', '-')}" for o in (named or _LIGHTNING_OPTIONS[:4]))
    return f"{opts}: {msg}"


def _is_lightning_config_error(e: Exception) -> bool:
    return type(e).__name__ == "MisconfigurationException"


#: Commands that an interrupted run resumes, by function name (the resume flag they need, if any).
RESUMABLE = {"train_backbone_cmd": ("dymo train backbone", "--resume"), "benchmark_cmd": ("dymo benchmark", "")}


def _resume_command(fn: Callable[..., Any], kwargs: dict[str, Any]) -> str | None:
    """The command line that resumes an interrupted command, rebuilt from its option values."""
    if fn.__name__ not in RESUMABLE:
        return None
    path, flag = RESUMABLE[fn.__name__]
    words = path.split()
    for name, param in inspect.signature(fn).parameters.items():
        info, value = param.default, kwargs.get(name)
        if name == "resume" or value is None or not isinstance(info, (typer.models.OptionInfo, typer.models.ArgumentInfo)):
            continue
        if value == info.default or value in ((), []):
            continue
        if isinstance(info, typer.models.ArgumentInfo):
            words.append(str(value))
            continue
        decls = [d for d in (info.param_decls or ()) if d.startswith("--")]
        opt = decls[0] if decls else "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(opt if value else "--no-" + opt[2:])
        elif isinstance(value, (list, tuple)):
            for v in value:
                words += [opt, str(v)]
        else:
            words += [opt, str(value)]
    if flag:
        words.append(flag)
    return " ".join(shlex.quote(w) for w in words)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The CLI's error boundary: one ``error:`` line and exit 2 for anything a user can cause."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            resume = _resume_command(fn, kwargs)
            print_error("interrupted" + (f"; resume with: {resume}" if resume else "; nothing half-written was left behind"))
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
        except Exception as e:  # noqa: BLE001 - the boundary: every error ends here
            if debug_enabled():
                raise
            if isinstance(e, DymoError):
                message = str(e)
            elif isinstance(e, typer.TyperException):  # BadParameter and the other usage errors
                fmt = getattr(e, "format_message", None)
                message = fmt() if callable(fmt) else str(e)
            elif isinstance(e, OSError):
                message = describe_os_error(e)
            elif _is_lightning_config_error(e):
                message = describe_lightning_error(e)
            elif isinstance(e, MemoryError):
                message = "out of memory; use a smaller --batch-size or fewer samples"
            else:
                message = (
                    f"unexpected {type(e).__name__}: {e} (this is a bug in dymo; "
                    "rerun with `dymo --debug ...` for the traceback and report it)"
                )
                print_error(message)
                raise typer.Exit(code=1) from None
            print_error(message)
            raise typer.Exit(code=EXIT_ERROR) from None

    wrapper.dymo_error_boundary = True  # type: ignore[attr-defined]  # checked over every command by the tests
    return wrapper


def check_positive(value: int | None, option: str) -> None:
    """ConfigError naming ``option`` unless ``value`` is None or >= 1."""
    if value is not None and value < 1:
        raise ConfigError(f"{option} must be >= 1, got {value}")


def check_unique(items: list[str], option: str) -> None:
    dup = sorted({x for x in items if items.count(x) > 1})
    if dup:
        raise ConfigError(f"{option}: {dup} given more than once")
