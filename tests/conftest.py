"""Helpers shared by the test modules: tiny data, random observed masks and CLI checks.

Plain functions are imported by name (``from conftest import make_split``); pytest puts this
folder on ``sys.path`` because it holds a conftest.py.
"""

from __future__ import annotations

import numpy as np
import torch

from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.specs import ModalitySpec
from dymo.models.backbone import BackboneConfig, FlexibleBackbone

#: The smallest backbone the tests use (random weights are enough for contract tests).
TINY_BACKBONE = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]})

NUM_CLASSES = 3


def make_split(
    n_train: int = 90, n_test: int = 30, seed: int = 0, kinds: tuple[str, ...] = ("image", "image", "vector", "text")
) -> SplitDataset:
    """Tiny dataset whose class is clearly encoded in every modality."""
    rng = np.random.default_rng(seed)
    specs = []
    for i, kind in enumerate(kinds):
        if kind == "image":
            specs.append(ModalitySpec(f"img{i}", "image", (1, 8, 8)))
        elif kind == "vector":
            specs.append(ModalitySpec(f"vec{i}", "vector", (6,)))
        else:
            specs.append(ModalitySpec(f"txt{i}", "text", (5,), vocab_size=8))

    def build(n: int) -> MultimodalDataset:
        y = np.arange(n) % NUM_CLASSES
        rng.shuffle(y)
        arrays = {}
        for s in specs:
            if s.kind == "image":
                img = rng.integers(0, 60, size=(n, 8, 8, 1)).astype(np.uint8)
                for c in range(NUM_CLASSES):
                    img[y == c, 2 * c : 2 * c + 3, 1:7, 0] = 230
                arrays[s.name] = img
            elif s.kind == "vector":
                v = rng.normal(0, 0.3, size=(n, 6)).astype(np.float32)
                v[np.arange(n), y] += 3.0
                v[:, 5] = rng.normal(10, 2, size=n)  # a feature on another scale
                arrays[s.name] = v
            else:
                t = rng.integers(4, 8, size=(n, 5)).astype(np.int64)
                t[:, 0] = y + 1
                t[: n // 4, 4] = 0  # some padding
                arrays[s.name] = t
        return MultimodalDataset(specs, arrays, y, [f"c{c}" for c in range(NUM_CLASSES)], name="synth")

    return SplitDataset("synth", specs, [f"c{c}" for c in range(NUM_CLASSES)], {"train": build(n_train), "test": build(n_test)})


def random_mask(n: int, m: int, seed: int = 0, allow_full: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    while True:
        obs = torch.rand(n, m, generator=g) < 0.5
        obs[~obs.any(1), 0] = True
        if allow_full or not obs.all(1).any():
            return obs
        obs[obs.all(1), -1] = False


def cli_text(result) -> str:  # noqa: ANN001 - click.testing.Result
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def cli_error(result, *fragments: str) -> str:  # noqa: ANN001 - click.testing.Result
    """Exit status 2, no traceback, exactly one (unwrapped) ``error:`` line holding ``fragments``."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tiny_backbone(data: SplitDataset, seed: int = 0, **overrides) -> FlexibleBackbone:  # noqa: ANN003
    """A randomly initialised :data:`TINY_BACKBONE` for ``data`` (seeded), in eval mode."""
    torch.manual_seed(seed)
    return FlexibleBackbone(data.specs, data.num_classes, TINY_BACKBONE.replace(**overrides)).eval()
