"""`dymo train backbone`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import typer

from dymo.cli.common import console, friendly_errors

train_app = typer.Typer()  # `dymo train backbone`, added under `train` by dymo.cli.main


def quiet_lightning() -> None:
    """Keep Lightning's tips and benign warnings out of the user's terminal."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for msg in (".*LeafSpec.*", ".*log_every_n_steps.*", ".*does not have many workers.*", ".*litlogger.*"):
        warnings.filterwarnings("ignore", message=msg)


def read_config_file(path: Path) -> dict:
    """The --config JSON: a mapping with only the keys 'backbone' and 'train' (ConfigError otherwise)."""
    from dymo.errors import ConfigError
    from dymo.utils.io import read_json

    try:
        overrides = read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except ValueError as e:
        raise ConfigError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"--config {path}: expected a JSON object with keys 'backbone'/'train', got {type(overrides).__name__}")
    unknown = sorted(set(overrides) - {"backbone", "train"})
    if unknown:
        raise ConfigError(f"--config {path}: unknown key(s) {unknown}; known keys: ['backbone', 'train']")
    for key, value in overrides.items():
        if not isinstance(value, dict):
            raise ConfigError(f"--config {path}: {key!r} must be a JSON object, got {type(value).__name__}")
    return overrides


@train_app.command("backbone")
@friendly_errors
def train_backbone_cmd(
    data: str = typer.Option("polymnist", help="Dataset name (see `dymo data info`) or a built dataset folder."),
    out: Path = typer.Option(None, help="Run folder (default runs/backbone-<data>-<metric>)."),
    metric: str = typer.Option("cosine", help="cosine (DyMo_c) or euclidean (DyMo_e)."),
    epochs: int | None = typer.Option(
        None, min=1, help="Maximum epochs (default: a budget that scales with the data, about 1,000 steps within 4..100 epochs); early stopping on validation accuracy over all subsets."
    ),
    batch_size: int = typer.Option(256, help="Per-process batch size."),
    lr: float = typer.Option(1e-3),
    subsets_per_batch: int | None = typer.Option(None, help="K subsets per batch (default 5 for >= 4 modalities, else 2)."),
    max_train_samples: int | None = typer.Option(None, help="Use only the first N training samples."),
    seed: int = typer.Option(0),
    config: Path | None = typer.Option(None, help="JSON with {'backbone': {...}, 'train': {...}} overriding the defaults."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: cpu, gpu, auto."),
    devices: str = typer.Option("1", help="Lightning devices (a count, or 'auto')."),
    strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp."),
    num_nodes: int = typer.Option(1),
    precision: str = typer.Option("32-true", help="Lightning precision, e.g. bf16-mixed."),
    resume: bool = typer.Option(False, help="Resume from the run folder's last checkpoint (same data and config)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing backbone run in --out (never anything else)."),
    tensorboard: bool = typer.Option(False, help="Also log to TensorBoard (needs tensorboard installed)."),
) -> None:
    """Train the flexible backbone (K random modality subsets per batch, prototype loss)."""
    from dymo.data.registry import open_dataset
    from dymo.errors import ConfigError
    from dymo.models.backbone import BackboneConfig
    from dymo.training.run import TrainConfig, check_trainer_options, train_backbone
    from dymo.utils.io import read_json

    quiet_lightning()
    overrides = read_config_file(config) if config else {}
    bcfg = BackboneConfig.from_dict({**overrides.get("backbone", {}), "metric": metric})
    tcfg = TrainConfig.from_dict(
        {
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "subsets_per_batch": subsets_per_batch,
            "max_train_samples": max_train_samples, "seed": seed, **overrides.get("train", {}),
        }
    )
    if resume and force:
        raise ConfigError("--resume and --force: choose one (continue the run, or replace it)")
    dev: int | str = int(devices) if devices.isdigit() else devices
    check_trainer_options(accelerator, dev, strategy, num_nodes, precision)  # before anything is written
    dataset = open_dataset(data)
    out = out or Path("runs") / f"backbone-{dataset.name}-{metric}"
    run = train_backbone(
        dataset, out, bcfg, tcfg, data_ref={"name": data}, accelerator=accelerator, devices=dev,
        strategy=strategy, num_nodes=num_nodes, precision=precision, resume=resume, force=force, tensorboard=tensorboard,
    )
    metrics_path = run / "metrics.json"
    if metrics_path.exists():
        m = read_json(metrics_path)
        t = m.get("test", {})
        console.print(
            f"[green]trained[/] {run}: test acc all={t.get('all_modalities', float('nan')):.4f} "
            f"mean over subsets={t.get('mean_over_subsets', float('nan')):.4f} ({m['train_seconds']} s)"
        )
