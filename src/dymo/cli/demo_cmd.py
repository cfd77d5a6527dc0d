"""`dymo demo`: the end-to-end run a new user meets first (offline PolyMNIST, CPU budget)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from dymo.cli.common import console, friendly_errors

app = typer.Typer()  # `dymo demo`, added to the root by dymo.cli.main


@app.command("demo")
@friendly_errors
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), help="Where the demo's runs (recovery, backbone, bundle) go."),
    report: Path = typer.Option(Path("reports/demo"), help="Report folder."),
    data_root: Path = typer.Option(Path("data/demo"), help="Where the demo's PolyMNIST is built."),
    n_train: int = typer.Option(10000, help="Training tuples."),
    epochs: int = typer.Option(5, help="Backbone epochs."),
    missing: str = typer.Option("random:0.6", help="Test scenario."),
    seed: int = typer.Option(0),
) -> None:
    """Build PolyMNIST, train retrieval recovery + backbone, calibrate, compare discard / fuse-all / DyMo, write a report."""
    from dymo.cli.training_cmd import quiet_lightning
    from dymo.demo import DemoConfig, run_demo

    quiet_lightning()
    t0 = time.perf_counter()
    cfg = DemoConfig(n_train=n_train, epochs=epochs, missing=missing, seed=seed)
    report_path = run_demo(cfg, out, report, data_root, log=console.print)
    console.print(f"[bold green]done[/] in {time.perf_counter() - t0:.0f} s. Report: {report_path}")
