"""CLI commands (placeholder, filled in by its concept)."""

from dymo.cli.main import app, train_app  # noqa: F401
