"""The fast evaluation fusion (per-sample prepared tables, one gather per row group, folded
residuals) makes the same decisions as the plain ``nn.TransformerEncoderLayer`` modules, both
in DyMo's search and in the calibration statistics.

Float tolerance: the two paths sum the same products in a different order (float32), so values
agree to a few ulps of the largest term; rel=1e-5, abs=1e-6 is the suite's bound for
probabilities and qualities across batch shapes (docs/selection.md, "Numerical tests"); the
ICS and the spreads get the bounds stated where they are checked."""

import pytest
import torch

from dymo.data.synthetic import make_synthetic
from dymo.evaluation.pipeline import scenario_mask
from dymo.models import BackboneConfig, FlexibleBackbone
from dymo.selection import SelectionConfig, compute_calibration, select, select_with_backbone

KINDS = ("image", "vector", "image", "vector", "vector")
SIGNAL = [0.9, 0.3, 0.6, 0.1, 0.8]
pytestmark = pytest.mark.numerics


def _setup(depth: int, metric: str):
    torch.manual_seed(depth)
    train = make_synthetic(300, kinds=KINDS, num_classes=4, signal=SIGNAL, seed=depth)
    test = make_synthetic(160, kinds=KINDS, num_classes=4, signal=SIGNAL, seed=depth + 10)
    cfg = BackboneConfig(dim=16, heads=2, depth=depth, proj_dim=8, metric=metric,
                         encoder_options={"image_channels": [4, 8, 16]})
    model = FlexibleBackbone(train.specs, train.num_classes, cfg).eval()
    return model, train, test


def _module_fuse(model, tokens):
    """The reference: the modules as they are (training mode runs no fast path; dropout is 0)."""

    def fuse_fn(idx, used):
        model.train()
        try:
            with torch.no_grad():
                out = model.fuse(tokens[idx], used)
        finally:
            model.eval()
        return out.logits, out.z

    return fuse_fn


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_search_with_prepared_tables_makes_the_module_paths_decisions(depth, metric):
    model, train, test = _setup(depth, metric)
    cal = compute_calibration(model, train, progress=False)
    observed = scenario_mask("random:0.6", len(test), model.modalities, seed=1)
    with torch.no_grad():
        tokens = model.encode(test.all().data)
    fast = select_with_backbone(model, tokens, observed, ~observed, cal, SelectionConfig(threshold=0.0))
    ref = select(_module_fuse(model, tokens), observed, ~observed, cal, SelectionConfig(threshold=0.0))
    # the inputs exercise additions, rejections and multi-step samples
    assert int(fast.steps.max()) >= 2 and bool(fast.rejected.any())
    for key in ("used", "steps", "rejected", "action_history"):
        assert torch.equal(getattr(fast, key), getattr(ref, key)), key
    assert fast.stop_reason == ref.stop_reason
    assert torch.equal(fast.predictions, ref.predictions)
    torch.testing.assert_close(fast.probabilities, ref.probabilities, rtol=1e-5, atol=1e-6)
    evaluated = ~torch.isnan(ref.reward_history)
    assert torch.equal(evaluated, ~torch.isnan(fast.reward_history))
    torch.testing.assert_close(fast.candidate_quality[evaluated], ref.candidate_quality[evaluated], rtol=1e-5, atol=1e-6)
    # ICS p = 2 (1 - Phi(d / sigma)): a rounding difference dd of d (a few ulps of 1 when z moves
    # by float32 rounding, dd <= 4e-6 here) moves p by at most 2 phi(0) dd / sigma <= 0.8 dd /
    # sigma; this untrained model has spreads down to ~1e-4, so the bound is per calibration.
    dd = 4e-6 if metric == "cosine" else 4e-6 * float(cal.sigma[1:].max())
    atol = 0.8 * dd / float(cal.sigma[1:].min())
    torch.testing.assert_close(fast.candidate_ics[evaluated], ref.candidate_ics[evaluated], rtol=0, atol=atol)
    # Rewards where no ICS ratio enters (G = 1 on both paths) are differences of qualities: each
    # quality moves by at most the 1e-5 floor of reward_rounding_bound (2.4e-6 seen under
    # MKL_CBWR=SSE4_2), so the difference by at most 1e-5 too.
    plain = evaluated & (ref.gain_history == 1) & (fast.gain_history == 1)
    assert bool(plain.any())
    torch.testing.assert_close(fast.reward_history[plain], ref.reward_history[plain], rtol=0, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2])
def test_calibration_with_prepared_tables_equals_the_module_path(depth):
    """Statistics from the fast fusion equal those of the modules (float32 rounding only)."""
    model, train, _ = _setup(depth, "cosine")
    fast = compute_calibration(model, train, progress=False)

    class Modules(torch.nn.Module):  # the same weights, fused by the modules in training mode
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def encode(self, data, available=None):
            return self.inner.encode(data, available)

        def fuse(self, tokens, used):
            self.inner.train()
            try:
                return self.inner.fuse(tokens, used)
            finally:
                self.inner.eval()

    ref = compute_calibration(Modules(model), train, progress=False)
    torch.testing.assert_close(fast.prototypes, ref.prototypes, rtol=1e-5, atol=1e-6)
    # sigma = sqrt(mean d^2) with d = 1 - z.P, a difference of numbers near 1 (cosine): float32
    # rounding of z moves d by a few ulps of 1 (~1e-7 each), so sigma moves by about as much in
    # absolute terms, whatever its size (this untrained model's image-only subsets have
    # sigma ~ 1e-5): atol 1e-6, and rtol 1e-5 for the float32 sums elsewhere.
    torch.testing.assert_close(fast.sigma, ref.sigma, rtol=1e-5, atol=1e-6)
