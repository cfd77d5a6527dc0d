"""The benchmark's plan: its config, the methods it expands to and the cells (method x
scenario x seed x recoverer) it evaluates. See :mod:`dymo.evaluation.benchmark`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dymo.baselines.registry import BASELINES, baseline_class, get_baseline
from dymo.config import Config
from dymo.data.dataset import SplitDataset
from dymo.data.scenarios import parse_scenario
from dymo.errors import ConfigError
from dymo.selection.selector import METHODS, canonical_name

METRIC_NAMES = ("cosine", "euclidean")
#: DyMo with the paper's acceptance rule (tau 0); ``dymo`` uses the rule tuned on validation.
RULE_VARIANTS = ("dymo-paper",)
#: The ablation of the paper, in its order (then the calibrated acceptance rule).
ABLATION = ("fuse-all", "simultaneous", "iterative", "dymo-paper", "dymo")
#: EXPERIMENT-ONLY upper bounds: they read the true missing data or the labels.
UPPER_BOUNDS = ("oracle-complete", "oracle-selection", "oracle-selection-shuffled")
#: Baselines that are the DyMo backbone with a fixed policy: no training of their own.
FROM_BACKBONE = ("fuse-all", "oracle-complete", "oracle-selection")
NO_RECOVERY = "none"
DEFAULT_METHODS = (
    "dymo", "iterative", "simultaneous", "fuse-all", "discard", "moddrop", "mtl", "late-fusion",
    "oracle-complete", "oracle-selection",
)
SWEEP_SCENARIO = "random:0.6"
SWEEP_LEVELS = (0.0, 0.25, 0.5, 0.75)
SWEEP_METHODS = ("discard", "fuse-all", "dymo-paper", "dymo")

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
    ``command``: the command line, recorded in the report. ``device``: where models train and
    run (``cpu``, ``cuda``, ``cuda:N``); not part of the scale record, so a folder can be
    resumed on another device (its numbers then differ within float rounding only).
    """

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    missing: list[str] = field(default_factory=lambda: ["random:0.2", "random:0.4", "random:0.6", "random:0.8"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    recovery: list[str] = field(default_factory=lambda: ["retrieval"])
    backbones: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["cosine"])
    epochs: int | None = 3  # None: the budget that scales with the data (training.config.auto_epochs)
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
    device: str = "cpu"

    def validate(self) -> None:
        from dymo.utils.scale import torch_device

        torch_device(self.device, "benchmark: device")
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
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or self.calibration_batch_size < 1:
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
        name = canonical_name(raw.strip())  # a deprecated alias (impute-all) warns
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


def uses_recovery(spec: MethodSpec, config: BenchmarkConfig) -> bool:
    if spec.kind == "selection":
        return spec.base != "discard"
    if spec.base == "oracle-complete":
        return False
    if spec.base in ("fuse-all", "oracle-selection"):
        return True
    # Some baselines choose their inputs in their config (e.g. dynmm inputs=recovered).
    return bool(get_baseline(spec.name, **baseline_overrides(spec.name, config)).uses_recovery)


def baseline_overrides(name: str, config: BenchmarkConfig) -> dict[str, Any]:
    """The config overrides of baseline ``name``: the run's epochs, the run's device (for its
    training engine), then the config file's settings."""
    cls = baseline_class(name)
    fields = set(cls.config_class.__dataclass_fields__)
    base: dict[str, Any] = {"train": {"epochs": config.epochs}} if "train" in fields else {}
    if "train" in fields and config.device != "cpu":
        from dymo.utils.scale import lightning_target, torch_device

        base["train"]["accelerator"] = lightning_target(torch_device(config.device))[0]
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


def parse_sweep_label(label: str) -> tuple[float, float]:
    m = re.fullmatch(r"oracle\[noise=([0-9.e-]+),misaligned=([0-9.e-]+)\]", label)
    if not m:
        raise ConfigError(f"not a quality-sweep recoverer label: {label!r}")
    return float(m.group(1)), float(m.group(2))
