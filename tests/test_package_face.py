"""The package's face: the main entry points import from ``dymo`` lazily, and the CLI is one app
assembled from its command modules (also when run as ``python -m dymo.cli.main``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dymo

ENTRY_POINTS = (
    "DyMoClassifier",
    "train_backbone",
    "load_backbone",
    "compute_calibration",
    "Calibration",
    "open_dataset",
    "select",
    "SelectionConfig",
    "get_recoverer",
    "get_baseline",
)


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_main_entry_points_are_the_defining_objects() -> None:
    from dymo.inference.classifier import DyMoClassifier
    from dymo.selection.selector import select

    assert dymo.DyMoClassifier is DyMoClassifier and dymo.select is select
    for name in ENTRY_POINTS:
        assert name in dymo.__all__ and name in dir(dymo)
        assert getattr(dymo, name).__name__ == name


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'DymoClassifier'"):
        dymo.DymoClassifier  # noqa: B018 - the look-up is the test


def test_import_dymo_defers_the_heavy_modules() -> None:
    """``import dymo`` loads only the batch contract; Lightning, sklearn, the CLI and the entry
    points' modules come on first use."""
    heavy = ("lightning", "sklearn", "dymo.cli.main", "dymo.training.run", "dymo.inference.classifier")
    loaded = _run(
        f"import sys, dymo; print([m for m in {heavy!r} if m in sys.modules]);"
        "dymo.DyMoClassifier; print('dymo.inference.classifier' in sys.modules)"
    ).split("\n")
    assert loaded[0] == "[]" and loaded[1] == "True"


def test_python_m_cli_lists_every_command() -> None:
    """Run as ``__main__`` the CLI must still see the commands of every module (no second app)."""
    out = subprocess.run(
        [sys.executable, "-m", "dymo.cli.main", "--help"], capture_output=True, text=True, timeout=120,
        env={"COLUMNS": "200", "PATH": "", "PYTHONPATH": ":".join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    for command in ("benchmark", "demo", "recovery-report", "calibrate", "evaluate", "predict", "bundle", "train", "data"):
        assert f" {command} " in out.stdout, out.stdout
