"""The benchmark harness: every method x missing scenario x seed x recoverer, resumable.

``run_benchmark(data, config, out)`` (or ``dymo benchmark``) trains what it needs into
``out/models/`` (or reuses given run folders), evaluates each *cell* (method, scenario, seed,
recoverer) and writes the reports (see ``docs/benchmark.md``):

- DyMo and its ablations (``dymo``, ``iterative``, ``simultaneous``, ``fuse-all``, ``discard``)
  run on the DyMo backbone, one per metric (names get ``-cosine``/``-euclidean`` when more than
  one metric is benchmarked);
- baselines (:mod:`dymo.baselines`) are fitted once on the training split;
- EXPERIMENT-ONLY upper bounds ``oracle-complete`` (the true data) and ``oracle-selection``
  (label-aware choice of recovered modalities), the latter always next to
  ``oracle-selection-shuffled``, the same oracle on recoveries of *other* samples
  (:class:`~dymo.recovery.quality.ShuffledRecoverer`): label-aware cherry-picking alone gains
  something, so only the gap between the two is what the recoveries carry.

Sharing: the batch loop is the evaluation engine (:mod:`dymo.evaluation.engine`, the one
``dymo evaluate`` uses): per batch the scenario mask is applied once, each recoverer runs once,
each backbone encodes once, and every method reads those (baselines get ``recovered=``). Methods that do not
use recovery are recorded once with recoverer ``none``.

Resumability: a finished cell is one JSON file in ``out/cells/`` (written atomically), and a
rerun computes only the missing ones; trained models in ``out/models/`` are reused.
``out/benchmark.json`` records the scale (data sizes, epochs, model settings, model sources);
a rerun with a different scale is refused instead of mixing results.

Training happens once: the seeds vary the missing-modality masks (and the random draws of the
experiment-only shuffled / controlled-quality recoveries), not the trained models, so the
spread over seeds is the spread over masks.

The code: :mod:`~dymo.evaluation.benchmark_plan` (config, methods, cells),
:mod:`~dymo.evaluation.benchmark_store` (the folder: models, cells, scale record),
:mod:`~dymo.evaluation.benchmark_report` (the reports) and this module (the run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.errors import ConfigError, DataError
from dymo.evaluation.benchmark_plan import (
    ABLATION,
    DEFAULT_METHODS,
    NO_RECOVERY,
    RULE_VARIANTS,
    SWEEP_METHODS,
    SWEEP_SCENARIO,
    UPPER_BOUNDS,
    BenchmarkConfig,
    Cell,
    LogFn,
    MethodSpec,
    plan_methods,
    scale_dataset,
    sweep_label,
    sweep_points,
    uses_recovery,
)
from dymo.evaluation.benchmark_report import Table, write_reports
from dymo.evaluation.benchmark_store import (
    Models,
    backbone_metric,
    cell_row,
    check_scale,
    read_cell,
    write_cell,
)
from dymo.evaluation.engine import (
    BaselineMethod,
    BatchContext,
    EngineResult,
    EvalMethod,
    SelectionMethod,
    run_methods,
)
from dymo.evaluation.metrics import MethodMetrics, method_metrics
from dymo.evaluation.pipeline import scenario_mask
from dymo.recovery.base import Recoverer
from dymo.selection.selector import SEARCHING
from dymo.utils.io import read_json, write_json
from dymo.utils.progress import progress_columns

log = logging.getLogger("dymo.benchmark")


# -- models ------------------------------------------------------------------------------------


class _Replay(Recoverer):
    """Returns the recovery set in ``current`` (already computed for this batch): lets a
    :class:`~dymo.recovery.quality.ShuffledRecoverer` shuffle a shared recovery without
    running the recoverer again."""

    name = "replay"

    def __init__(self, train: MultimodalDataset) -> None:
        super().__init__()
        self.specs = list(train.specs)
        self.class_names = list(train.class_names)
        self.fitted = True
        self.current: MultimodalBatch | None = None

    def _fit(self, train: MultimodalDataset, progress: bool) -> None:
        """Nothing to learn."""

    def _recover_missing(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def recover(self, batch: MultimodalBatch) -> MultimodalBatch:
        assert self.current is not None and len(self.current) == len(batch)
        return self.current


# -- evaluation of one (scenario, seed) group ---------------------------------------------------


def _evaluate_group(
    scenario: str,
    seed: int,
    cells: list[Cell],
    models: Models,
    test: MultimodalDataset,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> dict[tuple, MethodMetrics]:
    """Evaluate ``cells`` (all of this scenario and seed) in one pass of the engine over the
    test set: per recoverer its cells, selection methods (per backbone) before baselines."""
    obs_all = scenario_mask(scenario, len(test), test.modalities, seed)
    by_rec: dict[str, list[Cell]] = {}
    for c in cells:
        by_rec.setdefault(c.recoverer, []).append(c)
    recs: dict[str, Recoverer] = {}
    methods: list[EvalMethod] = []
    for label, group in by_rec.items():
        recovery = None if label == NO_RECOVERY else label
        if recovery is not None:
            recs[label] = models.sweep_recoverer(label, seed) if label.startswith("oracle[") else models.recoverer(label)
        selection = [c for c in group if c.method.kind == "selection"]
        for metric in dict.fromkeys(c.method.metric for c in selection):
            net = models.backbone(metric)
            for c in (c for c in selection if c.method.metric == metric):
                cal = models.calibration(metric) if c.method.base in (*SEARCHING, *RULE_VARIANTS) else None
                methods.append(SelectionMethod(c.key, net, cal, models.selection_config(c.method.base, metric, c.recoverer), recovery))
        shuffled = None
        for c in group:
            if c.method.kind == "selection":
                continue
            if c.method.name == "oracle-selection-shuffled" and shuffled is None:
                shuffled = _shuffled_recovery(label, test, seed)
            methods.append(
                BaselineMethod(
                    c.key, models.baseline(c.method.base), recovery,
                    reads_true_data=c.method.base == "oracle-complete",
                    recovered_fn=shuffled if c.method.name == "oracle-selection-shuffled" else None,
                )
            )
    ran = run_methods(test, obs_all, methods, recs, batch_size, on_batch=on_batch)
    return {c.key: _finish(c, ran, test.modalities) for c in cells}


def _shuffled_recovery(label: str, test: MultimodalDataset, seed: int) -> Callable[[BatchContext], MultimodalBatch]:
    """The batch's recovery by ``label``, each sample's taken from another sample (computed
    once per batch, without running the recoverer again)."""
    from dymo.recovery.quality import ShuffledRecoverer

    replay = _Replay(test)
    shuffler = ShuffledRecoverer(replay, seed=seed).fit(test, progress=False)

    def recovered(ctx: BatchContext) -> MultimodalBatch:
        key = ("shuffled", label)
        if key not in ctx.cache:
            replay.current = ctx.recovered[label]
            ctx.cache[key] = shuffler.recover(ctx.hidden)
        return ctx.cache[key]

    return recovered


def _finish(cell: Cell, ran: EngineResult, mods: Sequence[str]) -> MethodMetrics:
    r = ran.runs[cell.key]
    selection = cell.method.kind == "selection"
    steps = r.steps if r.steps is not None else torch.zeros(len(ran.labels), dtype=torch.long)
    hist = torch.bincount(steps, minlength=1).float() / len(steps)
    rec_s = ran.recovery_seconds.get(cell.recoverer, 0.0) if cell.recoverer != NO_RECOVERY else 0.0
    return method_metrics(
        cell.method.name, cell.scenario, cell.seed, probs=r.probs, predictions=r.predictions, labels=ran.labels, observed=ran.observed,
        candidates=ran.candidates, offers_recovery=selection and cell.method.base != "discard",
        steps=steps, added=r.added if selection else None, modalities=mods,
        seconds=r.seconds + r.shared_seconds + rec_s,
        extra={"recoverer": cell.recoverer, "steps_hist": [round(float(v), 6) for v in hist]},
    )


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    out: Path
    report: Path
    computed: int  # cells evaluated by this run
    skipped: int  # cells found finished in out/cells
    files: dict[str, Path]


def run_benchmark(
    data: SplitDataset | str,
    config: BenchmarkConfig,
    out: str | Path,
    progress: bool = True,
    log_fn: LogFn | None = None,
) -> BenchmarkResult:
    """Train what is missing, evaluate every unfinished cell, write every report into ``out``.

    ``data``: an in-memory :class:`SplitDataset` (train/val/test; train and val complete) or a
    dataset name / folder (see :func:`~dymo.data.registry.open_dataset`).
    """
    say: LogFn = log_fn or log.info
    out = Path(out)
    if isinstance(data, str):
        from dymo.data.registry import open_dataset

        data = open_dataset(data)
    scaled = scale_dataset(data, config)
    if config.epochs is None:  # --epochs auto: one budget for everything trained here, from the data's size
        from dymo.training.config import TrainConfig, auto_epochs

        config = config.replace(epochs=auto_epochs(len(scaled["train"]), TrainConfig.from_dict(config.train).batch_size))
        say(f"training budget: at most {config.epochs} epochs for {len(scaled['train'])} training samples (auto)")
    methods = plan_methods(config.methods, config.metrics)
    sweep_methods = plan_methods(SWEEP_METHODS, config.metrics) if config.quality_sweep else []
    uses = {m: uses_recovery(m, config) for m in [*methods, *sweep_methods]}
    test = scaled["test"]
    if not test.observed.all():
        i, j = (int(v) for v in np.argwhere(~test.observed)[0])
        raise DataError(
            f"the benchmark simulates missingness on a complete test split, but test sample {i} misses "
            f"modality {test.modalities[j]!r}"
        )
    models = Models(scaled, config, out / "models", progress, say)
    rec_labels = list(models.recovery_sources)
    if any(uses[m] for m in methods) and not rec_labels:
        raise ConfigError("some methods need recovery; give at least one --recovery")
    check_scale(out, scaled, config, models)
    cells = [
        Cell(m, s, seed, r)
        for s in config.missing
        for seed in config.seeds
        for m in methods
        for r in (rec_labels if uses[m] else [NO_RECOVERY])
    ]
    sweep_cells = [
        Cell(m, SWEEP_SCENARIO, seed, r)
        for seed in config.seeds
        for m in sweep_methods
        for r in ([sweep_label(p, q) for p, q in sweep_points()] if uses[m] else [NO_RECOVERY])
    ]
    cells_dir = out / "cells"
    wanted = list(dict.fromkeys(cells + sweep_cells))
    done = {c.key: d for c in wanted if (d := read_cell(cells_dir, c, models.model_hashes(c))) is not None}
    pending = [c for c in wanted if c.key not in done]
    say(f"{len(wanted)} cells: {len(done)} finished, {len(pending)} to compute")

    _prepare(pending, models)
    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in pending:
        groups.setdefault((c.scenario, c.seed), []).append(c)
    from rich.progress import Progress

    columns = progress_columns()
    with Progress(*columns, disable=not progress) as bar:
        t_cells = bar.add_task("benchmark cells", total=len(pending))
        t_batch = bar.add_task("", total=len(test), visible=False)
        for (scenario, seed), group in groups.items():
            bar.reset(t_batch, total=len(test), visible=True, description=f"  {scenario} seed {seed}: {len(group)} cells")
            results = _evaluate_group(scenario, seed, group, models, test, config.batch_size, lambda k: bar.advance(t_batch, k))
            for c in group:
                write_cell(cells_dir, c, results[c.key], models.model_hashes(c))
                done[c.key] = read_cell(cells_dir, c)  # type: ignore[assignment]
            bar.advance(t_cells, len(group))
        bar.update(t_batch, visible=False)

    rows = [cell_row(done[c.key], c.method) for c in cells]
    sweep_rows = [cell_row(done[c.key], c.method) for c in sweep_cells]
    write_json(out / "benchmark.json", {**read_json(out / "benchmark.json"), "models": models.info})
    files = write_reports(out, pd.DataFrame(rows), pd.DataFrame(sweep_rows), methods, config, scaled, models.info)
    report = files["report.html"]
    say(f"report: {report}")
    return BenchmarkResult(out=out, report=report, computed=len(pending), skipped=len(wanted) - len(pending), files=files)


def _prepare(pending: list[Cell], models: Models) -> None:
    """Train / load every model the pending cells need before the progress bars start."""
    for c in pending:
        m = c.method
        if m.kind == "selection":
            models.backbone(m.metric)  # type: ignore[arg-type]
            if m.base in (*SEARCHING, *RULE_VARIANTS):
                models.calibration(m.metric)  # type: ignore[arg-type]
            if m.base == "dymo" and c.recoverer != NO_RECOVERY:
                models.threshold(m.metric, c.recoverer)  # type: ignore[arg-type]
        else:
            models.baseline(m.base)
        if c.recoverer != NO_RECOVERY and not c.recoverer.startswith("oracle["):
            models.recoverer(c.recoverer)


__all__ = [
    "ABLATION",
    "DEFAULT_METHODS",
    "UPPER_BOUNDS",
    "BenchmarkConfig",
    "backbone_metric",
    "BenchmarkResult",
    "Cell",
    "MethodSpec",
    "Models",
    "Table",
    "plan_methods",
    "run_benchmark",
    "scale_dataset",
    "write_reports",
]
