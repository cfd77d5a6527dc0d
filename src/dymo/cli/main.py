"""The ``dymo`` command line, assembled from the sub-apps that each command module exports.

A command module defines its own ``typer.Typer`` objects (``app`` for top-level commands,
``train_app`` for ``dymo train ...``, ``data_app`` for ``dymo data ...``) and never imports this
module, so there is no import cycle and ``python -m dymo.cli.main`` sees every command.
"""

from __future__ import annotations

import sys

import typer
import typer.core

from dymo.cli import (
    benchmark_cmd,
    data_cmd,
    demo_cmd,
    fit_cmd,
    recovery_cmd,
    selection_cmd,
    training_cmd,
)
from dymo.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, print_error, root_callback


def build_app() -> typer.Typer:
    """The root app: top-level commands in help order, then the ``train`` and ``data`` groups."""
    root = typer.Typer(
        help="dymo: classification with incomplete multimodal data (DyMo, ICLR 2026).",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
    )
    root.callback()(root_callback)  # --debug, for every command
    for module in (benchmark_cmd, demo_cmd, fit_cmd, recovery_cmd, selection_cmd):
        root.add_typer(module.app)
    train = typer.Typer(help="Train a backbone or a recovery model.", no_args_is_help=True)
    train.add_typer(recovery_cmd.train_app)
    train.add_typer(training_cmd.train_app)
    root.add_typer(train, name="train")
    root.add_typer(data_cmd.data_app, name="data")
    return root


app = build_app()


def main(argv: list[str] | None = None) -> None:
    """The ``dymo`` console entry point.

    Runs ``app`` with Click's standalone handling off, so that Click's own usage errors (an
    unknown option, ``--epochs abc``, a missing argument) end like every other user error: one
    ``error: ...`` line naming the option, and exit code 2, instead of a usage box.
    """
    # The Click that typer runs on: vendored as typer._click by newer typer, the click package before.
    click = getattr(typer.core, "_click", None) or typer.core.click
    no_args_help = getattr(click.exceptions, "NoArgsIsHelpError", ())
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="dymo", standalone_mode=False)
    except no_args_help as e:  # `dymo` or `dymo train` alone: the help, as Click shows it
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.UsageError as e:
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        print_error(e.format_message() + where)
        sys.exit(EXIT_ERROR)
    except click.exceptions.ClickException as e:
        print_error(e.format_message())
        sys.exit(e.exit_code)
    except (typer.Abort, getattr(click.exceptions, "Abort", typer.Abort), KeyboardInterrupt):
        print_error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    # Without standalone mode Click returns the exit code of typer.Exit (the command's own
    # return value is always None here).
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
