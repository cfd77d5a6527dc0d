"""The vector encoder's piecewise-linear encoding between training quantiles: invariant to a
monotone change of scale (as a tree is), fitted on the observed training rows, saved with the
weights; runs saved before it load as they were trained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dymo.data.synthetic import make_synthetic_splits
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.models.encoders import PiecewiseLinearEncoding, VectorEncoder, fit_encoder_statistics


def test_encoding_is_invariant_to_a_monotone_change_of_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g, dtype=torch.float64)
    warped = torch.exp(3 * x) * 1000 - 7  # heavy-tailed, another scale: the same order
    a, b = PiecewiseLinearEncoding(5, bins=8).double(), PiecewiseLinearEncoding(5, bins=8).double()
    a.fit_statistics(x)
    b.fit_statistics(warped)
    ea, eb = a(x[:50]), b(warped[:50])
    # the same bins, filled the same way; only the position inside a value's own bin follows the scale
    assert torch.equal(ea > 0, eb > 0) and torch.equal(ea >= 1, eb >= 1)
    # a plain linear input is not invariant: what the encoding is for
    assert not torch.allclose(x[:50].float(), warped[:50].float())


def test_encoding_values_steps_and_the_training_range():
    enc = PiecewiseLinearEncoding(2, bins=4)
    enc.fit_statistics(torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 5.0]]))
    assert enc.edges[0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    out = enc(torch.tensor([[2.5, 1.0], [-10.0, 100.0]])).view(2, 2, 4)
    assert out[0, 0].tolist() == [1.0, 1.0, 0.5, 0.0]  # 1 below, the position in its bin, 0 above
    assert out[1, 0].tolist() == [0.0, 0.0, 0.0, 0.0]  # below the training range: its start
    assert out[1, 1].tolist() == [1.0, 1.0, 1.0, 1.0]  # above it: its end, not an extrapolation
    # feature 2 repeats the value 1 (zero-width bins): steps, never a division by zero
    assert torch.isfinite(out).all() and out[0, 1].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_statistics_come_from_the_observed_training_rows_only():
    data = make_synthetic_splits(60, 10, 10, kinds=("vector", "vector"), vector_dim=3, num_classes=2)
    train = data["train"]
    observed = train.observed.copy()
    observed[:20, 0] = False
    train.arrays["v0"] = np.asarray(train.arrays["v0"]).copy()
    train.arrays["v0"][:20] = 1e6  # what a missing slot holds must not move the edges
    train = train.with_observed(observed)
    net = FlexibleBackbone(data.specs, 2, BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_defaults=2))
    assert fit_encoder_statistics(net, train) == ["v0", "v1"]
    edges = net.encoders["v0"].encoding.edges
    expected = np.quantile(np.asarray(train.arrays["v0"][20:], dtype=np.float64), np.linspace(0, 1, 9), axis=0).T
    np.testing.assert_allclose(edges.numpy(), expected, rtol=1e-6)
    assert float(edges.max()) < 1e3


def test_edges_travel_with_the_weights_and_old_runs_load_as_trained(tmp_path):
    from dymo.training import TrainConfig, train_backbone
    from dymo.training.run import load_backbone

    data = make_synthetic_splits(64, 16, 16, kinds=("vector", "vector"), vector_dim=4, num_classes=2)
    cfg = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_defaults=2)
    run = train_backbone(data, tmp_path / "run", cfg, TrainConfig(epochs=1, batch_size=32), progress=False, evaluate_test=False)
    model = load_backbone(run)
    enc = model.encoders["v0"]
    assert isinstance(enc, VectorEncoder) and enc.encoding is not None
    expected = np.quantile(np.asarray(data["train"].arrays["v0"], dtype=np.float64), np.linspace(0, 1, 9), axis=0).T
    np.testing.assert_allclose(enc.encoding.edges.numpy(), expected, rtol=1e-5)
    # a run saved before the option existed (no encoder_defaults key) was trained on the values
    old = json.loads((run / "config.json").read_text())["backbone"]
    del old["encoder_defaults"]
    legacy = BackboneConfig.from_saved(old)
    assert legacy.resolved_encoder_options()["vector_encoding"] == "linear"
    assert FlexibleBackbone(data.specs, 2, legacy).encoders["v0"].encoding is None
    with pytest.raises(Exception, match="encoding must be"):
        VectorEncoder(4, 16, encoding="quantile")
