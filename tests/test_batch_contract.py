"""The batch contract's three tools (dymo.data.batch): one validator, one poison, one zeroing."""

from __future__ import annotations

import pytest
import torch

from dymo.data.batch import MultimodalBatch, zero_missing, zero_nan_values
from dymo.data.specs import ModalitySpec
from dymo.errors import DataError

SPECS = [ModalitySpec("v", "vector", (3,)), ModalitySpec("t", "text", (4,), vocab_size=9)]


def _batch(observed: list[list[bool]]) -> MultimodalBatch:
    n = len(observed)
    data = {"v": torch.arange(3.0 * n).reshape(n, 3) + 1, "t": torch.arange(4 * n).reshape(n, 4) % 8 + 1}
    return MultimodalBatch(data, torch.tensor(observed), ("v", "t"))


def test_poison_then_zero_gives_zeros_in_missing_rows_only() -> None:
    batch = _batch([[True, False], [False, True], [True, True]])
    poisoned = batch.with_missing_filled()
    assert torch.isnan(poisoned.data["v"][1]).all() and (poisoned.data["t"][0] == -1).all()
    zeroed = poisoned.with_missing_zeroed()
    assert (zeroed.data["v"][1] == 0).all() and (zeroed.data["t"][0] == 0).all()  # text: padding id 0
    for name, i in (("v", 0), ("t", 1)):
        keep = batch.observed[:, i]
        assert torch.equal(zeroed.data[name][keep], batch.data[name][keep])
    assert zeroed.data["v"].dtype == torch.float32 and zeroed.data["t"].dtype == torch.int64


def test_zeroing_keeps_complete_modalities_as_the_same_object() -> None:
    batch = _batch([[True, False], [True, True]])
    assert batch.with_missing_zeroed().data["v"] is batch.data["v"]
    x = torch.full((2, 3), float("nan"))
    assert torch.equal(zero_missing(x, torch.tensor([False, False])), torch.zeros(2, 3))


def test_zero_nan_values_touches_entries_not_rows() -> None:
    x = torch.tensor([[1.0, float("nan")], [2.0, 3.0]])
    assert torch.equal(zero_nan_values(x), torch.tensor([[1.0, 0.0], [2.0, 3.0]]))
    ids = torch.tensor([[1, 2]])
    assert zero_nan_values(ids) is ids


def test_validator_prefix_nan_values_and_need_observed() -> None:
    batch = _batch([[True, True], [True, False]])
    v = batch.data["v"].clone()
    v[1, 2] = float("nan")
    partly = MultimodalBatch({**batch.data, "v": v}, batch.observed, batch.modalities)
    with pytest.raises(DataError, match=r"^knn: sample 1: observed modality 'v' holds NaN or Inf$"):
        partly.validate(SPECS, who="knn")
    partly.validate(SPECS, nan_values=True)  # a partly missing table, for an imputer
    v[0, 0] = float("inf")
    with pytest.raises(DataError, match="sample 0: observed modality 'v' holds NaN or Inf"):
        MultimodalBatch({**batch.data, "v": v}, batch.observed, batch.modalities).validate(SPECS, nan_values=True)
    empty = batch.with_observed(torch.tensor([[True, True], [False, False]]))
    empty.validate(SPECS)
    with pytest.raises(DataError, match=r"^mean: sample 1 has no observed modality; recovery needs one$"):
        empty.validate(SPECS, who="mean", need_observed="recovery needs one")
