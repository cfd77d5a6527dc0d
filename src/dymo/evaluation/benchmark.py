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

Sharing: per batch the scenario mask is applied once, each recoverer runs once, each backbone
encodes once, and every method reads those (baselines get ``recovered=``). Methods that do not
use recovery are recorded once with recoverer ``none``.

Resumability: a finished cell is one JSON file in ``out/cells/`` (written atomically), and a
rerun computes only the missing ones; trained models in ``out/models/`` are reused.
``out/benchmark.json`` records the scale (data sizes, epochs, model settings, model sources);
a rerun with a different scale is refused instead of mixing results.

Training happens once: the seeds vary the missing-modality masks (and the random draws of the
experiment-only shuffled / controlled-quality recoveries), not the trained models, so the
spread over seeds is the spread over masks.
"""

from __future__ import annotations

import base64
import hashlib
import html
import inspect
import io
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dymo.baselines.registry import BASELINES, baseline_class, get_baseline, load_baseline
from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.scenarios import parse_scenario
from dymo.errors import BundleError, ConfigError, DataError
from dymo.evaluation.pipeline import MethodMetrics, _dummy_calibration, hide_missing, scenario_mask
from dymo.recovery.base import Recoverer
from dymo.selection.calibration import Calibration
from dymo.selection.selector import METHODS, SelectionConfig, select_with_backbone
from dymo.utils.io import atomic_replace_from, atomic_write, read_json, write_json

log = logging.getLogger("dymo.benchmark")

METRIC_NAMES = ("cosine", "euclidean")
#: DyMo's selection methods that need calibration statistics.
SEARCHING = ("dymo", "iterative", "simultaneous", "dymo-paper")
#: DyMo with the paper's acceptance rule (tau 0); ``dymo`` uses the rule tuned on validation.
RULE_VARIANTS = ("dymo-paper",)
#: The ablation of the paper, in its order (then the calibrated acceptance rule).
ABLATION = ("fuse-all", "simultaneous", "iterative", "dymo-paper", "dymo")
#: EXPERIMENT-ONLY upper bounds: they read the true missing data or the labels.
UPPER_BOUNDS = ("oracle-complete", "oracle-selection", "oracle-selection-shuffled")
#: Baselines that are the DyMo backbone with a fixed policy: no training of their own.
FROM_BACKBONE = ("impute-all", "oracle-complete", "oracle-selection")
NO_RECOVERY = "none"
DEFAULT_METHODS = (
    "dymo", "iterative", "simultaneous", "fuse-all", "discard", "moddrop", "mtl", "late-fusion",
    "oracle-complete", "oracle-selection",
)
SWEEP_SCENARIO = "random:0.6"
SWEEP_LEVELS = (0.0, 0.25, 0.5, 0.75)
SWEEP_METHODS = ("discard", "fuse-all", "dymo-paper", "dymo")
CELL_FORMAT = 1
RECOVERY_KINDS = ("retrieval", "mean", "knn", "iterative", "mopoe", "mmvae-plus", "cmvae", "oracle")

LogFn = Callable[[str], None]


@dataclass
class BenchmarkConfig(Config):
    """What to benchmark and at which scale.

    ``recovery``: recoverer kinds to train here (``retrieval``, ``mopoe``, ``mean``, ``knn``,
    ``iterative``, ``oracle``) or saved recoverer folders to reuse. ``backbones``: trained
    backbone run folders to reuse (their metric is read from them); metrics in ``metrics``
    without one are trained here. ``epochs`` is the training budget of everything trained here
    (backbones, baselines, neural recoverers) unless overridden in ``train`` / ``baselines`` /
    ``recoverers``. ``max_*_samples``: a seeded random subset (``subset_seed``) of each split.
    ``backbone``, ``train``: :class:`~dymo.models.backbone.BackboneConfig` /
    :class:`~dymo.training.run.TrainConfig` overrides; ``baselines``: per baseline name, its
    config overrides (nested dicts); ``recoverers``: per recoverer kind, its config overrides.
    ``command``: the command line, recorded in the report.
    """

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    missing: list[str] = field(default_factory=lambda: ["random:0.2", "random:0.4", "random:0.6", "random:0.8"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    recovery: list[str] = field(default_factory=lambda: ["retrieval"])
    backbones: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["cosine"])
    epochs: int = 3
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    max_test_samples: int | None = None
    subset_seed: int = 0
    quality_sweep: bool = False
    batch_size: int = 256
    calibration_batch_size: int = 512
    backbone: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    recoverers: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: str = ""

    def validate(self) -> None:
        if not self.methods:
            raise ConfigError("benchmark: no methods given")
        if not self.missing:
            raise ConfigError("benchmark: no missing scenarios given")
        if not self.seeds:
            raise ConfigError("benchmark: no seeds given")
        bad = [m for m in self.metrics if m not in METRIC_NAMES]
        if bad or not self.metrics:
            raise ConfigError(f"benchmark: metrics {bad or self.metrics} unknown; choose from {list(METRIC_NAMES)}")
        for s in self.missing:
            parse_scenario(s)  # ScenarioError names the bad one
        if self.epochs < 1 or self.batch_size < 1 or self.calibration_batch_size < 1:
            raise ConfigError("benchmark: epochs, batch_size and calibration_batch_size must be >= 1")
        for key in ("max_train_samples", "max_val_samples", "max_test_samples"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"benchmark: {key} must be >= 1 (or null), got {v}")
        if "metric" in self.backbone:
            raise ConfigError("benchmark: set the metric with `metrics`, not in the backbone overrides")
        for name in self.baselines:
            if name not in BASELINES:
                raise ConfigError(f"benchmark: overrides for unknown baseline {name!r}; known: {list(BASELINES)}")


# -- the plan: methods and cells -----------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One benchmarked method. ``kind``: ``selection`` (a DyMo selection method on the backbone
    of ``metric``), ``baseline`` or ``upper`` (EXPERIMENT-ONLY)."""

    name: str
    kind: str
    base: str
    metric: str | None = None

    @property
    def upper_bound(self) -> bool:
        return self.kind == "upper"

    @property
    def cell_name(self) -> str:
        """The name in cell files: always with the metric for selection methods, so that adding a
        metric to a finished benchmark reuses its cells."""
        return f"{self.base}-{self.metric}" if self.kind == "selection" else self.name


