"""Experiment-only recoverers: oracle, controlled quality, shuffled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_split
from dymo.errors import ConfigError, DataError
from dymo.recovery import load_recoverer
from dymo.recovery.oracle import OracleRecoverer
from dymo.recovery.quality import (
    INNER,
    LOW_FIDELITY,
    MISALIGNED,
    OBSERVED,
    ControlledQualityRecoverer,
    ShuffledRecoverer,
    gaussian_blur,
)

KINDS = ("image", "vector", "text")


@pytest.fixture(scope="module")
def split():
    return make_split(n_train=60, n_test=1500, kinds=KINDS, seed=11)


def _scenario(split, seed=0):
    batch = split["test"].all()
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(len(batch), 3, generator=g) < 0.3
    obs[~obs.any(1), 0] = True
    return batch.with_observed(obs)


def test_oracle_returns_truth_and_needs_it(split) -> None:
    oracle = OracleRecoverer().fit(split["train"], progress=False)
    scen = _scenario(split)
    out = oracle.recover(scen)
    for name in scen.modalities:
        assert torch.equal(out.data[name], scen.data[name])
    with pytest.raises(DataError, match="oracle needs the complete data"):
        oracle.recover(scen.with_missing_filled())


def test_controlled_quality_rates_and_misalignment(split) -> None:
    rec = ControlledQualityRecoverer(OracleRecoverer(), p_noise=0.3, p_misaligned=0.2, seed=1)
    rec.fit(split["train"], progress=False)
    scen = _scenario(split)
    out = rec.recover(scen)
    ev, src = rec.last_events, rec.last_sources
    missing = ~scen.observed
    assert torch.equal(ev == OBSERVED, ~missing)
    n = int(missing.sum())
    assert n > 2000
    assert abs(float((ev == LOW_FIDELITY).sum()) / n - 0.3) < 0.04
    assert abs(float((ev == MISALIGNED).sum()) / n - 0.2) < 0.04
    train = split["train"]
    train_labels = torch.as_tensor(train.labels)
    for j, spec in enumerate(train.specs):
        mis = ev[:, j] == MISALIGNED
        rows = src[mis, j]
        assert (train_labels[rows] != scen.labels[mis]).all()  # another class, always
        expected = spec.to_tensor(np.asarray(train.arrays[spec.name])[rows.numpy()])
        assert torch.equal(out.data[spec.name][mis], expected)  # a real training sample
        inner = ev[:, j] == INNER
        assert torch.equal(out.data[spec.name][inner], scen.data[spec.name][inner])
        lo = ev[:, j] == LOW_FIDELITY
        assert not torch.equal(out.data[spec.name][lo], scen.data[spec.name][lo])
        obs = scen.observed[:, j]
        assert torch.equal(out.data[spec.name][obs], scen.data[spec.name][obs])
    # misaligned classes are spread over the other classes
    assert len(torch.unique(train_labels[src[ev == MISALIGNED]])) == 3


def test_controlled_quality_determinism(split, tmp_path) -> None:
    scen = _scenario(split, seed=2)

    def make(seed: int) -> ControlledQualityRecoverer:
        return ControlledQualityRecoverer(OracleRecoverer(), 0.4, 0.3, noise="blur", seed=seed).fit(split["train"], progress=False)

    a, b, c = make(5), make(5), make(6)
    out_a1, out_b1 = a.recover(scen), b.recover(scen)
    c.recover(scen)
    assert all(torch.equal(out_a1.data[k], out_b1.data[k]) for k in scen.modalities)
    assert not torch.equal(a.last_events, c.last_events)
    out_a2 = a.recover(scen)  # the next call draws anew (determinism per call order)
    assert not torch.equal(out_a2.data["img0"], out_a1.data["img0"])
    a.reset()
    assert torch.equal(a.recover(scen).data["img0"], out_a1.data["img0"])
    a.save(tmp_path / "cq")
    again = load_recoverer(tmp_path / "cq")
    assert isinstance(again.inner, OracleRecoverer)
    out = again.recover(scen)
    assert all(torch.equal(out.data[k], out_a1.data[k]) for k in scen.modalities)


def test_controlled_quality_needs_labels_for_misalignment(split) -> None:
    rec = ControlledQualityRecoverer(OracleRecoverer(), 0.0, 1.0).fit(split["train"], progress=False)
    scen = _scenario(split)
    scen.labels = None
    with pytest.raises(DataError, match="labels"):
        rec.recover(scen)
    with pytest.raises(ConfigError, match="> 1"):
        ControlledQualityRecoverer(OracleRecoverer(), 0.7, 0.7)


def test_blur_is_heavy_and_keeps_mean() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    y = gaussian_blur(x, 3.0)
    assert y.shape == x.shape and float(y.max()) < 0.05
    assert abs(float(y.sum()) - 1.0) < 0.3  # replicate padding keeps most of the mass


def test_shuffled_takes_other_samples(split, tmp_path) -> None:
    rec = ShuffledRecoverer(OracleRecoverer(), seed=3).fit(split["train"], progress=False)
    scen = _scenario(split).index(slice(0, 50))
    out = rec.recover(scen)
    perm = rec.last_permutation
    assert (perm != torch.arange(50)).all()
    assert torch.equal(torch.sort(perm).values, torch.arange(50))
    for j, name in enumerate(scen.modalities):
        miss = ~scen.observed[:, j]
        assert torch.equal(out.data[name][miss], scen.data[name][perm][miss])
        assert torch.equal(out.data[name][~miss], scen.data[name][~miss])
    rec.save(tmp_path / "sh")
    again = load_recoverer(tmp_path / "sh")
    again.recover(scen)
    assert torch.equal(again.last_permutation, perm)
