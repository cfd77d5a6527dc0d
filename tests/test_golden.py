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
from dymo.utils.subsets import masks_to_codes

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
        assert torch.allclose(ours[sel], ref[sel], atol=1e-5, rtol=0)
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
