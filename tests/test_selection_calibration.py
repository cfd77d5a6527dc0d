"""Calibration statistics: values against a direct numpy computation, incomplete training data,
save/load round trip and the errors for missing or corrupt statistics."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dymo.data.dataset import MultimodalDataset
from dymo.data.specs import ModalitySpec
from dymo.errors import BundleError, DataError
from dymo.models.backbone import FusionOutput
from dymo.selection import Calibration, compute_calibration
from dymo.utils.io import save_tensors

# Floating-point sensitive: also run under other MKL code paths (Makefile: test-numerics).
pytestmark = pytest.mark.numerics

M, F, D, C = 3, 4, 5, 3


class StubBackbone(nn.Module):
    """encode: one token per modality (a fixed linear map); fuse: mean of the used tokens."""

    def __init__(self, metric: str) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.config = SimpleNamespace(metric=metric)
        self.modalities = tuple(f"m{i}" for i in range(M))
        self.w = nn.Parameter(torch.randn(M, F, D, generator=g))
        self.head = nn.Parameter(torch.randn(D, C, generator=g))

    def encode(self, data, available=None):
        tokens = torch.stack([data[f"m{i}"] @ self.w[i] for i in range(M)], dim=1)
        if available is not None:
            tokens = tokens * available.unsqueeze(-1)
        return tokens

    def fuse(self, tokens, used):
        assert bool(used.any(1).all())
        h = (tokens * used.unsqueeze(-1)).sum(1) / used.sum(1, keepdim=True)
        z = nn.functional.normalize(h, dim=-1) if self.config.metric == "cosine" else h
        return FusionOutput(h @ self.head, z, h)


def make_dataset(n=23, observed=None, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    arrays = {f"m{i}": (rng.normal(size=(n, F)) + y[:, None]).astype(np.float32) for i in range(M)}
    specs = [ModalitySpec(f"m{i}", "vector", (F,)) for i in range(M)]
    return MultimodalDataset(specs, arrays, y, [f"c{k}" for k in range(C)], observed=observed, name="toy")


def numpy_calibration(model, ds, metric):
    w = model.w.detach().numpy().astype(np.float64)
    tokens = np.stack([ds.arrays[f"m{i}"].astype(np.float64) @ w[i] for i in range(M)], axis=1)
    protos = np.zeros((2**M, C, D))
    sigmas = np.zeros((2**M, C))
    for code in range(1, 2**M):
        sub = np.array([(code >> i) & 1 for i in range(M)], dtype=bool)
        for k in range(C):
            rows = (ds.labels == k) & ds.observed[:, sub].all(1)
            h = tokens[rows][:, sub].mean(1)
            z = h / np.linalg.norm(h, axis=1, keepdims=True) if metric == "cosine" else h
            p = z.mean(0)
            d = 1 - z @ p if metric == "cosine" else np.linalg.norm(z - p, axis=1)
            protos[code, k] = p
            sigmas[code, k] = np.sqrt((d**2).mean())
    return protos, sigmas, protos[1:].mean(0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_direct_numpy_computation(metric):
    ds = make_dataset()
    model = StubBackbone(metric)
    # small batches and tiny fuse calls: accumulation across batches and subset chunks
    cal = compute_calibration(model, ds, batch_size=7, progress=False, max_rows=10)
    protos, sigmas, overall = numpy_calibration(model, ds, metric)
    assert cal.metric == metric and cal.num_modalities == M and cal.modalities == ("m0", "m1", "m2")
    assert cal.prototypes.shape == (2**M, C, D) and cal.sigma.shape == (2**M, C)
    np.testing.assert_allclose(cal.prototypes[1:].numpy(), protos[1:], atol=1e-5)
    np.testing.assert_allclose(cal.sigma[1:].numpy(), sigmas[1:], atol=1e-5)
    np.testing.assert_allclose(cal.overall.numpy(), overall, atol=1e-5)
    assert cal.temperature == 0.1
    assert bool((cal.sigma[1:] > 0).all())


def test_restores_training_mode():
    ds = make_dataset()
    model = StubBackbone("cosine").train()
    compute_calibration(model, ds, progress=False)
    assert model.training
    model.eval()
    compute_calibration(model, ds, progress=False)
    assert not model.training


def test_incomplete_training_set_uses_only_fully_observed_subsets():
    n = 30
    observed = np.ones((n, M), dtype=bool)
    observed[::4, 2] = False  # some samples lack m2
    ds = make_dataset(n, observed)
    model = StubBackbone("euclidean")
    cal = compute_calibration(model, ds, batch_size=8, progress=False)
    protos, sigmas, _ = numpy_calibration(model, ds, "euclidean")
    np.testing.assert_allclose(cal.prototypes[1:].numpy(), protos[1:], atol=1e-5)
    np.testing.assert_allclose(cal.sigma[1:].numpy(), sigmas[1:], atol=1e-5)


def test_unseen_subset_class_pair_is_a_clear_error():
    n = 12
    observed = np.ones((n, M), dtype=bool)
    observed[:, 1] = False  # nobody observes m1
    ds = make_dataset(n, observed)
    with pytest.raises(DataError, match=r"subset 2 \{m1\}"):
        compute_calibration(StubBackbone("cosine"), ds, progress=False)


def _toy_calibration():
    g = torch.Generator().manual_seed(1)
    return Calibration(
        "cosine", 0.1, torch.randn(2**M, C, D, generator=g), torch.rand(2**M, C, generator=g) + 0.1,
        torch.randn(C, D, generator=g), M, ("img", "txt", "tab"),
    )


def test_save_load_round_trip(tmp_path):
    cal = _toy_calibration()
    path = tmp_path / "sub" / "calibration.safetensors"
    cal.save(path)
    back = Calibration.load(path)
    assert back.metric == cal.metric and back.temperature == cal.temperature
    assert back.num_modalities == M and back.modalities == ("img", "txt", "tab")
    for name in ("prototypes", "sigma", "overall"):
        assert torch.equal(getattr(back, name), getattr(cal, name))
    assert [p.name for p in path.parent.iterdir()] == ["calibration.safetensors"]  # no temp file left


def test_missing_subset_is_named_on_load(tmp_path):
    cal = _toy_calibration()
    cal.save(tmp_path / "ok.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ok.safetensors"), framework="pt") as f:
        meta = f.metadata()
    sigma = cal.sigma.clone()
    sigma[3] = float("nan")
    save_tensors(tmp_path / "bad.safetensors", {"prototypes": cal.prototypes, "sigma": sigma, "overall": cal.overall}, meta)
    with pytest.raises(BundleError, match=r"calibration statistics missing subset 3 \(\{img, txt\}\)"):
        Calibration.load(tmp_path / "bad.safetensors")
    save_tensors(tmp_path / "short.safetensors", {"prototypes": cal.prototypes[:4], "sigma": cal.sigma[:4], "overall": cal.overall}, meta)
    with pytest.raises(BundleError, match="expected"):
        Calibration.load(tmp_path / "short.safetensors")


def test_corrupt_or_foreign_file_is_a_bundle_error(tmp_path):
    cal = _toy_calibration()
    cal.save(tmp_path / "c.safetensors")
    raw = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BundleError, match="trunc.safetensors"):
        Calibration.load(tmp_path / "trunc.safetensors")
    save_tensors(tmp_path / "other.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(BundleError, match="not a dymo calibration"):
        Calibration.load(tmp_path / "other.safetensors")
    with pytest.raises(BundleError, match="missing"):
        Calibration.load(tmp_path / "nope.safetensors")


def test_with_the_flexible_backbone():
    """Real backbone: calibration equals fusing each subset separately (reference path)."""
    from dymo.data.synthetic import make_synthetic
    from dymo.models import BackboneConfig, FlexibleBackbone
    from dymo.utils.subsets import codes_to_masks

    torch.manual_seed(0)
    ds = make_synthetic(18, kinds=("image", "vector"), num_classes=2, image_size=8)
    cfg = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=4, encoder_options={"image_channels": [4, 8, 16]})
    model = FlexibleBackbone(ds.specs, ds.num_classes, cfg).eval()
    cal = compute_calibration(model, ds, batch_size=5, progress=False)
    batch = ds.all()
    with torch.no_grad():
        tokens = model.encode(batch.data)
        for code in (1, 2, 3):
            used = codes_to_masks(torch.tensor(code), 2)
            z = model.fuse_dropped(tokens, used).z
            for k in range(2):
                zk = z[batch.labels == k]
                p = zk.mean(0)
                assert torch.allclose(cal.prototypes[code, k], p, atol=1e-5)
                sigma = ((1 - zk @ p) ** 2).mean().sqrt()
                assert torch.allclose(cal.sigma[code, k], sigma, atol=1e-5)


def test_selection_with_the_flexible_backbone():
    """End to end on the real backbone: nothing missing = plain prediction; otherwise the final
    logits are the backbone's logits for the chosen subsets."""
    from dymo.data.synthetic import make_synthetic
    from dymo.models import BackboneConfig, FlexibleBackbone
    from dymo.selection import SelectionConfig, select_with_backbone

    torch.manual_seed(0)
    ds = make_synthetic(20, kinds=("image", "vector", "vector"), num_classes=3, image_size=8)
    cfg = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=4, encoder_options={"image_channels": [4, 8, 16]})
    model = FlexibleBackbone(ds.specs, ds.num_classes, cfg).eval()
    cal = compute_calibration(model, ds, progress=False)
    batch = ds.all()
    full = torch.ones(20, 3, dtype=torch.bool)
    with torch.no_grad():
        tokens = model.encode(batch.data)
        plain = model(batch.data, full).logits
    res = select_with_backbone(model, tokens, full, full, cal, SelectionConfig())
    assert torch.allclose(res.logits, plain, atol=1e-5)
    observed = torch.rand(20, 3, generator=torch.Generator().manual_seed(2)) < 0.5
    observed[~observed.any(1), 1] = True
    res = select_with_backbone(model, tokens, observed, ~observed, cal, SelectionConfig(), chunk_size=7)
    assert bool((res.used | ~observed).all())
    with torch.no_grad():
        expected = model.fuse(tokens, res.used).logits
    assert torch.allclose(res.logits, expected, atol=1e-5)


