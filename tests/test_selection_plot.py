"""The explanation figure: written atomically as a PNG, borders coloured by decision."""

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from dymo.errors import DataError
from dymo.selection import Calibration, SelectionConfig, select
from dymo.selection.plot import COLORS, plot_explanations
from dymo.utils.subsets import masks_to_codes

B, M, C, D = 12, 3, 3, 4


def _result(costs=None):
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(B, 2**M, D, generator=g), dim=-1)
    logits = torch.randn(B, 2**M, C, generator=g)
    protos = 0.8 * torch.nn.functional.normalize(torch.randn(2**M, C, D, generator=g), dim=-1)
    cal = Calibration("cosine", 0.1, protos, torch.full((2**M, C), 0.3), protos[1:].mean(0), M, ("a", "b", "c"))
    obs = torch.zeros(B, M, dtype=torch.bool)
    obs[:, 0] = True
    fuse = lambda idx, used: (logits[idx, masks_to_codes(used)], feats[idx, masks_to_codes(used)])  # noqa: E731
    return select(fuse, obs, ~obs, cal, SelectionConfig(costs=costs))


def _count(img, hex_color):
    rgb = np.array([int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(img[..., :3] - rgb).max(-1) < 0.02).sum())


def test_plot_writes_png_with_decision_colours(tmp_path):
    res = _result()
    added = [i for i in range(B) if res.steps[i] > 0]
    rejected = [i for i in range(B) if res.rejected[i].any()]
    assert added and rejected
    ids = [added[0], rejected[0]]
    images = {m: torch.rand(B, 3, 8, 8) for m in "abc"}
    path = plot_explanations(images, images, res, ids, ["a", "b", "c"], tmp_path / "fig" / "sel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["sel.png"]
    img = imread(path)
    assert _count(img, COLORS["accepted"]) > 50
    assert _count(img, COLORS["rejected"]) > 50


def test_plot_without_any_addition_has_no_green(tmp_path):
    res = _result(costs=[1.0, 1.0, 1.0])  # nothing can pay its cost
    images = {m: np.random.default_rng(0).random((B, 8, 8, 1)) for m in "abc"}  # HWC greyscale
    path = plot_explanations(images, images, res, [0, 1, 2], None, tmp_path / "none.png")
    img = imread(path)
    assert _count(img, COLORS["accepted"]) == 0
    assert _count(img, COLORS["rejected"]) > 50


def test_plot_errors(tmp_path):
    res = _result()
    images = {m: torch.rand(B, 3, 8, 8) for m in "abc"}
    with pytest.raises(DataError, match="unknown modality"):
        plot_explanations(images, images, res, [0], ["a", "zz"], tmp_path / "x.png")
    with pytest.raises(DataError, match="sample 99"):
        plot_explanations(images, images, res, [99], None, tmp_path / "x.png")
    with pytest.raises(DataError, match="recovered image for modality 'b'"):
        plot_explanations(images, {"c": images["c"]}, res, [0], None, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
