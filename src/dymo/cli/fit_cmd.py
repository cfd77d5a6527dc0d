"""``dymo fit``: from a built dataset to a model bundle in one command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from dymo.cli.common import friendly_errors

app = typer.Typer()  # `dymo fit`, added to the root by dymo.cli.main
console = Console(stderr=True)


def _recoverer_names() -> str:
    from dymo.recovery.registry import RECOVERERS

    return ", ".join(RECOVERERS)


@app.command("fit")
@friendly_errors
def fit_cmd(
    data: str = typer.Argument(..., help="Built dataset: a name in the data root (e.g. the --name of `dymo data build folder`) or a folder."),
    out: Path = typer.Option(..., help="Bundle folder to write (what `dymo predict` reads)."),
    recovery: str = typer.Option("retrieval", help=f"Recoverer: {_recoverer_names()}."),
    epochs: int | None = typer.Option(
        None, min=1, help="Maximum backbone training epochs (default: a budget that scales with the data, about 1,000 steps within 4..100 epochs; early stopping on validation ends sooner)."
    ),
    batch_size: int = typer.Option(256, min=1, help="Backbone training batch size."),
    recovery_set: list[str] = typer.Option([], "--recovery-set", help="A recoverer option key=value (repeatable), e.g. --recovery-set epochs=3."),
    backbone_set: list[str] = typer.Option([], "--backbone-set", help="A backbone option key=value (repeatable), e.g. --backbone-set dim=64."),
    method: str = typer.Option("dymo", help="Default selection method of the bundle."),
    run_dir: Path | None = typer.Option(None, help="Keep the backbone run (logs, checkpoints) here; default: a temporary folder."),
    seed: int = typer.Option(0, help="Training seed."),
    root: Path | None = typer.Option(None, help="Data root (default $DYMO_DATA or ./data)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle in --out (never anything else)."),
    tune: bool = typer.Option(True, "--tune/--no-tune", help="Tune DyMo's acceptance rule on the validation split (--no-tune: the paper's rule, reward > 0)."),
) -> None:
    """Train backbone + recoverer + calibration on DATA's train split (it may miss modalities) and
    write a bundle: `dymo data build folder ...`, then this, then `dymo predict BUNDLE INPUT`."""
    from dymo.data.registry import open_dataset, parse_set_options
    from dymo.inference.classifier import DyMoClassifier
    from dymo.models.backbone import BackboneConfig
    from dymo.selection.selector import SelectionConfig
    from dymo.training.run import TrainConfig
    from dymo.utils.artifact import check_output

    check_output(out, "bundle", force=force)  # before hours of training, not after
    dataset = open_dataset(data, root)
    clf = DyMoClassifier.fit(
        dataset,
        recovery,
        recovery_options=parse_set_options(recovery_set),
        backbone=BackboneConfig.from_dict(parse_set_options(backbone_set)),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed),
        selection=SelectionConfig(method=method),  # type: ignore[arg-type]
        run_dir=run_dir,
        tune=tune,
    )
    clf.save_pretrained(out, force=force)
    console.print(f"[green]bundle[/] written to {out} ({dataset.name}: {len(dataset['train'])} training samples, recovery {recovery})")
