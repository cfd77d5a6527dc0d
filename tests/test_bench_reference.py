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


def test_fuse_equals_plain_transformer_on_used_tokens():
    """The optimised fusion (length groups, CLS-only last block) computes the straightforward
    function: every nn.TransformerEncoderLayer on [CLS] + the sample's used tokens, CLS output.
    (Pins the speed-ups benchmarked in bench_selection.py; belongs with tests/test_backbone.py.)"""
    import torch.nn.functional as F

    from dymo.data.synthetic import make_synthetic
    from dymo.models import BackboneConfig, FlexibleBackbone
    from dymo.utils.subsets import all_subsets

    torch.manual_seed(0)
    ds = make_synthetic(15, kinds=("image", "vector", "image", "vector"))
    model = FlexibleBackbone(ds.specs, ds.num_classes, BackboneConfig(dim=16, heads=2, depth=3, proj_dim=4))
    tokens = model.encode(ds.all().data).detach().requires_grad_()
    used = all_subsets(4)  # 15 rows, every subset once: 4 different lengths in one call
    out = model.fuse(tokens, used)
    for i in range(15):
        x = torch.cat([model.cls_token[0], tokens[i, used[i][model.token_modality]]]).unsqueeze(0)
        for block in model.blocks:
            x = block(x)
        h = model.norm(x[:, 0])
        z = F.normalize(model.projector(h), dim=-1)
        torch.testing.assert_close(out.h[i : i + 1], h, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.logits[i : i + 1], model.classifier(h), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.z[i : i + 1], z, atol=1e-5, rtol=1e-5)
    # A row's output depends on its own used tokens only.
    out.logits[12].sum().backward()
    touched = tokens.grad.abs().sum(-1) > 0  # [rows, tokens]
    expected = torch.zeros_like(touched)
    expected[12] = used[12][model.token_modality]
    assert torch.equal(touched, expected)
