"""The ``dymo`` command line. Each concept registers its own commands in its own module."""

from __future__ import annotations

import typer

from dymo.cli.common import root_callback

app = typer.Typer(
    help="dymo: classification with incomplete multimodal data (DyMo, ICLR 2026).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.callback()(root_callback)  # --debug
train_app = typer.Typer(help="Train a backbone or a recovery model.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _register() -> None:
    # Imported for their side effect of adding commands to `app` / `train_app`.
    from dymo.cli import (  # noqa: F401
        benchmark_cmd,
        data_cmd,
        demo_cmd,
        recovery_cmd,
        selection_cmd,
        training_cmd,
    )


_register()

if __name__ == "__main__":
    # `python -m dymo.cli.main`: the command modules registered on dymo.cli.main's app, which is
    # not this __main__ module's.
    from dymo.cli.main import app as _app

    _app()
