"""One spelling per policy: ``fuse-all`` (every recovered modality) and ``discard`` (observed
only). The former name ``impute-all`` still works everywhere with a FutureWarning."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_backbone
from dymo.baselines.dymo_backbone import FuseAllBaseline
from dymo.baselines.registry import get_baseline, load_baseline
from dymo.data.synthetic import make_synthetic_splits
from dymo.evaluation.benchmark_plan import MethodSpec, plan_methods
from dymo.evaluation.pipeline import evaluate_methods
from dymo.recovery.registry import get_recoverer
from dymo.selection import SelectionConfig, select_with_backbone


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(1)
    data = make_synthetic_splits(60, 10, 24, kinds=("vector", "vector", "vector"), vector_dim=4)
    backbone = tiny_backbone(data, seed=1)
    rec = get_recoverer("mean").fit(data["train"], progress=False)
    return data, backbone, rec


def test_the_old_name_warns_and_means_fuse_all(world) -> None:
    data, backbone, rec = world
    with pytest.warns(FutureWarning, match="'impute-all' is a deprecated name of 'fuse-all'"):
        assert SelectionConfig(method="impute-all").method == "fuse-all"
    with pytest.warns(FutureWarning):
        assert SelectionConfig.from_dict({"method": "impute-all"}).method == "fuse-all"
    with pytest.warns(FutureWarning):
        assert type(get_baseline("impute-all")) is FuseAllBaseline
    with pytest.warns(FutureWarning):
        assert plan_methods(["impute-all", "fuse-all"], ["cosine"]) == [MethodSpec("fuse-all", "selection", "fuse-all", "cosine")]
    with pytest.warns(FutureWarning):
        m = evaluate_methods(backbone, None, rec, data["test"], "random:0.5", ("impute-all",), progress=False)
    assert list(m) == ["fuse-all"] and m["fuse-all"].acceptance_rate == 1.0


def test_a_folder_saved_under_the_old_name_still_loads(world, tmp_path) -> None:
    data, backbone, rec = world
    FuseAllBaseline.from_backbone(backbone, rec, data.class_names).save(tmp_path / "b")
    cfg = tmp_path / "b" / "config.json"
    meta = json.loads(cfg.read_text())
    assert meta["kind"] == "fuse-all"
    cfg.write_text(json.dumps({**meta, "kind": "impute-all"}))
    with pytest.warns(FutureWarning):
        assert type(load_baseline(tmp_path / "b")) is FuseAllBaseline


def test_the_baseline_form_agrees_with_the_selection_method(world) -> None:
    """fuse-all as a baseline and as a selection method: the same backbone on the same recovery."""
    data, backbone, rec = world
    test = data["test"]
    observed = torch.rand(len(test), 3, generator=torch.Generator().manual_seed(0)) < 0.6
    observed[~observed.any(1), 0] = True
    hidden = test.batch(range(len(test))).with_observed(observed).with_missing_filled()
    recovered = rec.recover(hidden)
    probs = FuseAllBaseline.from_backbone(backbone, rec).predict_proba(hidden, recovered=recovered)
    tokens = backbone.encode(recovered.data, torch.ones_like(observed))
    res = select_with_backbone(backbone, tokens, observed, ~observed, None, SelectionConfig(method="fuse-all"))
    assert torch.equal(probs.argmax(1), res.predictions)
    torch.testing.assert_close(probs, res.probabilities, rtol=1e-5, atol=1e-6)  # masked vs dropped tokens
