"""The text and tabular encoders: registry, NaN handling, and end-to-end training through
``train_backbone`` on an easy text + table task (each modality alone beats chance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.mst import DIGIT_NAMES, TEXT_VOCAB_SIZE, digit_texts, encode_text
from dymo.data.scenarios import apply_value_missing
from dymo.data.specs import ModalitySpec
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.models.encoders import TabularEncoder, TextEncoder, build_encoder, registered_encoders
from dymo.training.run import TrainConfig, load_backbone, train_backbone

NUM_CLASSES = 4
LENGTHS = [1] * 7 + [NUM_CLASSES]  # seven continuous columns, one categorical
TABLE = ModalitySpec("table", "vector", (len(LENGTHS),), extra={"field_lengths": LENGTHS})
TEXT = ModalitySpec("text", "text", (8,), vocab_size=TEXT_VOCAB_SIZE)


def make_split(n: int, seed: int) -> MultimodalDataset:
    """Text: the class's digit name at a random offset, replaced by another class's name 30% of
    the time. Table: a weak class signal in two continuous columns and a categorical code equal
    to the class 60% of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, n)
    shown = np.where(rng.random(n) < 0.7, y, rng.integers(0, NUM_CLASSES, n))
    text = encode_text(digit_texts(shown, 8, rng), 8)
    table = rng.normal(size=(n, len(LENGTHS)))
    table[:, 0] += 1.2 * (y % 2)
    table[:, 1] += 1.2 * (y // 2)
    table[:, -1] = np.where(rng.random(n) < 0.6, y, rng.integers(0, NUM_CLASSES, n))
    arrays = {"text": text, "table": table.astype(np.float32)}
    return MultimodalDataset([TEXT, TABLE], arrays, y, [DIGIT_NAMES[k] for k in range(NUM_CLASSES)], name="toy")


def test_registry_builds_both():
    assert {"text", "tabular", "vector"} <= set(registered_encoders())
    enc = build_encoder(TABLE, 16, "tabular", {"tabular_tokens": 3, "tabular_token_dim": 4})
    assert isinstance(enc, TabularEncoder) and enc.num_tokens == 3
    assert enc.categories is not None and enc.categories.num_embeddings == NUM_CLASSES
    assert isinstance(build_encoder(TEXT, 16), TextEncoder)


def test_tabular_encoder_reads_nan_as_missing_and_codes_as_categories():
    torch.manual_seed(0)
    enc = TabularEncoder(len(LENGTHS), 16, 2, LENGTHS, token_dim=8).eval()
    x = torch.randn(3, len(LENGTHS))
    x[:, -1] = torch.tensor([0.0, 1.0, 3.0])
    holes = x.clone()
    holes[0, 2] = float("nan")
    out = enc(holes)
    assert out.shape == (3, 2, 16) and torch.isfinite(out).all()
    tok = enc.tokens(holes)
    assert torch.equal(tok[0, 2], enc.missing[2])  # a NaN entry is the column's missing token
    assert torch.equal(tok[1], enc.tokens(x)[1])  # other rows unaffected
    # the categorical column is an embedding lookup of the code (clamped into range)
    assert torch.equal(tok[2, -1], enc.categories.weight[3])
    big = x.clone()
    big[2, -1] = 99.0
    assert torch.equal(enc.tokens(big)[2, -1], enc.categories.weight[3])
    # gradients reach every parameter, NaN entries included
    enc.train()
    enc(holes).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


@pytest.mark.parametrize("table_encoder", ["tabular", "vector"])
def test_text_and_table_train_end_to_end(tmp_path, table_encoder):
    torch.set_num_threads(1)
    data = SplitDataset(
        "toy", [TEXT, TABLE], [DIGIT_NAMES[k] for k in range(NUM_CLASSES)],
        {"train": make_split(600, 0), "val": make_split(150, 1), "test": make_split(300, 2)},
    )
    backbone = BackboneConfig(dim=32, depth=1, heads=2, proj_dim=16, encoders={"table": table_encoder})
    train = TrainConfig(epochs=2, batch_size=32, lr=3e-3, proto_start_epoch=1, patience=2)
    run = train_backbone(data, tmp_path / "run", backbone, train, progress=False)
    metrics = __import__("json").loads((run / "metrics.json").read_text())["test"]
    chance = 1 / NUM_CLASSES
    # The text shows the right name 70% (+ chance) of the time; the table is weaker.
    assert metrics["single"]["text"] > chance + 0.3
    assert metrics["single"]["table"] > chance + 0.15
    assert metrics["all_modalities"] >= max(metrics["single"].values()) - 0.1
    model: FlexibleBackbone = load_backbone(run)
    if table_encoder == "tabular":
        # partly missing tables (NaN entries) go straight through the tabular encoder
        holed = apply_value_missing(data["test"], 0.3, seed=0)
        batch = holed.all()
        with torch.no_grad():
            used = torch.tensor([[False, True]]).expand(len(batch), -1)
            out = model(batch.data, used)
        assert torch.isfinite(out.logits).all()
        acc = float((out.logits.argmax(1) == batch.labels).float().mean())
        assert acc > chance + 0.1
