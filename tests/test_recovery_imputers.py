"""Table imputers: fitted on training data only; whole-modality and value missingness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_split
from dymo.data.batch import MultimodalBatch
from dymo.errors import ConfigError, DataError
from dymo.recovery import get_recoverer
from dymo.recovery.imputers import IterativeImputerRecoverer, MeanImputer

KINDS = ("vector", "vector", "vector")


@pytest.fixture(scope="module")
def split():
    return make_split(kinds=KINDS, seed=7)


def _table(ds) -> np.ndarray:
    return np.concatenate([np.asarray(ds.arrays[s.name], dtype=np.float64) for s in ds.specs], axis=1)


def test_fitted_on_train_only(split) -> None:
    train, test = _table(split["train"]), _table(split["test"])
    mean = MeanImputer().fit(split["train"], progress=False)
    np.testing.assert_allclose(mean.statistics, train.mean(0))
    assert not np.allclose(mean.statistics, test.mean(0))
    knn = get_recoverer("knn").fit(split["train"], progress=False)
    assert np.array_equal(knn.train_table, train)
    it = IterativeImputerRecoverer(max_iter=2).fit(split["train"], progress=False)
    np.testing.assert_allclose(it.arrays["initial"], train.mean(0))
    # an all-missing sample gets the training means from the mean imputer
    b = split["test"].batch([0]).with_observed(torch.zeros(1, 3, dtype=torch.bool)).with_missing_filled()
    out = mean.recover(b)
    np.testing.assert_allclose(out.data["vec0"][0].numpy(), train.mean(0)[:6].astype(np.float32))


@pytest.mark.parametrize("kind", ["mean", "knn", "iterative"])
def test_value_missingness_inside_observed_vectors(split, kind) -> None:
    rec = get_recoverer(kind).fit(split["train"], progress=False)
    batch = split["test"].all()
    obs = torch.ones(len(batch), 3, dtype=torch.bool)
    obs[::3, 1] = False  # whole-modality missingness too
    batch = batch.with_observed(obs).with_missing_filled()
    holes = torch.zeros_like(batch.data["vec0"], dtype=torch.bool)
    holes[1::2, 2] = True
    holes[::5, 5] = True
    batch.data["vec0"] = batch.data["vec0"].masked_fill(holes, float("nan"))
    out = rec.recover(batch)
    x, y = batch.data["vec0"], out.data["vec0"]
    assert torch.isfinite(y).all() and torch.isfinite(out.data["vec1"]).all()
    assert torch.equal(y[~holes], x[~holes])  # every other observed value bit-identical
    assert torch.equal(out.data["vec2"], batch.data["vec2"])
    assert not torch.equal(y[holes], torch.zeros(int(holes.sum())))


def test_iterative_matches_sklearn_transform(split) -> None:
    rec = IterativeImputerRecoverer(max_iter=3).fit(split["train"], progress=False)
    batch = split["test"].all()
    obs = torch.ones(len(batch), 3, dtype=torch.bool)
    obs[::2, 0] = False
    obs[1::3, 2] = False
    table = rec._table(batch.with_observed(obs))
    np.testing.assert_allclose(rec._impute(table), rec.sklearn_imputer.transform(table), rtol=1e-10, atol=1e-10)


def test_iterative_uses_other_views(split) -> None:
    """A missing view is predicted from observed ones (the class is in every view), so it beats the mean."""
    it = get_recoverer("iterative").fit(split["train"], progress=False)
    mean = get_recoverer("mean").fit(split["train"], progress=False)
    batch = split["test"].all()
    obs = torch.ones(len(batch), 3, dtype=torch.bool)
    obs[:, 0] = False
    given = batch.with_observed(obs).with_missing_filled()
    err = {n: float(((r.recover(given).data["vec0"] - batch.data["vec0"]) ** 2).mean()) for n, r in (("it", it), ("mean", mean))}
    assert err["it"] < 0.6 * err["mean"]


def test_tables_only() -> None:
    with pytest.raises(ConfigError, match="vector"):
        get_recoverer("mean").fit(make_split(kinds=("image", "text"))["train"], progress=False)
    mixed = make_split(kinds=("image", "vector"))
    rec = get_recoverer("mean").fit(mixed["train"], progress=False)
    b = mixed["test"].batch([0, 1])
    with pytest.raises(DataError, match="sample 1 misses image modality 'img0'"):
        rec.recover(b.with_observed(torch.tensor([[True, True], [False, True]])))
    ok = rec.recover(b.with_observed(torch.tensor([[True, False], [True, True]])))
    assert torch.isfinite(ok.data["vec1"]).all()


def test_inf_in_observed_value_is_rejected(split) -> None:
    rec = get_recoverer("mean").fit(split["train"], progress=False)
    b = split["test"].batch([0, 1, 2])
    b.data["vec1"][2, 0] = float("inf")
    with pytest.raises(DataError, match="sample 2: observed modality 'vec1'"):
        rec.recover(MultimodalBatch(b.data, b.observed, b.modalities))
