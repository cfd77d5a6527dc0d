"""The acceptance rule of the selection (a recovery is accepted only if R > tau), its tuning on
validation data, and its storage with the calibration."""

import math

import numpy as np
import pytest
import torch

from dymo.errors import BundleError, ConfigError, DataError
from dymo.selection import Calibration, SelectionConfig, select
from dymo.selection.acceptance import (
    ThresholdTuning,
    pick_thresholds,
    resolve_thresholds,
)
from dymo.selection.tuning import tune_threshold
from test_selection_search import B, M, Table, observed_mask


def run(table, obs, **cfg):
    return select(table, obs, ~obs, table.cal, SelectionConfig(**cfg))


def accepted_rewards(res):
    """(reward, tau) of every accepted step (dymo: one modality per step)."""
    out = []
    for t in range(res.action_history.shape[0]):
        for i in range(len(res)):
            u = int(res.action_history[t, i])
            if u != 100 and bool(res.initial_used[i].any()):
                out.append((float(res.reward_history[t, i, u]), float(res.thresholds[i])))
    return out


@pytest.mark.parametrize("tau", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("method", ["dymo", "iterative", "simultaneous"])
def test_a_candidate_is_accepted_only_above_tau(tau, method):
    table, obs = Table(), observed_mask()
    res = run(table, obs, method=method, threshold=tau)
    for t in range(res.reward_history.shape[0]):
        r = res.reward_history[t]
        evaluated = ~torch.isnan(r)
        searched = res.initial_used.any(1, keepdim=True)
        # every accepted candidate of a sample that observes something had R > tau ...
        if method == "simultaneous":
            acc = res.added & evaluated
        else:
            acc = torch.zeros_like(evaluated)
            for i in range(len(res)):
                u = int(res.action_history[t, i])
                if u != 100:
                    acc[i, u] = True
        assert bool((r[acc & searched] > tau).all())
        # ... and a candidate below tau is rejected for good
        assert bool(res.rejected[(r < tau) & evaluated & searched & ~acc].all())
    for i in range(len(res)):
        for s in res.explain(i).steps:
            for c in s.candidates:
                if c.decision == "accepted" and bool(obs[i].any()):
                    assert c.reward > tau
                if c.decision == "rejected":
                    assert c.reward < tau


def test_a_larger_tau_accepts_less_and_tau_zero_is_the_paper_rule():
    table, obs = Table(), observed_mask()
    paper = run(table, obs)  # the default: "calibrated", no tuned tau -> 0
    zero = run(table, obs, threshold=0.0)
    assert torch.equal(paper.used, zero.used) and torch.equal(paper.rejected, zero.rejected)
    steps = [int(run(table, obs, threshold=t).steps.sum()) for t in (-math.inf, 0.0, 0.1, 0.3, math.inf)]
    assert steps == sorted(steps, reverse=True) and steps[0] > steps[1] > steps[-1]


@pytest.mark.parametrize("method", ["dymo", "iterative", "simultaneous"])
def test_infinite_tau_makes_discards_decisions_and_minus_inf_fuse_alls(method):
    table, obs = Table(), observed_mask()
    never = run(table, obs, method=method, threshold=math.inf)
    discard = run(table, obs, method="discard")
    assert torch.equal(never.used, discard.used) and int(never.steps.sum()) == 0
    assert torch.equal(never.predictions, discard.predictions)
    if method != "simultaneous":
        always = run(table, obs, method=method, threshold=-math.inf)
        assert torch.equal(always.used, run(table, obs, method="fuse-all").used)


def test_with_nothing_observed_the_first_addition_stays_forced():
    table = Table()
    obs = observed_mask(allow_empty=True)
    assert bool((~obs.any(1)).any())
    res = run(table, obs, threshold=math.inf)
    assert bool((res.steps[~obs.any(1)] == 1).all()) and bool((res.steps[obs.any(1)] == 0).all())


def test_per_count_thresholds_apply_by_number_observed():
    table, obs = Table(), observed_mask()
    k = obs.sum(1)
    taus = [0.0, math.inf, 0.0, 0.0]  # no recovery for samples with 1 observed modality
    res = run(table, obs, threshold=taus)
    assert bool((res.steps[k == 1] == 0).all())
    paper = run(table, obs, threshold=0.0)
    assert torch.equal(res.used[k != 1], paper.used[k != 1])
    assert bool((paper.steps[k == 1] > 0).any())  # the rule changed something
    assert res.thresholds.tolist() == [taus[int(v)] for v in k]


def test_threshold_config_validates_and_round_trips(tmp_path):
    for value in (0.2, math.inf, [0.0, 0.1, math.inf, -math.inf], "calibrated"):
        cfg = SelectionConfig(threshold=value)
        cfg.save(tmp_path / "s.json")
        assert SelectionConfig.load(tmp_path / "s.json") == cfg
    with pytest.raises(ConfigError, match="NaN"):
        SelectionConfig(threshold=math.nan)
    with pytest.raises(ConfigError, match="threshold"):
        SelectionConfig.from_dict({"threshold": "tuned"})
    table, obs = Table(), observed_mask()
    with pytest.raises(ConfigError, match="one per number of observed"):
        run(table, obs, threshold=[0.0, 0.1])


def _tuning(thresholds):
    return ThresholdTuning(thresholds=thresholds, recoverer="retrieval", correct=[[1, 2]] * len(thresholds), counts=[3] * len(thresholds))


def test_the_tuned_threshold_is_stored_and_loaded_with_the_calibration(tmp_path):
    table, obs = Table(), observed_mask()
    taus = [0.0, math.inf, 0.1, -math.inf]
    table.cal.threshold = _tuning(taus)
    table.cal.save(tmp_path / "cal.safetensors")
    back = Calibration.load(tmp_path / "cal.safetensors")
    assert back.threshold.thresholds == taus and back.threshold.recoverer == "retrieval"
    assert back.to("cpu").threshold is back.threshold
    # "calibrated" (the default) applies it; an explicit number overrides it
    table.cal = back
    assert torch.equal(run(table, obs).used, run(table, obs, threshold=taus).used)
    assert torch.equal(run(table, obs, threshold=0.0).used, select(table, obs, ~obs, _untuned(back), SelectionConfig()).used)
    # a calibration without a tuned rule loads with none
    _untuned(back).save(tmp_path / "plain.safetensors")
    assert Calibration.load(tmp_path / "plain.safetensors").threshold is None


def _untuned(cal):
    return Calibration(cal.metric, cal.temperature, cal.prototypes, cal.sigma, cal.overall, cal.num_modalities, cal.modalities)


def test_a_malformed_stored_threshold_is_refused(tmp_path):
    table = Table()
    table.cal.threshold = _tuning([0.0, 0.1])  # 2 entries for 4 modalities
    with pytest.raises(BundleError, match="tuned thresholds have 2 entries"):
        table.cal.validate()
    with pytest.raises(BundleError, match="malformed"):
        ThresholdTuning.from_json("{not json")
    assert resolve_thresholds("calibrated", None, 3) == [0.0] * 4


def test_pick_takes_the_validation_best_and_falls_back_to_discard_on_ties():
    grid = [-math.inf, 0.0, 0.1, math.inf]
    correct = np.array([[5, 7, 9, 8], [5, 6, 6, 6], [9, 9, 9, 9], [10, 3, 3, 3]])
    assert pick_thresholds(correct, grid) == [0.1, math.inf, math.inf, -math.inf]


class _Data:
    """A complete validation set of B samples whose labels the tuner may read (it is validation)."""

    def __init__(self, labels):
        self.labels = labels
        self.modalities = tuple(f"m{i}" for i in range(M))
        self.observed = np.ones((B, M), dtype=bool)
        self.batches = 0

    def __len__(self):
        return B

    def batch(self, idx):
        from dymo.data.batch import MultimodalBatch

        self.batches += 1
        idx = torch.as_tensor(idx)
        data = {m: idx.float().unsqueeze(1).repeat(1, 2) for m in self.modalities}
        return MultimodalBatch(data, torch.ones(len(idx), M, dtype=torch.bool), self.modalities, self.labels[idx])


class _TableBackbone(torch.nn.Module):
    """``encode`` keeps the sample index; ``fuse`` reads the table."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"metric": table.cal.metric})()
        self.modalities = tuple(f"m{i}" for i in range(M))

    def encode(self, data, observed):
        return data["m0"][:, :1].long()

    def fuse(self, tokens, used):
        return self.table(tokens[:, 0], used)


class _Identity:
    reads_missing = True

    def recover(self, batch):
        return batch


def test_tuning_picks_the_validation_best_per_count_and_never_reads_other_labels(monkeypatch):
    table = Table()
    labels = table.logits[:, -1].argmax(1)  # the complete-data prediction is always right
    val = _Data(labels)
    net = _TableBackbone(table)
    tuned = tune_threshold(net, table.cal, _Identity(), val, scenarios=["random:0.5"], seeds=[0], batch_size=16)
    correct = np.array(tuned.correct)
    assert len(tuned.thresholds) == M and sum(tuned.counts) > 0
    total = correct.sum(0)
    g = tuned.grid.index(max(t for t in tuned.grid if total[tuned.grid.index(t)] == total.max()))
    for k in range(M):
        if tuned.counts[k]:
            j = tuned.grid.index(tuned.thresholds[k])
            # the global validation-best tau, or a better one for this count
            assert j == g or correct[k, j] > correct[k, g]
    # the validation counts are what the selection with that tau gives (recomputed independently)
    from dymo.evaluation.pipeline import scenario_mask
    from dymo.selection.acceptance import SEED_OFFSET

    obs = scenario_mask("random:0.5", B, val.modalities, SEED_OFFSET)
    k_obs = obs.sum(1)
    for j, tau in enumerate(tuned.grid):
        pred = select(table, obs, ~obs, table.cal, SelectionConfig(threshold=tau)).predictions
        ok = (pred == labels) & (k_obs < M)
        assert [int(ok[k_obs == k].sum()) for k in range(M)] == correct[:, j].tolist()
    assert val.batches == math.ceil(B / 16)  # one pass over the validation data, nothing else
    # the blend weight and temperature: fitted on the samples the tuned rule lets add a recovery
    from dymo.selection.acceptance import TEMPERATURE_GRID, pick_blend

    res = select(table, obs, ~obs, table.cal, SelectionConfig(threshold=tuned.thresholds, added_weight=1.0, added_temperature=1.0))
    add = (res.steps > 0) & (k_obs < M)
    assert bool(add.any())
    expected = pick_blend(res.logits[add], res.observed_logits[add], labels[add])
    assert (tuned.added_weight, tuned.added_temperature) == expected
    assert len(tuned.added_temperatures) == M and all(t in TEMPERATURE_GRID for t in tuned.added_temperatures)


def test_tuning_refuses_bad_inputs():
    table = Table()
    val = _Data(torch.zeros(B, dtype=torch.long))
    net = _TableBackbone(table)
    with pytest.raises(ConfigError, match="no acceptance rule"):
        tune_threshold(net, table.cal, _Identity(), val, method="fuse-all")
    with pytest.raises(ConfigError, match="grid"):
        tune_threshold(net, table.cal, _Identity(), val, grid=[])


def test_within_observed_hides_only_what_a_sample_has():
    from dymo.selection.tuning import within_observed

    g = torch.Generator().manual_seed(0)
    have = torch.rand(400, 5, generator=g) < 0.6
    have[~have.any(1), 0] = True
    sim = torch.rand(400, 5, generator=g) < 0.3
    sim[~sim.any(1), 1] = True  # a scenario mask never leaves a sample empty
    obs = within_observed(sim, have, seed=3)
    assert not (obs & ~have).any()  # never a modality the sample lacks
    assert obs.any(1).all()  # never an empty sample
    assert torch.equal(obs[(sim & have).any(1)], (sim & have)[(sim & have).any(1)])  # else the plain intersection
    assert torch.equal(within_observed(sim, torch.ones_like(have), 3), sim)  # complete data: the simulated mask
    assert torch.equal(obs, within_observed(sim, have, seed=3))  # seeded


class _Incomplete(_Data):
    """A validation set whose samples miss modalities (NaN in the missing slots)."""

    def __init__(self, labels, have):
        super().__init__(labels)
        self.observed = have.numpy()
        self.seen: list[torch.Tensor] = []

    def batch(self, idx):
        b = super().batch(idx)
        have = torch.from_numpy(self.observed[np.asarray(idx)])
        data = {m: torch.where(have[:, j : j + 1], v, torch.full_like(v, float("nan"))) for j, (m, v) in enumerate(b.data.items())}
        return type(b)(data, have, b.modalities, b.labels)


class _Recorder:
    """A recoverer that fills missing slots with the sample index and records the masks it got."""

    reads_missing = False
    name = "recorder"

    def __init__(self):
        self.masks = []

    def recover(self, batch):
        self.masks.append(batch.observed.clone())
        idx = next(iter(batch.data.values()))
        fill = torch.nan_to_num(idx, nan=0.0).amax(1, keepdim=True).expand_as(idx)
        data = {m: torch.where(batch.observed[:, j : j + 1], v, fill) for j, (m, v) in enumerate(batch.data.items())}
        return type(batch)(data, batch.observed, batch.modalities, batch.labels)


def test_tuning_on_an_incomplete_validation_set_hides_only_observed_modalities():
    """Training data with missing modalities: the tuner runs, every mask it simulates is within
    what each sample observes, and an experiment-only recoverer that reads the truth is refused."""
    table = Table()
    labels = table.logits[:, -1].argmax(1)
    g = torch.Generator().manual_seed(1)
    have = torch.rand(B, M, generator=g) < 0.7
    have[~have.any(1), 0] = True
    val = _Incomplete(labels, have)
    rec = _Recorder()
    tuned = tune_threshold(_TableBackbone(table), table.cal, rec, val, scenarios=["random:0.5"], seeds=[0], batch_size=16)
    assert len(tuned.thresholds) == M and sum(tuned.counts) > 0
    masks = torch.cat(rec.masks)
    assert masks.shape == (B, M)
    assert not (masks & ~have).any() and masks.any(1).all()
    with pytest.raises(DataError, match="reads the true missing data"):
        tune_threshold(_TableBackbone(table), table.cal, _Identity(), val, scenarios=["random:0.5"], seeds=[0])


def test_cli_calibrate_tunes_on_validation_only_and_the_bundle_keeps_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import dymo.data.registry
    from dymo.cli.main import app
    from dymo.data.synthetic import make_synthetic_splits
    from dymo.inference import DyMoClassifier
    from dymo.models import BackboneConfig
    from dymo.recovery.registry import get_recoverer
    from dymo.training import TrainConfig, train_backbone

    torch.set_num_threads(1)
    data = make_synthetic_splits(120, 30, 40, kinds=("image", "image", "vector"))
    root = tmp_path / "data"
    data.save(root)
    bb = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]})
    run = train_backbone(data, tmp_path / "run", bb, TrainConfig(epochs=1, batch_size=32, proto_start_epoch=1), progress=False, evaluate_test=False)
    rec_dir = tmp_path / "rec"
    get_recoverer("retrieval", epochs=1, width=4, hidden=16, embed_dim=8).fit(data["train"], progress=False).save(rec_dir)

    opened = dymo.data.registry.open_dataset
    splits_read = []

    class Spy:
        def __init__(self, ds):
            self.ds = ds

        def __getitem__(self, split):
            splits_read.append(split)
            return self.ds[split]

        def __getattr__(self, name):
            return getattr(self.ds, name)

    monkeypatch.setattr(dymo.data.registry, "open_dataset", lambda *a, **k: Spy(opened(*a, **k)))
    runner = CliRunner()
    res = runner.invoke(app, ["calibrate", str(run), "--data", str(root), "--tune-threshold", "--recovery", str(rec_dir),
                              "--tune-missing", "random:0.5", "--tune-seeds", "0,1"])
    assert res.exit_code == 0, res.output
    assert "test" not in splits_read and "val" in splits_read
    cal = Calibration.load(run / "calibration.safetensors")
    tuned = cal.threshold
    assert len(tuned.thresholds) == 3 and tuned.n_val == 30 and tuned.seeds == [0, 1] and tuned.recoverer == str(rec_dir)
    assert sum(tuned.counts) <= 2 * 30 and sum(tuned.counts) > 0
    total = np.array(tuned.correct).sum(0)
    for k, row in enumerate(tuned.correct):
        if tuned.counts[k]:
            j = tuned.grid.index(tuned.thresholds[k])
            assert total[j] == total.max() or row[j] == max(row)
    res = runner.invoke(app, ["bundle", str(run), "--recovery", str(rec_dir), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    assert DyMoClassifier.from_pretrained(tmp_path / "b").calibration.threshold.thresholds == tuned.thresholds
    # retune with the statistics kept; misuse is one clear error line
    before = cal.prototypes.clone()
    res = runner.invoke(app, ["calibrate", str(run), "--data", str(root), "--tune-threshold", "--recovery", str(rec_dir), "--reuse-statistics",
                              "--tune-missing", "random:0.3", "--tune-seeds", "0"])
    assert res.exit_code == 0, res.output
    again = Calibration.load(run / "calibration.safetensors")
    assert torch.equal(again.prototypes, before) and again.threshold.scenarios == ["random:0.3"]
    res = runner.invoke(app, ["calibrate", str(run), "--data", str(root), "--tune-threshold"])
    assert res.exit_code == 2 and "needs --recovery" in res.output


def test_benchmark_tunes_dymo_on_validation_and_keeps_the_paper_rule(tmp_path):
    import pandas as pd

    from dymo.data.synthetic import make_synthetic_splits
    from dymo.evaluation.benchmark import BenchmarkConfig, run_benchmark

    torch.set_num_threads(1)
    data = make_synthetic_splits(80, 32, 40, kinds=("vector", "vector", "vector"), seed=0, signal=[1.0, 0.6, 0.3])
    bb = {"dim": 16, "heads": 2, "depth": 1, "proj_dim": 8, "encoder_options": {"vector_hidden": 16}}
    cfg = BenchmarkConfig.from_dict(dict(
        methods=["dymo", "dymo-paper", "discard", "fuse-all"], missing=["random:0.6"], seeds=[0, 1], recovery=["mean"],
        epochs=1, batch_size=16, backbone=bb, train={"batch_size": 32, "proto_start_epoch": 0},
    ))
    run_benchmark(data, cfg, tmp_path, progress=False)
    from dymo.utils.io import read_json

    tuned = ThresholdTuning.from_dict(read_json(tmp_path / "models" / "threshold-cosine-mean.json"))
    assert tuned.n_val == 32 and tuned.recoverer == "mean" and len(tuned.thresholds) == 3
    total = np.array(tuned.correct).sum(0)
    for k, row in enumerate(tuned.correct):
        if tuned.counts[k]:
            j = tuned.grid.index(tuned.thresholds[k])
            assert total[j] == total.max() or row[j] == max(row)
    df = pd.read_csv(tmp_path / "results.csv")
    assert {"dymo", "dymo-paper", "discard", "fuse-all"} <= set(df["method"])
    assert df["ece"].between(0, 1).all()
    assert "dymo-paper" in (tmp_path / "ablation.md").read_text()
    # the cells record the rule they used: a rerun reuses them all; a retuned rule (its file
    # removed) recomputes the dymo cells only
    assert run_benchmark(data, cfg, tmp_path, progress=False).computed == 0
    (tmp_path / "models" / "threshold-cosine-mean.json").unlink()
    again = run_benchmark(data, cfg, tmp_path, progress=False)
    assert again.computed == 2 and (tmp_path / "models" / "threshold-cosine-mean.json").exists()


def test_added_temperature_softens_only_samples_that_added_a_recovery():
    from dymo.selection.acceptance import added_probabilities, pick_temperature

    table, obs = Table(), observed_mask()
    tuned = _tuning([0.0] * M)
    tuned.added_temperature = 3.0
    table.cal.threshold = tuned
    res = run(table, obs, threshold=0.0)  # "calibrated" temperature 3
    plain = run(table, obs, threshold=0.0, added_temperature=1.0)
    added = res.steps > 0
    assert bool(added.any()) and bool((~added).any())
    assert torch.equal(res.predictions, plain.predictions) and torch.equal(res.logits, plain.logits)
    assert torch.equal(res.probabilities[~added], plain.probabilities[~added])
    assert bool((res.probabilities[added].max(1).values < plain.probabilities[added].max(1).values).all())
    torch.testing.assert_close(res.probabilities[added], torch.softmax(plain.logits[added] / 3.0, -1))
    # an overconfident model (logits x 5 of calibrated ones) gets a temperature near 5 back
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 10, generator=g)
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(1)
    assert pick_temperature(5 * logits, labels) == 5.0 and pick_temperature(logits, labels) == 1.0
    assert added_probabilities(logits, torch.zeros(4000, dtype=torch.bool), 4.0, None).equal(torch.softmax(logits, -1))
    with pytest.raises(ConfigError, match="added_temperature"):
        SelectionConfig(added_temperature=0.0)
    assert ThresholdTuning.from_json(tuned.to_json()).added_temperature == 3.0


def test_added_weight_blends_the_used_and_the_observed_logits_of_samples_that_added():
    table, obs = Table(), observed_mask(allow_empty=True)
    tuned = _tuning([0.0] * M)
    tuned.added_weight = 0.25
    table.cal.threshold = tuned
    res = run(table, obs, threshold=0.0, added_temperature=1.0)  # the "calibrated" weight, 0.25
    plain = run(table, obs, threshold=0.0, added_temperature=1.0, added_weight=1.0)
    added, seen = res.steps > 0, obs.any(1)
    blend = added & seen
    assert bool(blend.any()) and bool((added & ~seen).any()) and bool((~added).any())
    # the decisions do not change; only the prediction of a sample that added a recovery and
    # observes something mixes in its observed modalities' logits
    assert torch.equal(res.used, plain.used) and torch.equal(res.steps, plain.steps)
    assert torch.equal(res.logits[~blend], plain.logits[~blend])
    torch.testing.assert_close(res.logits[blend], 0.25 * plain.logits[blend] + 0.75 * plain.observed_logits[blend])
    assert bool(torch.isnan(plain.observed_logits[~seen]).all()) and not bool(torch.isnan(plain.observed_logits[seen]).any())
    # the observed logits are the fusion of the observed modalities alone
    filled = obs.clone()
    filled[~seen, 0] = True  # discard needs something observed in every row
    solo = run(table, filled, method="discard", threshold=0.0)
    torch.testing.assert_close(plain.observed_logits[seen], solo.logits[seen])
    assert torch.equal(res.predictions, res.probabilities.argmax(1))
    i = int(torch.nonzero(blend)[0])
    assert res.explain(i).recovered_weight == 0.25 and "0.25 x used + 0.75 x observed only" in str(res.explain(i))
    assert res.explain(int(torch.nonzero(~added)[0])).to_dict()["recovered_weight"] == 1.0
    # weight 0 gives discard's prediction back on those samples
    zero = run(table, obs, threshold=0.0, added_temperature=1.0, added_weight=0.0)
    torch.testing.assert_close(zero.logits[blend], plain.observed_logits[blend])
    with pytest.raises(ConfigError, match="added_weight"):
        SelectionConfig(added_weight=1.5)
    assert ThresholdTuning.from_json(tuned.to_json()).added_weight == 0.25
    bad = tuned.to_dict() | {"added_weight": -0.1}
    with pytest.raises(BundleError, match="added_weight"):
        ThresholdTuning.from_dict(bad)
    old = {k: v for k, v in tuned.to_dict().items() if k != "added_weight"}  # a rule saved before the weight
    assert ThresholdTuning.from_dict(old).added_weight == 1.0


def test_added_temperature_per_number_of_observed_modalities():
    from dymo.selection.acceptance import MIN_TEMPERATURE_SAMPLES, pick_temperatures_by_count

    table, obs = Table(), observed_mask()
    temps = [1.0, 2.0, 4.0, 8.0]
    res = run(table, obs, threshold=0.0, added_temperature=temps)
    plain = run(table, obs, threshold=0.0, added_temperature=1.0, added_weight=1.0)
    added, k = res.steps > 0, obs.sum(1)
    for i in range(len(res)):
        t = temps[int(k[i])] if bool(added[i]) else 1.0
        torch.testing.assert_close(res.probabilities[i], torch.softmax(plain.logits[i] / t, -1))
    # the tuned rule's per-count temperatures are what "calibrated" applies
    tuned = _tuning([0.0] * M)
    tuned.added_temperatures = temps
    table.cal.threshold = tuned
    torch.testing.assert_close(run(table, obs, threshold=0.0).probabilities, res.probabilities)
    assert ThresholdTuning.from_json(tuned.to_json()).added_temperatures == temps
    with pytest.raises(ConfigError, match="one per number of observed"):
        run(table, obs, added_temperature=[2.0, 2.0])
    with pytest.raises(ConfigError, match="added_temperature"):
        SelectionConfig(added_temperature=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(BundleError, match="added temperatures"):
        ThresholdTuning.from_dict(tuned.to_dict() | {"added_temperatures": [2.0]})
    # a count gets its own temperature only with enough validation samples
    g = torch.Generator().manual_seed(0)
    n = 2 * MIN_TEMPERATURE_SAMPLES
    logits = torch.randn(n, 10, generator=g)
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(1)
    counts = torch.tensor([1] * (n - 10) + [2] * 10)
    assert pick_temperatures_by_count(4 * logits, labels, counts, 3, fallback=1.5) == [1.5, 4.0, 1.5]


def test_pick_blend_keeps_good_recoveries_and_falls_back_on_misleading_ones():
    from dymo.selection.acceptance import pick_blend

    g = torch.Generator().manual_seed(0)
    n, c = 3000, 10
    labels = torch.randint(0, c, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(labels, c).float()
    informative = 4 * onehot + torch.randn(n, c, generator=g)
    noise = 4 * torch.nn.functional.one_hot(torch.randint(0, c, (n,), generator=g), c).float() + torch.randn(n, c, generator=g)
    # recoveries that help: the used mask is right, the observed modalities alone are noise
    assert pick_blend(informative, noise, labels)[0] == 1.0
    # recoveries that mislead: the observed modalities alone are right
    assert pick_blend(noise, informative, labels)[0] == 0.0
    # an equal mix of two independent, equally informative views is better than either one
    other = 4 * onehot + torch.randn(n, c, generator=g)
    assert pick_blend(informative, other, labels)[0] == 0.5
    # nothing observed (NaN): those samples keep the used mask's logits, only T is fitted on them
    logits = torch.randn(n, c, generator=g)
    drawn = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(1)
    assert pick_blend(5 * logits, torch.full((n, c), float("nan")), drawn) == (1.0, 5.0)
    assert pick_blend(informative[:0], noise[:0], labels[:0]) == (1.0, 1.0)


def test_pooled_pick_departs_per_count_only_on_a_significant_gain():
    from dymo.selection.acceptance import pick_thresholds_pooled

    grid = [-math.inf, 0.0, math.inf]
    rng = np.random.default_rng(0)
    n = 400
    k_obs = np.repeat([1, 2], n)
    ok = np.ones((3, 2 * n), dtype=bool)
    ok[0, rng.choice(2 * n, 100, replace=False)] = False  # accept-all is worst everywhere
    ok[2, :n][rng.choice(n, 60, replace=False)] = False  # discard loses 60 on count 1 ...
    taus, global_tau = pick_thresholds_pooled(ok, k_obs, grid, 3)
    assert global_tau == 0.0 and taus == [0.0, 0.0, 0.0]  # ... and ties on count 2: no departure without a gain
    ok[1, n:][rng.choice(n, 1, replace=False)] = False  # one sample worse on count 2: noise, no departure
    assert pick_thresholds_pooled(ok, k_obs, grid, 3)[0] == [0.0, 0.0, 0.0]
    ok[1, n:][rng.choice(n, 40, replace=False)] = False  # 40 worse: tau 0 loses clearly on count 2
    assert pick_thresholds_pooled(ok, k_obs, grid, 3)[0] == [0.0, 0.0, math.inf]
    # nothing helps anywhere: discard everywhere
    assert pick_thresholds_pooled(np.ones((3, 2 * n), dtype=bool), k_obs, grid, 3) == ([math.inf] * 3, math.inf)
