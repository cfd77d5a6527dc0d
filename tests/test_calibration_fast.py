"""Fast calibration: statistics from a per-(subset, class) sample of the training set, and lazy
statistics computed only for the subsets a selection reaches."""

import numpy as np
import pytest
import torch

from dymo.errors import ConfigError, DataError
from dymo.selection import (
    LazyCalibration,
    SelectionConfig,
    compute_calibration,
    select_with_backbone,
)
from dymo.selection.calibration import sample_size_rule
from test_selection_calibration import C, M, StubBackbone, make_dataset, numpy_calibration


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_sample_is_the_first_samples_of_each_class_in_a_seeded_permutation(metric):
    ds = make_dataset(60)
    model = StubBackbone(metric)
    k, seed = 5, 3
    cal = compute_calibration(model, ds, batch_size=7, progress=False, max_rows=10, samples_per_class=k, seed=seed)
    order = np.random.default_rng(seed).permutation(len(ds))
    chosen = np.concatenate([order[ds.labels[order] == c][:k] for c in range(C)])
    protos, sigmas, overall = numpy_calibration(model, ds.subset(np.sort(chosen)), metric)
    np.testing.assert_allclose(cal.prototypes[1:].numpy(), protos[1:], atol=1e-5)
    np.testing.assert_allclose(cal.sigma[1:].numpy(), sigmas[1:], atol=1e-5)
    np.testing.assert_allclose(cal.overall.numpy(), overall, atol=1e-5)
    # and it differs from the full calibration (the sample is a real sample)
    full = compute_calibration(model, ds, progress=False, samples_per_class=None)
    assert not torch.allclose(full.prototypes[1:], cal.prototypes[1:], atol=1e-5)


def test_a_sample_larger_than_every_class_is_the_full_calibration():
    ds = make_dataset(40)
    model = StubBackbone("cosine")
    full = compute_calibration(model, ds, progress=False, samples_per_class=None)
    big = compute_calibration(model, ds, batch_size=9, progress=False, samples_per_class=1000, seed=5)
    torch.testing.assert_close(big.prototypes, full.prototypes, atol=1e-6, rtol=0)
    torch.testing.assert_close(big.sigma, full.sigma, atol=1e-6, rtol=0)


def test_incomplete_training_set_fills_each_pair_from_the_samples_that_observe_it():
    n = 90
    observed = np.ones((n, M), dtype=bool)
    observed[::4, 2] = False  # a quarter lacks m2
    ds = make_dataset(n, observed)
    model = StubBackbone("euclidean")
    k, seed = 6, 1
    cal = compute_calibration(model, ds, batch_size=8, progress=False, samples_per_class=k, seed=seed)
    order = np.random.default_rng(seed).permutation(n)
    for code in (3, 4, 7):  # {m0, m1}, {m2}, all
        sub = np.array([(code >> i) & 1 for i in range(M)], dtype=bool)
        chosen = np.concatenate(
            [order[(ds.labels[order] == c) & ds.observed[order][:, sub].all(1)][:k] for c in range(C)]
        )
        protos, sigmas, _ = numpy_calibration(model, ds.subset(np.sort(chosen)), "euclidean")
        np.testing.assert_allclose(cal.prototypes[code].numpy(), protos[code], atol=1e-5)
        np.testing.assert_allclose(cal.sigma[code].numpy(), sigmas[code], atol=1e-5)


def test_sample_size_is_validated_and_stated():
    with pytest.raises(ConfigError, match="samples_per_class"):
        compute_calibration(StubBackbone("cosine"), make_dataset(), progress=False, samples_per_class=0)
    with pytest.raises(ConfigError, match="min_samples"):
        compute_calibration(StubBackbone("cosine"), make_dataset(), progress=False, samples_per_class=3)
    assert "3.1%" in sample_size_rule(512)


def _flexible(m=6, n=120, seed=0, metric="cosine"):
    from dymo.data.synthetic import make_synthetic
    from dymo.models import BackboneConfig, FlexibleBackbone

    torch.manual_seed(seed)
    kinds = ("vector",) * m
    ds = make_synthetic(n, kinds=kinds, num_classes=3, vector_dim=6, signal=np.linspace(0.2, 1.0, m), seed=seed)
    cfg = BackboneConfig(dim=16, heads=2, depth=2, proj_dim=8, metric=metric)
    return FlexibleBackbone(ds.specs, ds.num_classes, cfg).eval(), ds


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_lazy_statistics_equal_the_full_table(metric):
    model, ds = _flexible(m=4, metric=metric)
    full = compute_calibration(model, ds, progress=False, samples_per_class=None)
    lazy = LazyCalibration(model, ds, samples_per_class=10_000, overall_subsets=100)  # every sample, every subset
    torch.testing.assert_close(lazy.overall, full.overall, atol=1e-5, rtol=0)
    cal = lazy.to_calibration()
    torch.testing.assert_close(cal.prototypes, full.prototypes, atol=1e-5, rtol=0)
    torch.testing.assert_close(cal.sigma, full.sigma, atol=1e-5, rtol=1e-4)


