"""Retrieval (hot-deck) recovery: real training rows, class-coherent, saved by reference."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import make_split, random_mask
from dymo.data.dataset import SplitDataset
from dymo.errors import BundleError, ConfigError
from dymo.recovery import load_recoverer
from dymo.recovery.retrieval import RetrievalRecoverer

TINY = {"epochs": 8, "batch_size": 32, "embed_dim": 16, "width": 4, "hidden": 16, "text_embed": 8}


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    """A dataset saved and re-opened memory-mapped, and a retrieval recoverer fitted on it."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("data") / "synth"
    make_split(seed=5, kinds=("image", "image", "vector")).save(root)
    split = SplitDataset.load(root)
    rec = RetrievalRecoverer(**TINY).fit(split["train"], progress=False)
    return rec, split, root


def test_returns_real_training_rows_of_the_right_class(on_disk) -> None:
    rec, split, _ = on_disk
    batch = split["test"].all()
    obs = random_mask(len(batch), 3, seed=0, allow_full=False)
    out = rec.recover(batch.with_observed(obs).with_missing_filled())
    nb = rec.last_neighbors
    assert (nb >= 0).all()
    train = split["train"]
    for j, spec in enumerate(train.specs):
        miss = ~obs[:, j]
        expected = spec.to_tensor(np.asarray(train.arrays[spec.name])[nb[miss].numpy()])
        assert torch.equal(out.data[spec.name][miss], expected)
    # the class is clearly encoded: the neighbours' labels match the queries'
    agree = (torch.as_tensor(train.labels)[nb] == batch.labels).float().mean()
    assert agree >= 0.9


def test_saved_by_reference_and_checked(on_disk, tmp_path) -> None:
    rec, split, root = on_disk
    run = tmp_path / "run"
    rec.save(run)
    import json

    ref = json.loads((run / "config.json").read_text())["extra"]["train_data"]
    files = [m.get("file") for m in ref["modalities"].values()]
    assert all(f is not None and not f.startswith("/") for f in files)  # relative references
    assert (run / "train_data.safetensors").stat().st_size < 4096  # labels only, no images
    scen = split["test"].all().with_observed(random_mask(len(split["test"]), 3, seed=1))
    assert torch.equal(load_recoverer(run).recover(scen).data["img0"], rec.recover(scen).data["img0"])

    # a training set that differs is refused, naming the modality
    other = make_split(seed=99, kinds=("image", "image", "vector"))
    with pytest.raises(BundleError, match="img0"):
        load_recoverer(run, train=other["train"])
    # the referenced data moved: a clear error; passing the dataset works
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    shutil.rmtree(root / "train")
    try:
        with pytest.raises(BundleError, match="does not exist"):
            load_recoverer(run)
        again = load_recoverer(run, train=SplitDataset.load(moved)["train"])
        assert torch.equal(again.recover(scen).data["img1"], rec.recover(scen).data["img1"])
    finally:
        shutil.copytree(moved / "train", root / "train")


def test_in_memory_training_set_too_large_is_refused_before_training() -> None:
    split = make_split(kinds=("image", "vector"))
    with pytest.raises(ConfigError, match="max_embedded_mb"):
        RetrievalRecoverer(max_embedded_mb=0.0001, **TINY).fit(split["train"], progress=False)


def test_k_medoid_is_among_the_k_nearest(on_disk) -> None:
    rec, split, _ = on_disk
    k3 = RetrievalRecoverer(**{**TINY, "k": 3})
    k3.specs, k3.class_names, k3.fitted = rec.specs, rec.class_names, True
    k3.embedder, k3.train_embeddings, k3.train_data = rec.embedder, rec.train_embeddings, rec.train_data
    batch = split["test"].all()
    obs = torch.zeros(len(batch), 3, dtype=torch.bool)
    obs[:, 0] = True
    k3.recover(batch.with_observed(obs))
    rec.recover(batch.with_observed(obs))
    q = torch.nn.functional.normalize(rec.embedder.features("img0", batch.data["img0"]), dim=-1)
    keys = torch.nn.functional.normalize(rec.train_embeddings[:, 0].float(), dim=-1)
    top3 = (q @ keys.T).topk(3, dim=1).indices
    assert (top3 == k3.last_neighbors[:, None]).any(1).all()
    assert torch.equal(top3[:, 0], rec.last_neighbors)
