"""`dymo benchmark`: every method x missing scenario x seed x recoverer, resumable, one report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from dymo.baselines.registry import BASELINES, EXPERIMENT_ONLY
from dymo.cli.common import console, friendly_errors
from dymo.errors import ConfigError
from dymo.recovery.registry import standalone_recoverers
from dymo.selection.selector import METHODS

app = typer.Typer()  # `dymo benchmark`, added to the root by dymo.cli.main

#: BenchmarkConfig keys a --config JSON may set (model settings; the rest are options).
CONFIG_KEYS = ("backbone", "train", "baselines", "recoverers", "calibration_batch_size", "subset_seed")


def split_list(items: list[str]) -> list[str]:
    """Comma-separated and/or repeated option values, in order, without duplicates."""
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            if part.strip() and part.strip() not in out:
                out.append(part.strip())
    return out


def split_scenarios(items: list[str]) -> list[str]:
    """Like :func:`split_list`, but ``fixed:1,3`` stays one scenario: a comma-separated part
    without ``:`` (other than ``none``) continues the previous scenario."""
    out: list[str] = []
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            if ":" not in part and part != "none" and out and out[-1].startswith("fixed:"):
                out[-1] += f",{part}"
            else:
                out.append(part)
    return list(dict.fromkeys(out))


def _ints(items: list[str], what: str) -> list[int]:
    try:
        return [int(v) for v in split_list(items)]
    except ValueError:
        raise ConfigError(f"{what}: expected integers, got {items}") from None


@app.command("benchmark")
@friendly_errors
def benchmark_cmd(
    data: str = typer.Option("polymnist", help="Dataset name (see `dymo data info`) or a built dataset folder."),
    methods: list[str] = typer.Option(
        ["dymo,iterative,simultaneous,fuse-all,discard,moddrop,mtl,late-fusion,oracle-complete,oracle-selection"],
        help=f"Comma-separated/repeatable: DyMo variants {', '.join(METHODS)} (dymo-cosine, "
        f"dymo-euclidean, ...), baselines ({', '.join(b for b in BASELINES if b not in (*METHODS, *EXPERIMENT_ONLY))}) and the "
        f"EXPERIMENT-ONLY upper bounds {', '.join(EXPERIMENT_ONLY)} (+ the shuffled control of oracle-selection).",
    ),
    missing: list[str] = typer.Option(["random:0.2,random:0.4,random:0.6,random:0.8"], help="Scenarios: random:ETA, count:K, fixed:I,J, none, file:MASK.csv."),
    seeds: list[str] = typer.Option(["0,1,2"], help="Seeds of the missing masks (models are trained once)."),
    out: Path = typer.Option(..., help="Benchmark folder (models/, cells/, reports). Rerunning resumes it."),
    recovery: list[str] = typer.Option(["retrieval"], help=f"Recoverer kinds to train ({', '.join(standalone_recoverers())}) or saved recoverer folders."),
    backbone: list[str] = typer.Option([], help="Trained backbone run folder(s) to reuse (metric read from each)."),
    metric: list[str] = typer.Option([], help="cosine and/or euclidean: one DyMo backbone each (default: the --backbone runs' metrics, else cosine)."),
    epochs: str = typer.Option("3", help="Maximum epochs for everything this run trains (backbones, baselines, neural recoverers; early stopping on validation), or 'auto': a budget that scales with the training split (about 1,000 steps within 4..100 epochs)."),
    max_train_samples: int | None = typer.Option(None, help="Seeded random subset of the training split (training, calibration, recovery)."),
    max_val_samples: int | None = typer.Option(None, help="Seeded random subset of the validation split (early stopping)."),
    max_test_samples: int | None = typer.Option(None, help="Seeded random subset of the test split."),
    quality_sweep: bool = typer.Option(False, "--quality-sweep", help="Also sweep misaligned / low-fidelity oracle recoveries at random:0.6."),
    batch_size: int = typer.Option(256, help="Evaluation batch size."),
    config: Path | None = typer.Option(None, help=f"JSON with model settings: {', '.join(CONFIG_KEYS)}."),
    threads: int | None = typer.Option(None, help="CPU threads for torch and BLAS (pass it on a shared machine)."),
    device: str = typer.Option("cpu", help="Where models train and run: cpu, cuda, cuda:N (retrieval search stays on the CPU)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Benchmark methods over missing scenarios and seeds; writes results.csv/.md, plots, ablation,
    selection statistics and a self-contained report.html. Resumable: finished cells are skipped."""
    import logging

    from rich.logging import RichHandler

    from dymo.cli.common import check_positive
    from dymo.evaluation.benchmark import BenchmarkConfig, backbone_metric, run_benchmark
    from dymo.utils.artifact import check_output
    from dymo.utils.io import read_json

    if epochs != "auto" and not epochs.isdigit():
        raise ConfigError(f"--epochs {epochs!r}: expected a positive integer or 'auto'")
    n_epochs = None if epochs == "auto" else int(epochs)
    for value, option in ((n_epochs, "--epochs"), (batch_size, "--batch-size"), (threads, "--threads"),
                          (max_train_samples, "--max-train-samples"), (max_val_samples, "--max-val-samples"),
                          (max_test_samples, "--max-test-samples")):
        check_positive(value, option)
    from dymo.utils.scale import torch_device

    torch_device(device)  # before anything is written
    check_output(out, "benchmark", replace=True)  # rerunning resumes; never a foreign folder
    if threads:
        import scipy.linalg  # noqa: F401 - load scipy's own BLAS first: only loaded libraries are capped
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(limits=threads)  # scikit-learn recoverers (knn, iterative)
    logger = logging.getLogger("dymo")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=console, show_path=False))
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        extra = read_json(config) if config else {}
    except FileNotFoundError:
        raise ConfigError(f"--config {config}: file not found") from None
    except ValueError as e:
        raise ConfigError(f"--config {config}: not valid JSON ({e})") from None
    if not isinstance(extra, dict) or set(extra) - set(CONFIG_KEYS):
        bad = sorted(set(extra) - set(CONFIG_KEYS)) if isinstance(extra, dict) else extra
        raise ConfigError(f"--config {config}: unknown key(s) {bad}; allowed: {list(CONFIG_KEYS)}")
    backbones = split_list(backbone)
    metrics = split_list(metric) or list(dict.fromkeys(backbone_metric(b) for b in backbones)) or ["cosine"]
    command = " ".join(["dymo", *(shlex.quote(a) for a in sys.argv[1:])])
    cfg = BenchmarkConfig.from_dict(
        {
            "methods": split_list(methods),
            "missing": split_scenarios(missing),
            "seeds": _ints(seeds, "--seeds"),
            "recovery": split_list(recovery),
            "backbones": backbones,
            "metrics": metrics,
            "epochs": n_epochs,
            "max_train_samples": max_train_samples,
            "max_val_samples": max_val_samples,
            "max_test_samples": max_test_samples,
            "quality_sweep": quality_sweep,
            "batch_size": batch_size,
            "command": command,
            "device": device,
            **extra,
        }
    )
    result = run_benchmark(data, cfg, out, progress=progress, log_fn=console.print)
    console.print(
        f"[green]benchmark done[/]: {result.computed} cells computed, {result.skipped} reused. "
        f"Report: [bold]{result.report}[/]"
    )
