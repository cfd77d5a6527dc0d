"""The flexible backbone: shapes, no leakage from unused modalities, masked == dropped fusion,
encode-once gradients == re-encode gradients, prototype loss values."""

import copy

import pytest
import torch

from dymo.data.specs import ModalitySpec
from dymo.data.synthetic import make_synthetic
from dymo.models import BackboneConfig, FlexibleBackbone, register_encoder
from dymo.models.encoders import registered_encoders
from dymo.training.losses import prototype_loss
from dymo.utils.subsets import all_subsets

SMALL = BackboneConfig(dim=32, heads=4, depth=2, proj_dim=8, encoder_options={"image_channels": [8, 16, 32]})


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    ds = make_synthetic(16, kinds=("image", "vector", "text", "image"))
    model = FlexibleBackbone(ds.specs, ds.num_classes, SMALL).eval()
    return ds, model


def test_shapes(setup):
    ds, model = setup
    batch = ds.all()
    tokens = model.encode(batch.data)
    assert tokens.shape == (16, 4 + 2 + 4 + 4, 32)
    out = model.fuse(tokens, torch.ones(16, 4, dtype=torch.bool))
    assert out.logits.shape == (16, 3) and out.z.shape == (16, 8) and out.h.shape == (16, 32)
    assert torch.allclose(out.z.norm(dim=1), torch.ones(16), atol=1e-5)  # cosine: unit norm


def test_euclidean_features_are_not_normalised(setup):
    ds, _ = setup
    model = FlexibleBackbone(ds.specs, ds.num_classes, SMALL.replace(metric="euclidean"))
    z = model(ds.all().data, torch.ones(16, 4, dtype=torch.bool)).z
    assert not torch.allclose(z.norm(dim=1), torch.ones(16), atol=1e-3)


@torch.no_grad()
def test_unused_modalities_do_not_leak(setup):
    ds, model = setup
    batch = ds.all()
    g = torch.Generator().manual_seed(1)
    used = torch.rand(16, 4, generator=g) > 0.5
    used[:, 1] = True
    ref = model(batch.data, used)
    # Garbage (NaN, huge values, other samples' data) in every unused slot changes nothing.
    poisoned = {}
    for i, spec in enumerate(ds.specs):
        x = batch.data[spec.name].clone()
        bad = ~used[:, i]
        if x.is_floating_point():
            x[bad] = float("nan")
        else:
            x[bad] = spec.vocab_size - 1
        poisoned[spec.name] = x
    out = model(poisoned, used)
    assert torch.equal(out.logits, ref.logits) or torch.allclose(out.logits, ref.logits, atol=1e-6)
    assert torch.isfinite(out.logits).all()


@torch.no_grad()
def test_masked_and_dropped_fusion_agree(setup):
    ds, model = setup
    tokens = model.encode(ds.all().data)
    subsets = all_subsets(4)
    # A different subset per sample in one call vs one dropped-token call per subset.
    per_sample = subsets[torch.arange(16) % len(subsets)]
    mixed = model.fuse(tokens, per_sample)
    for i in range(16):
        ref = model.fuse_dropped(tokens[i : i + 1], per_sample[i])
        torch.testing.assert_close(mixed.logits[i : i + 1], ref.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mixed.z[i : i + 1], ref.z, atol=1e-5, rtol=1e-5)