def test_thin_pairs_borrow_from_their_largest_well_estimated_subset(tmp_path, caplog):
    n = 60
    observed = np.ones((n, M), dtype=bool)
    y = np.arange(n) % C
    observed[y == 0, 2] = False
    observed[np.nonzero(y == 0)[0][:2], 2] = True  # only 2 samples of class 0 observe m2
    ds = make_dataset(n, observed)
    with caplog.at_level("WARNING", logger="dymo.selection.calibration"):
        cal = compute_calibration(StubBackbone("euclidean"), ds, progress=False, min_samples=5)
    # {m0, m1, m2} (code 7), class 0 -> {m0, m1} (code 3); {m0, m2} (5) -> {m0} (1); {m1, m2} (6) -> {m1} (2)
    for code, donor in ((7, 3), (5, 1), (6, 2)):
        torch.testing.assert_close(cal.prototypes[code, 0], cal.prototypes[donor, 0])
        torch.testing.assert_close(cal.sigma[code, 0], cal.sigma[donor, 0])
    # {m2} alone has no proper subset: its 2 samples are used; the other classes are untouched.
    assert cal.counts[4, 0] == 2 and not torch.allclose(cal.prototypes[4, 0], cal.prototypes[1, 0])
    protos, _, _ = numpy_calibration(StubBackbone("euclidean"), ds, "euclidean")
    np.testing.assert_allclose(cal.prototypes[7, 1:].numpy(), protos[7, 1:], atol=1e-5)
    assert "{m0, m1, m2}: 0<-{m0, m1}" in caplog.text
    assert cal.thin_subsets(5) == {"{m2}": ["0"], "{m0, m2}": ["0"], "{m1, m2}": ["0"], "{m0, m1, m2}": ["0"]}
    cal.save(tmp_path / "c.safetensors")
    torch.testing.assert_close(Calibration.load(tmp_path / "c.safetensors").counts, cal.counts)
