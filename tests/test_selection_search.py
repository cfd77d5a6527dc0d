"""The greedy search and its variants, on a table-based fuse function (any subset of any sample
has a fixed fused feature and logits) and on a stub backbone."""

import inspect
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dymo.errors import BundleError, ConfigError, DataError
from dymo.models.backbone import FusionOutput
from dymo.selection import NO_ACTION, Calibration, SelectionConfig, select, select_with_backbone
from dymo.selection.reward import ics, quality, reward_rounding_bound
from dymo.utils.subsets import masks_to_codes

# Floating-point sensitive: also run under other MKL code paths (Makefile: test-numerics).
pytestmark = pytest.mark.numerics

B, M, C, D = 48, 4, 5, 6


class Table:
    """A fusion network replaced by a table, recording every (sample, subset) it fuses."""

    def __init__(self, metric="cosine", seed=0, sigma_scale=1.0):
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(B, 2**M, D, generator=g)
        protos = torch.randn(2**M, C, D, generator=g)
        if metric == "cosine":
            feats = nn.functional.normalize(feats, dim=-1)
            protos = 0.8 * nn.functional.normalize(protos, dim=-1)
        self.feats, self.logits = feats, 2 * torch.randn(B, 2**M, C, generator=g)
        sigma = (0.1 + 0.4 * torch.rand(2**M, C, generator=g)) * sigma_scale
        self.cal = Calibration(metric, 0.1, protos, sigma, protos[1:].mean(0), M)
        self.calls: list[list[tuple[int, int]]] = []

    def __call__(self, idx, used):
        codes = masks_to_codes(used)
        assert bool((codes > 0).all()), "the empty subset must never be fused"
        self.calls.append(list(zip(idx.tolist(), codes.tolist(), strict=True)))
        return self.logits[idx, codes], self.feats[idx, codes]


def observed_mask(seed=1, allow_empty=False):
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(B, M, generator=g) < 0.4
    if not allow_empty:
        obs[~obs.any(1), 0] = True
    return obs


def run(table, obs=None, cand=None, **cfg):
    obs = observed_mask() if obs is None else obs
    cand = ~obs if cand is None else cand
    return select(table, obs, cand, table.cal, SelectionConfig(**cfg))


FLOATS = ("quality", "ics", "gain", "reward", "confidence")


def sample_view(res, i):
    """A sample's explanation split into its decisions (compared exactly) and its floats."""
    d = res.explain(i).to_dict()
    d.pop("sample")
    floats = {"confidence": d.pop("confidence")}
    for s in d["steps"]:
        for key in ("quality", "ics"):
            floats[(s["step"], key)] = s.pop(key)
        for name, c in s["candidates"].items():
            for key in ("quality", "ics", "gain", "reward"):
                floats[(s["step"], name, key)] = c.pop(key)
    return d, floats


def assert_same_sample(res_a, i, res_b, k, metric):
    """Same decisions exactly; same floats up to float32 rounding (docs/selection.md): the
    fused rows are the same bits, but the reward's matrix products may round differently for
    another batch shape, so rewards get their conditioning bound and the rest a few ulps."""
    da, fa = sample_view(res_a, i)
    db, fb = sample_view(res_b, k)
    assert da == db
    assert fa.keys() == fb.keys()
    assert torch.allclose(res_a.logits[i], res_b.logits[k], rtol=1e-6, atol=1e-6)
    for t in range(res_a.reward_history.shape[0]):
        bound = reward_rounding_bound(
            res_a.candidate_quality[t, i], res_a.gain_history[t, i],
            res_a.ics_history[t, i].expand(res_a.reward_history.shape[2]), res_a.candidate_ics[t, i], metric,
        )
        ra, rb = res_a.reward_history[t, i], res_b.reward_history[t, k]
        assert torch.equal(torch.isnan(ra), torch.isnan(rb))
        ok = torch.isnan(ra) | ((ra.double() - rb.double()).abs() <= bound)
        assert bool(ok.all()), (t, ra, rb, bound)
    for key, a in fa.items():
        b = fb[key]
        if a is None or b is None:
            assert a is b
        elif key[-1] not in ("reward", "gain"):  # reward checked above; gain is part of it
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6), key


def test_search_makes_real_decisions():
    """Sanity: the random table makes the search add, reject, stop and go multi-step."""
    res = run(Table())
    assert int(res.steps.sum()) > 0 and bool(res.rejected.any())
    assert int(res.steps.max()) >= 2
    assert bool((res.steps == 0).any())