def test_lazy_selection_makes_the_full_calibrations_decisions_and_computes_only_reached_subsets():
    m = 6
    model, ds = _flexible(m=m, n=150)
    test_ds = _flexible(m=m, n=80, seed=1)[1]
    full = compute_calibration(model, ds, progress=False, samples_per_class=None)
    lazy = LazyCalibration(model, ds, samples_per_class=10_000, overall_subsets=2**m)
    lazy.overall = full.overall  # same quality reference; this test is about the per-subset tables
    batch = test_ds.all()
    g = torch.Generator().manual_seed(4)
    observed = torch.rand(80, m, generator=g) < 0.3
    observed[~observed.any(1), 0] = True
    with torch.no_grad():
        tokens = model.encode(batch.data)
    a = select_with_backbone(model, tokens, observed, ~observed, full, SelectionConfig())
    before = lazy.computed_subsets
    b = select_with_backbone(model, tokens, observed, ~observed, lazy, SelectionConfig())
    assert int(a.steps.sum()) > 0
    assert torch.equal(a.used, b.used) and torch.equal(a.steps, b.steps) and torch.equal(a.rejected, b.rejected)
    torch.testing.assert_close(a.logits, b.logits)
    # a fresh lazy calibration with a small overall sample computes only what the search reached
    small = LazyCalibration(model, ds, samples_per_class=20, overall_subsets=4)
    assert small.computed_subsets == 4
    select_with_backbone(model, tokens, observed, ~observed, small, SelectionConfig())
    assert before == 2**m - 1
    assert 4 < small.computed_subsets < 2**m - 1


def test_lazy_pool_is_per_class_and_unseen_pairs_are_named():
    model, ds = _flexible(m=3, n=60)
    lazy = LazyCalibration(model, ds, samples_per_class=7, overall_subsets=2)
    assert lazy.pool_size == 3 * 7
    observed = np.ones((60, 3), dtype=bool)
    observed[:, 1] = False
    ds2 = ds.with_observed(observed)
    with pytest.raises(DataError, match=r"subset 2 \{v1\}"):
        LazyCalibration(model, ds2, samples_per_class=7, overall_subsets=7)
    with pytest.raises(ConfigError):
        LazyCalibration(model, ds, samples_per_class=0)


def test_cli_default_sample_size_is_the_library_default():
    import inspect

    from dymo.cli.selection_cmd import calibrate_cmd
    from dymo.selection.calibration import DEFAULT_SAMPLES_PER_CLASS

    option = inspect.signature(calibrate_cmd).parameters["samples_per_class"].default
    assert option.default == DEFAULT_SAMPLES_PER_CLASS
    assert inspect.signature(compute_calibration).parameters["samples_per_class"].default == DEFAULT_SAMPLES_PER_CLASS


def test_bfloat16_features_give_the_float32_statistics_to_bf16_precision():
    """``dtype=torch.bfloat16`` fuses every sample and subset with a bfloat16 copy (the caller's
    backbone is untouched) and stores float32 tables close to the float32 calibration's."""
    from dymo.data.synthetic import make_synthetic
    from dymo.models import BackboneConfig, FlexibleBackbone

    torch.manual_seed(0)
    train = make_synthetic(200, kinds=("image", "vector", "vector"), num_classes=3, signal=[0.9, 0.6, 0.8], seed=0)
    model = FlexibleBackbone(train.specs, train.num_classes, BackboneConfig(dim=16, heads=2, depth=2, proj_dim=8,
                             encoder_options={"image_channels": [4, 8, 16]})).eval()
    full = compute_calibration(model, train, progress=False)
    low = compute_calibration(model, train, progress=False, dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert low.prototypes.dtype == torch.float32 and low.sigma.dtype == torch.float32
    assert torch.equal(low.counts, full.counts)
    # bfloat16 keeps 8 significant bits (relative rounding 2**-9 = 0.2%); through two blocks
    # and the heads a unit-norm feature moves by about 1% of its norm, and its mean over a
    # (subset, class) pair by no more: 0.02 absolute on coordinates of unit vectors.
    torch.testing.assert_close(low.prototypes, full.prototypes, rtol=0, atol=2e-2)
    torch.testing.assert_close(low.overall, full.overall, rtol=0, atol=2e-2)
    # a spread well above the feature's rounding is kept to a few percent
    wide = full.sigma[1:] > 0.05
    assert bool(wide.any())
    torch.testing.assert_close(low.sigma[1:][wide], full.sigma[1:][wide], rtol=0.05, atol=0)
    with pytest.raises(ConfigError, match="float32 or bfloat16"):
        compute_calibration(model, train, progress=False, dtype=torch.float16)
