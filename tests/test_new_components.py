"""The guides of docs/contributing.md, followed once each: a toy recoverer, a toy baseline, a
toy dataset and a toy modality kind are written here and registered at test time (one registry
line or decorator each, as the guide says), then run through the same paths as the shipped ones,
without editing any other list."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import cli_text
from dymo.baselines.base import Baseline
from dymo.baselines.registry import BASELINES, load_baseline
from dymo.config import Config
from dymo.data import registry as data_registry
from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.kinds import base as kinds_base
from dymo.data.kinds import register_kind
from dymo.data.kinds.base import ModalityKind
from dymo.data.specs import ModalitySpec
from dymo.data.synthetic import make_synthetic_splits
from dymo.errors import DataError
from dymo.evaluation.benchmark import BenchmarkConfig, run_benchmark
from dymo.evaluation.pipeline import evaluate_methods
from dymo.inference.classifier import DyMoClassifier
from dymo.models import encoders as encoders_module
from dymo.models import networks as networks_module
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.models.encoders import register_encoder
from dymo.models.networks import register_network
from dymo.recovery.base import Recoverer, RecovererConfig, require_weights
from dymo.recovery.registry import RECOVERERS, get_recoverer, load_recoverer
from dymo.selection import compute_calibration

KINDS = ("vector", "vector", "vector")
TINY_BB = {"dim": 16, "heads": 2, "depth": 1, "proj_dim": 8, "encoder_options": {"vector_hidden": 16}}


# -- a recoverer (docs/contributing.md: "A new recoverer") ------------------------------------------


@dataclass
class ClassMeanConfig(RecovererConfig):
    shrink: float = 0.0  # pull the mean towards 0 (a config key, to show the round trip)


class ClassFreeMeanRecoverer(Recoverer):
    """Fills a missing modality with its training mean (any kind with float data)."""

    name = "toy-mean"
    config_class = ClassMeanConfig

    def _fit(self, train: MultimodalDataset, progress: bool) -> None:
        batch = train.batch(range(len(train)))
        self.means = {s.name: batch.data[s.name].float().mean(0) * (1 - self.config.shrink) for s in self.specs}

    def _recover_missing(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        return {n: self.means[n].expand_as(batch.data[n]).to(batch.data[n].dtype) for n in batch.modalities}

    def state(self) -> dict[str, torch.Tensor]:
        return {f"mean.{n}": m for n, m in self.means.items()}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any], path: Path) -> None:
        require_weights(tensors, [f"mean.{n}" for n in self.modalities], path)
        self.means = {n: tensors[f"mean.{n}"] for n in self.modalities}


# -- a baseline (docs/contributing.md: "A new baseline") --------------------------------------------


@dataclass
class PriorConfig(Config):
    smoothing: float = 1.0


class _Prior(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("log_prior", torch.zeros(num_classes))


class ClassPriorBaseline(Baseline):
    """Predicts the training class frequencies whatever it sees: the floor every method must beat."""

    name = "toy-prior"
    paper = "none (a test fixture)"
    config_class = PriorConfig

    def _build(self) -> nn.Module:
        return _Prior(self.num_classes)

    def _fit(self, data: SplitDataset, progress: bool) -> None:
        net = self._build()
        counts = torch.bincount(torch.as_tensor(data["train"].labels), minlength=self.num_classes).float()
        net.log_prior.copy_(torch.log(counts + self.config.smoothing))
        self.net = net

    def _predict(self, batch: MultimodalBatch, recovered: MultimodalBatch | None) -> torch.Tensor:
        return torch.softmax(self.net.log_prior, 0).expand(len(batch), -1)


# -- a dataset (docs/contributing.md: "A new dataset") ----------------------------------------------


@dataclass
class ToyDataConfig(Config):
    seed: int = 0
    n_train: int = 60


def _build_toy(cfg: ToyDataConfig, progress: Any) -> data_registry.BuildResult:
    data = make_synthetic_splits(cfg.n_train, 20, 30, kinds=KINDS, vector_dim=4, seed=cfg.seed)
    return data_registry.BuildResult(data, {})


TOY_ENTRY = data_registry.DatasetEntry("toy-views", "three noisy vector views (a test fixture)", ToyDataConfig, {}, 1, _build_toy)


@pytest.fixture
def registered(monkeypatch):
    """The one registry line of each guide, added for this test only."""
    monkeypatch.setitem(RECOVERERS, "toy-mean", f"{__name__}:ClassFreeMeanRecoverer")
    monkeypatch.setitem(BASELINES, "toy-prior", f"{__name__}:ClassPriorBaseline")
    monkeypatch.setitem(data_registry.REGISTRY, "toy-views", TOY_ENTRY)


def test_toy_recoverer_runs_through_evaluate_and_round_trips(registered, tmp_path) -> None:
    torch.manual_seed(0)
    data = make_synthetic_splits(60, 20, 30, kinds=KINDS, vector_dim=4)
    rec = get_recoverer("toy-mean", shrink=0.5).fit(data["train"], progress=False)
    backbone = FlexibleBackbone(data.specs, data.num_classes, BackboneConfig.from_dict(TINY_BB)).eval()
    cal = compute_calibration(backbone, data["train"], progress=False)
    m = evaluate_methods(backbone, cal, rec, data["test"], "random:0.5", ("discard", "fuse-all", "dymo"), progress=False)
    assert m["fuse-all"].acceptance_rate == 1.0 and 0 <= m["dymo"].acceptance_rate <= 1
    rec.save(tmp_path / "rec")
    again = load_recoverer(tmp_path / "rec")
    assert type(again) is ClassFreeMeanRecoverer and again.config.shrink == 0.5
    batch = data["test"].batch(range(8)).with_observed(torch.tensor([[True, False, True]] * 8))
    assert torch.equal(again.recover(batch).data["v1"], rec.recover(batch).data["v1"])


def test_toy_recoverer_and_baseline_run_in_the_benchmark(registered, tmp_path) -> None:
    torch.set_num_threads(1)
    data = make_synthetic_splits(60, 20, 30, kinds=KINDS, vector_dim=4)
    cfg = BenchmarkConfig.from_dict(dict(
        methods=["dymo", "fuse-all", "toy-prior"], missing=["random:0.5"], seeds=[0], recovery=["toy-mean"],
        epochs=1, batch_size=16, backbone=TINY_BB, train={"batch_size": 32, "proto_start_epoch": 0},
    ))
    run_benchmark(data, cfg, tmp_path / "bench", progress=False)
    df = pd.read_csv(tmp_path / "bench" / "results.csv")
    assert set(df["method"]) == {"dymo", "fuse-all", "toy-prior"}
    assert set(df[df["method"] != "toy-prior"]["recoverer"]) == {"toy-mean"}
    prior = df[df["method"] == "toy-prior"]["accuracy"].item()
    labels = torch.as_tensor(data["test"].labels)
    majority = int(torch.bincount(torch.as_tensor(data["train"].labels)).argmax())
    assert prior == pytest.approx(float((labels == majority).float().mean()))
    saved = load_baseline(tmp_path / "bench" / "models" / "baseline-toy-prior")
    assert type(saved) is ClassPriorBaseline


def test_toy_dataset_builds_and_opens_by_name(registered, tmp_path) -> None:
    runner = CliRunner()
    from dymo.cli.main import app

    res = runner.invoke(app, ["data", "build", "toy-views", "--root", str(tmp_path), "--seed", "3"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "info", "toy-views", "--root", str(tmp_path)])
    assert res.exit_code == 0 and "train" in cli_text(res), res.output
    ds = data_registry.open_dataset("toy-views", tmp_path)
    assert ds.modalities == ("v0", "v1", "v2") and len(ds["train"]) == 60
    assert ds.build_info["config"]["seed"] == 3


# -- a modality kind (docs/contributing.md: "A new modality kind") ---------------------------------


class SignalKind(ModalityKind):
    """A 1-D signal ``shape = (T,)``: float samples, read as CSV rows (the default layout)."""

    name = "signal"
    rank = 1
    shape_doc = "(T,)"

    def csv_width(self, spec: ModalitySpec) -> int:
        return spec.shape[0]

    def parse_cells(self, cells: list[str], spec: ModalitySpec) -> Any:
        return [float(c) for c in cells]

    def prepare(self, x, spec, observed, *, preprocessed=False, holes_ok=False):
        x = self._tensor(x, spec)
        if not x.is_floating_point():
            raise DataError(f"modality {spec.name!r} needs a floating dtype, got {x.dtype}")
        self._check_shape(x, spec, len(observed))
        bad = ~torch.isfinite(x[observed]).all(dim=1)
        if bad.any():
            raise DataError(f"sample {self._first(bad, observed)}: observed modality {spec.name!r} holds NaN or Inf")
        return x.float(), torch.zeros(len(observed), dtype=torch.bool)

    def expects(self, spec):
        return {"kind": "signal", "array": f"float (B, {spec.shape[0]})"}

    def synthetic(self, name, y, num_classes, signal, proto_rng, rng, options):
        t = np.arange(options["vector_dim"])
        freq = proto_rng.uniform(0.2, 1.0, num_classes)  # one frequency per class
        x = signal * np.sin(freq[y][:, None] * t) + 0.3 * rng.normal(size=(len(y), len(t)))
        return ModalitySpec(name, "signal", (len(t),)), x.astype(np.float32)


class SignalEncoder(nn.Module):
    """1-D conv over the signal, pooled to ``num_tokens`` tokens (the backbone's encoder role)."""

    def __init__(self, dim: int, num_tokens: int = 2) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.net = nn.Sequential(nn.Conv1d(1, dim, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool1d(num_tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.unsqueeze(1)).transpose(1, 2)


class SignalJudge(nn.Module):
    """Features for the retrieval recoverer's embedder (the ``judge`` role)."""

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(length, 32), nn.ReLU(), nn.Linear(32, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def signal_kind(monkeypatch):
    """The guide's registrations (a decorator each), undone after the test: each registry entry
    is first claimed with monkeypatch, so that teardown removes it again."""
    monkeypatch.setitem(kinds_base._KINDS, "signal", None)
    monkeypatch.setitem(encoders_module._REGISTRY, "signal", None)
    monkeypatch.setitem(networks_module._NETWORKS, ("signal", "judge"), None)
    register_kind(SignalKind)
    register_encoder("signal")(lambda spec, dim, options: SignalEncoder(dim))
    register_network("signal", "judge")(lambda spec, config, dim: SignalJudge(spec.shape[0], dim))


def test_toy_modality_kind_trains_and_predicts(signal_kind, tmp_path) -> None:
    torch.manual_seed(0)
    data = make_synthetic_splits(90, 30, 30, kinds=("signal", "vector"), vector_dim=8, seed=0)
    assert [s.kind for s in data.specs] == ["signal", "vector"]
    data.save(tmp_path / "data")  # the spec round-trips through a dataset folder
    again = SplitDataset.load(tmp_path / "data")
    assert again.specs == data.specs
    clf = DyMoClassifier.fit(
        again, "retrieval", recovery_options={"epochs": 1, "embed_dim": 8}, backbone=TINY_BB, epochs=1,
        progress=False, tune=False, run_dir=tmp_path / "run",
    )
    test = data["test"]
    batch = test.batch(range(len(test)))
    observed = torch.ones(len(test), 2, dtype=torch.bool)
    observed[::2, 0] = False  # every other sample misses its signal
    raw = MultimodalBatch({k: v.clone() for k, v in batch.data.items()}, observed, batch.modalities)
    pred = clf.predict(raw)
    assert pred.class_index.shape == (len(test),) and set(pred.class_index.tolist()) <= set(range(data.num_classes))
    assert bool(pred.recovered[::2, 0].all()) and not bool(pred.recovered[1::2].any())  # the judge-based recoverer filled the signal
    with pytest.raises(DataError, match="tensor shape"):
        clf.predict(MultimodalBatch({"s0": raw.data["s0"][:, :4], "v1": raw.data["v1"]}, observed, batch.modalities))
    assert clf.expected_inputs()["modalities"]["s0"]["kind"] == "signal"


def test_no_module_outside_the_kinds_tests_a_modality_kind_by_name() -> None:
    """Per-kind rules live in the kind objects (dymo/data/kinds/), so a new kind needs no edit elsewhere."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "dymo"
    names = '"(?:image|vector|text)"'
    test = re.compile(rf"kind\s*(?:==|!=)\s*{names}|kind\s+(?:not\s+)?in\s+[(\[{{][^)\]}}]*{names}|\b(?:IMAGE|VECTOR|TEXT)\s+is\b|\bis\s+(?:IMAGE|VECTOR|TEXT)\b")
    found = [
        f"{path.relative_to(src)}:{i}: {line.strip()}"
        for path in sorted(src.rglob("*.py"))
        if "kinds" not in path.relative_to(src).parts
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if test.search(line)
    ]
    assert not found, "\n".join(found)