@pytest.mark.parametrize("method", ["dymo", "iterative", "simultaneous"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_batch_invariance(method, metric):
    table = Table(metric)
    obs = observed_mask()
    full = select(table, obs, ~obs, table.cal, SelectionConfig(method=method))
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(3))
    for part in (perm, perm[: B // 3], perm[B // 3 :]):
        sub = select(lambda idx, used, part=part: table(part[idx], used), obs[part], ~obs[part], table.cal,
                     SelectionConfig(method=method))
        for k, i in enumerate(part.tolist()):
            assert_same_sample(full, i, sub, k, metric)


def test_no_label_anywhere_in_the_api():
    for fn in (select, select_with_backbone):
        names = [p.lower() for p in inspect.signature(fn).parameters]
        assert not any("label" in n or n in ("y", "target", "targets") for n in names), names


@pytest.mark.parametrize("method", ["dymo", "iterative", "simultaneous", "fuse-all", "discard"])
def test_observed_always_used_only_candidates_added_and_final_logits(method):
    table = Table()
    obs = observed_mask()
    cand = ~obs & (torch.rand(B, M, generator=torch.Generator().manual_seed(5)) < 0.7)
    # candidates that are also observed are ignored
    res = select(table, obs, cand | obs, table.cal, SelectionConfig(method=method))
    assert bool((res.used | ~obs).all())  # observed -> used
    assert bool((~res.used | obs | cand).all())  # used -> observed or candidate
    assert torch.equal(res.candidates, cand)
    assert torch.equal(res.steps, (res.used & ~obs).sum(1))
    # final prediction = logits of the final mask
    assert torch.equal(res.logits, table.logits[torch.arange(B), masks_to_codes(res.used)])
    assert torch.allclose(res.probabilities, torch.softmax(res.logits, -1))


def test_each_step_is_one_call_and_nothing_is_fused_twice():
    table = Table()
    obs = observed_mask()
    res = run(table, obs)
    assert len(table.calls) == res.action_history.shape[0]
    assert len(table.calls[0]) == B + int((~obs).sum())  # 'before' pass of every sample + all pairs
    for t, call in enumerate(table.calls[1:], start=1):
        assert len(call) == int((~torch.isnan(res.reward_history[t])).sum())  # no 'before' pass again
    pairs = [p for call in table.calls for p in call]
    assert len(pairs) == len(set(pairs))


def test_fuse_all_and_discard():
    table = Table()
    obs = observed_mask()
    fa = run(table, obs, method="fuse-all")
    assert torch.equal(fa.used, torch.ones(B, M, dtype=torch.bool))
    dc = run(table, obs, method="discard")
    assert torch.equal(dc.used, obs) and int(dc.steps.sum()) == 0
    assert fa.action_history.shape[0] == 0 and dc.reward_history.shape[0] == 0


def test_simultaneous_adds_every_positive_first_step_reward():
    table = Table()
    dymo = run(table)
    sim = run(Table(), method="simultaneous")
    assert sim.action_history.shape[0] == 1
    positive = dymo.reward_history[0] > 0
    assert torch.equal(sim.used & ~sim.initial_used, positive)
    assert torch.equal(sim.reward_history[0].nan_to_num(9), dymo.reward_history[0].nan_to_num(9))
    assert int((positive.sum(1) > 1).sum()) > 0  # several additions at once happen


def test_iterative_ignores_ics_and_dymo_does_not():
    obs = observed_mask()
    it1, it2 = (run(Table(sigma_scale=s), obs, method="iterative") for s in (1.0, 0.05))
    assert torch.equal(it1.used, it2.used)
    ev = ~torch.isnan(it1.gain_history)
    assert bool((it1.gain_history[ev] == 1).all())
    # iterative reward = quality after - quality before
    t = Table()
    q0 = quality(t.feats[torch.arange(B), masks_to_codes(obs)], t.cal.overall, "cosine", 0.1)
    r0 = it1.candidate_quality[0] - q0.unsqueeze(1)
    assert torch.allclose(it1.reward_history[0][ev[0]], r0[ev[0]], atol=1e-6)
    d1, d2 = (run(Table(sigma_scale=s), obs) for s in (1.0, 0.05))
    assert not torch.equal(d1.used, d2.used)


def test_ics_of_the_before_state_matches_direct_computation():
    table = Table()
    obs = observed_mask()
    res = run(table, obs)
    codes = masks_to_codes(obs)
    z, lg = table.feats[torch.arange(B), codes], table.logits[torch.arange(B), codes]
    p = ics(z, lg, codes, table.cal.prototypes, table.cal.sigma, "cosine")
    act = ~torch.isnan(res.ics_history[0])
    assert torch.allclose(res.ics_history[0][act], p[act])


def test_budget():
    obs = observed_mask()
    dymo = run(Table(), obs)
    one = run(Table(), obs, max_added=1)
    assert int(one.steps.max()) == 1
    moved = dymo.action_history[0] != NO_ACTION
    assert torch.equal(one.action_history[0], dymo.action_history[0])
    assert torch.equal(one.steps, moved.long())
    zero = run(Table(), obs, max_added=0)
    assert torch.equal(zero.used, obs)
    assert torch.equal(zero.logits, run(Table(), obs, method="discard").logits)
    sim1 = run(Table(), obs, method="simultaneous", max_added=1)
    assert int(sim1.steps.max()) == 1
    # the one it keeps is the best first-step reward
    added = sim1.used & ~obs
    best = dymo.reward_history[0].nan_to_num(-9).argmax(1)
    rows = added.any(1)
    assert torch.equal(added[rows].float().argmax(1), best[rows])


def test_costs():
    obs = observed_mask()
    base = run(Table(), obs)
    cheap = run(Table(), obs, costs=[0.05] * M)
    ev = ~torch.isnan(base.reward_history[0])
    assert torch.allclose(cheap.reward_history[0][ev], base.reward_history[0][ev] - 0.05, atol=1e-6)
    assert int(cheap.steps.sum()) < int(base.steps.sum())
    assert int(run(Table(), obs, costs=[1.0] * M).steps.sum()) == 0
    no_m0 = run(Table(), obs, costs=[5.0, 0.0, 0.0, 0.0])
    assert not bool((no_m0.used[:, 0] & ~obs[:, 0]).any())
    assert bool(no_m0.rejected[~obs[:, 0], 0].all())
    assert int(no_m0.steps.sum()) > 0


def test_sample_without_observed_modality_starts_from_best_quality_candidate():
    obs = observed_mask()
    obs[0] = False
    obs[1] = False
    cand = ~obs
    cand[1] = torch.tensor([False, True, True, False])
    res = run(Table(), obs, cand)
    assert bool(res.used.any(1).all()) and int(res.steps[0]) >= 1 and int(res.steps[1]) >= 1
    first = res.action_history[0, :2]
    assert torch.equal(first, res.candidate_quality[0, :2].nan_to_num(-1).argmax(1))
    assert torch.allclose(res.reward_history[0, 0], res.candidate_quality[0, 0])  # before quality = 0
    expl = res.explain(0)
    assert expl.steps[0].quality is None and expl.observed == []


def test_sample_without_anything_is_a_clear_error():
    obs = observed_mask()
    obs[7] = False
    cand = ~obs
    cand[7] = False
    with pytest.raises(DataError, match="sample 7"):
        run(Table(), obs, cand)
    obs2 = observed_mask()
    obs2[3] = False
    with pytest.raises(DataError, match="sample 3.*discard"):
        run(Table(), obs2, method="discard")
    with pytest.raises(DataError, match="sample 3.*max_added"):
        run(Table(), obs2, max_added=0)
    assert bool(run(Table(), obs2, method="fuse-all").used[3].all())


def test_input_validation():
    t = Table()
    obs = observed_mask()
    with pytest.raises(DataError, match="modalities"):
        select(t, obs[:, :3], ~obs[:, :3], t.cal)
    with pytest.raises(DataError, match="bool"):
        select(t, obs.long(), ~obs, t.cal)
    with pytest.raises(ConfigError, match="costs"):
        run(t, obs, costs=[0.1, 0.2])
    with pytest.raises(ConfigError):
        SelectionConfig(method="greedy")
    with pytest.raises(ConfigError):
        SelectionConfig(max_added=-1)
    with pytest.raises(ConfigError):
        SelectionConfig(costs=[-1.0, 0, 0, 0])
    assert SelectionConfig.from_dict({"method": "iterative", "max_added": 2}).max_added == 2


def test_explanations_and_json(tmp_path):
    res = run(Table())
    for i in range(B):
        e = res.explain(i)
        assert e.used == [f"m{j}" for j in range(M) if res.used[i, j]]
        accepted = [s.accepted for s in e.steps if s.accepted]
        assert [a[0] for a in accepted] == e.added or sorted(a[0] for a in accepted) == sorted(e.added)
        assert len(accepted) == int(res.steps[i])
        assert sorted(r for s in e.steps for r in s.rejected) == sorted(e.rejected)
        for s in e.steps:
            for c in s.candidates:
                assert c.decision in ("accepted", "rejected", "kept")
                assert (c.decision == "rejected") == (c.reward < 0)
    text = res.to_json(tmp_path / "x.json", class_names=[f"c{k}" for k in range(C)])
    assert (tmp_path / "x.json").read_text().strip() == text
    doc = json.loads(text)
    assert doc["method"] == "dymo" and len(doc["samples"]) == B
    s = doc["samples"][int(res.steps.argmax())]
    assert s["steps"][0]["accepted"] and s["predicted_name"].startswith("c")
    assert "reward" in str(res.explain(int(res.steps.argmax())))


# --- with a network ------------------------------------------------------------------------


class StubBackbone(nn.Module):
    def __init__(self, metric="cosine"):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.config = SimpleNamespace(metric=metric)
        self.modalities = tuple(f"m{i}" for i in range(M))
        self.w = nn.Parameter(torch.randn(M, 3, D, generator=g))
        self.head = nn.Parameter(torch.randn(D, C, generator=g))

    def encode(self, data, available=None):
        return torch.stack([data[f"m{i}"] @ self.w[i] for i in range(M)], dim=1)

    def fuse(self, tokens, used):
        h = torch.tanh((tokens * used.unsqueeze(-1)).sum(1) / used.sum(1, keepdim=True))
        return FusionOutput(h @ self.head, nn.functional.normalize(h, dim=-1), h)


def test_nothing_missing_equals_plain_prediction_with_the_full_mask():
    model = StubBackbone().train()
    data = {f"m{i}": torch.randn(10, 3, generator=torch.Generator().manual_seed(i)) for i in range(M)}
    tokens = model.encode(data)
    full = torch.ones(10, M, dtype=torch.bool)
    cal = Table().cal
    res = select_with_backbone(model, tokens, full, full, cal, SelectionConfig(), chunk_size=3)
    with torch.no_grad():
        expected = model.fuse(tokens, full).logits
    assert torch.equal(res.used, full) and int(res.steps.sum()) == 0
    assert torch.allclose(res.logits, expected)
    assert model.training  # mode restored
    assert res.stop_reason == ["no candidates"] * 10


def test_select_with_backbone_chunks_do_not_change_results():
    model = StubBackbone()
    data = {f"m{i}": torch.randn(B, 3, generator=torch.Generator().manual_seed(i)) for i in range(M)}
    tokens = model.encode(data)
    obs = observed_mask()
    cal = Table().cal
    a = select_with_backbone(model, tokens, obs, ~obs, cal, chunk_size=None)
    b = select_with_backbone(model, tokens, obs, ~obs, cal, chunk_size=5)
    assert torch.equal(a.used, b.used)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    with pytest.raises(BundleError, match="metric"):
        select_with_backbone(StubBackbone("euclidean"), tokens, obs, ~obs, cal)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_select_with_backbone_in_float64_and_bfloat16(dtype):
    """A backbone converted with ``.to(dtype)`` selects (no dtype clash in the search's buffers);
    its decisions are valid and its final logits are the backbone's own for the final mask."""
    from dymo.data.specs import ModalitySpec
    from dymo.models.backbone import BackboneConfig, FlexibleBackbone

    torch.manual_seed(0)
    specs = [ModalitySpec(f"m{i}", "vector", (3,)) for i in range(M)]
    model = FlexibleBackbone(specs, C, BackboneConfig(dim=16, heads=2, depth=1, proj_dim=D)).to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    data = {f"m{i}": torch.randn(B, 3, generator=g).to(dtype) for i in range(M)}
    obs = observed_mask()
    with torch.no_grad():
        tokens = model.encode(data)
    res = select_with_backbone(model, tokens, obs, ~obs, Table().cal, SelectionConfig())
    assert res.logits.dtype == dtype
    assert bool((res.used | ~obs).all()) and torch.equal(res.steps, (res.used & ~obs).sum(1))
    with torch.no_grad():
        expected = model.fuse(tokens, res.used).logits
    assert torch.equal(res.logits.argmax(1), expected.argmax(1))
