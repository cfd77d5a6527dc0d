"""``dymo data build|show|info``: build the offline datasets, look at them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from dymo.cli.common import friendly_errors
from dymo.data.registry import data_root
from dymo.errors import ConfigError

data_app = typer.Typer(help="Build, inspect and plot the offline datasets.", no_args_is_help=True)

out_console = Console()


def _dataset_help() -> str:
    from dymo.data.registry import REGISTRY

    return "one of: " + ", ".join(REGISTRY) + " (described below)"


def _build_epilog() -> str:
    from dymo.data.registry import REGISTRY

    lines = ["Datasets and their build options (--set KEY=VALUE):"]
    for e in REGISTRY.values():
        keys = ", ".join(f for f in e.config_cls.__dataclass_fields__ if f != "source")
        lines.append(f"{e.name}: {e.description}; options: {keys}")
    return "\n\n".join(lines)


@data_app.command("build", epilog=_build_epilog())
@friendly_errors
def build(
    name: str = typer.Argument(..., help=_dataset_help()),
    source: Path | None = typer.Option(None, help="your copy of the dataset's files (needed by folder, tcga-kidney, mst, celeba, image-table)"),
    set_: list[str] = typer.Option([], "--set", help="a build option key=value (repeatable), e.g. --set seed=1 --set val_fraction=0.2"),
    out_name: str | None = typer.Option(None, "--name", help="name of the built dataset (default: the dataset name; folder: the source folder's name)"),
    root: Path | None = typer.Option(None, help="data root (default $DYMO_DATA or ./data); the dataset goes to ROOT/NAME"),
    seed: int | None = typer.Option(None, help="random seed (same as --set seed=N)"),
    n_train: int | None = typer.Option(None, help="PolyMNIST: training tuples"),
    n_val: int | None = typer.Option(None, help="PolyMNIST: validation tuples"),
    n_test: int | None = typer.Option(None, help="PolyMNIST: test tuples"),
    force: bool = typer.Option(False, help="rebuild even if a build with these options exists"),
) -> None:
    """Build a dataset into ROOT/NAME (skipped if a finished build with the same options is there).

    Your own files: `dymo data build folder --source DIR --name NAME` (layout in docs/data.md).
    """
    from dymo.data.registry import (
        build_dataset,
        get_entry,
        is_built,
        make_config,
        parse_set_options,
    )
    from dymo.utils.artifact import check_output

    options: dict[str, Any] = parse_set_options(set_)
    shortcuts = {"seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test}
    options.update({k: v for k, v in shortcuts.items() if v is not None})
    entry = get_entry(name)
    if source is not None:
        options["source"] = str(source.expanduser().resolve())
    elif entry.external and "source" not in options:
        raise ConfigError(f"dataset {name!r} is read from your files: pass --source PATH")
    if name == "folder" and out_name is None:
        out_name = Path(options["source"]).name
    make_config(name, **options)  # reject bad names/options before drawing a progress bar
    target_name = out_name or name
    target = (root if root is not None else data_root()) / target_name
    check_output(target, "dataset", replace=True, option="dataset folder")  # never over a foreign folder
    if not force and is_built(name, root, out_name=out_name, **options):
        out_console.print(f"{target_name}: already built in {target} with these options (use --force to rebuild)")
        return
    created = not target.exists()
    try:
        with Progress(
            TextColumn(f"building {target_name}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=out_console
        ) as bar:
            task = bar.add_task("build", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            ds = build_dataset(name, root, progress=progress, out_name=out_name, **options)
    except BaseException:
        if created:  # a failed or interrupted build leaves nothing behind
            import shutil

            shutil.rmtree(target, ignore_errors=True)
        raise
    sizes = ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items())
    missing = {k: float(1 - v.observed.mean()) for k, v in ds.splits.items()}
    note = ""
    if any(missing.values()):
        note = " (missing modality slots: " + ", ".join(f"{k} {v:.0%}" for k, v in missing.items()) + ")"
    out_console.print(f"{target_name}: {sizes}{note} -> {target}")
    for line in (ds.provenance or {}).get("notes", []):
        out_console.print(f"    {line}")


@data_app.command("info")
@friendly_errors
def info(
    name: str = typer.Argument(..., help="dataset name or folder"),
    root: Path | None = typer.Option(None, help="data root (default $DYMO_DATA or ./data)"),
) -> None:
    """Sizes, class balance per split and modalities of a built dataset."""
    from dymo.data.registry import load_dataset

    ds = load_dataset(name, root)
    out_console.print(f"[bold]{ds.name}[/]: {ds.num_classes} classes, {len(ds.specs)} modalities")
    mods = Table("modality", "kind", "shape", "stored as", title="modalities")
    first = next(iter(ds.splits.values()))
    for s in ds.specs:
        arr = first.arrays[s.name]
        mods.add_row(s.name, s.kind, str(tuple(s.shape)), f"{arr.dtype} {tuple(arr.shape[1:])}")
    out_console.print(mods)
    balance = Table("split", "size", *ds.class_names, title="class balance")
    for split, d in ds.splits.items():
        counts = np.bincount(np.asarray(d.labels), minlength=ds.num_classes)
        balance.add_row(split, str(len(d)), *(str(c) for c in counts))
    out_console.print(balance)
    if ds.build_info:
        out_console.print(f"build: {ds.build_info}")


@data_app.command("show")
@friendly_errors
def show(
    name: str = typer.Argument(..., help="dataset name or folder"),
    out: Path = typer.Option(Path("grid.png"), help="PNG to write"),
    root: Path | None = typer.Option(None, help="data root (default $DYMO_DATA or ./data)"),
    split: str = typer.Option("test", help="split to show"),
    rows: int = typer.Option(8, min=1, max=64, help="number of samples (rows)"),
    seed: int = typer.Option(0, help="which samples: a seeded random choice"),
    scenario: str = typer.Option("none", help="missing-modality scenario to draw, e.g. random:0.5"),
    force: bool = typer.Option(False, "--force", help="replace an existing grid written by dymo"),
) -> None:
    """Plot a grid of samples: one row per sample, one column per modality, label in the row title."""
    from dymo.data.registry import load_dataset
    from dymo.data.scenarios import parse_scenario
    from dymo.utils.artifact import check_output

    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the grid is a .png file")
    check_output(out, "grid", force=force)
    ds = load_dataset(name, root)
    data = ds[split]
    n = min(rows, len(data))
    idx = np.sort(np.random.default_rng(seed).choice(len(data), size=n, replace=False))
    observed = parse_scenario(scenario).sample(len(data), len(ds.specs), seed=seed, names=ds.modalities)[idx]
    save_grid(ds, data.batch(idx), observed, out)
    out_console.print(f"wrote {out} ({n} samples of {ds.name}/{split})")


def save_grid(ds: Any, batch: Any, observed: np.ndarray, out: Path) -> None:
    """Draw the batch as a grid (images as pictures, vectors as line plots); missing cells grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dymo.utils.io import atomic_replace_from

    n, m = len(batch), len(ds.specs)
    fig, axes = plt.subplots(n, m, figsize=(1.3 * m + 0.8, 1.3 * n + 0.4), squeeze=False)
    for r in range(n):
        label = ds.class_names[int(batch.labels[r])]
        for c, spec in enumerate(ds.specs):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            x = batch.data[spec.name][r]
            if not observed[r, c]:
                ax.set_facecolor("0.8")
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            else:
                spec.kind_object.draw(ax, x)
            if r == 0:
                ax.set_title(spec.name, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"label {label}", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    try:
        atomic_replace_from(lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": "dymo"}), out)
    finally:
        plt.close(fig)