def test_encode_once_gradient_equals_reencode(setup):
    ds, base = setup
    batch = ds.all()
    subsets = all_subsets(4)[[0, 5, 14]]
    m1, m2 = copy.deepcopy(base).train(), copy.deepcopy(base).train()
    tokens = m1.encode(batch.data)
    loss1 = sum(torch.nn.functional.cross_entropy(m1.fuse(tokens, s.expand(16, -1)).logits, batch.labels) for s in subsets)
    loss1.backward()
    loss2 = sum(torch.nn.functional.cross_entropy(m2.fuse(m2.encode(batch.data), s.expand(16, -1)).logits, batch.labels) for s in subsets)
    loss2.backward()
    torch.testing.assert_close(loss1, loss2)
    for (n, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters(), strict=False):
        assert (p1.grad is None) == (p2.grad is None), n
        if p1.grad is not None:
            torch.testing.assert_close(p1.grad, p2.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_prototype_loss_hand_computed():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    protos = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    y = torch.tensor([0, 1])
    # cosine: logits = z.c / 0.1 -> sample 0: [10, 6]; sample 1: [0, 8]
    import math

    l0 = -(10 - math.log(math.exp(10) + math.exp(6)))
    l1 = -(8 - math.log(math.exp(0) + math.exp(8)))
    assert prototype_loss(z, y, protos, "cosine", 0.1).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # euclidean: -||z - c||^2 / 0.1 -> sample 0: [0, -(0.16+0.64)=-0.8]/0.1 ; sample 1: [-2, -(0.36+0.04)]/0.1
    e0 = -(0 - math.log(math.exp(0) + math.exp(-8)))
    e1 = -(-4 - math.log(math.exp(-20) + math.exp(-4)))
    assert prototype_loss(z, y, protos, "euclidean", 0.1).item() == pytest.approx((e0 + e1) / 2, rel=1e-5)


def test_custom_encoder_registry():
    class Tiny(torch.nn.Module):
        num_tokens = 1

        def __init__(self, spec, dim):
            super().__init__()
            self.lin = torch.nn.Linear(spec.shape[0], dim)

        def forward(self, x):
            return self.lin(x).unsqueeze(1)

    register_encoder("tiny-test")(lambda spec, dim, opts: Tiny(spec, dim))
    assert "tiny-test" in registered_encoders()
    specs = [ModalitySpec("a", "vector", (5,)), ModalitySpec("b", "vector", (3,))]
    model = FlexibleBackbone(specs, 2, SMALL.replace(encoders={"a": "tiny-test"}))
    assert model.encode({"a": torch.rand(2, 5), "b": torch.rand(2, 3)}).shape == (2, 1 + 2, 32)


def test_fuse_rejects_empty_subset(setup):
    from dymo.errors import DataError

    ds, model = setup
    tokens = model.encode(ds.all().data)
    used = torch.ones(16, 4, dtype=torch.bool)
    used[3] = False
    with pytest.raises(DataError, match="sample 3"):
        model.fuse(tokens, used)


def test_fuse_equals_plain_transformer_on_used_tokens():
    """The optimised fusion (length groups, CLS-only last block) computes the straightforward
    function: every nn.TransformerEncoderLayer on [CLS] + the sample's used tokens, CLS output.
    (Pins the speed-ups benchmarked in benchmarks/bench_selection.py.)"""
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


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_eval_fusion_from_shared_projections_equals_plain_transformer(depth):
    """In evaluation mode the first block runs from per-token projections computed once per
    sample (``project``) and gathered per row (``rows``): the same function as every
    nn.TransformerEncoderLayer on [CLS] + the row's used tokens."""
    import torch.nn.functional as F

    torch.manual_seed(depth)
    ds = make_synthetic(6, kinds=("image", "vector", "image", "vector"))
    model = FlexibleBackbone(ds.specs, ds.num_classes, BackboneConfig(dim=16, heads=2, depth=depth, proj_dim=4)).eval()
    with torch.no_grad():
        tokens = model.encode(ds.all().data)
        rows = torch.arange(6).repeat_interleave(15)  # every sample with every subset
        used = all_subsets(4).repeat(6, 1)
        shared = model.fuse(tokens, used, rows=rows, projected=model.project(tokens))
        gathered = model.fuse(tokens[rows], used)
        for i in range(len(rows)):
            x = torch.cat([model.cls_token[0], tokens[rows[i], used[i][model.token_modality]]]).unsqueeze(0)
            model.train()  # the modules as they are (no fast path), dropout is 0
            for block in model.blocks:
                x = block(x)
            model.eval()
            h = model.norm(x[:, 0])
            for out in (shared, gathered):
                torch.testing.assert_close(out.h[i : i + 1], h, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(out.z[i : i + 1], F.normalize(model.projector(h), dim=-1), atol=1e-5, rtol=1e-5)
