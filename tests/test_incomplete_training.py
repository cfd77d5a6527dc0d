"""Training on incomplete data: every trained component only reads what a sample observes.

The contract (docs/data.md): the backbone fuses each sample's observed part of each training
subset; the imputers, retrieval and the unimodal classifiers train on observed rows; MoPoE is
tested in test_recovery_mopoe.py; the MultiVae recoverers use the complete rows.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.errors import DataError
from dymo.models.backbone import BackboneConfig
from dymo.recovery.base import complete_rows
from dymo.recovery.coherence import UnimodalClassifier, UnimodalConfig
from dymo.recovery.imputers import MeanImputer
from dymo.recovery.retrieval import RetrievalRecoverer
from dymo.training.module import BackboneModule
from dymo.training.run import TrainConfig
from test_recovery_common import make_split

TINY_RETRIEVAL = {"epochs": 2, "batch_size": 32, "embed_dim": 16, "width": 4, "hidden": 16, "text_embed": 8}


def poisoned(ds: MultimodalDataset, observed: np.ndarray, value: float) -> MultimodalDataset:
    """``ds`` with ``observed`` as its mask and ``value`` written into every missing slot."""
    arrays = {}
    for j, s in enumerate(ds.specs):
        a = np.array(ds.arrays[s.name]).copy()
        a[~observed[:, j]] = value if s.kind == "vector" else (200 if s.kind == "image" else 3)
        arrays[s.name] = a
    return MultimodalDataset(ds.specs, arrays, ds.labels, ds.class_names, observed, name="incomplete")


def random_observed(n: int, m: int, p: float, seed: int) -> np.ndarray:
    obs = np.random.default_rng(seed).random((n, m)) > p
    obs[~obs.any(1), 0] = True
    return obs


def test_backbone_step_fuses_only_observed_modalities() -> None:
    ds = make_split(n_train=24, kinds=("image", "vector", "vector"))["train"]
    observed = random_observed(len(ds), 3, 0.5, seed=1)
    batch = poisoned(ds, observed, float("nan")).all()
    module = BackboneModule(
        [s.to_dict() for s in ds.specs], 3, BackboneConfig(dim=16, heads=2, proj_dim=8).to_dict(),
        TrainConfig(subsets_per_batch=7).to_dict(),
    )
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    fuse = module.backbone.fuse

    def spy(tokens: torch.Tensor, used: torch.Tensor):  # noqa: ANN202
        seen.append((tokens, used))
        return fuse(tokens, used)

    module.backbone.fuse = spy  # type: ignore[method-assign]
    tokens = module.backbone.encode(batch.data, batch.observed)
    subsets = module.subsets_for_step(0)
    loss, _ = module.loss_for_tokens(tokens, batch.labels, subsets, True, batch.observed)
    assert torch.isfinite(loss)  # NaN in missing slots never reaches the loss
    assert len(seen) == len(subsets)
    obs = torch.from_numpy(observed)
    for (t, used), subset in zip(seen, subsets, strict=True):
        assert len(t) == len(obs)  # every sample observes something: it takes part in every pass
        assert not (used & ~obs).any()  # only observed modalities are ever fused
        assert (used | ~(subset & obs)).all()  # what a sample has of the subset is always fused
        assert torch.equal(used.sum(1), torch.minimum(subset.sum().expand(len(obs)), obs.sum(1)))
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())


def test_mean_imputer_fits_on_observed_rows_only() -> None:
    ds = make_split(n_train=60, kinds=("image", "vector"))["train"]
    observed = random_observed(len(ds), 2, 0.4, seed=2)
    rec = MeanImputer().fit(poisoned(ds, observed, 1e6), progress=False)
    expected = np.asarray(ds.arrays["vec1"], dtype=np.float64)[observed[:, 1]].mean(0)
    np.testing.assert_allclose(rec.statistics, expected, rtol=1e-9)


def test_unimodal_classifiers_ignore_missing_slots() -> None:
    ds = make_split(n_train=48, kinds=("image", "vector", "text"))["train"]
    observed = random_observed(len(ds), 3, 0.4, seed=3)
    cfg = UnimodalConfig(epochs=1, batch_size=16, embed_dim=8, width=4, hidden=8, text_embed=4)
    a = UnimodalClassifier(ds.specs, ds.class_names, cfg).fit(poisoned(ds, observed, 0.0), progress=False)
    b = UnimodalClassifier(ds.specs, ds.class_names, cfg).fit(poisoned(ds, observed, 50.0), progress=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, msg=k)


def test_retrieval_donors_observe_what_they_donate() -> None:
    split = make_split(n_train=90, kinds=("image", "image", "vector"))
    train = split["train"]
    observed = random_observed(len(train), 3, 0.4, seed=4)
    rec = RetrievalRecoverer(**TINY_RETRIEVAL).fit(poisoned(train, observed, 1e3), progress=False)
    test = split["test"].all()
    q_obs = torch.from_numpy(random_observed(len(test), 3, 0.5, seed=5))
    out = rec.recover(test.with_observed(q_obs).with_missing_filled())
    nb = rec.last_neighbors
    for i in range(len(test)):
        if q_obs[i].all():
            continue
        if nb[i] >= 0:  # one donor for all missing modalities: it observes every one of them
            assert observed[int(nb[i])][~q_obs[i].numpy()].all()
    for j, s in enumerate(train.specs):
        miss = ~q_obs[:, j]
        # Every recovered value is a real observed training row, never the poison.
        assert float(out.data[s.name][miss].abs().max()) < 1e3 - 1
    # Disjoint training modalities: nobody observes both m1 and m2 -> each from its own donor.
    disjoint = np.ones((len(train), 3), dtype=bool)
    disjoint[::2, 1] = False
    disjoint[1::2, 2] = False
    rec2 = RetrievalRecoverer(**TINY_RETRIEVAL).fit(poisoned(train, disjoint, 1e3), progress=False)
    q = torch.zeros(len(test), 3, dtype=torch.bool)
    q[:, 0] = True
    out2 = rec2.recover(test.with_observed(q).with_missing_filled())
    assert (rec2.last_neighbors == -1).all()
    for name in ("img1", "vec2"):
        assert float(out2.data[name].abs().max()) < 1e3 - 1


def test_complete_rows_keeps_complete_samples_and_says_so(caplog) -> None:
    ds = make_split(n_train=30, kinds=("image", "vector"))["train"]
    observed = np.ones((30, 2), dtype=bool)
    observed[[3, 7], 1] = False
    with caplog.at_level(logging.WARNING, logger="dymo.recovery"):
        kept = complete_rows(ds.with_observed(observed), "cmvae", "it needs complete rows")
    assert len(kept) == 28 and "training on the 28 of 30" in caplog.text
    assert complete_rows(ds, "cmvae", "x") is ds
    with pytest.raises(DataError, match="no sample"):
        complete_rows(ds.with_observed(np.array([[True, False]] * 30)), "cmvae", "x")


def test_incomplete_dataset_saves_and_trains_end_to_end(tmp_path) -> None:
    """A split with missing modalities round-trips to disk and trains a backbone."""
    from dymo.data.synthetic import make_synthetic_splits
    from dymo.selection import compute_calibration
    from dymo.training.run import load_backbone, train_backbone

    data = make_synthetic_splits(240, 60, 60, kinds=("image", "vector", "vector"), image_size=8)
    tr = data["train"]
    observed = random_observed(len(tr), 3, 0.3, seed=6)
    data = SplitDataset(data.name, data.specs, data.class_names, {**data.splits, "train": poisoned(tr, observed, float("nan"))})
    data.save(tmp_path / "ds")
    loaded = SplitDataset.load(tmp_path / "ds")
    np.testing.assert_array_equal(loaded["train"].observed, observed)
    run = train_backbone(
        loaded, tmp_path / "run", BackboneConfig(dim=16, heads=2, proj_dim=8),
        TrainConfig(epochs=1, batch_size=64), progress=False,
    )
    backbone = load_backbone(run)
    assert all(torch.isfinite(p).all() for p in backbone.parameters())
    cal = compute_calibration(backbone, loaded["train"], progress=False)
    assert cal.counts is not None and int(cal.counts[7].sum()) == int(observed.all(1).sum())


def test_size_matched_subsets_stay_within_observed_and_keep_the_size() -> None:
    from dymo.training.module import size_matched_subsets

    observed = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 1]], dtype=torch.bool)
    used = torch.tensor([1, 1, 1, 0], dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        mask = size_matched_subsets(used, observed, g)
        assert not (mask & ~observed).any()
        assert (mask | ~(used & observed)).all()  # what the sample has of `used` is always kept
        assert mask.sum(1).tolist() == [3, 2, 1, 3]  # min(|used|, |observed|)
    assert torch.equal(size_matched_subsets(used, torch.ones(2, 4, dtype=torch.bool)), used.expand(2, -1))


def test_fit_on_incomplete_train_and_val_tunes_the_acceptance_rule() -> None:
    """Training data with missing modalities in train AND val: `DyMoClassifier.fit` still tunes
    the acceptance rule on validation (masks within what each sample observes)."""
    from dymo import DyMoClassifier
    from dymo.data.synthetic import make_synthetic_splits

    data = make_synthetic_splits(120, 60, 40, kinds=("vector", "vector", "vector"), vector_dim=4, num_classes=3, seed=2)
    splits = dict(data.splits)
    for name, seed in (("train", 1), ("val", 2)):
        ds = splits[name]
        splits[name] = poisoned(ds, random_observed(len(ds), 3, 0.3, seed=seed), float("nan"))
    data = SplitDataset(data.name, data.specs, data.class_names, splits)
    assert not data["val"].observed.all()
    clf = DyMoClassifier.fit(data, "mean", backbone={"dim": 16, "heads": 2, "depth": 1, "proj_dim": 8}, epochs=1, progress=False)
    assert clf.calibration.threshold is not None
    assert clf.calibration.threshold.n_val == 60
