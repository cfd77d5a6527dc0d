"""Invariants of the whole predict path, as property-based tests (hypothesis).

Model: a tiny :class:`FlexibleBackbone` with random weights, calibrated on tiny synthetic data
(image + vector + text), and a retrieval recoverer fitted once; inputs: random test samples
with random observed patterns. ``derandomize=True``: the same examples on every run.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dymo.data.scenarios import parse_scenario
from dymo.data.synthetic import make_synthetic
from dymo.inference import DyMoClassifier
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.recovery.base import Recoverer
from dymo.recovery.registry import get_recoverer
from dymo.selection import (
    METHODS,
    SelectionConfig,
    compute_calibration,
    select,
    select_with_backbone,
)
from dymo.utils.subsets import all_subsets

# Floating-point sensitive: also run under other MKL code paths (Makefile: test-numerics).
pytestmark = pytest.mark.numerics

KINDS = ("image", "vector", "text")
M = len(KINDS)
POOL = 40  # test samples to draw from
CFG = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]})
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)
# Non-empty observed patterns (the retrieval recoverer needs one observed modality).
PATTERNS = [tuple(bool(v) for v in row) for row in all_subsets(M).tolist()]


def _data(n: int, seed: int):
    return make_synthetic(n, kinds=KINDS, image_size=8, vector_dim=6, seed=seed)


def _classifier(seed: int, recoverer: Recoverer, train) -> DyMoClassifier:
    torch.manual_seed(seed)
    backbone = FlexibleBackbone(train.specs, train.num_classes, CFG).eval()
    calibration = compute_calibration(backbone, train, progress=False)
    return DyMoClassifier(backbone, calibration, recoverer, train.class_names)


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    train, test = _data(60, 0), _data(POOL, 1)
    recoverer = get_recoverer("retrieval", epochs=1, width=4, hidden=16, embed_dim=8).fit(train, progress=False)
    return train, test, recoverer, _classifier(0, recoverer, train)


@st.composite
def samples(draw, max_size: int = 10):
    """(test indices, observed patterns) of a random batch."""
    n = draw(st.integers(1, max_size))
    idx = draw(st.lists(st.integers(0, POOL - 1), min_size=n, max_size=n))
    observed = draw(st.lists(st.sampled_from(PATTERNS), min_size=n, max_size=n))
    return idx, observed


def _batch(test, idx, observed):
    return test.batch(idx).with_observed(torch.tensor(observed, dtype=torch.bool))


def _same(a, b, atol: float = 1e-5) -> None:
    """Same decisions (exactly) and the same probabilities up to float batching effects."""
    assert torch.equal(a.used, b.used)
    assert torch.equal(a.class_index, b.class_index)
    assert torch.equal(a.selection.rejected, b.selection.rejected)
    torch.testing.assert_close(a.probabilities, b.probabilities, atol=atol, rtol=0)


@SETTINGS
@given(batch=samples(), method=st.sampled_from(METHODS))
def test_observed_modalities_are_kept_and_only_recovered_ones_added(world, batch, method):
    _, test, _, clf = world
    pred = clf.predict(_batch(test, *batch), SelectionConfig(method=method))
    observed, used = pred.observed, pred.used
    assert (used | ~observed).all(), "an observed modality was dropped"
    assert not (used & ~observed & ~pred.recovered).any(), "a modality neither observed nor recovered was used"
    assert not (pred.selection.rejected & observed).any()
    if method == "discard":
        assert torch.equal(used, observed)
    if method == "fuse-all":
        assert used.all()
    assert torch.equal(pred.selection.steps, (used & ~observed).sum(1))


@SETTINGS
@given(batch=samples(), data=st.data())
def test_a_sample_does_not_depend_on_the_rest_of_its_batch(world, batch, data):
    _, test, _, clf = world
    full = _batch(test, *batch)
    n = len(full)
    order = data.draw(st.permutations(range(n)), label="order")
    part = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True), label="subset")
    whole = clf.predict(full)
    for idx in (order, part):
        sub = clf.predict(full.index(idx))
        expected = dataclasses.replace(
            whole, used=whole.used[idx], class_index=whole.class_index[idx],
            probabilities=whole.probabilities[idx],
        )
        expected.selection = dataclasses.replace(whole.selection, rejected=whole.selection.rejected[idx])
        _same(sub, expected)
    alone = clf.predict(full.index([0]))
    assert torch.equal(alone.used[0], whole.used[0]) and alone.class_index[0] == whole.class_index[0]


@SETTINGS
@given(batch=samples(), seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1.0, 1e6, float("inf"), float("nan")]))
def test_content_of_missing_slots_changes_nothing(world, batch, seed, scale):
    _, test, _, clf = world
    clean = _batch(test, *batch)
    g = torch.Generator().manual_seed(seed)
    garbage = {}
    for i, spec in enumerate(test.specs):
        x = clean.data[spec.name].clone()
        missing = ~clean.observed[:, i]
        if spec.kind == "text":
            noise = torch.randint(-5, 10**6, x.shape, generator=g)
        else:
            noise = torch.randn(x.shape, generator=g) * scale
        x[missing] = noise[missing]
        garbage[spec.name] = x
    a = clf.predict(clean.with_missing_filled())
    b = clf.predict(dataclasses.replace(clean, data=garbage))
    assert torch.equal(a.used, b.used) and torch.equal(a.class_index, b.class_index)
    assert torch.equal(a.probabilities, b.probabilities)
    assert torch.equal(a.selection.reward_history.nan_to_num(7.0), b.selection.reward_history.nan_to_num(7.0))


@SETTINGS
@given(idx=st.lists(st.integers(0, POOL - 1), min_size=1, max_size=10), method=st.sampled_from(METHODS))
def test_with_nothing_missing_dymo_is_the_plain_backbone(world, idx, method):
    _, test, _, clf = world
    batch = test.batch(idx)
    pred = clf.predict(batch, SelectionConfig(method=method))
    assert pred.used.all() and not pred.recovered.any()
    assert (pred.selection.steps == 0).all()
    with torch.no_grad():
        out = clf.backbone.fuse(clf.backbone.encode(batch.data), torch.ones(len(idx), M, dtype=torch.bool))
    torch.testing.assert_close(pred.selection.logits, out.logits, atol=1e-6, rtol=0)
    assert torch.equal(pred.class_index, out.logits.argmax(1))


@settings(max_examples=6, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**31 - 1), batch=samples())
def test_identical_seeds_give_identical_results(world, seed, batch):
    train, _, recoverer, _ = world
    test_a, test_b = _data(POOL, seed % 1000), _data(POOL, seed % 1000)
    for name in test_a.modalities:
        assert np.array_equal(test_a.arrays[name], test_b.arrays[name])
    mask_a = parse_scenario("random:0.5").sample(POOL, M, seed=seed)
    assert np.array_equal(mask_a, parse_scenario("random:0.5").sample(POOL, M, seed=seed))
    a, b = _classifier(seed, recoverer, train), _classifier(seed, recoverer, train)
    for (ka, va), (kb, vb) in zip(a.backbone.state_dict().items(), b.backbone.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert torch.equal(a.calibration.prototypes, b.calibration.prototypes)
    assert torch.equal(a.calibration.sigma, b.calibration.sigma)
    pa, pb = a.predict(_batch(test_a, *batch)), b.predict(_batch(test_b, *batch))
    assert torch.equal(pa.used, pb.used) and torch.equal(pa.probabilities, pb.probabilities)


# -- the reward is label-free ----------------------------------------------------------------


@pytest.mark.parametrize("fn", [select, select_with_backbone, DyMoClassifier.predict, Recoverer.recover])
def test_no_label_parameter(fn):
    params = [p.lower() for p in inspect.signature(fn).parameters]
    assert not [p for p in params if "label" in p or p in ("y", "target", "targets")], params


@SETTINGS
@given(batch=samples(), seed=st.integers(0, 2**31 - 1), method=st.sampled_from(METHODS))
def test_predictions_ignore_the_labels(world, batch, seed, method):
    _, test, _, clf = world
    b = _batch(test, *batch)
    config = SelectionConfig(method=method)
    with_labels = clf.predict(b, config)
    g = torch.Generator().manual_seed(seed)
    shuffled = dataclasses.replace(b, labels=torch.randint(0, test.num_classes, (len(b),), generator=g))
    no_labels = dataclasses.replace(b, labels=None)
    for other in (clf.predict(shuffled, config), clf.predict(no_labels, config)):
        assert torch.equal(other.used, with_labels.used)
        assert torch.equal(other.probabilities, with_labels.probabilities)
        assert torch.equal(
            other.selection.reward_history.nan_to_num(7.0), with_labels.selection.reward_history.nan_to_num(7.0)
        )
