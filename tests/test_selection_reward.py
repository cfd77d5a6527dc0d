"""The reward's pieces on hand-computable inputs."""

import math

import pytest
import torch
from scipy.stats import norm

from dymo.selection.reward import gain, ics, quality, reward

# Floating-point sensitive: also run under other MKL code paths (Makefile: test-numerics).
pytestmark = pytest.mark.numerics


def test_quality_cosine_and_euclidean_by_hand():
    z = torch.tensor([[1.0, 0.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # cosine: softmax([1, 0] / 0.1) -> max = 1 / (1 + e^-10)
    assert quality(z, q, "cosine", 0.1).item() == pytest.approx(1 / (1 + math.exp(-10)), rel=1e-6)
    # euclidean: -||z - q||^2 = [0, -2] -> 1 / (1 + e^-20)
    assert quality(z, q, "euclidean", 0.1).item() == pytest.approx(1 / (1 + math.exp(-20)), rel=1e-6)
    # temperature matters
    assert quality(z, q, "cosine", 1.0).item() == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ics_is_a_half_normal_tail_of_the_predicted_class(metric):
    g = torch.Generator().manual_seed(0)
    n, m, c, d = 20, 3, 4, 5
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    logits = torch.randn(n, c, generator=g)
    codes = torch.randint(1, 2**m, (n,), generator=g)
    protos = torch.randn(2**m, c, d, generator=g) * 0.5
    sigma = torch.rand(2**m, c, generator=g) + 0.2
    p = ics(z, logits, codes, protos, sigma, metric)
    k = logits.argmax(1)
    for i in range(n):
        proto = protos[codes[i], k[i]].double()
        dist = 1 - float(z[i].double() @ proto) if metric == "cosine" else float((z[i].double() - proto).norm())
        expected = 2 * norm.sf(dist / float(sigma[codes[i], k[i]]))
        assert p[i].item() == pytest.approx(expected, abs=1e-6)


def test_gain_rules():
    before = torch.tensor([0.5, 0.5, 0.5, 0.2])
    after = torch.tensor([0.7, 0.5, 0.25, 0.1])
    g_cos = gain(before, after, "cosine")
    assert g_cos[:2].tolist() == [1.0, 1.0]  # more (or equally) typical -> 1
    assert g_cos[2].item() == pytest.approx(math.log(0.5) / math.log(0.25), rel=1e-6)
    assert g_cos[3].item() == pytest.approx(math.log(0.2) / math.log(0.1), rel=1e-6)
    g_eu = gain(before, after, "euclidean")
    assert g_eu[2].item() == pytest.approx(0.5, rel=1e-6)
    # ICS after = 0: the 1e-9 guards keep it finite
    assert torch.isfinite(gain(torch.tensor([0.3]), torch.tensor([0.0]), "cosine")).all()


def test_reward_and_iterative_variant():
    qb, qa = torch.tensor([0.6, 0.6]), torch.tensor([0.9, 0.9])
    pb, pa = torch.tensor([0.5, 0.5]), torch.tensor([0.6, 0.25])
    r, g = reward(qb, qa, pb, pa, "euclidean")
    assert r.tolist() == pytest.approx([0.3, 0.9 * 0.5 - 0.6], abs=1e-6)
    r_it, g_it = reward(qb, qa, None, None, "euclidean")
    assert r_it.tolist() == pytest.approx([0.3, 0.3]) and g_it.tolist() == [1.0, 1.0]


def test_unknown_metric():
    with pytest.raises(ValueError, match="metric"):
        quality(torch.zeros(1, 2), torch.zeros(2, 2), "manhattan", 0.1)
