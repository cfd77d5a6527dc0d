"""Shared synthetic data for the recovery tests + tests of the recovery protocol helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.specs import ModalitySpec
from dymo.errors import BundleError, ConfigError, DataError
from dymo.recovery import (
    get_recoverer,
    group_by_pattern,
    load_recoverer,
    merge_recovered,
    sanitize_missing,
)

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


def test_merge_writes_only_missing_slots() -> None:
    data = {"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(3, 2)}
    obs = torch.tensor([[True, True], [False, True], [True, True]])
    batch = MultimodalBatch(data, obs, ("a", "b"))
    out = merge_recovered(batch, {"a": torch.full((3, 4), -5.0)})
    assert out.data["b"] is data["b"]  # untouched modality: same tensor object
    assert torch.equal(out.data["a"][0], data["a"][0]) and torch.equal(out.data["a"][2], data["a"][2])
    assert torch.equal(out.data["a"][1], torch.full((4,), -5.0))
    assert out.observed is obs
    with pytest.raises(DataError, match="modality 'a'"):
        merge_recovered(batch, {})
    with pytest.raises(DataError, match="sample 1"):
        merge_recovered(batch, {"a": torch.full((3, 4), float("nan"))})


def test_sanitize_and_grouping() -> None:
    obs = torch.tensor([[True, False], [False, True], [True, False]])
    batch = MultimodalBatch({"a": torch.ones(3, 2), "b": torch.ones(3, 2)}, obs, ("a", "b")).with_missing_filled()
    clean = sanitize_missing(batch)
    assert torch.isfinite(clean.data["a"]).all() and float(clean.data["a"][1].abs().sum()) == 0
    groups = group_by_pattern(obs)
    assert [p.tolist() for p, _ in groups] == [[True, False], [False, True]]
    assert [i.tolist() for _, i in groups] == [[0, 2], [1]]


def test_registry_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown recoverer"):
        get_recoverer("nope")
    with pytest.raises(ConfigError, match="unknown key"):
        get_recoverer("mean", bogus=1)
    with pytest.raises(BundleError, match="config.json"):
        load_recoverer(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        load_recoverer(tmp_path)


def test_unfitted_and_bad_batches() -> None:
    split = make_split(kinds=("vector", "vector"))
    rec = get_recoverer("oracle")
    batch = split["test"].batch([0, 1])
    with pytest.raises(DataError, match="not fitted"):
        rec.recover(batch)
    rec.fit(split["train"], progress=False)
    with pytest.raises(DataError, match="sample 1 has no observed"):
        rec.recover(batch.with_observed(torch.tensor([[True, False], [False, False]])))
    bad = MultimodalBatch(dict(batch.data), batch.observed, ("vec1", "vec0"))
    with pytest.raises(DataError, match="do not match"):
        rec.recover(bad)
