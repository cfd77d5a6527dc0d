"""`dymo train recovery` and `dymo recovery-report`."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import typer

from dymo.cli.common import console, friendly_errors
from dymo.errors import ConfigError
from dymo.recovery.registry import trainable_recoverers

app = typer.Typer()  # `dymo recovery-report`, added to the root by dymo.cli.main
train_app = typer.Typer()  # `dymo train recovery`, added under `train` by dymo.cli.main

TRAINABLE = tuple(trainable_recoverers())
CLASSIFIER_DIR = "coherence_classifier"


def _parse_sets(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


@train_app.command("recovery")
@friendly_errors
def train_recovery_cmd(
    data: str = typer.Option(..., help="Dataset name (see `dymo data info`) or a built dataset folder."),
    model: str = typer.Option("retrieval", help=f"Recoverer: {', '.join(TRAINABLE)}."),
    out: Path = typer.Option(..., help="Run folder (gets config.json + weights)."),
    root: Path | None = typer.Option(None, help="Data root (default $DYMO_DATA or ./data)."),
    epochs: int | None = typer.Option(None, help="Training epochs (neural recoverers)."),
    seed: int | None = typer.Option(None, help="Random seed (recoverers that have one)."),
    set_: list[str] = typer.Option([], "--set", help="Config override KEY=VALUE (JSON value), repeatable."),
    preset: str | None = typer.Option(
        None, help="Named settings applied before --set: mopoe has 'cpu' (the default settings) and 'paper' (the authors': beta 2.5, Laplace scale 0.75, no KL warm-up)."
    ),
    device: str = typer.Option("cpu", help="Torch device for neural recoverers that support it (mopoe, mmvae-plus, cmvae)."),
    threads: int | None = typer.Option(None, help="CPU threads for torch and BLAS (threadpoolctl)."),
    max_train_samples: int | None = typer.Option(None, help="Use only the first N training samples."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    force: bool = typer.Option(False, "--force", help="Replace an existing recoverer in --out (never anything else)."),
) -> None:
    """Fit a recovery model on the training split and save it into the run folder."""
    import numpy as np

    from dymo.cli.common import check_positive
    from dymo.recovery.registry import recoverer_class
    from dymo.utils.artifact import check_output, staged_dir

    if model not in trainable_recoverers():
        raise ConfigError(f"--model {model!r}: choose one of {', '.join(trainable_recoverers())}")
    for value, option in ((epochs, "--epochs"), (threads, "--threads"), (max_train_samples, "--max-train-samples")):
        check_positive(value, option)
    from dymo.utils.scale import torch_device

    torch_device(device)  # a clear error before anything is written
    # A folder with only an interrupted fit's checkpoint is resumed; a finished one needs --force.
    check_output(out, "recoverer", force=force, replace=not (out / "config.json").exists())
    _limit_threads(threads)
    cls = recoverer_class(model)  # mopoe: imported lazily from dymo.recovery.mopoe
    overrides = _parse_sets(set_)
    if preset is not None:
        if preset not in cls.presets:
            known = ", ".join(cls.presets) or "none"
            raise ConfigError(f"--preset {preset!r}: recoverer {model!r} has no such preset (known: {known})")
        overrides = {**cls.presets[preset], **overrides}
    fields = set(cls.config_class.__dataclass_fields__)
    for key, value in (("epochs", epochs), ("seed", seed)):
        if value is not None:
            if key not in fields:
                raise ConfigError(f"--{key}: recoverer {model!r} has no {key!r} option; its options are {sorted(fields)}")
            overrides[key] = value
    rec = cls(**overrides)
    train = _load_data(data, root)["train"]
    if max_train_samples:
        train = train.subset(np.arange(min(max_train_samples, len(train))))
    console.print(f"fitting [bold]{model}[/] on {train.name} ({len(train)} samples): {rec.config}")
    if device != "cpu":
        rec.to(device)
    kwargs = {"run_dir": out} if "run_dir" in inspect.signature(rec.fit).parameters else {}
    created = not out.exists()
    try:
        rec.fit(train, progress=progress, **kwargs)
        with staged_dir(out) as tmp:  # complete or absent; with --force the old recoverer goes whole
            rec.save(tmp)
    except KeyboardInterrupt:
        raise  # an interrupted neural fit keeps its checkpoint in --out, to resume
    except BaseException:
        if created:  # a failed fit leaves nothing behind
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    console.print(f"saved [bold]{model}[/] recoverer to {out}")


@app.command("recovery-report")
@friendly_errors
def recovery_report_cmd(
    run: Path = typer.Argument(..., help="Run folder of a trained recoverer."),
    data: str = typer.Option(..., help="Dataset name or built dataset folder (the one it was trained on)."),
    root: Path | None = typer.Option(None, help="Data root (default $DYMO_DATA or ./data)."),
    split: str = typer.Option("test", help="Split to recover."),
    classifier: Path | None = typer.Option(
        None, help=f"Saved unimodal classifier (default: <run>/{CLASSIFIER_DIR}, trained there if absent)."
    ),
    classifier_epochs: int = typer.Option(3, help="Epochs when the judge classifier has to be trained."),
    batch_size: int = typer.Option(256),
    seed: int = typer.Option(0, help="Seed of the report's random observed masks."),
    max_samples: int | None = typer.Option(None, help="Use only the first N samples of the split."),
    threads: int | None = typer.Option(None, help="CPU threads for torch and BLAS (threadpoolctl)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Reconstruction error, coherence by number of observed modalities, throughput, and a PNG
    grid (report.json + recovery_grid.png in the run folder)."""
    import numpy as np
    from rich.table import Table

    from dymo.recovery.coherence import UnimodalClassifier, UnimodalConfig, recovery_report
    from dymo.recovery.registry import load_recoverer
    from dymo.utils.io import write_json

    _limit_threads(threads)
    ds = _load_data(data, root)
    rec = load_recoverer(run, train=ds["train"])
    test = ds[split]
    if max_samples:
        test = test.subset(np.arange(min(max_samples, len(test))))
    clf_dir = classifier or run / CLASSIFIER_DIR
    from dymo.cli.common import check_positive
    from dymo.utils.artifact import check_output

    check_positive(batch_size, "--batch-size")
    check_output(clf_dir, "classifier", replace=True, option="--classifier")
    if (clf_dir / "config.json").exists():
        clf = UnimodalClassifier.load(clf_dir)
        if list(clf.modalities) != list(test.modalities):
            raise ConfigError(f"{clf_dir}: classifier modalities {list(clf.modalities)} != dataset's {list(test.modalities)}")
    else:
        # The judge differs from the retrieval embedder in seed and width.
        cfg = UnimodalConfig(seed=1234, width=24, hidden=192, epochs=classifier_epochs)
        clf = UnimodalClassifier(ds.specs, ds.class_names, cfg).fit(ds["train"], progress=progress, description="judge classifier")
        clf.save(clf_dir)
    report = recovery_report(rec, test, clf, batch_size=batch_size, seed=seed, grid_path=run / "recovery_grid.png", progress=progress)
    report["split"] = split
    report["classifier"] = str(clf_dir)
    write_json(run / "report.json", report)

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    table = Table(title=f"recovery report: {rec.name} on {test.name} ({len(test)} samples)")
    table.add_column("observed modalities")
    table.add_column("coherence")
    table.add_column("judge on true data")
    for k, v in report["coherence"]["by_num_observed"].items():
        table.add_row(k, pct(v), pct(report["reference_accuracy"]["by_num_observed"].get(k)))
    table.add_row("all", pct(report["coherence"]["overall"]), pct(report["reference_accuracy"]["overall"]))
    from rich.console import Console

    out = Console()
    out.print(table)
    mods = Table(title="per modality")
    mods.add_column("modality")
    mods.add_column("error")
    mods.add_column("coherence")
    for name, err in report["error"].items():
        kind = report["error_kind"][name]
        mods.add_row(name, "-" if err is None else f"{err:.4f} ({kind})", pct(report["coherence"]["by_modality"][name]))
    out.print(mods)
    tp = report["throughput_samples_per_s"]
    out.print(f"throughput: {tp:.0f} samples/s" if tp else "throughput: -")
    for line in report.get("warnings", []):
        out.print(f"[yellow]warning:[/] {line}")
    out.print(f"wrote {run / 'report.json'}" + (f" and {report['grid']}" if report.get("grid") else ""))


def _limit_threads(threads: int | None) -> None:
    """Cap torch's and the BLAS libraries' threads for the rest of the command. Oversubscribed
    BLAS threads make scikit-learn's IterativeImputer up to 100x slower on a busy machine."""
    if not threads:
        return
    import scipy.linalg  # noqa: F401 - load scipy's own BLAS first: only loaded libraries are capped
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


def _load_data(data: str, root: Path | None):  # noqa: ANN202 - SplitDataset
    """A registry name (built if needed) or a built dataset folder."""
    from dymo.data.registry import known_datasets, load_dataset, load_or_build

    if data in known_datasets():
        return load_or_build(data, root=root)
    return load_dataset(data, root=root)
