"""DyMo's reward and greedy selection reproduce the authors' reference outputs exactly.

The golden vectors (tests/data/golden, copied from the shared golden set) replace the fusion
network by a table: sample b fused with subset code s gives subset_feats[b][s] and
subset_logits[b][s]. Golden masks use True = HIDDEN; dymo uses True = used.
"""

import json
from pathlib import Path

import pytest
import torch

from dymo.selection import NO_ACTION, Calibration, SelectionConfig, select
from dymo.selection.reward import reward_rounding_bound
from dymo.utils.subsets import masks_to_codes

# Floating-point sensitive: also run under other MKL code paths (Makefile: test-numerics).
pytestmark = pytest.mark.numerics

GOLDEN = Path(__file__).parent / "data" / "golden" / "selection_cases.json"
CASES = json.loads(GOLDEN.read_text())["cases"]


def _setup(case):
    feats = torch.tensor(case["subset_feats"])
    logits = torch.tensor(case["subset_logits"])
    cal = Calibration(
        case["metric"],
        case["temperature"],
        torch.tensor(case["gauss_prototypes"]),
        torch.tensor(case["gauss_dist_std"]),
        torch.tensor(case["overall_prototypes"]),
        case["num_modalities"],
    )
    calls = []

    def fuse_fn(idx, used):
        calls.append(len(idx))
        codes = masks_to_codes(used)
        assert bool((codes > 0).all()), "the empty subset must never be fused"
        return logits[idx, codes], feats[idx, codes]

    hidden = torch.tensor(case["observed_mask"])
    return cal, fuse_fn, calls, ~hidden, hidden


def _bound(res, t, metric):
    """Per-entry float32 rounding bound of the rewards evaluated at step ``t``."""
    before = res.ics_history[t].unsqueeze(1).expand_as(res.reward_history[t])
    return reward_rounding_bound(res.candidate_quality[t], res.gain_history[t], before, res.candidate_ics[t], metric)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case(case):
    cal, fuse_fn, calls, observed, recovered = _setup(case)
    res = select(fuse_fn, observed, recovered, cal, SelectionConfig(method="dymo"))

    # final masks and codes, exactly
    expected_used = ~torch.tensor(case["expected_final_mask"])
    assert torch.equal(res.used, expected_used)
    assert torch.equal(masks_to_codes(res.used), torch.tensor(case["expected_final_code"]))
    # final logits = logits of the final mask
    assert torch.allclose(res.logits, torch.tensor(case["expected_logits"]), atol=1e-5)

    # actions per step, exactly (the reference pads to max #hidden steps with 100)
    expected_actions = torch.tensor(case["expected_action_history"])
    t_ref, b = expected_actions.shape
    assert res.action_history.shape[0] <= t_ref
    actions = torch.full((t_ref, b), NO_ACTION, dtype=torch.long)
    actions[: res.action_history.shape[0]] = res.action_history
    assert torch.equal(actions, expected_actions)
    assert torch.equal(res.steps, (expected_actions != NO_ACTION).sum(0))

    # rewards of ACTIVE samples: evaluated entries match, unevaluated ones are 0 in the reference
    expected_rewards = torch.tensor(case["expected_reward_history"])
    checked = 0
    for t in range(t_ref):
        active = (expected_actions[:t] != NO_ACTION).all(0) if t else torch.ones(b, dtype=torch.bool)
        ours = (
            res.reward_history[t] if t < res.reward_history.shape[0] else torch.full((b, observed.shape[1]), float("nan"))
        )
        evaluated = ~torch.isnan(ours)
        ref = expected_rewards[t]
        sel = evaluated & active.unsqueeze(1)
        # floats within what float32 rounding allows (see docs/selection.md, numerical tests)
        bound = _bound(res, t, case["metric"]) if t < res.reward_history.shape[0] else torch.zeros_like(ref).double()
        err = (ours[sel].double() - ref[sel].double()).abs()
        assert bool((err <= bound[sel]).all()), (t, err.max().item(), (err / bound[sel]).max().item())
        assert bool((ref[~evaluated & active.unsqueeze(1)] == 0).all())
        # we never evaluate a sample the reference had already stopped
        assert not bool(evaluated[~active].any())
        checked += int(sel.sum())
    assert checked > 0

    # one batched fuse call per step (the first also holds the 'before' pass of every sample)
    assert len(calls) == res.action_history.shape[0]
    assert calls[0] == b + int(recovered.sum())


def test_golden_cases_cover_both_metrics_and_decisions():
    """The vectors exercise what the test claims: both metrics, additions, rejections, multi-step."""
    assert {c["metric"] for c in CASES} == {"cosine", "euclidean"}
    total_steps = [sum(a != NO_ACTION for a in step) for c in CASES for step in c["expected_action_history"][1:]]
    assert sum(total_steps) > 0
    assert any(r < 0 for c in CASES for step in c["expected_reward_history"] for row in step for r in row)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_reward_bound_catches_a_wrong_formula(case):
    """The per-entry tolerance is a real check: the reward without the ICS factor (G = 1, the
    'iterative' variant) differs from the authors' rewards by more than the bound."""
    cal, fuse_fn, _, observed, recovered = _setup(case)
    res = select(fuse_fn, observed, recovered, cal, SelectionConfig(method="dymo"))
    wrong = select(fuse_fn, observed, recovered, cal, SelectionConfig(method="iterative"))
    ref = torch.tensor(case["expected_reward_history"])[0]
    sel = ~torch.isnan(res.reward_history[0])
    bound = _bound(res, 0, case["metric"])[sel]
    assert bool(((res.reward_history[0][sel].double() - ref[sel]).abs() <= bound).all())
    caught = (wrong.reward_history[0][sel].double() - ref[sel]).abs() > bound
    assert int(caught.sum()) >= 3, int(caught.sum())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_tables_in_other_dtypes(case, dtype):
    """A float64 or bfloat16 backbone: every internal buffer follows the fused output's dtype."""
    cal, fuse_fn, _, observed, recovered = _setup(case)

    def cast_fuse(idx, used):
        logits, z = fuse_fn(idx, used)
        return logits.to(dtype), z.to(dtype)

    res = select(cast_fuse, observed, recovered, cal, SelectionConfig(method="dymo"))
    ref = select(fuse_fn, observed, recovered, cal, SelectionConfig(method="dymo"))
    assert res.logits.dtype == dtype
    assert bool((res.used | ~observed).all()) and bool((~res.used | observed | recovered).all())
    codes = masks_to_codes(res.used)
    b = torch.arange(len(codes))
    assert torch.equal(res.logits, torch.tensor(case["subset_logits"])[b, codes].to(dtype))
    assert res.reward_history.shape[1:] == ref.reward_history.shape[1:]
    if dtype == torch.float64:
        # float64 must take the float32 decisions wherever float32 determines them: samples
        # whose every reward is farther from 0 than its float32 rounding bound.
        robust = torch.ones(len(codes), dtype=torch.bool)
        for t in range(ref.reward_history.shape[0]):
            r = ref.reward_history[t].double()
            shaky = ~torch.isnan(r) & (r.abs() <= _bound(ref, t, case["metric"]))
            robust &= ~shaky.any(1)
        assert int(robust.sum()) >= 10  # 17 to 58 samples per case
        assert torch.equal(res.used[robust], ref.used[robust])
