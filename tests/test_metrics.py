"""One set of scores for `dymo evaluate` and `dymo benchmark`; discard / fuse-all need no
calibration statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import tiny_backbone
from dymo.data.synthetic import make_synthetic_splits
from dymo.errors import ConfigError
from dymo.evaluation.metrics import auc, balanced_accuracy, macro_f1, method_metrics
from dymo.evaluation.pipeline import evaluate_methods, scenario_mask
from dymo.recovery.registry import get_recoverer
from dymo.selection import SelectionConfig, compute_calibration, select_with_backbone


def _probs(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % c
    logits = torch.randn(n, c, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, c)
    return torch.softmax(logits, 1), labels


@pytest.mark.parametrize("c", [2, 3, 5])
def test_auc_matches_scikit_learn(c: int) -> None:
    probs, labels = _probs(60, c, seed=c)
    expected = (
        roc_auc_score(labels.numpy(), probs[:, 1].numpy())
        if c == 2
        else roc_auc_score(labels.numpy(), probs.numpy(), multi_class="ovr", average="macro")
    )
    # float32 (torchmetrics) against float64 (scikit-learn): same ranking, rounding apart
    assert auc(probs, labels) == pytest.approx(expected, abs=1e-6)


def test_auc_is_none_when_undefined() -> None:
    probs, labels = _probs(30, 3, seed=0)
    assert auc(probs, torch.zeros(30, dtype=torch.long)) is None  # one class only
    assert auc(probs, labels % 2) is None  # class 2 never occurs: its one-vs-rest score is void


def test_balanced_accuracy_and_macro_f1_weigh_every_class_alike() -> None:
    # 8 samples of class 0, 2 of class 1; a majority-class predictor is 80% accurate
    labels = torch.tensor([0] * 8 + [1] * 2)
    majority = torch.zeros(10, dtype=torch.long)
    assert balanced_accuracy(majority, labels) == pytest.approx(0.5)  # recall 1 and 0
    # F1 of class 0: precision 0.8, recall 1 -> 8/9; class 1 never predicted: 0
    assert macro_f1(majority, labels) == pytest.approx((8 / 9 + 0) / 2)
    pred = torch.tensor([0] * 6 + [1] * 2 + [1, 0])  # class 0 recall 6/8, class 1 recall 1/2
    assert balanced_accuracy(pred, labels) == pytest.approx((6 / 8 + 1 / 2) / 2)
    # a class absent from the labels but predicted counts in macro-F1 (F1 0), not in balanced accuracy
    pred3 = torch.tensor([2] + [0] * 7 + [1, 1])
    assert balanced_accuracy(pred3, labels) == pytest.approx((7 / 8 + 1) / 2)
    f1_0, f1_1 = 2 * 7 / (2 * 7 + 0 + 1), 1.0
    assert macro_f1(pred3, labels) == pytest.approx((f1_0 + f1_1 + 0) / 3)
    assert balanced_accuracy(labels[:0], labels[:0]) is None and macro_f1(labels[:0], labels[:0]) is None


def test_method_metrics_reports_balanced_accuracy_and_macro_f1() -> None:
    labels = torch.tensor([0] * 8 + [1] * 2)
    probs = torch.tensor([[0.9, 0.1]] * 10)
    observed = torch.ones(10, 2, dtype=torch.bool)
    m = method_metrics("discard", "none", 0, probs=probs, labels=labels, observed=observed,
                       candidates=~observed, offers_recovery=False, seconds=0.0)
    assert m.accuracy == pytest.approx(0.8)
    assert m.balanced_accuracy == pytest.approx(0.5)
    assert m.macro_f1 == pytest.approx(4 / 9)
    assert json.loads(json.dumps(m.to_dict()))["balanced_accuracy"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    data = make_synthetic_splits(60, 10, 48, kinds=("vector", "vector", "vector"), vector_dim=4, num_classes=4)
    backbone = tiny_backbone(data, seed=0)
    cal = compute_calibration(backbone, data["train"], progress=False)
    rec = get_recoverer("mean").fit(data["train"], progress=False)
    return data, backbone, cal, rec


def test_evaluate_reports_the_multiclass_auc(world) -> None:
    data, backbone, cal, rec = world
    m, results = evaluate_methods(
        backbone, cal, rec, data["test"], "random:0.5", ("discard", "fuse-all", "dymo"), progress=False, keep_results=True
    )
    labels = data["test"].batch(range(len(data["test"]))).labels
    for name, r in m.items():
        probs = torch.cat([res.probabilities for res in results[name]])
        assert r.auc is not None and r.auc == auc(probs, labels)


def test_discard_and_fuse_all_need_no_calibration(world) -> None:
    data, backbone, cal, rec = world
    test = data["test"]
    with_cal = evaluate_methods(backbone, cal, rec, test, "random:0.5", ("discard", "fuse-all"), progress=False)
    without = evaluate_methods(backbone, None, rec, test, "random:0.5", ("discard", "fuse-all"), progress=False)
    for name in ("discard", "fuse-all"):
        a, b = with_cal[name].to_dict(), without[name].to_dict()
        a.pop("seconds"), b.pop("seconds")
        assert a == b
    with pytest.raises(ConfigError, match="need calibration statistics"):
        evaluate_methods(backbone, None, rec, test, "random:0.5", ("dymo",), progress=False)

    batch = test.batch(range(8))
    observed = scenario_mask("random:0.5", 8, test.modalities, seed=3)
    tokens = backbone.encode(batch.data)
    for method in ("discard", "fuse-all"):
        res = select_with_backbone(backbone, tokens, observed, ~observed, None, SelectionConfig(method=method))
        ref = select_with_backbone(backbone, tokens, observed, ~observed, cal, SelectionConfig(method=method))
        assert torch.equal(res.used, ref.used) and res.modalities == tuple(test.modalities)
        np.testing.assert_array_equal(res.predictions.numpy(), ref.predictions.numpy())
    with pytest.raises(ConfigError, match="needs calibration statistics"):
        select_with_backbone(backbone, tokens, observed, ~observed, None, SelectionConfig(method="iterative"))


def test_evaluate_and_benchmark_agree_on_the_same_cell(tmp_path) -> None:
    """One engine and one metrics module: the same models, scenario and seed give the same scores
    through `dymo evaluate`'s path and through the benchmark."""
    from dymo.evaluation.benchmark import BenchmarkConfig, run_benchmark
    from dymo.recovery.registry import load_recoverer
    from dymo.selection.calibration import Calibration
    from dymo.training.run import load_backbone

    torch.set_num_threads(1)
    data = make_synthetic_splits(60, 20, 40, kinds=("vector", "vector", "vector"), vector_dim=4, num_classes=3, seed=2)
    bb = {"dim": 16, "heads": 2, "depth": 1, "proj_dim": 8, "encoder_options": {"vector_hidden": 16}}
    cfg = BenchmarkConfig.from_dict(dict(
        methods=["dymo", "fuse-all", "discard"], missing=["random:0.5"], seeds=[3], recovery=["mean"], epochs=1,
        batch_size=16, backbone=bb, train={"batch_size": 32, "proto_start_epoch": 0},
    ))
    run_benchmark(data, cfg, tmp_path / "bench", progress=False)
    import pandas as pd

    bench = pd.read_csv(tmp_path / "bench" / "results.csv").set_index("method")
    models = tmp_path / "bench" / "models"
    backbone = load_backbone(models / "backbone-cosine")
    cal = Calibration.load(models / "backbone-cosine" / "calibration.safetensors")
    rec = load_recoverer(models / "recovery-mean")
    # the benchmark's `dymo` applies the acceptance rule it tuned on validation (stored beside the models)
    tuned = json.loads((models / "threshold-cosine-mean.json").read_text())
    from dymo.selection.acceptance import ThresholdTuning

    rule = ThresholdTuning.from_dict(tuned)
    selection = {"threshold": rule.thresholds, "added_temperature": rule.added_temperature}
    ev = evaluate_methods(backbone, cal, rec, data["test"], "random:0.5", ("dymo",), seed=3, batch_size=16,
                          progress=False, selection=selection)
    ev.update(evaluate_methods(backbone, cal, rec, data["test"], "random:0.5", ("fuse-all", "discard"), seed=3,
                               batch_size=16, progress=False))
    for method, m in ev.items():
        row = bench.loc[method]
        assert m.accuracy == row["accuracy"] and m.avg_steps == row["steps"]
        assert row["auc"] == pytest.approx(m.auc, abs=1e-12)  # CSV round trip of the same float
