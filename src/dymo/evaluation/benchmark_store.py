"""What a benchmark folder holds: the trained models (``out/models``, trained once and reused),
the finished cells (``out/cells``, one JSON file each, written atomically) and the scale record
(``out/benchmark.json``) that keeps runs of different scales apart."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dymo.baselines.registry import baseline_class, get_baseline, load_baseline
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.errors import BundleError, ConfigError
from dymo.evaluation.benchmark_plan import (
    FROM_BACKBONE,
    NO_RECOVERY,
    BenchmarkConfig,
    Cell,
    LogFn,
    MethodSpec,
    baseline_overrides,
    parse_sweep_label,
)
from dymo.evaluation.metrics import MethodMetrics
from dymo.recovery.base import Recoverer
from dymo.recovery.registry import standalone_recoverers
from dymo.selection.calibration import Calibration
from dymo.utils.artifact import sha256_file, sha256_json
from dymo.utils.io import read_json, write_json

log = logging.getLogger("dymo.benchmark")
CELL_FORMAT = 1


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
        self._file_sha: dict[tuple[str, int, int], str] = {}
        from dymo.utils.scale import torch_device

        self.device = torch_device(config.device, "benchmark: device")

    # -- provenance: the hashes of the models a cell uses (its results are reused only with them)
    def _sha(self, path: Path) -> str | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        if key not in self._file_sha:
            self._file_sha[key] = sha256_file(path)
        return self._file_sha[key]

    def _folder_sha(self, folder: Path, names: Sequence[str]) -> str | None:
        if not (folder / names[0]).exists():
            return None
        return sha256_json({n: self._sha(folder / n) for n in names})

    def model_hashes(self, cell: Cell) -> dict[str, str | None]:
        """sha256 of the weights behind ``cell``: its backbone (or baseline) and its recoverer."""
        m = cell.method
        out: dict[str, str | None] = {}
        if m.kind == "selection" or m.base in FROM_BACKBONE:
            metric = m.metric if m.kind == "selection" else self.config.metrics[0]
            out["backbone"] = self._sha(self.backbone_source(metric) / "backbone.safetensors")  # type: ignore[arg-type]
        else:
            out["baseline"] = self._folder_sha(self.folder / f"baseline-{m.base}", ["config.json", "weights.safetensors"])
        if cell.recoverer != NO_RECOVERY and not cell.recoverer.startswith("oracle["):
            source = self.recovery_sources.get(cell.recoverer, "")
            folder = self.folder / f"recovery-{source.split(':', 1)[1]}" if source.startswith("trained:") else Path(source)
            out["recoverer"] = self._folder_sha(folder, ["config.json", "weights.safetensors", "train_data.safetensors"])
        if m.kind == "selection" and m.base == "dymo" and cell.recoverer != NO_RECOVERY:
            # the tuned acceptance rule: a cell of a rule since retuned (file removed) is recomputed
            out["rule"] = self._sha(self.threshold_path(m.metric, cell.recoverer))  # type: ignore[arg-type]
        return out

    # where things come from (recorded in benchmark.json; a rerun must agree)
    def sources(self) -> dict[str, str]:
        """Where each backbone and recoverer comes from: a folder given on the command line, or
        ``trained:NAME`` for a model this folder trains itself (so a copied or moved benchmark
        folder resumes)."""
        out = {
            f"backbone-{m}": str(self.backbone_runs[m]) if m in self.backbone_runs else f"trained:backbone-{m}"
            for m in self.config.metrics
        }
        out.update({f"recovery-{k}": v for k, v in self.recovery_sources.items()})
        return out

    def legacy_source(self, key: str) -> str | None:
        """How folders written before ``trained:backbone-*`` recorded this key (the absolute or
        given path of the model inside this folder); None when the key is not a trained backbone."""
        m = key.removeprefix("backbone-")
        if key.startswith("backbone-") and m not in self.backbone_runs:
            return str(self.folder / f"backbone-{m}")
        return None

    def backbone_source(self, metric: str) -> Path:
        return self.backbone_runs.get(metric, self.folder / f"backbone-{metric}")

    def _recovery_label(self, item: str) -> tuple[str, str]:
        if item in standalone_recoverers():
            return item, f"trained:{item}"
        path = Path(item)
        if (path / "config.json").exists():
            try:
                kind = read_json(path / "config.json")["kind"]
            except (ValueError, KeyError, TypeError):
                raise BundleError(f"{path}/config.json: not a saved recoverer") from None
            return str(kind), str(path)
        raise ConfigError(f"--recovery {item!r}: neither a recoverer kind ({', '.join(standalone_recoverers())}) nor a saved recoverer folder")

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
            from dymo.utils.scale import lightning_target

            accelerator, devices = lightning_target(self.device)
            train_backbone(
                self.data, run, bcfg, tcfg, data_ref={"name": self.data.name}, progress=self.progress,
                resume=run.exists(), evaluate_test=False,  # continues an interrupted one
                accelerator=accelerator, devices=devices,
            )
            self.info[f"backbone {metric}"] = f"trained here into {run}" + _run_scale(run)
        else:
            self.info[f"backbone {metric}"] = f"trained here earlier, reused from {run}" + _run_scale(run)
        net = load_backbone(run, map_location=str(self.device))
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
        cal = Calibration.load(path) if path.exists() else None
        if cal is not None:
            try:
                cal.check_backbone(run / "backbone.safetensors", path)
            except BundleError as e:
                # The backbone was retrained after this calibration: recompute (never into a reused run).
                self.log(f"{e}; recomputing it")
                path = path if metric not in self.backbone_runs else self.folder / f"calibration-{metric}.safetensors"
                cal = None
        if cal is not None:
            self.info[f"calibration {metric}"] = f"{path}"
        else:
            train = self.data["train"]
            self.log(f"calibrating the {metric} backbone on {len(train)} training samples -> {path}")
            cal = compute_calibration(self.backbone(metric), train, batch_size=self.config.calibration_batch_size, progress=self.progress)
            cal.save(path, backbone_sha256=self._sha(run / "backbone.safetensors"))
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
                rec = get_recoverer(kind, **overrides).to(self.device)
                self.log(f"fitting the {kind} recoverer on {len(train)} training samples -> {path}")
                kwargs = {"run_dir": path} if "run_dir" in inspect.signature(rec.fit).parameters else {}
                rec.fit(train, progress=self.progress, **kwargs)
                rec.save(path)
                self.info[f"recovery {label}"] = f"trained here on {len(train)} samples into {path}"
        else:
            rec = _load_recoverer(Path(source), train, self.data)
            self.info[f"recovery {label}"] = f"reused {source}"
        rec = rec.to(self.device)
        if rec.modalities != self.data.modalities:
            raise ConfigError(f"recoverer {label!r} knows modalities {list(rec.modalities)}, the data has {list(self.data.modalities)}")
        self._recoverers[label] = rec
        return rec

    def threshold_path(self, metric: str, label: str) -> Path:
        """Where the tuned acceptance rule of this backbone and recoverer is cached."""
        return self.folder / f"threshold-{metric}-{re.sub(r'[^A-Za-z0-9._=-]+', '_', label)}.json"

    def threshold(self, metric: str, label: str) -> Any:
        """DyMo's acceptance rule (a :class:`~dymo.selection.acceptance.ThresholdTuning`) for this
        backbone and recoverer, tuned on the (scaled) validation split under simulated
        missingness; cached in ``threshold-<metric>-<label>.json``."""
        from dymo.selection.acceptance import ThresholdTuning
        from dymo.selection.tuning import tune_threshold

        key = f"threshold {metric} {label}"
        if key in self._thresholds:
            return self._thresholds[key]
        path = self.threshold_path(metric, label)
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
            f"tau per number observed {tuned.thresholds}, for samples that added a recovery weight {tuned.added_weight:g} "
            f"on the used modalities' logits (the rest on the observed ones') and temperature "
            f"{tuned.added_temperatures or tuned.added_temperature} "
            f"(tuned on validation, {path.name})"
        )
        self._thresholds[key] = tuned
        return tuned

    def selection_config(self, base: str, metric: str, label: str) -> Any:
        """``dymo``: the tuned acceptance rule; ``dymo-paper`` and the ablation variants: tau 0."""
        from dymo.selection.selector import SelectionConfig

        if base == "dymo" and label != NO_RECOVERY:
            tuned = self.threshold(metric, label)
            return SelectionConfig(
                method="dymo", threshold=tuned.thresholds, added_temperature=tuned.added_temperatures or tuned.added_temperature,
                added_weight=tuned.added_weight,
            )
        return SelectionConfig.from_dict(
            {"method": "dymo" if base == "dymo-paper" else base, "threshold": 0.0, "added_temperature": 1.0, "added_weight": 1.0}
        )

    def oracle(self) -> Recoverer:
        if "__oracle__" not in self._recoverers:
            from dymo.recovery.oracle import OracleRecoverer

            self._recoverers["__oracle__"] = OracleRecoverer().fit(self.data["train"], progress=False)
        return self._recoverers["__oracle__"]

    def sweep_recoverer(self, label: str, seed: int) -> Recoverer:
        """A fresh controlled-quality wrapper around the oracle (its draws restart per seed)."""
        from dymo.recovery.quality import ControlledQualityRecoverer

        p_noise, p_mis = parse_sweep_label(label)
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
                overrides = baseline_overrides(name, self.config)
                self.log(f"fitting the {name} baseline on {len(self.data['train'])} samples -> {path}")
                _quiet_lightning()
                obj = get_baseline(name, **overrides).to(self.device)
                obj.fit(self.data, progress=self.progress)
                obj.save(path)
                self.info[f"baseline {name}"] = f"trained here into {path}"
            epochs = getattr(getattr(obj.config, "train", None), "epochs", None)
            if epochs is not None:
                self.info[f"baseline {name}"] += f" (max {epochs} epochs)"
        self._baselines[name] = obj.to(self.device)
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


# -- cells on disk -------------------------------------------------------------------------------


def write_cell(folder: Path, cell: Cell, metrics: MethodMetrics, models: dict[str, str | None] | None = None) -> None:
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
            "models": models or {},
            "metrics": metrics.to_dict(),
        },
    )


def read_cell(folder: Path, cell: Cell, models: dict[str, str | None] | None = None) -> dict[str, Any] | None:
    """A finished cell, if its file matches the cell and (``models`` given) was computed with
    the models of these hashes (see :meth:`Models.model_hashes`); else None (recompute)."""
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
    if models is not None and (None in models.values() or d.get("models") != models):
        log.info("%s: computed with other models (a model was retrained since); it will be recomputed", path)
        return None
    return d


def check_scale(out: Path, data: SplitDataset, config: BenchmarkConfig, models: Models) -> None:
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
            if prev is not None and prev == models.legacy_source(key):
                prev = value  # recorded by an earlier version at this same place
            if prev is not None and prev != value:
                raise ConfigError(f"{out}: {key} came from {prev} in the earlier run, now from {value}; use another --out folder")
        sources = {**old.get("sources", {}), **sources}
    write_json(path, {"scale": scale, "sources": sources, "config": config.to_dict()})


def _json_normal(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))


def cell_row(cell: dict[str, Any], spec: MethodSpec) -> dict[str, Any]:
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
        "balanced_accuracy": m.get("balanced_accuracy"),
        "macro_f1": m.get("macro_f1"),
        "auc": m["auc"],
        "ece": m.get("ece"),
        "steps": m["avg_steps"] if cell["kind"] == "selection" else None,
        "acceptance": m["acceptance_rate"],
        "seconds": m["seconds"],
        "missing_rate": m["missing_rate"],
        "acceptance_per_modality": m["acceptance_per_modality"],
        "steps_hist": m.get("extra", {}).get("steps_hist", []),
    }
