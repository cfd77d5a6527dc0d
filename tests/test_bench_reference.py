"""The selection benchmark's baseline (benchmarks/bench_selection.py: re-encode per candidate,
per-sample ICS loop) makes the same decisions as select_with_backbone, so the benchmark's
identity check compares two implementations of one algorithm."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from dymo.evaluation.pipeline import scenario_mask

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_selection.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_selection", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_selection"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_reference_matches_select_with_backbone(bench, metric):
    torch.set_num_threads(1)
    backbone, cal, data, _ = bench.tiny_random(96, seed=0, metric=metric)
    observed = scenario_mask("random:0.6", 96, backbone.modalities, seed=1)
    ours = bench.dymo_pass(backbone, data, observed, cal)
    ref = bench.reference_select(backbone, data, observed, ~observed, cal)

    # The inputs exercise every branch: additions, rejections, multi-step samples, and samples
    # that stop with no positive reward.
    assert int(ours.steps.sum()) > 0 and int(ours.steps.max()) >= 2
    assert bool(ours.rejected.any())
    assert "no positive reward" in ours.stop_reason

    assert torch.equal(ref.used, ours.used)
    assert torch.equal(ref.steps, ours.steps)
    assert torch.equal(ref.rejected, ours.rejected)
    assert torch.equal(ref.logits.argmax(1), ours.predictions)
    torch.testing.assert_close(ref.logits, ours.logits, atol=1e-4, rtol=1e-4)
    # The reference re-encodes twice per (sample, candidate) evaluation plus a final pass.
    evaluated = int((~torch.isnan(ours.reward_history)).sum())
    assert ref.backbone_rows == 2 * evaluated + len(observed)


def test_reference_ics_loop_matches_vectorised(bench):
    from dymo.selection.reward import ics
    from dymo.utils.subsets import masks_to_codes

    backbone, cal, data, _ = bench.tiny_random(24, seed=2)
    used = scenario_mask("random:0.5", 24, backbone.modalities, seed=3)
    with torch.no_grad():
        out = backbone(data, used)
    loop = bench._ics_per_sample(out.z, out.logits, used, cal)
    vec = ics(out.z, out.logits, masks_to_codes(used), cal.prototypes, cal.sigma, cal.metric)
    assert torch.equal(loop, vec)
