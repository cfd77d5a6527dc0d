"""Baselines behind one interface: fit + predict on tiny synthetic data, missing slots never
read (except by the oracles), save/load round trip, registry errors, and each baseline's
defining behaviour (late fusion = mean of unimodal probabilities, the unimodal fallback, the
DynMM gate's admissible experts, the oracles' bounds)."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import pytest
import torch

from dymo.baselines import (
    BASELINES,
    EXPERIMENT_ONLY,
    Baseline,
    baseline_class,
    get_baseline,
    load_baseline,
)
from dymo.baselines.dymo_backbone import DiscardBaseline, FuseAllBaseline
from dymo.baselines.oracles import OracleSelectionBaseline
from dymo.data.synthetic import make_synthetic_splits
from dymo.errors import BundleError, ConfigError, DataError
from dymo.recovery import get_recoverer

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")

BACKBONE = {"dim": 16, "heads": 2, "depth": 1, "proj_dim": 8, "encoder_options": {"vector_hidden": 16, "image_channels": [4, 8, 16]}}
ENCODER = {"dim": 16, "hidden": 16, "encoder_options": {"vector_hidden": 16, "image_channels": [4, 8, 16]}}
FIT = {"epochs": 4, "batch_size": 32, "eval_batch_size": 64}
DYMO_BACKBONE = {"discard", "fuse-all", "oracle-complete", "oracle-selection"}
NAMES = list(BASELINES)


def tiny(name: str, epochs: int | None = None) -> dict:
    fit = {**FIT, "epochs": epochs or FIT["epochs"]}
    if name in DYMO_BACKBONE:
        return {"backbone": BACKBONE, "train": {"epochs": fit["epochs"], "batch_size": 32, "eval_batch_size": 64}}
    if name in ("moddrop", "mtl", "dynmm", "map"):
        return {"backbone": BACKBONE, "train": fit}
    return {"encoder": ENCODER, "train": fit}


def random_observed(n: int, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, m, generator=g) > 0.5
    obs[torch.arange(n), torch.randint(m, (n,), generator=g)] = True
    return obs


@pytest.fixture(scope="module")
def data():
    return make_synthetic_splits(96, 48, 48, kinds=("vector", "vector", "vector"), seed=0)


@pytest.fixture(scope="module")
def recoverer(data):
    return get_recoverer("mean").fit(data["train"], progress=False)


@pytest.fixture(scope="module")
def fitted(data, recoverer) -> dict[str, Baseline]:
    torch.set_num_threads(1)
    return {name: get_baseline(name, **tiny(name)).fit(data, recoverer=recoverer, progress=False) for name in NAMES}


@pytest.fixture(scope="module")
def incomplete(data):
    """The complete test set (true data everywhere) with a random observed mask."""
    test = data["test"].all()
    obs = random_observed(len(test), 3)
    assert (~obs).any(dim=0).all() and obs.all(dim=1).any()  # every modality missing somewhere
    return test.with_observed(obs)


def _garbage(batch, seed: int):
    """Missing slots overwritten with large random values (a different garbage per seed)."""
    g = torch.Generator().manual_seed(seed)
    out = batch.with_missing_filled(0.0)
    for i, name in enumerate(batch.modalities):
        x = out.data[name]
        miss = ~batch.observed[:, i]
        x[miss] = torch.randn(x[miss].shape, generator=g) * 1e4
    return out


# -- registry and config ---------------------------------------------------------------------


def test_registry_names():
    assert set(BASELINES) == {
        "discard", "moddrop", "mtl", "late-fusion", "unimodal", "fuse-all", "concat",
        "qmf", "dynmm", "pdf", "m3care", "muse", "map", "oracle-complete", "oracle-selection",
    }
    for name in BASELINES:
        cls = baseline_class(name)
        assert cls.name == name and cls.paper and cls.__doc__ and "Paper" in cls.__doc__


def test_registry_rejects_unknown_name():
    with pytest.raises(ConfigError, match=r"unknown baseline 'modrop' \(did you mean 'moddrop'\?\).*known: .*'late-fusion'"):
        get_baseline("modrop")
    with pytest.raises(ConfigError, match="unknown baseline 'xyz'"):
        baseline_class("xyz")


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epochs'\]"):
        get_baseline("moddrop", epochs=2)
    with pytest.raises(ConfigError, match="drop_prob"):
        get_baseline("moddrop", drop_prob=1.5)
    b = get_baseline("mtl", backbone={"dim": 8, "heads": 2}, train={"epochs": 1})
    assert b.config.backbone.dim == 8 and b.config.backbone.depth == 2 and b.config.train.epochs == 1


def test_experiment_only_flags():
    for name in BASELINES:
        cls = baseline_class(name)
        b = cls()
        assert b.experiment_only == (name in EXPERIMENT_ONLY), name
        assert cls.reads_missing == (name == "oracle-complete")
        assert cls.uses_labels == (name == "oracle-selection")
    recovery = {n for n in BASELINES if baseline_class(n)().uses_recovery}
    assert recovery == {"fuse-all", "concat", "oracle-selection"}
    assert get_baseline("dynmm", inputs="recovered").uses_recovery


# -- fit and predict -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fit_predict_shapes_probabilities_accuracy(name, fitted, data, incomplete):
    b = fitted[name]
    test = data["test"].all()
    for batch, floor in ((test, 0.7), (incomplete, 0.6)):
        p = b.predict_proba(batch)
        assert p.shape == (48, 3) and p.dtype == torch.float32 and p.device.type == "cpu"
        assert torch.isfinite(p).all() and (p >= 0).all()
        torch.testing.assert_close(p.sum(1), torch.ones(48), atol=1e-5, rtol=0)
        acc = float((p.argmax(1) == batch.labels).float().mean())
        assert acc > floor, f"{name}: accuracy {acc:.3f} (chance 0.33)"
    torch.testing.assert_close(b.predict_dataset(data["test"].with_observed(incomplete.observed.numpy()), batch_size=20), b.predict_proba(incomplete))


@pytest.mark.parametrize("name", [n for n in NAMES if not baseline_class(n).reads_missing])
def test_missing_slots_are_never_read(name, fitted, incomplete):
    b = fitted[name]
    ref = b.predict_proba(incomplete.with_missing_filled(float("nan")))
    assert torch.isfinite(ref).all()
    for seed in (0, 1):
        assert torch.equal(b.predict_proba(_garbage(incomplete, seed)), ref), name
    # NaN text ids cannot exist; -1 ids and the true data are other contents of missing slots.
    assert torch.equal(b.predict_proba(incomplete), ref)


@pytest.fixture(scope="module")
def mixed_data():
    return make_synthetic_splits(48, 24, 24, kinds=("image", "text", "vector"), seed=3)


@pytest.mark.parametrize("name", ["late-fusion", "qmf", "moddrop", "dynmm", "pdf", "m3care", "muse", "map"])
def test_missing_slots_never_read_image_and_text(name, mixed_data):
    torch.set_num_threads(1)
    b = get_baseline(name, **tiny(name, epochs=1)).fit(mixed_data, progress=False)
    test = mixed_data["test"].all()
    batch = test.with_observed(random_observed(len(test), 3, seed=5))
    ref = b.predict_proba(batch.with_missing_filled(float("nan")))  # text slots: -1
    assert torch.isfinite(ref).all()
    poisoned = batch.with_missing_filled(1e6)
    text = poisoned.data["t1"]
    text[~batch.observed[:, 1]] = 11  # a valid but wrong token id
    assert torch.equal(b.predict_proba(poisoned), ref)


def test_recovery_free_rejects_sample_with_nothing_observed(fitted, incomplete):
    obs = incomplete.observed.clone()
    obs[4] = False
    for name in ("discard", "moddrop", "late-fusion", "dynmm", "pdf", "m3care", "muse", "map"):
        with pytest.raises(DataError, match=f"{name}: sample 4 has no observed modality"):
            fitted[name].predict_proba(incomplete.with_observed(obs))


def test_fit_needs_complete_training_data(data):
    import numpy as np

    obs = np.ones((96, 3), dtype=bool)
    obs[7, 2] = False
    bad = type(data)(data.name, data.specs, data.class_names, {**data.splits, "train": data["train"].with_observed(obs)})
    with pytest.raises(DataError, match="train split must be complete.*sample 7 misses modality 'v2'"):
        get_baseline("late-fusion", **tiny("late-fusion")).fit(bad, progress=False)


def test_unfitted_baseline_is_an_error(incomplete):
    with pytest.raises(DataError, match="not fitted"):
        get_baseline("qmf").predict_proba(incomplete)


# -- recovery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fuse-all", "concat"])
def test_recovery_based_uses_recovered_or_recoverer(name, fitted, recoverer, incomplete, tmp_path):
    b = fitted[name]
    recovered = recoverer.recover(incomplete.with_missing_filled(float("nan")))
    assert torch.equal(b.predict_proba(incomplete, recovered=recovered), b.predict_proba(incomplete))
    # Another recovery changes the output: the recovered slots are what it reads.
    other = recovered.with_missing_filled(3.0)
    assert not torch.equal(b.predict_proba(incomplete, recovered=other), b.predict_proba(incomplete))
    bare = load_baseline(b.save(tmp_path / name))
    bare.recoverer = None
    with pytest.raises(ConfigError, match="recovery-based: pass recovered="):
        bare.predict_proba(incomplete)
    wrong = recovered.with_observed(torch.ones_like(incomplete.observed))
    with pytest.raises(DataError, match="recovered.observed differs"):
        b.predict_proba(incomplete, recovered=wrong)
    with pytest.raises(DataError, match="sample .*: recovered modality .* holds no recovery"):
        b.predict_proba(incomplete, recovered=recovered.with_missing_filled(float("nan")))


def test_recovery_free_ignores_recovered(fitted, recoverer, incomplete):
    recovered = recoverer.recover(incomplete).with_missing_filled(5.0)
    b = fitted["moddrop"]
    assert torch.equal(b.predict_proba(incomplete, recovered=recovered), b.predict_proba(incomplete))


# -- save / load -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, fitted, incomplete, tmp_path):
    b = fitted[name]
    path = b.save(tmp_path / name)
    assert {"config.json", "weights.safetensors"} <= {p.name for p in path.iterdir()}
    loaded = load_baseline(path)
    assert type(loaded) is type(b) and loaded.config == b.config and loaded.class_names == b.class_names
    assert (loaded.recoverer is not None) == b.uses_recovery
    assert torch.equal(loaded.predict_proba(incomplete), b.predict_proba(incomplete))
    assert type(baseline_class(name).load(path)) is type(b)


def test_load_errors_name_the_file(fitted, tmp_path):
    path = fitted["late-fusion"].save(tmp_path / "lf")
    with pytest.raises(BundleError, match="holds a 'late-fusion' baseline, not 'qmf'"):
        baseline_class("qmf").load(path)
    w = path / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(BundleError, match="weights.safetensors: truncated or corrupt"):
        load_baseline(path)
    with pytest.raises(BundleError, match="no config.json"):
        load_baseline(tmp_path / "nothing")
    other = fitted["moddrop"].save(tmp_path / "md")
    (path / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    with pytest.raises(BundleError, match="weights do not fit"):
        load_baseline(path)


# -- what each baseline is ---------------------------------------------------------------------


def test_late_fusion_averages_unimodal_probabilities(fitted, data, incomplete):
    b = fitted["late-fusion"]
    with torch.no_grad():
        probs = torch.softmax(b.net.modality_logits(data["test"].all().data, None), dim=-1)  # [B, M, C]
    w = incomplete.observed.float().unsqueeze(-1)
    expected = (probs * w).sum(1) / w.sum(1)
    torch.testing.assert_close(b.predict_proba(incomplete), expected, atol=1e-5, rtol=1e-5)


def test_qmf_weights_logits_by_energy(fitted, data, incomplete):
    b = fitted["qmf"]
    with torch.no_grad():
        logits = b.net.modality_logits(data["test"].all().data, None)
    w = torch.logsumexp(logits, dim=-1) / b.config.energy_temperature * incomplete.observed
    expected = torch.softmax((w.unsqueeze(-1) * logits).sum(1), dim=-1)
    torch.testing.assert_close(b.predict_proba(incomplete), expected, atol=1e-5, rtol=1e-5)


def test_unimodal_uses_best_observed_modality(fitted, incomplete):
    b = fitted["unimodal"]
    ranking = b.ranking
    assert sorted(ranking) == ["v0", "v1", "v2"]
    acc = b.net.val_accuracy
    order = [b.modalities.index(n) for n in ranking]
    assert all(acc[order[i]] >= acc[order[i + 1]] for i in range(2))
    chosen = torch.zeros_like(incomplete.observed)
    for s in range(len(incomplete)):
        first = next(m for m in order if incomplete.observed[s, m])
        chosen[s, first] = True
    assert (~incomplete.observed[:, order[0]]).any()  # the fallback is exercised
    assert torch.equal(b.predict_proba(incomplete), b.predict_proba(incomplete.with_observed(chosen)))


def test_dynmm_gate_picks_only_runnable_experts(fitted, incomplete):
    b = fitted["dynmm"]
    choice = b.expert_choice(incomplete)
    assert choice.shape == (48,) and int(choice.max()) <= 3
    uni = choice < 3
    assert incomplete.observed[torch.nonzero(uni).flatten(), choice[uni]].all()


def test_discard_from_backbone_is_the_backbone_on_observed(fitted, incomplete):
    bb = fitted["discard"].backbone
    wrapped = DiscardBaseline.from_backbone(bb)
    assert wrapped.class_names == ["c0", "c1", "c2"]
    with torch.no_grad():
        expected = torch.softmax(bb(incomplete.data, incomplete.observed).logits, dim=-1)
    torch.testing.assert_close(wrapped.predict_proba(incomplete), expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ConfigError, match="2 class names for a backbone with 3 classes"):
        DiscardBaseline.from_backbone(bb, class_names=["a", "b"])


def test_oracle_complete_reads_the_true_data(fitted, data, incomplete):
    b = fitted["oracle-complete"]
    assert torch.equal(b.predict_proba(incomplete), b.predict_proba(data["test"].all()))
    with pytest.raises(DataError, match="oracle-complete: sample .* modality .* holds no true data"):
        b.predict_proba(incomplete.with_missing_filled(float("nan")))


def test_oracle_selection_bounds_discard_and_fuse_all(fitted, recoverer, incomplete):
    bb = fitted["discard"].backbone
    discard = DiscardBaseline.from_backbone(bb)
    impute = FuseAllBaseline.from_backbone(bb, recoverer)
    oracle = OracleSelectionBaseline.from_backbone(bb, recoverer)
    y = incomplete.labels
    p_or = oracle.predict_proba(incomplete)
    p_dis = discard.predict_proba(incomplete)
    ok_or = p_or.argmax(1) == y
    ok_any = (p_dis.argmax(1) == y) | (impute.predict_proba(incomplete).argmax(1) == y)
    assert (ok_or | ~ok_any).all()  # correct wherever discard or fuse-all is
    # Where no candidate is right, the oracle falls back to discard.
    torch.testing.assert_close(p_or[~ok_or], p_dis[~ok_or], atol=1e-6, rtol=1e-6)
    # Never reads a missing slot; but it does read the labels, and says so without them.
    assert torch.equal(oracle.predict_proba(incomplete.with_missing_filled(float("nan"))), p_or)
    with pytest.raises(DataError, match="EXPERIMENT-ONLY, label-aware"):
        oracle.predict_proba(dataclasses.replace(incomplete, labels=None))


def test_partly_missing_table_values_go_through_the_recovery(fitted, incomplete):
    """NaN entries inside an observed table (DyMo's value-rate scenarios) are imputed by a
    recoverer that allows them; a baseline that reads observed data directly rejects them."""
    batch = incomplete.with_missing_filled(float("nan"))
    x = batch.data["v0"].clone()
    rows = torch.nonzero(batch.observed[:, 0]).flatten()[:5]
    x[rows, :3] = float("nan")
    holes = dataclasses.replace(batch, data={**batch.data, "v0": x})
    for name in ("fuse-all", "concat"):
        p = fitted[name].predict_proba(holes)
        assert torch.isfinite(p).all()
        assert not torch.equal(p[rows], fitted[name].predict_proba(batch)[rows])
    with pytest.raises(DataError, match=f"sample {int(rows[0])}: observed modality 'v0' holds NaN"):
        fitted["discard"].predict_proba(holes)


# -- batch independence ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_prediction_does_not_depend_on_the_batch(name, fitted, incomplete):
    """A sample's prediction is the same alone, in chunks, or in a shuffled batch: decisions
    exactly, probabilities to 1e-5 (batched matmuls may round differently per batch shape)."""
    b = fitted[name]
    ref = b.predict_proba(incomplete)
    chunks = torch.cat([b.predict_proba(incomplete.index(range(s, min(s + 7, 48)))) for s in range(0, 48, 7)])
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(2))
    shuffled = torch.empty_like(ref)
    shuffled[perm] = b.predict_proba(incomplete.index(perm.tolist()))
    single = b.predict_proba(incomplete.index([5]))
    for other in (chunks, shuffled):
        assert torch.equal(other.argmax(1), ref.argmax(1)), name
        torch.testing.assert_close(other, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(single, ref[5:6], atol=1e-5, rtol=0)


# -- the incomplete-multimodal baselines (PDF, M3Care, MUSE, MAP) ------------------------------------


def test_pdf_weights_are_a_convex_combination_over_observed(fitted, incomplete):
    b = fitted["pdf"]
    w = b.fusion_weights(incomplete)
    assert torch.equal(w > 0, incomplete.observed)
    torch.testing.assert_close(w.sum(1), torch.ones(48), atol=1e-6, rtol=0)
    # One observed modality: the prediction is that modality's classifier.
    one = torch.zeros_like(incomplete.observed)
    one[:, 1] = True
    single = incomplete.with_observed(one)
    with torch.no_grad():
        logits, _ = b.net.modality_outputs(single.data, one)
    torch.testing.assert_close(b.predict_proba(single), torch.softmax(logits[:, 1], dim=-1), atol=1e-5, rtol=1e-5)


def test_pdf_fused_logits_follow_the_co_belief(fitted, incomplete):
    """The fused prediction is softmax(sum_m w_m logits_m) with the reported weights."""
    b = fitted["pdf"]
    with torch.no_grad():
        logits, _ = b.net.modality_outputs(incomplete.data, incomplete.observed)
    w = b.fusion_weights(incomplete)
    expected = torch.softmax((w.unsqueeze(-1) * logits).sum(1), dim=-1)
    torch.testing.assert_close(b.predict_proba(incomplete), expected, atol=1e-5, rtol=1e-5)


def test_m3care_imputes_only_missing_modalities_from_the_bank(fitted, incomplete):
    b = fitted["m3care"]
    assert int(b.net.bank_filled) == 96  # every training sample (bank_size 1024 > 96)
    ref = b.predict_proba(incomplete)
    complete = incomplete.observed.all(dim=1)
    assert complete.any() and (~complete).any()
    saved = b.net.bank.clone()
    try:
        b.net.bank.mul_(-1.0).add_(0.5)  # another neighbour pool
        other = b.predict_proba(incomplete)
    finally:
        b.net.bank.copy_(saved)
    # Complete samples never read the bank; incomplete ones do.
    torch.testing.assert_close(other[complete], ref[complete], atol=1e-6, rtol=0)
    assert not torch.allclose(other[~complete], ref[~complete], atol=1e-4)


def test_m3care_imputation_is_the_weighted_mean_of_neighbours(fitted):
    net = fitted["m3care"].net
    torch.manual_seed(0)
    feats = torch.randn(4, 3, 16)
    used = torch.tensor([[True, False, True], [True, True, True], [False, True, False], [True, True, False]])
    bank = torch.randn(10, 3, 16)
    with torch.no_grad():
        out = net.impute(feats, used, bank, torch.ones(10, 3, dtype=torch.bool))
    assert torch.equal(out[used], feats[used])  # observed features are kept
    hull_min, hull_max = bank.amin(0), bank.amax(0)  # a convex combination stays in the box
    for i, m in zip(*torch.nonzero(~used, as_tuple=True), strict=True):
        assert (out[i, m] >= hull_min[m] - 1e-5).all() and (out[i, m] <= hull_max[m] + 1e-5).all()


def test_muse_contrastive_term_and_view_consistency(data):
    torch.set_num_threads(1)
    from dymo.baselines.muse import contrastive_loss

    z = torch.nn.functional.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    ids = torch.arange(4).repeat(2)
    aligned = torch.cat([z[:4], z[:4]])
    assert contrastive_loss(aligned, ids, 0.2) < contrastive_loss(z, ids, 0.2)  # matching views: lower loss
    b = get_baseline("muse", **tiny("muse", epochs=1))
    b.specs, b.class_names = list(data.specs), list(data.class_names)
    net = b._build()
    batch = data["train"].batch(range(32))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with_c = float(net.training_loss(batch, g())[0].detach())
    net.contrastive_weight = 0.0
    assert float(net.training_loss(batch, g())[0].detach()) < with_c


def test_map_prompt_of_one_missing_case_changes_only_that_case(fitted, incomplete):
    from dymo.utils.subsets import masks_to_codes

    b = fitted["map"]
    codes = masks_to_codes(incomplete.observed)
    case = int(torch.mode(codes).values)
    ref = b.predict_proba(incomplete)
    saved = b.net.prompts.detach().clone()
    try:
        with torch.no_grad():
            b.net.prompts[case] += torch.randn(saved.shape[1:], generator=torch.Generator().manual_seed(0))
        other = b.predict_proba(incomplete)
    finally:
        with torch.no_grad():
            b.net.prompts.copy_(saved)
    torch.testing.assert_close(other[codes != case], ref[codes != case], atol=1e-6, rtol=0)
    assert not torch.allclose(other[codes == case], ref[codes == case], atol=1e-4)


def test_map_freezes_the_backbone_but_not_prompts(data):
    torch.set_num_threads(1)
    b = get_baseline("map", **tiny("map", epochs=1))
    before = {}

    import dymo.baselines.training as mp  # the one training helper every phase goes through

    real_fit = mp.fit_network

    def spy(net, *args, **kwargs):
        if net.phase == "prompts":
            before.update({k: v.detach().clone() for k, v in net.state_dict().items()})
        return real_fit(net, *args, **kwargs)

    mp.fit_network = spy
    try:
        b.fit(data, progress=False)
    finally:
        mp.fit_network = real_fit
    after = b.net.state_dict()
    assert torch.equal(after["backbone.blocks.0.linear1.weight"], before["backbone.blocks.0.linear1.weight"])
    assert not torch.equal(after["prompts"], before["prompts"])
    assert not torch.equal(after["backbone.classifier.weight"], before["backbone.classifier.weight"])


def test_m3care_trains_on_a_batch_of_one_without_nan(data):
    """A one-sample batch has no other sample to impute from: zeros, finite loss and gradients."""
    b = get_baseline("m3care", **tiny("m3care", epochs=1))
    b.specs, b.class_names = list(data.specs), list(data.class_names)
    net = b._build()
    loss, _ = net.training_loss(data["train"].batch([0]), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_m3care_bank_references_never_include_the_sample_itself(data):
    """With train_references="bank", the bank holds earlier batches' features; a sample met
    again (next epoch) is recognised by its input fingerprint and kept out of its neighbours."""
    torch.set_num_threads(1)
    b = get_baseline("m3care", **tiny("m3care", epochs=1), train_references="bank")
    b.specs, b.class_names = list(data.specs), list(data.class_names)
    net = b._build()
    first = data["train"].batch(range(32))
    fp = net._fingerprint(first.data)
    again = net._fingerprint(data["train"].batch([5, 3]).data)  # other batch shape, same samples
    torch.testing.assert_close(again, fp[[5, 3]], atol=0, rtol=1e-12)
    assert len(torch.unique(fp)) == 32
    net._push(torch.zeros(32, 3, 16), fp)
    seen = []
    real_impute = net.impute

    def spy(feats, used, ref, ref_used, exclude=None):
        seen.append(exclude)
        return real_impute(feats, used, ref, ref_used, exclude)

    net.impute = spy
    net.training_loss(data["train"].batch(range(16, 48)), torch.Generator().manual_seed(0))
    (exclude,) = seen
    assert exclude.shape == (32, 32)
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[torch.arange(16), torch.arange(16, 32)] = True  # rows 16..31 of the bank are samples 16..31
    assert torch.equal(exclude, expected)
    fitted = b.fit(data, progress=False)
    assert fitted.predict_proba(data["test"].all()).shape == (48, 3)
