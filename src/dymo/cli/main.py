"""The ``dymo`` command line, assembled from the sub-apps that each command module exports.

A command module defines its own ``typer.Typer`` objects (``app`` for top-level commands,
``train_app`` for ``dymo train ...``, ``data_app`` for ``dymo data ...``) and never imports this
module, so there is no import cycle and ``python -m dymo.cli.main`` sees every command.
"""

from __future__ import annotations

import typer

from dymo.cli import (
    benchmark_cmd,
    data_cmd,
    demo_cmd,
    recovery_cmd,
    selection_cmd,
    training_cmd,
)


def build_app() -> typer.Typer:
    """The root app: top-level commands in help order, then the ``train`` and ``data`` groups."""
    root = typer.Typer(
        help="dymo: classification with incomplete multimodal data (DyMo, ICLR 2026).",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
    )
    for module in (benchmark_cmd, demo_cmd, recovery_cmd, selection_cmd):
        root.add_typer(module.app)
    train = typer.Typer(help="Train a backbone or a recovery model.", no_args_is_help=True)
    train.add_typer(recovery_cmd.train_app)
    train.add_typer(training_cmd.train_app)
    root.add_typer(train, name="train")
    root.add_typer(data_cmd.data_app, name="data")
    return root


app = build_app()

if __name__ == "__main__":
    app()
