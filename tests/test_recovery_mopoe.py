"""MoPoE recoverer: the Gaussian algebra and ELBO against closed forms, the recovery protocol,
persistence and resumable training. Every model here is tiny (seconds on one CPU core)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dymo.data.dataset import MultimodalDataset
from dymo.data.specs import ModalitySpec
from dymo.data.synthetic import make_synthetic
from dymo.errors import ConfigError, DataError
from dymo.recovery.mopoe import (
    CHECKPOINT_FILE,
    ImageDecoder,
    ImageEncoder,
    MoPoEConfig,
    MoPoEModel,
    MoPoERecoverer,
    kl_to_standard_normal,
    product_of_experts,
)
from dymo.recovery.registry import get_recoverer, load_recoverer

TINY = dict(latent_dim=6, hidden_dim=16, text_embed_dim=8, image_channels=[4, 8], batch_size=16)


def np_kl(mu: np.ndarray, var: np.ndarray) -> float:
    return float(0.5 * np.sum(var + mu**2 - 1.0 - np.log(var)))


# -- Gaussian algebra ------------------------------------------------------------------------


def test_poe_matches_hand_computed_product() -> None:
    mu = torch.tensor([[[1.0], [-2.0]]])  # [B=1, M=2, D=1]
    var = torch.tensor([[[0.5], [2.0]]])
    both = torch.tensor([[True, True]])
    m, lv = product_of_experts(mu, var.log(), both, prior_expert=True)
    # precision 1 (prior) + 2 + 0.5 = 3.5; mean (1 * 2 + (-2) * 0.5) / 3.5
    assert m.item() == pytest.approx(1.0 / 3.5, abs=1e-6)
    assert lv.exp().item() == pytest.approx(1.0 / 3.5, abs=1e-6)
    m, lv = product_of_experts(mu, var.log(), both, prior_expert=False)
    assert m.item() == pytest.approx(1.0 / 2.5, abs=1e-6)
    assert lv.exp().item() == pytest.approx(1.0 / 2.5, abs=1e-6)


def test_poe_masked_expert_has_no_influence_even_if_nan() -> None:
    mu = torch.tensor([[[1.0, 3.0], [float("nan"), float("inf")]]])
    logvar = torch.tensor([[[math.log(0.25), 0.0], [float("nan"), -float("inf")]]])
    m, lv = product_of_experts(mu, logvar, torch.tensor([[True, False]]), prior_expert=True)
    # only expert 0 and the prior: precisions 4 + 1 and 1 + 1
    torch.testing.assert_close(m, torch.tensor([[4.0 / 5.0, 3.0 / 2.0]]))
    torch.testing.assert_close(lv, -torch.log(torch.tensor([[5.0, 2.0]])))


def test_kl_matches_numpy_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu, var = rng.normal(size=5), rng.uniform(0.1, 3.0, size=5)
    got = kl_to_standard_normal(torch.tensor(mu), torch.tensor(np.log(var))).item()
    assert got == pytest.approx(np_kl(mu, var), rel=1e-9)
    assert kl_to_standard_normal(torch.zeros(3), torch.zeros(3)).item() == 0.0


class _LinearExpert(nn.Module):
    """mu = a * x, logvar = log(v): a fixed, hand-checkable encoder for 1-dim vectors."""

    def __init__(self, a: float, v: float) -> None:
        super().__init__()
        self.a, self.logv = a, math.log(v)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a * x, torch.full_like(x, self.logv)


class _ConstantDecoder(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full((z.shape[0], 1), self.c)


def _gauss_nll(v: float, c: float, s: float = 0.5) -> float:
    return 0.5 * ((v - c) / s) ** 2 + math.log(s) + 0.5 * math.log(2 * math.pi)


def test_elbo_on_two_one_dim_modalities_matches_hand_computation() -> None:
    specs = [ModalitySpec("a", "vector", (1,)), ModalitySpec("b", "vector", (1,))]
    cfg = MoPoEConfig(latent_dim=1, beta=2.0, vector_scale=0.5, prior_expert=True)
    model = MoPoEModel(specs, cfg)
    model.encoders["a"] = _LinearExpert(1.0, 0.5)
    model.encoders["b"] = _LinearExpert(-1.0, 2.0)
    model.decoders["a"] = _ConstantDecoder(0.3)
    model.decoders["b"] = _ConstantDecoder(-0.1)
    x = {"a": torch.tensor([[1.0], [0.2]]), "b": torch.tensor([[2.0], [-1.0]])}
    terms = model.loss(x, torch.Generator().manual_seed(0), kl_weight=1.0)

    kls, recs = [], []
    for xa, xb in ((1.0, 2.0), (0.2, -1.0)):
        experts = {"a": (xa, 0.5), "b": (-xb, 2.0)}
        per_subset = []
        for subset in (["a"], ["b"], ["a", "b"]):
            prec = 1.0 + sum(1.0 / experts[m][1] for m in subset)
            mean = sum(experts[m][0] / experts[m][1] for m in subset) / prec
            per_subset.append(np_kl(np.array([mean]), np.array([1.0 / prec])))
        kls.append(np.mean(per_subset))
        recs.append(_gauss_nll(xa, 0.3) + _gauss_nll(xb, -0.1))
    assert terms.kl.item() == pytest.approx(np.mean(kls), rel=1e-5)
    assert terms.rec.item() == pytest.approx(np.mean(recs), rel=1e-5)
    assert terms.loss.item() == pytest.approx(np.mean(recs) + 2.0 * np.mean(kls), rel=1e-5)
    half = model.loss(x, torch.Generator().manual_seed(0), kl_weight=0.5)
    assert half.loss.item() == pytest.approx(np.mean(recs) + 1.0 * np.mean(kls), rel=1e-5)


def test_laplace_image_likelihood_closed_form() -> None:
    spec = ModalitySpec("i", "image", (1, 2, 2))
    model = MoPoEModel([spec], MoPoEConfig(latent_dim=2, image_likelihood="laplace", likelihood_scale=0.75))
    x, mean = torch.full((1, 1, 2, 2), 0.9), torch.full((1, 1, 2, 2), 0.4)
    expected = 4 * (0.5 / 0.75 + math.log(1.5))
    assert model.nll(spec, mean, x).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 15, 16), (3, 5, 7)])
def test_image_decoder_reproduces_any_input_size(shape: tuple[int, int, int]) -> None:
    enc, dec = ImageEncoder(shape, (4, 8, 8), 5), ImageDecoder(shape, (4, 8, 8), 5)
    mu, logvar = enc(torch.rand(2, *shape))
    assert mu.shape == logvar.shape == (2, 5)
    out = dec(mu)
    assert out.shape == (2, *shape)
    assert bool(((out >= 0) & (out <= 1)).all())


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="image_likelihood"):
        MoPoEConfig(image_likelihood="bernoulli")
    with pytest.raises(ConfigError, match="unknown key"):
        MoPoEConfig.from_dict({"latent": 3})
    with pytest.raises(ConfigError, match="likelihood_scale"):
        MoPoEConfig(likelihood_scale=0.0)
    cfg = MoPoEConfig(**TINY)
    assert MoPoEConfig.from_dict(cfg.to_dict()) == cfg


# -- the recovery protocol -------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_set() -> MultimodalDataset:
    return make_synthetic(48, kinds=("image", "vector", "text", "image"), image_size=8, seed=0)


@pytest.fixture(scope="module")
def fitted(train_set: MultimodalDataset) -> MoPoERecoverer:
    torch.set_num_threads(1)
    return MoPoERecoverer(epochs=2, **TINY).fit(train_set, progress=False)


@pytest.fixture(scope="module")
def test_batch(train_set: MultimodalDataset):  # noqa: ANN201
    ds = make_synthetic(12, kinds=("image", "vector", "text", "image"), image_size=8, seed=5)
    g = torch.Generator().manual_seed(3)
    observed = torch.rand(12, 4, generator=g) < 0.5
    observed[torch.arange(12), torch.arange(12) % 4] = True  # at least one observed each
    observed[0] = True  # a complete sample
    return ds.all().with_observed(observed)


def test_observed_slots_bit_identical_and_missing_filled(fitted: MoPoERecoverer, test_batch) -> None:  # noqa: ANN001
    out = fitted.recover(test_batch)
    assert out.observed is test_batch.observed
    assert out.labels is test_batch.labels
    for i, name in enumerate(test_batch.modalities):
        obs = test_batch.observed[:, i]
        assert torch.equal(out.data[name][obs], test_batch.data[name][obs])
        assert out.data[name].dtype == test_batch.data[name].dtype
        miss = out.data[name][~obs]
        if miss.is_floating_point():
            assert bool(torch.isfinite(miss).all())
            assert not torch.equal(miss, test_batch.data[name][~obs])
        else:
            assert bool(((miss >= 0) & (miss < 12)).all())


def test_missing_slot_contents_have_no_influence(fitted: MoPoERecoverer, test_batch) -> None:  # noqa: ANN001
    ref = fitted.recover(test_batch)
    for filled in (test_batch.with_missing_filled(), test_batch.with_missing_filled(1e6)):
        out = fitted.recover(filled)
        for i, name in enumerate(test_batch.modalities):
            miss = ~test_batch.observed[:, i]
            assert torch.equal(out.data[name][miss], ref.data[name][miss]), name


def test_heterogeneous_batch_equals_per_sample_recovery(fitted: MoPoERecoverer, test_batch) -> None:  # noqa: ANN001
    assert len({tuple(r) for r in test_batch.observed.tolist()}) > 4  # really mixed patterns
    whole = fitted.recover(test_batch)
    for j in range(len(test_batch)):
        single = fitted.recover(test_batch.index([j]))
        for name in test_batch.modalities:
            torch.testing.assert_close(single.data[name][0], whole.data[name][j], rtol=1e-5, atol=1e-5)


def test_matches_decode_all_subsets_reference(fitted: MoPoERecoverer, test_batch) -> None:  # noqa: ANN001
    ours = fitted.recover(test_batch)
    ref = fitted.recover_all_subsets(test_batch)
    for name in test_batch.modalities:
        torch.testing.assert_close(ours.data[name], ref.data[name], rtol=1e-5, atol=1e-5)


def test_recovery_depends_on_observed_data(fitted: MoPoERecoverer, test_batch) -> None:  # noqa: ANN001
    """Changing an observed modality changes the recovery of a missing one (the PoE reads it)."""
    observed = torch.zeros(len(test_batch), 4, dtype=torch.bool)
    observed[:, 1] = True  # only the vector observed
    b = test_batch.with_observed(observed)
    shifted = b.with_observed(observed)
    shifted.data = {**b.data, "v1": b.data["v1"] + 3.0}
    assert not torch.equal(fitted.recover(b).data["i0"], fitted.recover(shifted).data["i0"])


def test_empty_sample_and_unfitted_are_clear_errors(fitted: MoPoERecoverer, test_batch) -> None:  # noqa: ANN001
    observed = test_batch.observed.clone()
    observed[2] = False
    with pytest.raises(DataError, match="sample 2 has no observed modality"):
        fitted.recover(test_batch.with_observed(observed))
    with pytest.raises(DataError, match="not fitted"):
        MoPoERecoverer(**TINY).recover(test_batch)


def test_incomplete_training_set_never_reads_missing_slots(train_set: MultimodalDataset) -> None:
    """MoPoE trains on incomplete rows (PoE over each sample's observed experts): what the
    missing slots hold has no influence on the fitted weights."""
    observed = np.random.default_rng(0).random((len(train_set), 4)) > 0.3
    observed[~observed.any(1), 0] = True

    def poisoned(value: float) -> MultimodalDataset:
        arrays = {}
        for j, s in enumerate(train_set.specs):
            a = np.array(train_set.arrays[s.name]).copy()
            a[~observed[:, j]] = value if s.kind != "text" else 3
            arrays[s.name] = a
        return MultimodalDataset(train_set.specs, arrays, train_set.labels, train_set.class_names, observed)

    a = MoPoERecoverer(epochs=1, **TINY).fit(poisoned(0.0), progress=False)
    b = MoPoERecoverer(epochs=1, **TINY).fit(poisoned(7.0), progress=False)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, msg=k)


# -- persistence -----------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_output(fitted: MoPoERecoverer, test_batch, tmp_path) -> None:  # noqa: ANN001
    fitted.save(tmp_path / "m")
    for loaded in (MoPoERecoverer.load(tmp_path / "m"), load_recoverer(tmp_path / "m")):
        assert isinstance(loaded, MoPoERecoverer)
        assert loaded.config == fitted.config
        assert loaded.history == fitted.history
        a, b = fitted.recover(test_batch), loaded.recover(test_batch)
        for name in test_batch.modalities:
            assert torch.equal(a.data[name], b.data[name])


def test_vector_statistics_are_saved(tmp_path) -> None:  # noqa: ANN001
    ds = make_synthetic(32, kinds=("vector", "vector"), vector_dim=4, seed=1)
    ds.arrays["v0"] = ds.arrays["v0"] * 100.0 + 50.0
    rec = MoPoERecoverer(epochs=0, **TINY).fit(ds, progress=False)
    assert rec.model is not None
    torch.testing.assert_close(rec.model.scalers["v0"].mean, torch.tensor(ds.arrays["v0"].mean(0)), rtol=1e-4, atol=1e-3)
    loaded = MoPoERecoverer.load(rec.save(tmp_path / "v"))
    assert loaded.model is not None
    assert torch.equal(loaded.model.scalers["v0"].std, rec.model.scalers["v0"].std)


# -- training --------------------------------------------------------------------------------


def test_training_decreases_the_loss() -> None:
    torch.set_num_threads(1)
    ds = make_synthetic(64, kinds=("image", "vector"), image_size=8, seed=2)
    rec = MoPoERecoverer(epochs=6, lr=3e-3, **TINY).fit(ds, progress=False)
    losses = [h["loss"] for h in rec.history]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 1.0


def test_resumed_training_equals_uninterrupted(train_set: MultimodalDataset, tmp_path) -> None:  # noqa: ANN001
    torch.set_num_threads(1)
    straight = MoPoERecoverer(epochs=2, **TINY).fit(train_set, progress=False)
    MoPoERecoverer(epochs=1, **TINY).fit(train_set, progress=False, run_dir=tmp_path)
    assert (tmp_path / CHECKPOINT_FILE).exists()
    resumed = get_recoverer("mopoe", epochs=2, **TINY)
    resumed.fit(train_set, progress=False, run_dir=tmp_path)
    assert resumed.history == straight.history
    for k, v in straight.state().items():
        assert torch.equal(v, resumed.state()[k]), k
    with pytest.raises(ConfigError, match="beta"):
        MoPoERecoverer(epochs=3, beta=2.5, **TINY).fit(train_set, progress=False, run_dir=tmp_path)
