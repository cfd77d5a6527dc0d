"""A tiny synthetic multimodal dataset with a controllable signal per modality (for tests and
quick experiments). Each modality shows the class as a noisy pattern; ``signal`` sets how
visible it is per modality."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.kinds import get_kind


def make_synthetic(
    n: int = 200,
    kinds: Sequence[str] = ("image", "image", "vector"),
    num_classes: int = 3,
    image_size: int = 12,
    vector_dim: int = 10,
    text_len: int = 8,
    vocab_size: int = 12,
    signal: float | Sequence[float] = 1.0,
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> MultimodalDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n) if labels is None else np.asarray(labels)
    sig = [signal] * len(kinds) if np.isscalar(signal) else list(signal)  # type: ignore[arg-type]
    proto_rng = np.random.default_rng(1234)  # class patterns shared by every split
    specs, arrays = [], {}
    options = {"image_size": image_size, "vector_dim": vector_dim, "text_len": text_len, "vocab_size": vocab_size}
    for i, kind in enumerate(kinds):
        name = f"{kind[0]}{i}"
        spec, arrays[name] = get_kind(kind).synthetic(name, y, num_classes, sig[i], proto_rng, rng, options)
        specs.append(spec)
    return MultimodalDataset(specs, arrays, y, [f"c{k}" for k in range(num_classes)], name="synthetic")


def make_synthetic_splits(n_train: int = 200, n_val: int = 60, n_test: int = 60, seed: int = 0, **kw) -> SplitDataset:
    parts = {
        "train": make_synthetic(n_train, seed=seed, **kw),
        "val": make_synthetic(n_val, seed=seed + 1, **kw),
        "test": make_synthetic(n_test, seed=seed + 2, **kw),
    }
    first = parts["train"]
    return SplitDataset("synthetic", first.specs, first.class_names, parts)
