"""evaluate_methods: scenario masks, shared recovery, and partly missing tables (--value-missing)."""

import pytest
import torch

from dymo.data.synthetic import make_synthetic_splits
from dymo.errors import ConfigError
from dymo.evaluation.pipeline import evaluate_methods
from dymo.models import BackboneConfig
from dymo.recovery.registry import get_recoverer
from dymo.selection import compute_calibration
from dymo.training import TrainConfig, load_backbone, train_backbone


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = make_synthetic_splits(120, 30, 60, kinds=("image", "vector"), vector_dim=12)
    cfg = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]})
    run = train_backbone(data, tmp_path_factory.mktemp("r") / "run", cfg, TrainConfig(epochs=2, batch_size=32, proto_start_epoch=1), progress=False)
    backbone = load_backbone(run)
    cal = compute_calibration(backbone, data["train"], progress=False)
    return data, backbone, cal


def test_value_missing_makes_partial_tables_candidates(setup):
    data, backbone, cal = setup
    rec = get_recoverer("mean").fit(data["train"], progress=False)
    m = evaluate_methods(backbone, cal, rec, data["test"], "none", ("discard", "fuse-all", "dymo"), value_missing="value:0.5", progress=False)
    # Every table has missing entries: it is offered as a recovered candidate, never used by discard.
    assert m["discard"].acceptance_rate is None and m["discard"].avg_steps == 0
    assert m["fuse-all"].acceptance_rate == 1.0 and m["fuse-all"].avg_steps == 1.0
    assert 0.0 <= m["dymo"].acceptance_rate <= 1.0
    assert m["dymo"].missing_rate == pytest.approx(0.5)  # 1 of 2 modalities per sample is a candidate
    plain = evaluate_methods(backbone, cal, rec, data["test"], "none", ("discard",), progress=False)
    assert plain["discard"].missing_rate == 0.0


def test_scenario_results_and_errors(setup):
    data, backbone, cal = setup
    rec = get_recoverer("retrieval", epochs=1, width=4, hidden=16, embed_dim=8).fit(data["train"], progress=False)
    m = evaluate_methods(backbone, cal, rec, data["test"], "random:0.5", ("discard", "fuse-all", "dymo"), seed=1, progress=False)
    assert set(m) == {"discard", "fuse-all", "dymo"}
    for r in m.values():
        assert 0 <= r.accuracy <= 1 and r.n == 60
    assert sum(m["dymo"].accuracy_by_num_observed) > 0
    obs = torch.ones(60, 2, dtype=torch.bool)
    same = evaluate_methods(backbone, cal, rec, data["test"], "ignored", ("discard", "dymo"), observed=obs, progress=False)
    assert same["dymo"].accuracy == same["discard"].accuracy  # nothing missing: identical
    with pytest.raises(ConfigError, match="unknown selection method"):
        evaluate_methods(backbone, cal, rec, data["test"], "none", ("magic",), progress=False)
    with pytest.raises(ConfigError, match="need a recoverer"):
        evaluate_methods(backbone, cal, None, data["test"], "random:0.5", ("dymo",), progress=False)
