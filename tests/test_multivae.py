"""MultiVae recoverers (MMVAE+, CMVAE; the optional extra dymo[multivae]).

Skipped where multivae is not installed (the main venv); ``make test-multivae`` runs them in
.venv-multivae. Every model is tiny (8x8 images, 64 samples, 1 epoch): seconds on one core.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("multivae")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dymo.data.synthetic import make_synthetic  # noqa: E402
from dymo.errors import BundleError, ConfigError, DataError  # noqa: E402
from dymo.recovery.multivae import (  # noqa: E402
    CMVAERecoverer,
    MMVAEPlusRecoverer,
    MultiVaeConfig,
    MultiVaeRecoverer,
)
from dymo.recovery.registry import get_recoverer, load_recoverer  # noqa: E402

torch.set_num_threads(1)

KINDS = ("mmvae-plus", "cmvae")
TINY = dict(
    epochs=1, batch_size=16, latent_dim=4, modality_dim=2, image_channels=[4, 8], hidden_dim=16,
    number_of_clusters=3,
)
# one batch mixing five patterns, one of them complete (nothing to recover)
MASK = torch.tensor(
    [[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 1, 1], [0, 1, 0]] * 2, dtype=torch.bool
)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(64, kinds=("image", "image", "vector"), image_size=8, vector_dim=5, seed=0)


@pytest.fixture(scope="module")
def fitted(data):
    return {kind: get_recoverer(kind, **TINY).fit(data, progress=False) for kind in KINDS}


def masked_batch(data, fill=float("nan")):
    return data.batch(range(len(MASK))).with_observed(MASK).with_missing_filled(fill)


# -- building ----------------------------------------------------------------------------------


def test_registry_kinds_build_the_matching_model() -> None:
    plus, cm = get_recoverer("mmvae-plus"), get_recoverer("cmvae")
    assert isinstance(plus, MMVAEPlusRecoverer) and plus.config.model == "mmvae_plus"
    assert isinstance(cm, CMVAERecoverer) and cm.config.model == "cmvae"
    assert plus.config.resolved_loss == "dreg_looser" and cm.config.resolved_loss == "iwae_looser"
    assert isinstance(MultiVaeRecoverer(model="cmvae"), CMVAERecoverer)
    assert isinstance(MultiVaeRecoverer(config=MultiVaeConfig(model="mmvae_plus")), MMVAEPlusRecoverer)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(latent_dim=0), "latent_dim"),
        (dict(modality_dim=0), "modality_dim"),
        (dict(K=0), "K"),
        (dict(lr=0.0), "lr"),
        (dict(beta=-1.0), "beta"),
        (dict(epochs=-1), "epochs"),
        (dict(likelihood_scale=float("nan")), "likelihood_scale"),
        (dict(image_channels=[]), "image_channels"),
        (dict(loss="elbo"), "loss"),
        (dict(trainer="lightning"), "trainer"),
        (dict(latent="4"), r"unknown key\(s\) \['latent'\]"),
        (dict(latent_dim="4"), "expected an integer"),
        (dict(model="cmvae"), "use get_recoverer\\('cmvae'\\)"),
    ],
)
def test_bad_config_is_a_config_error(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        get_recoverer("mmvae-plus", **kwargs)


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model"):
        MultiVaeRecoverer(model="mvae")


def test_fit_refuses_text_and_trains_on_complete_rows(data, caplog) -> None:
    text = make_synthetic(16, kinds=("image", "text"), image_size=8)
    with pytest.raises(DataError, match="is text"):
        get_recoverer("mmvae-plus", **TINY).fit(text, progress=False)
    obs = np.ones((len(data), 3), dtype=bool)
    obs[5, 1] = False
    with caplog.at_level("WARNING", logger="dymo.recovery"):
        get_recoverer("cmvae", **TINY).fit(data.with_observed(obs), progress=False)
    assert f"training on the {len(data) - 1} of {len(data)} training samples" in caplog.text


def test_unfitted_recover_is_a_data_error(data) -> None:
    with pytest.raises(DataError, match="not fitted"):
        get_recoverer("cmvae", **TINY).recover(masked_batch(data))


# -- recovery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_heterogeneous_masks_observed_bit_identical_missing_filled(fitted, data, kind) -> None:
    rec = fitted[kind]
    assert len(rec.history) == 1 and np.isfinite(rec.history[0]["loss"])
    batch = masked_batch(data)
    out = rec.recover(batch)
    assert out.observed is batch.observed and out.labels is batch.labels
    for i, spec in enumerate(rec.specs):
        x, y = batch.data[spec.name], out.data[spec.name]
        obs = MASK[:, i]
        assert torch.equal(y[obs], x[obs])
        assert torch.isfinite(y).all()
        assert y.dtype == x.dtype and y.shape == x.shape
        if spec.kind == "image":
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_missing_slot_content_has_no_influence(fitted, data, kind) -> None:
    rec = fitted[kind]
    with_nan = rec.recover(masked_batch(data, float("nan")))
    garbage = masked_batch(data, 0.0)
    g = torch.Generator().manual_seed(3)
    for i, spec in enumerate(rec.specs):
        x = garbage.data[spec.name]
        miss = ~MASK[:, i]
        x[miss] = torch.randn(x[miss].shape, generator=g) * 1e3
    with_garbage = rec.recover(garbage)
    for name in data.modalities:
        assert torch.equal(with_nan.data[name], with_garbage.data[name])


@pytest.mark.parametrize("kind", KINDS)
def test_one_predict_call_per_observed_pattern(fitted, data, kind, monkeypatch) -> None:
    rec = fitted[kind]
    calls = []
    original = rec.model.predict

    def spy(inputs, cond_mod, gen_mod, **kwargs):
        calls.append((sorted(inputs.data), list(cond_mod), list(gen_mod), len(inputs), kwargs))
        return original(inputs, cond_mod=cond_mod, gen_mod=gen_mod, **kwargs)

    monkeypatch.setattr(rec.model, "predict", spy)
    rec.recover(masked_batch(data))
    names = list(data.modalities)
    expected = []
    for row in torch.unique(MASK, dim=0).tolist():
        if all(row):
            continue  # a complete pattern needs no generation
        cond = [m for m, o in zip(names, row, strict=True) if o]
        gen = [m for m, o in zip(names, row, strict=True) if not o]
        expected.append((cond, gen))
    assert sorted((c[1], c[2]) for c in calls) == sorted(expected)
    for inputs_mods, cond, _gen, n, kwargs in calls:
        assert inputs_mods == sorted(cond)  # only the observed modalities reach MultiVae
        assert n == 2  # each pattern occurs twice in MASK
        assert kwargs == {"N": 1, "return_mean": True}


@pytest.mark.parametrize("kind", KINDS)
def test_recovery_is_deterministic_and_batch_independent(fitted, data, kind) -> None:
    rec = fitted[kind]
    batch = masked_batch(data)
    first, second = rec.recover(batch), rec.recover(batch)
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    alone = rec.recover(batch.index([3]))
    assert np.array_equal(np.random.get_state()[1], np_state)  # global RNGs left as they were
    assert torch.equal(torch.get_rng_state(), torch_state)
    for name in data.modalities:
        assert torch.equal(first.data[name], second.data[name])
        torch.testing.assert_close(alone.data[name][0], first.data[name][3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_gives_identical_recoveries(fitted, data, kind, tmp_path) -> None:
    rec = fitted[kind]
    path = rec.save(tmp_path / "rec")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "weights.safetensors"]  # no pickles
    meta = json.loads((path / "config.json").read_text())
    assert meta["kind"] == kind and meta["config"]["model"] == rec.config.model
    assert meta["extra"]["multivae_version"]
    loaded = load_recoverer(path)
    assert type(loaded) is type(rec) and loaded.config == rec.config
    batch = masked_batch(data)
    a, b = rec.recover(batch), loaded.recover(batch)
    for name in data.modalities:
        assert torch.equal(a.data[name], b.data[name])


def test_load_with_mismatched_config_is_a_bundle_error(fitted, tmp_path) -> None:
    path = fitted["mmvae-plus"].save(tmp_path / "rec")
    meta = json.loads((path / "config.json").read_text())
    meta["config"]["latent_dim"] = 5
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="weights"):
        load_recoverer(path)


def test_sample_without_observed_modality_is_a_data_error(fitted, data) -> None:
    batch = data.batch(range(2)).with_observed(torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool))
    with pytest.raises(DataError, match="sample 1 has no observed modality"):
        fitted["cmvae"].recover(batch)


def test_multivae_base_trainer_option(data) -> None:
    np_state = np.random.get_state()[1].copy()
    rec = get_recoverer("mmvae-plus", **{**TINY, "trainer": "multivae"}).fit(data, progress=False)
    assert np.array_equal(np.random.get_state()[1], np_state)  # BaseTrainer's reseeding undone
    assert rec.history and np.isfinite(rec.history[0]["best_train_loss"])
    out = rec.recover(masked_batch(data))
    for name in data.modalities:
        assert torch.isfinite(out.data[name]).all()
