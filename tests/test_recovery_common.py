"""Tests of the recovery protocol helpers (merge, grouping by pattern, sanitising, registry)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_split
from dymo.data.batch import MultimodalBatch
from dymo.errors import BundleError, ConfigError, DataError
from dymo.recovery import (
    get_recoverer,
    group_by_pattern,
    load_recoverer,
    merge_recovered,
)


def test_merge_writes_only_missing_slots() -> None:
    data = {"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(3, 2)}
    obs = torch.tensor([[True, True], [False, True], [True, True]])
    batch = MultimodalBatch(data, obs, ("a", "b"))
    out = merge_recovered(batch, {"a": torch.full((3, 4), -5.0)})
    assert out.data["b"] is data["b"]  # untouched modality: same tensor object
    assert torch.equal(out.data["a"][0], data["a"][0]) and torch.equal(out.data["a"][2], data["a"][2])
    assert torch.equal(out.data["a"][1], torch.full((4,), -5.0))
    assert out.observed is obs
    with pytest.raises(DataError, match="modality 'a'"):
        merge_recovered(batch, {})
    with pytest.raises(DataError, match="sample 1"):
        merge_recovered(batch, {"a": torch.full((3, 4), float("nan"))})


def test_zeroing_and_grouping() -> None:
    obs = torch.tensor([[True, False], [False, True], [True, False]])
    batch = MultimodalBatch({"a": torch.ones(3, 2), "b": torch.ones(3, 2)}, obs, ("a", "b")).with_missing_filled()
    clean = batch.with_missing_zeroed()
    assert torch.isfinite(clean.data["a"]).all() and float(clean.data["a"][1].abs().sum()) == 0
    groups = group_by_pattern(obs)
    assert [p.tolist() for p, _ in groups] == [[True, False], [False, True]]
    assert [i.tolist() for _, i in groups] == [[0, 2], [1]]


def test_registry_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown recoverer"):
        get_recoverer("nope")
    with pytest.raises(ConfigError, match="unknown key"):
        get_recoverer("mean", bogus=1)
    with pytest.raises(BundleError, match="config.json"):
        load_recoverer(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        load_recoverer(tmp_path)


def test_unfitted_and_bad_batches() -> None:
    split = make_split(kinds=("vector", "vector"))
    rec = get_recoverer("oracle")
    batch = split["test"].batch([0, 1])
    with pytest.raises(DataError, match="not fitted"):
        rec.recover(batch)
    rec.fit(split["train"], progress=False)
    with pytest.raises(DataError, match="sample 1 has no observed"):
        rec.recover(batch.with_observed(torch.tensor([[True, False], [False, False]])))
    bad = MultimodalBatch(dict(batch.data), batch.observed, ("vec1", "vec0"))
    with pytest.raises(DataError, match="do not match"):
        rec.recover(bad)