@dataclass(frozen=True)
class Cell:
    method: MethodSpec
    scenario: str
    seed: int
    recoverer: str  # a recoverer label, or NO_RECOVERY

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.method.cell_name, self.scenario, self.seed, self.recoverer)

    def filename(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", f"{self.method.cell_name}__{self.scenario}__s{self.seed}__{self.recoverer}")
        digest = hashlib.blake2b(repr(self.key).encode(), digest_size=4).hexdigest()
        return f"{slug[:120]}-{digest}.json"


def plan_methods(methods: Sequence[str], metrics: Sequence[str]) -> list[MethodSpec]:
    """Expand the requested names: DyMo's selection methods once per metric (suffixed only when
    several metrics are benchmarked), ``oracle-selection`` with its shuffled control."""
    multi = len(metrics) > 1
    out: list[MethodSpec] = []

    def add(spec: MethodSpec) -> None:
        if spec not in out:
            out.append(spec)

    for raw in methods:
        name = raw.strip()
        base, metric = name, None
        for m in METRIC_NAMES:
            if name.endswith(f"-{m}") and name[: -len(m) - 1] in (*METHODS, *RULE_VARIANTS):
                base, metric = name[: -len(m) - 1], m
        if base in METHODS or base in RULE_VARIANTS:
            if metric is not None and metric not in metrics:
                raise ConfigError(f"method {name!r} needs the {metric} metric; add it to --metric")
            for m in [metric] if metric else metrics:
                add(MethodSpec(f"{base}-{m}" if multi else base, "selection", base, m))
        elif name in ("oracle-selection", "oracle-selection-shuffled"):
            add(MethodSpec("oracle-selection", "upper", "oracle-selection"))
            add(MethodSpec("oracle-selection-shuffled", "upper", "oracle-selection"))
        elif name == "oracle-complete":
            add(MethodSpec(name, "upper", name))
        elif name in BASELINES:
            add(MethodSpec(name, "baseline", name))
        else:
            known = [*METHODS, *RULE_VARIANTS, *(f"{b}-{m}" for b in ("dymo",) for m in METRIC_NAMES), *BASELINES, "oracle-selection-shuffled"]
            raise ConfigError(f"unknown method {name!r}; known: {sorted(set(known))}")
    return out


def _uses_recovery(spec: MethodSpec, config: BenchmarkConfig) -> bool:
    if spec.kind == "selection":
        return spec.base != "discard"
    if spec.base == "oracle-complete":
        return False
    if spec.base in ("impute-all", "oracle-selection"):
        return True
    # Some baselines choose their inputs in their config (e.g. dynmm inputs=recovered).
    return bool(get_baseline(spec.name, **_baseline_overrides(spec.name, config)).uses_recovery)


def _baseline_overrides(name: str, config: BenchmarkConfig) -> dict[str, Any]:
    cls = baseline_class(name)
    fields = set(cls.config_class.__dataclass_fields__)
    base: dict[str, Any] = {"train": {"epochs": config.epochs}} if "train" in fields else {}
    return _deep_merge(base, config.baselines.get(name, {}))


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def sweep_label(p_noise: float, p_misaligned: float) -> str:
    return f"oracle[noise={p_noise:g},misaligned={p_misaligned:g}]"


def sweep_points() -> list[tuple[float, float]]:
    """(p_noise, p_misaligned) of the quality sweep; the clean point is shared by both sweeps."""
    pts = [(0.0, q) for q in SWEEP_LEVELS] + [(p, 0.0) for p in SWEEP_LEVELS if p > 0]
    return pts


# -- data --------------------------------------------------------------------------------------


def scale_dataset(data: SplitDataset, config: BenchmarkConfig) -> SplitDataset:
    """Seeded random subsets (sorted indices) of the splits, as large as ``max_*_samples``."""
    limits = {"train": config.max_train_samples, "val": config.max_val_samples, "test": config.max_test_samples}
    for split in limits:
        data[split]  # DataError names a missing split
    splits = dict(data.splits)
    for i, (split, limit) in enumerate(limits.items()):
        ds = data[split]
        if limit is not None and limit < len(ds):
            rng = np.random.default_rng([config.subset_seed, i])
            splits[split] = ds.subset(np.sort(rng.choice(len(ds), size=limit, replace=False)))
    return SplitDataset(data.name, data.specs, data.class_names, splits, build_info=data.build_info)


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


class Models:
    """Trains (into ``out/models``) or loads every model the pending cells need, once."""

    def __init__(self, data: SplitDataset, config: BenchmarkConfig, folder: Path, progress: bool, log_fn: LogFn) -> None:
        self.data, self.config, self.folder, self.progress, self.log = data, config, folder, progress, log_fn
        self.backbone_runs: dict[str, Path] = {}
        for run in config.backbones:
            path = Path(run)
            metric = backbone_metric(path)
            if metric in self.backbone_runs:
                raise ConfigError(f"two --backbone runs for the {metric} metric: {self.backbone_runs[metric]} and {path}")
            self.backbone_runs[metric] = path
        self.recovery_sources: dict[str, str] = {}
        for item in config.recovery:
            label, source = self._recovery_label(item)
            if source in self.recovery_sources.values():
                raise ConfigError(f"--recovery {item!r} given twice")
            if label in self.recovery_sources or (source != f"trained:{label}" and label in config.recovery):
                label = f"{label}:{Path(source).name}"  # a saved folder of a kind also trained here
            self.recovery_sources[label] = source
        self._backbones: dict[str, Any] = {}
        self._calibrations: dict[str, Calibration] = {}
        self._recoverers: dict[str, Recoverer] = {}
        self._baselines: dict[str, Any] = {}
        self._thresholds: dict[str, Any] = {}
        self.info: dict[str, str] = {}

    # where things come from (recorded in benchmark.json; a rerun must agree)
    def sources(self) -> dict[str, str]:
        out = {f"backbone-{m}": str(self.backbone_source(m)) for m in self.config.metrics}
        out.update({f"recovery-{k}": v for k, v in self.recovery_sources.items()})
        return out

    def backbone_source(self, metric: str) -> Path:
        return self.backbone_runs.get(metric, self.folder / f"backbone-{metric}")

    def _recovery_label(self, item: str) -> tuple[str, str]:
        if item in RECOVERY_KINDS:
            return item, f"trained:{item}"
        path = Path(item)
        if (path / "config.json").exists():
            try:
                kind = read_json(path / "config.json")["kind"]
            except (ValueError, KeyError, TypeError):
                raise BundleError(f"{path}/config.json: not a saved recoverer") from None
            return str(kind), str(path)
        raise ConfigError(f"--recovery {item!r}: neither a recoverer kind ({', '.join(RECOVERY_KINDS)}) nor a saved recoverer folder")

    # -- backbones and calibration ------------------------------------------------------------
    def backbone(self, metric: str) -> Any:
        if metric in self._backbones:
            return self._backbones[metric]
        from dymo.models.backbone import BackboneConfig
        from dymo.training.run import TrainConfig, load_backbone, train_backbone

        run = self.backbone_source(metric)
        if metric in self.backbone_runs:
            self.info[f"backbone {metric}"] = f"reused {run}" + _run_scale(run)
        elif not (run / "backbone.safetensors").exists():
            self.log(f"training the {metric} backbone into {run} ({len(self.data['train'])} samples, {self.config.epochs} epochs)")
            bcfg = BackboneConfig.from_dict({**self.config.backbone, "metric": metric})
            tcfg = TrainConfig.from_dict({"epochs": self.config.epochs, **self.config.train})
            _quiet_lightning()
            train_backbone(
                self.data, run, bcfg, tcfg, data_ref={"name": self.data.name}, progress=self.progress,
                resume=(run / "checkpoints" / "last.ckpt").exists(), evaluate_test=False,
            )
            self.info[f"backbone {metric}"] = f"trained here into {run}" + _run_scale(run)
        else:
            self.info[f"backbone {metric}"] = f"trained here earlier, reused from {run}" + _run_scale(run)
        net = load_backbone(run)
        if net.modalities != self.data.modalities or net.num_classes != self.data.num_classes:
            raise ConfigError(
                f"{run}: backbone for modalities {list(net.modalities)} / {net.num_classes} classes, the data has "
                f"{list(self.data.modalities)} / {self.data.num_classes}"
            )
        if net.config.metric != metric:
            raise ConfigError(f"{run}: backbone uses the {net.config.metric} metric, expected {metric}")
        self._backbones[metric] = net
        return net

    def calibration(self, metric: str) -> Calibration:
        if metric in self._calibrations:
            return self._calibrations[metric]
        from dymo.selection.calibration import compute_calibration

        run = self.backbone_source(metric)
        own = run / "calibration.safetensors"
        path = own if (own.exists() or metric not in self.backbone_runs) else self.folder / f"calibration-{metric}.safetensors"
        if path.exists():
            cal = Calibration.load(path)
            self.info[f"calibration {metric}"] = f"{path}"
        else:
            train = self.data["train"]
            self.log(f"calibrating the {metric} backbone on {len(train)} training samples -> {path}")
            cal = compute_calibration(self.backbone(metric), train, batch_size=self.config.calibration_batch_size, progress=self.progress)
            cal.save(path)
            self.info[f"calibration {metric}"] = f"computed here on {len(train)} training samples ({path})"
        self._calibrations[metric] = cal
        return cal

    # -- recoverers -----------------------------------------------------------------------------
    def recoverer(self, label: str) -> Recoverer:
        if label in self._recoverers:
            return self._recoverers[label]
        from dymo.recovery.registry import get_recoverer, recoverer_class

        source = self.recovery_sources[label]
        train = self.data["train"]
        if source.startswith("trained:"):
            kind = source.split(":", 1)[1]
            path = self.folder / f"recovery-{kind}"
            if (path / "config.json").exists():
                rec = _load_recoverer(path, train, self.data)
                self.info[f"recovery {label}"] = f"trained here earlier, reused from {path}"
            else:
                cls = recoverer_class(kind)
                fields = set(cls.config_class.__dataclass_fields__)
                overrides = {"epochs": self.config.epochs} if "epochs" in fields else {}
                overrides.update(self.config.recoverers.get(kind, {}))
                rec = get_recoverer(kind, **overrides)
                self.log(f"fitting the {kind} recoverer on {len(train)} training samples -> {path}")
                kwargs = {"run_dir": path} if "run_dir" in inspect.signature(rec.fit).parameters else {}
                rec.fit(train, progress=self.progress, **kwargs)
                rec.save(path)
                self.info[f"recovery {label}"] = f"trained here on {len(train)} samples into {path}"
        else:
            rec = _load_recoverer(Path(source), train, self.data)
            self.info[f"recovery {label}"] = f"reused {source}"
        if rec.modalities != self.data.modalities:
            raise ConfigError(f"recoverer {label!r} knows modalities {list(rec.modalities)}, the data has {list(self.data.modalities)}")
        self._recoverers[label] = rec
        return rec

    def threshold(self, metric: str, label: str) -> Any:
        """DyMo's acceptance thresholds for this backbone and recoverer, tuned on the (scaled)
        validation split under simulated missingness; cached in ``threshold-<metric>-<label>.json``."""
        from dymo.selection.acceptance import ThresholdTuning, tune_threshold

        key = f"threshold {metric} {label}"
        if key in self._thresholds:
            return self._thresholds[key]
        slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", label)
        path = self.folder / f"threshold-{metric}-{slug}.json"
        if path.exists():
            tuned = ThresholdTuning.from_dict(read_json(path), source=str(path))
        else:
            val = self.data["val"]
            self.log(f"tuning the acceptance threshold of the {metric} backbone with {label} on {len(val)} validation samples")
            rec = self.sweep_recoverer(label, 0) if label.startswith("oracle[") else self.recoverer(label)
            tuned = tune_threshold(
                self.backbone(metric), self.calibration(metric), rec, val, batch_size=self.config.batch_size, recoverer_name=label
            )
            write_json(path, tuned.to_dict())
        self.info[key] = (
            f"tau per number observed {tuned.thresholds}, temperature {tuned.added_temperature:g} for samples that added a "
            f"recovery (tuned on validation, {path.name})"
        )
        self._thresholds[key] = tuned
        return tuned

    def selection_config(self, base: str, metric: str, label: str) -> SelectionConfig:
        """``dymo``: the tuned acceptance rule; ``dymo-paper`` and the ablation variants: tau 0."""
        if base == "dymo" and label != NO_RECOVERY:
            tuned = self.threshold(metric, label)
            return SelectionConfig(method="dymo", threshold=tuned.thresholds, added_temperature=tuned.added_temperature)
        return SelectionConfig(method="dymo" if base == "dymo-paper" else base, threshold=0.0, added_temperature=1.0)  # type: ignore[arg-type]

    def oracle(self) -> Recoverer:
        if "__oracle__" not in self._recoverers:
            from dymo.recovery.oracle import OracleRecoverer

            self._recoverers["__oracle__"] = OracleRecoverer().fit(self.data["train"], progress=False)
        return self._recoverers["__oracle__"]

    def sweep_recoverer(self, label: str, seed: int) -> Recoverer:
        """A fresh controlled-quality wrapper around the oracle (its draws restart per seed)."""
        from dymo.recovery.quality import ControlledQualityRecoverer

        p_noise, p_mis = _parse_sweep_label(label)
        rec = ControlledQualityRecoverer(self.oracle(), p_noise=p_noise, p_misaligned=p_mis, seed=seed, max_embedded_mb=1e9)
        return rec.fit(self.data["train"], progress=False)

    # -- baselines --------------------------------------------------------------------------------
    def baseline(self, name: str) -> Any:
        if name in self._baselines:
            return self._baselines[name]
        if name in FROM_BACKBONE:
            metric = self.config.metrics[0]
            obj = baseline_class(name).from_backbone(self.backbone(metric), class_names=self.data.class_names)
            self.info[f"baseline {name}"] = f"the {metric} DyMo backbone"
        else:
            path = self.folder / f"baseline-{name}"
            if (path / "config.json").exists():
                obj = load_baseline(path)
                self.info[f"baseline {name}"] = f"trained here earlier, reused from {path}"
            else:
                overrides = _baseline_overrides(name, self.config)
                self.log(f"fitting the {name} baseline on {len(self.data['train'])} samples -> {path}")
                _quiet_lightning()
                obj = get_baseline(name, **overrides).fit(self.data, progress=self.progress)
                obj.save(path)
                self.info[f"baseline {name}"] = f"trained here into {path}"
            epochs = getattr(getattr(obj.config, "train", None), "epochs", None)
            if epochs is not None:
                self.info[f"baseline {name}"] += f" (max {epochs} epochs)"
        self._baselines[name] = obj
        return obj


def backbone_metric(run: str | Path) -> str:
    """The metric of a trained backbone run folder (from its ``config.json``)."""
    path = Path(run)
    try:
        return str(read_json(path / "config.json")["backbone"].get("metric", "cosine"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise BundleError(f"{path}: not a backbone run folder (needs config.json from `dymo train backbone`)") from None


def _load_recoverer(path: Path, train: MultimodalDataset, data: SplitDataset) -> Recoverer:
    """Load a saved recoverer: its own training-data reference first, else the given training
    set (the benchmark's subset), else the full training split it may have been fitted on."""
    from dymo.recovery.registry import load_recoverer

    try:
        return load_recoverer(path)
    except BundleError as first:
        for candidate in (train, data["train"]):
            try:
                return load_recoverer(path, train=candidate)
            except BundleError:
                continue
        raise first


def _parse_sweep_label(label: str) -> tuple[float, float]:
    m = re.fullmatch(r"oracle\[noise=([0-9.e-]+),misaligned=([0-9.e-]+)\]", label)
    if not m:
        raise ConfigError(f"not a quality-sweep recoverer label: {label!r}")
    return float(m.group(1)), float(m.group(2))


def _run_scale(run: Path) -> str:
    try:
        m = read_json(run / "metrics.json")
        return f" ({m.get('train_samples', '?')} training samples, {m.get('epochs_run', '?')} epochs)"
    except (OSError, ValueError):
        return ""


def _quiet_lightning() -> None:
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for msg in (".*LeafSpec.*", ".*log_every_n_steps.*", ".*does not have many workers.*", ".*litlogger.*"):
        warnings.filterwarnings("ignore", message=msg)


# -- evaluation of one (scenario, seed) group ---------------------------------------------------


@dataclass
class _Accum:
    probs: list[torch.Tensor] = field(default_factory=list)
    steps: list[torch.Tensor] = field(default_factory=list)
    added: list[torch.Tensor] = field(default_factory=list)
    seconds: float = 0.0


def _evaluate_group(
    scenario: str,
    seed: int,
    cells: list[Cell],
    models: Models,
    test: MultimodalDataset,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> dict[tuple, MethodMetrics]:
    """Evaluate ``cells`` (all of this scenario and seed) in one pass over the test set."""
    from dymo.recovery.quality import ShuffledRecoverer

    n, mods = len(test), test.modalities
    obs_all = scenario_mask(scenario, n, mods, seed)
    by_rec: dict[str, list[Cell]] = {}
    for c in cells:
        by_rec.setdefault(c.recoverer, []).append(c)
    recs: dict[str, Recoverer] = {}
    shufflers: dict[str, tuple[_Replay, Recoverer]] = {}
    for label, group in by_rec.items():
        if label == NO_RECOVERY:
            continue
        recs[label] = models.sweep_recoverer(label, seed) if label.startswith("oracle[") else models.recoverer(label)
        if any(c.method.name == "oracle-selection-shuffled" for c in group):
            replay = _Replay(test)
            shufflers[label] = (replay, ShuffledRecoverer(replay, seed=seed).fit(test, progress=False))
    acc = {c.key: _Accum() for c in cells}
    rec_seconds = dict.fromkeys(by_rec, 0.0)
    labels_all = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        full = test.batch(idx).with_observed(obs_all[idx])
        hidden = hide_missing(full)
        labels_all.append(full.labels)
        for label, group in by_rec.items():
            rec = None
            if label != NO_RECOVERY:
                t0 = time.perf_counter()
                r = recs[label]
                rec = r.recover(full if r.reads_missing else hidden)
                rec_seconds[label] += time.perf_counter() - t0
            _evaluate_batch(group, models, full, hidden, rec, shufflers.get(label), acc)
        if on_batch is not None:
            on_batch(len(idx))
    labels = torch.cat(labels_all)
    return {c.key: _finish(c, acc[c.key], labels, obs_all, mods, rec_seconds[c.recoverer], models.data.num_classes) for c in cells}


def _evaluate_batch(
    cells: list[Cell],
    models: Models,
    full: MultimodalBatch,
    hidden: MultimodalBatch,
    rec: MultimodalBatch | None,
    shuffler: tuple[_Replay, Recoverer] | None,
    acc: dict[tuple, _Accum],
) -> None:
    selection = [c for c in cells if c.method.kind == "selection"]
    for metric in dict.fromkeys(c.method.metric for c in selection):
        net = models.backbone(metric)
        device = next(net.parameters()).device
        t0 = time.perf_counter()
        with torch.no_grad():
            if rec is None:
                tokens = net.encode(hidden.to(device).data, hidden.observed.to(device))
            else:
                tokens = net.encode(rec.to(device).data, torch.ones_like(hidden.observed).to(device))
        encode_s = time.perf_counter() - t0
        candidates = ~hidden.observed if rec is not None else torch.zeros_like(hidden.observed)
        for c in (c for c in selection if c.method.metric == metric):
            t1 = time.perf_counter()
            cal = models.calibration(metric) if c.method.base in SEARCHING else _dummy_calibration(net)
            cand = candidates if c.method.base != "discard" else torch.zeros_like(candidates)
            res = select_with_backbone(net, tokens, hidden.observed, cand, cal, models.selection_config(c.method.base, metric, c.recoverer))
            a = acc[c.key]
            a.seconds += time.perf_counter() - t1 + encode_s
            a.probs.append(res.probabilities.float().cpu())
            a.steps.append(res.steps.cpu())
            a.added.append(res.added.cpu())
    shuffled = None
    for c in cells:
        if c.method.kind == "selection":
            continue
        b = models.baseline(c.method.base)
        t1 = time.perf_counter()
        if c.method.base == "oracle-complete":
            probs = b.predict_proba(full)
        elif c.method.name == "oracle-selection-shuffled":
            assert shuffler is not None and rec is not None
            if shuffled is None:
                shuffler[0].current = rec
                shuffled = shuffler[1].recover(hidden)
            probs = b.predict_proba(hidden, recovered=shuffled)
        else:
            probs = b.predict_proba(hidden, recovered=rec if b.uses_recovery else None)
        a = acc[c.key]
        a.seconds += time.perf_counter() - t1
        a.probs.append(probs.float())


def _finish(
    cell: Cell, a: _Accum, labels: torch.Tensor, obs_all: torch.Tensor, mods: Sequence[str], rec_s: float, num_classes: int
) -> MethodMetrics:
    probs = torch.cat(a.probs)
    pred = probs.argmax(1)
    correct = (pred == labels).float()
    n_obs = obs_all.sum(1)
    cand = ~obs_all
    selection = cell.method.kind == "selection"
    steps = torch.cat(a.steps) if selection else torch.zeros(len(labels), dtype=torch.long)
    added = torch.cat(a.added) if selection else torch.zeros_like(obs_all)
    offered = int(cand.sum()) if selection and cell.method.base != "discard" else 0
    hist = torch.bincount(steps, minlength=1).float() / len(steps)
    return MethodMetrics(
        method=cell.method.name,
        scenario=cell.scenario,
        seed=cell.seed,
        n=len(labels),
        accuracy=float(correct.mean()),
        auc=_auc(probs, labels, num_classes),
        ece=_ece(probs, labels, num_classes),
        avg_steps=float(steps.float().mean()),
        acceptance_rate=(float(added.sum()) / offered) if offered else None,
        acceptance_per_modality={
            name: (float(added[:, i].sum() / cand[:, i].sum()) if offered and cand[:, i].any() else None)
            for i, name in enumerate(mods)
        },
        accuracy_by_num_observed={int(k): float(correct[n_obs == k].mean()) for k in torch.unique(n_obs).tolist()},
        missing_rate=float(cand.float().mean()),
        seconds=round(a.seconds + (rec_s if cell.recoverer != NO_RECOVERY else 0.0), 3),
        extra={"recoverer": cell.recoverer, "steps_hist": [round(float(v), 6) for v in hist]},
    )


def _ece(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Expected calibration error of the top-class confidence (15 equal-width bins, L1)."""
    from torchmetrics.functional.classification import (
        binary_calibration_error,
        multiclass_calibration_error,
    )

    if num_classes == 2:
        return float(binary_calibration_error(probs[:, 1], labels, n_bins=15))
    return float(multiclass_calibration_error(probs, labels, num_classes=num_classes, n_bins=15))


def _auc(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float | None:
    """Binary AUROC, or macro one-vs-rest AUROC when every class occurs in ``labels``."""
    present = torch.unique(labels)
    if len(present) < 2:
        return None
    if num_classes == 2:
        from torchmetrics.functional.classification import binary_auroc

        return float(binary_auroc(probs[:, 1], labels))
    if len(present) < num_classes:
        return None
    from torchmetrics.functional.classification import multiclass_auroc

    return float(multiclass_auroc(probs, labels, num_classes=num_classes, average="macro"))


# -- cells on disk -------------------------------------------------------------------------------


def _write_cell(folder: Path, cell: Cell, metrics: MethodMetrics) -> None:
    write_json(
        folder / cell.filename(),
        {
            "format": CELL_FORMAT,
            "method": cell.method.cell_name,
            "kind": cell.method.kind,
            "base": cell.method.base,
            "metric": cell.method.metric,
            "scenario": cell.scenario,
            "seed": cell.seed,
            "recoverer": cell.recoverer,
            "metrics": metrics.to_dict(),
        },
    )


def _read_cell(folder: Path, cell: Cell) -> dict[str, Any] | None:
    path = folder / cell.filename()
    if not path.exists():
        return None
    try:
        d = read_json(path)
    except (OSError, ValueError):
        log.warning("%s: unreadable cell file; it will be recomputed", path)
        return None
    if not isinstance(d, dict) or d.get("format") != CELL_FORMAT or (d.get("method"), d.get("scenario"), d.get("seed"), d.get("recoverer")) != cell.key:
        log.warning("%s: cell file does not match its cell; it will be recomputed", path)
        return None
    return d


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
    methods = plan_methods(config.methods, config.metrics)
    sweep_methods = plan_methods(SWEEP_METHODS, config.metrics) if config.quality_sweep else []
    uses = {m: _uses_recovery(m, config) for m in [*methods, *sweep_methods]}
    scaled = scale_dataset(data, config)
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
    _check_scale(out, scaled, config, models)
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
    done = {c.key: d for c in wanted if (d := _read_cell(cells_dir, c)) is not None}
    pending = [c for c in wanted if c.key not in done]
    say(f"{len(wanted)} cells: {len(done)} finished, {len(pending)} to compute")

    _prepare(pending, models)
    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in pending:
        groups.setdefault((c.scenario, c.seed), []).append(c)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        t_cells = bar.add_task("benchmark cells", total=len(pending))
        t_batch = bar.add_task("", total=len(test), visible=False)
        for (scenario, seed), group in groups.items():
            bar.reset(t_batch, total=len(test), visible=True, description=f"  {scenario} seed {seed}: {len(group)} cells")
            results = _evaluate_group(scenario, seed, group, models, test, config.batch_size, lambda k: bar.advance(t_batch, k))
            for c in group:
                _write_cell(cells_dir, c, results[c.key])
                done[c.key] = _read_cell(cells_dir, c)  # type: ignore[assignment]
            bar.advance(t_cells, len(group))
        bar.update(t_batch, visible=False)

    rows = [_row(done[c.key], c.method) for c in cells]
    sweep_rows = [_row(done[c.key], c.method) for c in sweep_cells]
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
            if m.base in SEARCHING:
                models.calibration(m.metric)  # type: ignore[arg-type]
            if m.base == "dymo" and c.recoverer != NO_RECOVERY:
                models.threshold(m.metric, c.recoverer)  # type: ignore[arg-type]
        else:
            models.baseline(m.base)
        if c.recoverer != NO_RECOVERY and not c.recoverer.startswith("oracle["):
            models.recoverer(c.recoverer)


def _check_scale(out: Path, data: SplitDataset, config: BenchmarkConfig, models: Models) -> None:
    """Refuse to mix results of different scales in one folder; record this run's settings."""
    scale = {
        "data": data.name,
        "modalities": list(data.modalities),
        "sizes": {s: len(data[s]) for s in ("train", "val", "test")},
        "subset_seed": config.subset_seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "backbone": config.backbone,
        "train": config.train,
        "baselines": config.baselines,
        "recoverers": config.recoverers,
    }
    scale = _json_normal(scale)
    sources = models.sources()
    path = out / "benchmark.json"
    if path.exists():
        try:
            old = read_json(path)
        except ValueError:
            raise ConfigError(f"{path}: corrupt; delete it (the cells stay valid only if the scale is unchanged)") from None
        for key, value in scale.items():
            if old.get("scale", {}).get(key) != value:
                raise ConfigError(
                    f"{out} holds a benchmark run at another scale ({key}: {old.get('scale', {}).get(key)!r} there, "
                    f"{value!r} now); use another --out folder"
                )
        for key, value in sources.items():
            prev = old.get("sources", {}).get(key)
            if prev is not None and prev != value:
                raise ConfigError(f"{out}: {key} came from {prev} in the earlier run, now from {value}; use another --out folder")
        sources = {**old.get("sources", {}), **sources}
    write_json(path, {"scale": scale, "sources": sources, "config": config.to_dict()})


def _json_normal(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))


def _row(cell: dict[str, Any], spec: MethodSpec) -> dict[str, Any]:
    m = cell["metrics"]
    return {
        "method": spec.name,
        "kind": cell["kind"],
        "base": cell["base"],
        "metric": cell["metric"] or "",
        "recoverer": cell["recoverer"],
        "scenario": cell["scenario"],
        "seed": cell["seed"],
        "n": m["n"],
        "accuracy": m["accuracy"],
        "auc": m["auc"],
        "ece": m.get("ece"),
        "steps": m["avg_steps"] if cell["kind"] == "selection" else None,
        "acceptance": m["acceptance_rate"],
        "seconds": m["seconds"],
        "missing_rate": m["missing_rate"],
        "acceptance_per_modality": m["acceptance_per_modality"],
        "steps_hist": m.get("extra", {}).get("steps_hist", []),
    }


# -- reports -------------------------------------------------------------------------------------


@dataclass
class Table:
    """A table rendered both as Markdown and as HTML."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    marked: list[bool] = field(default_factory=list)  # rows drawn as upper bounds in HTML

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        e = html.escape
        parts = [f"<h3>{e(self.title)}</h3>"]
        if self.note:
            parts.append(f"<p class='note'>{e(self.note)}</p>")
        parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in self.header) + "</tr></thead><tbody>")
        for i, r in enumerate(self.rows):
            cls = " class='upper'" if i < len(self.marked) and self.marked[i] else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>")
        parts.append("</tbody></table>")
        return "\n".join(parts)


UPPER_NOTE = (
    "EXPERIMENT-ONLY upper bounds, not methods: oracle-complete reads the true data of the missing "
    "modalities; oracle-selection reads the labels to pick the best subset of recovered modalities "
    "per sample; oracle-selection-shuffled does the same on recoveries of other samples of the batch, "
    "so only the gap between the two is what the recoveries carry."
)
SEEDS_NOTE = (
    "Every model is trained once; the seeds vary the missing-modality masks (and the random draws of the "
    "experiment-only shuffled / controlled-quality recoveries), so ± is the spread over masks (population std), "
    "not over training runs."
)


def _label(row: pd.Series, multi_rec: bool) -> str:
    if row["recoverer"] == NO_RECOVERY or not multi_rec:
        return str(row["method"])
    return f"{row['method']} [{row['recoverer']}]"


def _fmt(mean: float, std: float, n: int, scale: float = 100.0, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if n > 1 and not math.isnan(std):
        return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f}"


def _pivot(df: pd.DataFrame, value: str, columns: str, order: list[str], col_order: list[Any], scale: float = 100.0, digits: int = 2) -> list[list[str]]:
    rows = []
    for label in order:
        sub = df[df["label"] == label]
        cells = [label]
        for col in col_order:
            vals = pd.to_numeric(sub[sub[columns] == col][value], errors="coerce").dropna()
            cells.append(_fmt(float(vals.mean()), float(vals.std(ddof=0)), len(vals), scale, digits) if len(vals) else "-")
        rows.append(cells)
    return rows


def write_reports(
    out: Path,
    df: pd.DataFrame,
    sweep: pd.DataFrame,
    methods: list[MethodSpec],
    config: BenchmarkConfig,
    data: SplitDataset,
    model_info: dict[str, str],
) -> dict[str, Path]:
    """results.csv/.md, accuracy_vs_missing.png, ablation.md, selection_stats.md,
    quality_sweep.* (when swept) and the self-contained report.html."""
    files: dict[str, Path] = {}
    scenarios = list(config.missing)
    multi_rec = df["recoverer"][df["recoverer"] != NO_RECOVERY].nunique() > 1 if len(df) else False
    df = df.copy()
    df["label"] = [_label(r, multi_rec) for _, r in df.iterrows()]
    order = list(dict.fromkeys(df["label"]))
    upper = {lab for lab, k in zip(df["label"], df["kind"], strict=True) if k == "upper"}
    main_order = [lab for lab in order if lab not in upper]
    upper_order = [lab for lab in order if lab in upper]

    csv_cols = ["method", "kind", "metric", "recoverer", "scenario", "seed", "n", "accuracy", "auc", "ece", "steps", "acceptance", "seconds", "missing_rate"]
    _write_csv(out / "results.csv", df[csv_cols].rename(columns={"kind": "family"}))
    files["results.csv"] = out / "results.csv"

    nseeds = len(config.seeds)
    acc_title = f"Accuracy (%), mean ± std over {nseeds} seed(s)" if nseeds > 1 else "Accuracy (%)"
    main = Table(acc_title, ["method", *scenarios], _pivot(df, "accuracy", "scenario", main_order, scenarios), SEEDS_NOTE)
    tables = [main]
    if upper_order:
        tables.append(
            Table(
                "Upper bounds (EXPERIMENT-ONLY), accuracy (%)", ["upper bound", *scenarios],
                _pivot(df, "accuracy", "scenario", upper_order, scenarios), UPPER_NOTE, [True] * len(upper_order),
            )
        )
    if df["auc"].notna().any():
        tables.append(Table("AUC (%; macro one-vs-rest when multi-class)", ["method", *scenarios], _pivot(df, "auc", "scenario", main_order, scenarios)))
    tables.append(Table("Seconds per cell (method + its share of recovery/encoding)", ["method", *scenarios], _pivot(df, "seconds", "scenario", order, scenarios, 1.0, 1)))
    header = _header_lines(config, data, model_info)
    _write_md(out / "results.md", f"Benchmark: {data.name}", header, tables)
    files["results.md"] = out / "results.md"

    fig_path = out / "accuracy_vs_missing.png"
    _plot_vs_missing(df, scenarios, main_order, upper_order, fig_path, f"{data.name}: accuracy vs missing scenario")
    files["accuracy_vs_missing.png"] = fig_path

    ablation = _ablation_tables(df, methods, scenarios, multi_rec)
    _write_md(out / "ablation.md", f"Ablation: {data.name}", ["DyMo's ablation (METHOD.md): fuse all recovered, add all positive-reward at once, "
              "iterative without ICS, iterative with ICS (dymo). discard (no recovery) for reference.", SEEDS_NOTE], ablation)
    files["ablation.md"] = out / "ablation.md"

    stats = _selection_tables(df, methods, scenarios, data.modalities, multi_rec)
    _write_md(out / "selection_stats.md", f"Selection statistics: {data.name}", [
        "steps/sample = recovered modalities added per sample (simultaneous adds several in one step); "
        "acceptance = added / offered (missing, hence recovered) modalities. Means over seeds."], stats)
    files["selection_stats.md"] = out / "selection_stats.md"

    sweep_tables: list[Table] = []
    sweep_png = None
    if len(sweep):
        sweep_tables, sweep_png = _quality_sweep(out, sweep, files)
    html_path = out / "report.html"
    _write_html(html_path, data.name, config, data, model_info, tables, fig_path, ablation, stats, sweep_tables, sweep_png)
    files["report.html"] = html_path
    return files


def _header_lines(config: BenchmarkConfig, data: SplitDataset, model_info: dict[str, str]) -> list[str]:
    sizes = ", ".join(f"{s} {len(data[s])}" for s in ("train", "val", "test"))
    return [
        f"Command: `{config.command or '(Python API: run_benchmark)'}`",
        "",
        f"Scale: {sizes} samples; training budget {config.epochs} epoch(s) for what this run trains; "
        f"seeds {list(config.seeds)}; recovery {list(config.recovery)}.",
        "",
        *(f"- {k}: {v}" for k, v in model_info.items()),
    ]


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def _write_md(path: Path, title: str, intro: list[str], tables: list[Table]) -> None:
    text = "\n".join([f"# {title}", "", *intro, ""]) + "\n" + "\n".join(t.markdown() for t in tables)
    with atomic_write(path) as f:
        f.write(text)


def _selection_groups(df: pd.DataFrame, methods: list[MethodSpec], multi_rec: bool) -> list[tuple[str, str]]:
    """(metric, recoverer) pairs for which selection methods were benchmarked."""
    sel = df[df["kind"] == "selection"]
    pairs = []
    for metric in dict.fromkeys(m.metric for m in methods if m.kind == "selection"):
        for rec in dict.fromkeys(sel[(sel["metric"] == metric) & (sel["recoverer"] != NO_RECOVERY)]["recoverer"]):
            pairs.append((str(metric), str(rec)))
    return pairs


def _ablation_tables(df: pd.DataFrame, methods: list[MethodSpec], scenarios: list[str], multi_rec: bool) -> list[Table]:
    tables = []
    multi_metric = len({m.metric for m in methods if m.kind == "selection"}) > 1
    for metric, rec in _selection_groups(df, methods, multi_rec):
        labels = []
        for base in ("discard", *ABLATION):
            spec = next((m for m in methods if m.kind == "selection" and m.base == base and m.metric == metric), None)
            if spec is None:
                continue
            r = NO_RECOVERY if base == "discard" else rec
            hit = df[(df["method"] == spec.name) & (df["recoverer"] == r)]
            if len(hit):
                labels.append(hit["label"].iloc[0])
        if len(labels) < 2:
            continue
        where = f"{metric} backbone, recovery {rec}" if (multi_metric or multi_rec) else f"recovery {rec}"
        tables.append(Table(f"Ablation accuracy (%), {where}", ["variant", *scenarios], _pivot(df, "accuracy", "scenario", labels, scenarios)))
        tables.append(Table(f"Ablation steps per sample, {where}", ["variant", *scenarios], _pivot(df, "steps", "scenario", labels, scenarios, 1.0, 2)))
    return tables


def _selection_tables(df: pd.DataFrame, methods: list[MethodSpec], scenarios: list[str], mods: Sequence[str], multi_rec: bool) -> list[Table]:
    tables = []
    for spec in methods:
        if spec.kind != "selection" or spec.base not in SEARCHING:
            continue
        for rec in dict.fromkeys(df[(df["method"] == spec.name) & (df["recoverer"] != NO_RECOVERY)]["recoverer"]):
            sub = df[(df["method"] == spec.name) & (df["recoverer"] == rec)]
            max_steps = max((len(h) for h in sub["steps_hist"]), default=1)
            kcols = [f"{k} added" for k in range(max_steps)]
            rows = []
            for s in scenarios:
                part = sub[sub["scenario"] == s]
                if not len(part):
                    continue
                hist = np.zeros(max_steps)
                for h in part["steps_hist"]:
                    hist[: len(h)] += np.asarray(h)
                hist /= len(part)
                acc_mod = []
                for name in mods:
                    vals = [d.get(name) for d in part["acceptance_per_modality"] if d.get(name) is not None]
                    acc_mod.append(f"{100 * np.mean(vals):.1f}%" if vals else "-")
                accept = pd.to_numeric(part["acceptance"], errors="coerce").dropna()
                rows.append([
                    s, f"{part['steps'].astype(float).mean():.2f}", *(f"{100 * v:.1f}%" for v in hist),
                    f"{100 * accept.mean():.1f}%" if len(accept) else "-", *acc_mod,
                ])
            title = f"{spec.name}" + (f" [{rec}]" if multi_rec else "")
            tables.append(Table(f"{title}: steps and acceptance", ["scenario", "steps/sample", *kcols, "acceptance", *(f"accept {m}" for m in mods)], rows))
    return tables


def _scenario_x(scenarios: list[str]) -> tuple[list[float], str, list[str]]:
    parsed = [parse_scenario(s) for s in scenarios]
    if all(p.kind == "random" for p in parsed):
        return [p.eta for p in parsed], "missing rate eta (random:ETA)", [f"{p.eta:g}" for p in parsed]
    return list(range(len(scenarios))), "missing scenario", scenarios


def _plot_vs_missing(df: pd.DataFrame, scenarios: list[str], main_order: list[str], upper_order: list[str], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    xs, xlabel, ticks = _scenario_x(scenarios)
    import matplotlib

    labels = [*main_order, *upper_order]
    fig = Figure(figsize=(9.0, max(4.5, 0.2 * len(labels) + 1.0)), dpi=110)
    ax = fig.subplots()
    if len(labels) > 10:  # the default cycle repeats after 10 colours
        cmap = matplotlib.colormaps["tab20"]
        ax.set_prop_cycle(color=[cmap(i % 20) for i in range(len(labels))])
    for label in labels:
        sub = df[df["label"] == label]
        means, stds = [], []
        for s in scenarios:
            v = sub[sub["scenario"] == s]["accuracy"].astype(float)
            means.append(100 * v.mean() if len(v) else np.nan)
            stds.append(100 * v.std(ddof=0) if len(v) > 1 else 0.0)
        is_upper = label in upper_order
        ax.errorbar(
            xs, means, yerr=stds, marker="o", ms=3, capsize=2, lw=1.2,
            ls="--" if is_upper else "-", alpha=0.7 if is_upper else 1.0,
            label=f"{label} (upper bound)" if is_upper else label,
        )
    ax.set_xticks(xs)
    ax.set_xticklabels(ticks, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    # "tight" grows the canvas to the legend, which sits outside the axes
    atomic_replace_from(lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"), path)


def _quality_sweep(out: Path, sweep: pd.DataFrame, files: dict[str, Path]) -> tuple[list[Table], Path]:
    from matplotlib.figure import Figure

    rows = []
    for _, r in sweep.iterrows():
        if r["recoverer"] == NO_RECOVERY:
            points = [("misaligned", p) for p in SWEEP_LEVELS] + [("noise", p) for p in SWEEP_LEVELS]
        else:
            p_noise, p_mis = _parse_sweep_label(r["recoverer"])
            points = [("misaligned", p_mis)] if p_noise == 0 else []
            points += [("noise", p_noise)] if p_mis == 0 else []
        for kind, p in points:
            rows.append({"sweep": kind, "p": p, **{k: r[k] for k in ("method", "seed", "accuracy", "auc", "steps", "acceptance", "seconds")}})
    tab = pd.DataFrame(rows)
    _write_csv(out / "quality_sweep.csv", tab)
    files["quality_sweep.csv"] = out / "quality_sweep.csv"
    tables = []
    fig = Figure(figsize=(9, 3.6), dpi=110)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind, what in zip(axes, ("misaligned", "noise"), ("p_misaligned (p_noise 0)", "p_noise (p_misaligned 0)"), strict=True):
        part = tab[tab["sweep"] == kind].rename(columns={"method": "label"})
        order = list(dict.fromkeys(part["label"]))
        tables.append(Table(f"Accuracy (%) vs {what}, oracle recovery degraded, {SWEEP_SCENARIO}", ["method", *(f"{p:g}" for p in SWEEP_LEVELS)],
                            _pivot(part, "accuracy", "p", order, list(SWEEP_LEVELS))))
        for label in order:
            g = part[part["label"] == label].groupby("p")["accuracy"]
            ax.errorbar(list(g.mean().index), 100 * g.mean().values, yerr=100 * g.std(ddof=0).fillna(0).values, marker="o", ms=3, capsize=2, label=label)
        ax.set_xlabel(what)
        ax.set_title(f"{kind} recoveries", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    png = out / "quality_sweep.png"
    atomic_replace_from(lambda tmp: fig.savefig(tmp, format="png"), png)
    files["quality_sweep.png"] = png
    _write_md(out / "quality_sweep.md", "Quality sweep", [
        f"The oracle recoverer (true data) wrapped in ControlledQualityRecoverer at {SWEEP_SCENARIO}: a recovered "
        "modality is misaligned (a training sample of another class) or low-fidelity (heavy noise) with the given "
        "probability. EXPERIMENT-ONLY (the wrapper reads the labels to misalign).", SEEDS_NOTE], tables)
    files["quality_sweep.md"] = out / "quality_sweep.md"
    return tables, png


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}thead{background:#f0f0f0}tr.upper{background:#fff4e0;font-style:italic}
pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap}.note{color:#555;font-size:.9em}img{max-width:100%}
"""


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _write_html(
    path: Path, name: str, config: BenchmarkConfig, data: SplitDataset, model_info: dict[str, str],
    tables: list[Table], fig: Path, ablation: list[Table], stats: list[Table], sweep: list[Table], sweep_png: Path | None,
) -> None:
    e = html.escape
    sizes = "".join(f"<tr><td>{s}</td><td>{len(data[s])}</td></tr>" for s in ("train", "val", "test"))
    models = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in model_info.items())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>dymo benchmark: {e(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Benchmark: {e(name)}</h1>",
        "<h2>Command</h2>", f"<pre>{e(config.command or '(Python API: run_benchmark)')}</pre>",
        "<h2>Scale</h2>",
        f"<table><thead><tr><th>split</th><th>samples</th></tr></thead><tbody>{sizes}</tbody></table>",
        f"<p>Training budget: {config.epochs} epoch(s) for what this run trains; seeds {e(str(list(config.seeds)))}; "
        f"scenarios {e(', '.join(config.missing))}; recovery {e(', '.join(config.recovery))}; batch size {config.batch_size}.</p>",
        f"<p class='note'>{e(SEEDS_NOTE)}</p>",
        "<h3>Models</h3>",
        f"<table><thead><tr><th>model</th><th>source</th></tr></thead><tbody>{models}</tbody></table>",
        "<h2>Results</h2>", *(t.html() for t in tables),
        "<h3>Accuracy vs missing</h3>", _png_tag(fig, "accuracy vs missing"),
        "<h2>Ablation</h2>", *(t.html() for t in ablation),
        "<h2>Selection statistics</h2>", *(t.html() for t in stats),
    ]
    if sweep:
        parts += ["<h2>Quality sweep</h2>", *(t.html() for t in sweep)]
        if sweep_png is not None:
            parts.append(_png_tag(sweep_png, "quality sweep"))
    parts.append("<p class='note'>Files: results.csv, results.md, ablation.md, selection_stats.md, accuracy_vs_missing.png"
                 + (", quality_sweep.*" if sweep else "") + "; one JSON per finished cell in cells/.</p></body></html>")
    with atomic_write(path) as f:
        f.write("\n".join(parts) + "\n")


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

