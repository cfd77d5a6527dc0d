"""The one training engine (dymo.training.engine): a toy component plugs in with one method,
and the policies every trained component shares (batch order, best epoch, early stopping,
divergence, checkpoint / resume) hold. Tiny models, a few seconds on one core."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from dymo.data.batch import MultimodalBatch
from dymo.data.synthetic import make_synthetic
from dymo.errors import ConfigError
from dymo.training.engine import (
    EpochCheckpoint,
    FitConfig,
    TrainingDiverged,
    _EpochShuffle,
    epoch_seed,
    fit_module,
)


@pytest.fixture(scope="module")
def data():  # noqa: ANN201
    torch.set_num_threads(1)
    return make_synthetic(40, kinds=("vector", "vector"), vector_dim=3, seed=0), make_synthetic(20, kinds=("vector", "vector"), vector_dim=3, seed=1)


class ToyNet(nn.Module):
    """What a contributor writes: a loss; here also a scripted validation score per epoch."""

    def __init__(self, scores: list[float] | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.scores = scores
        self.epoch = -1
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.seen: list[list[int]] = []

    def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> torch.Tensor:
        x = torch.cat([batch.data["v0"], batch.data["v1"]], dim=1)
        noise = torch.randn(x.shape, generator=generator)
        self.seen[-1].append(int(batch.labels.sum()))
        return nn.functional.cross_entropy(self.lin(x + 0.01 * noise), batch.labels)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self.seen.append([])

    def on_epoch_end(self, epoch: int) -> None:
        self.snapshots.append({k: v.clone() for k, v in self.state_dict().items()})

    def validation_scores(self, batch: MultimodalBatch) -> torch.Tensor:
        assert self.scores is not None
        return torch.full((len(batch), 2), self.scores[self.epoch])


class SeededToyNet(ToyNet):
    def epoch_seeds(self, epoch: int) -> tuple[int, int]:
        return epoch_seed(7, epoch, 0), epoch_seed(7, epoch, 1)


def test_epoch_order_is_the_first_pass_of_the_seeded_loader(data) -> None:  # noqa: ANN001
    train, _ = data
    for seed in (0, 5, 123456789):
        expected = [int(i) for b in train.loader(8, shuffle=True, seed=seed) for i in b.labels]
        loader = torch.utils.data.DataLoader(
            train, batch_size=8, sampler=_EpochShuffle(len(train), lambda s=seed: s), collate_fn=lambda b: b, generator=torch.Generator()
        )
        for _ in range(2):  # every pass gives the same order
            assert [int(i) for b in loader for i in b.labels] == expected


def test_best_epoch_is_kept_and_early_stopping_counts_patience(data) -> None:  # noqa: ANN001
    train, val = data
    net = ToyNet(scores=[0.2, 0.9, 0.5, 0.9, 0.1, 0.95])
    best = fit_module(net, train, FitConfig(epochs=6, batch_size=16, patience=2), val=val, progress=False)
    assert best == pytest.approx(0.9)
    assert len(net.snapshots) == 4  # best at epoch 2; epochs 3 and 4 do not beat it (a tie is no gain)
    for k, v in net.state_dict().items():
        assert torch.equal(v, net.snapshots[1][k]), k
    assert not net.training


def test_without_validation_the_last_epoch_is_kept(data) -> None:  # noqa: ANN001
    train, _ = data
    net = ToyNet()
    assert fit_module(net, train, FitConfig(epochs=3, batch_size=16), progress=False) is None
    assert len(net.snapshots) == 3
    for k, v in net.state_dict().items():
        assert torch.equal(v, net.snapshots[-1][k]), k


def test_fits_are_reproducible_and_the_seed_matters(data) -> None:  # noqa: ANN001
    train, _ = data
    a, b, c = ToyNet(), ToyNet(), ToyNet()
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    for net, seed in ((a, 0), (b, 0), (c, 1)):
        fit_module(net, train, FitConfig(epochs=2, batch_size=16, seed=seed), progress=False)
    assert a.seen == b.seen and a.seen != c.seen
    assert torch.equal(a.lin.weight, b.lin.weight)


def test_non_finite_loss_stops_with_the_component_name(data) -> None:  # noqa: ANN001
    train, _ = data

    class Bad(ToyNet):
        divergence_hint = "lower the toy lr"

        def training_loss(self, batch: MultimodalBatch, generator: torch.Generator) -> torch.Tensor:
            loss = super().training_loss(batch, generator)
            return loss * float("nan") if len(self.seen[-1]) == 2 else loss

    with pytest.raises(TrainingDiverged, match=r"toy: loss became nan at epoch 1, step 2; lower the toy lr"):
        fit_module(Bad(), train, FitConfig(epochs=2, batch_size=16), progress=False, name="toy")


def test_resumed_fit_equals_uninterrupted(data, tmp_path) -> None:  # noqa: ANN001
    train, _ = data
    straight = SeededToyNet()
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    fit_module(straight, train, FitConfig(epochs=3, batch_size=16), progress=False)

    def ckpt(epochs: int) -> EpochCheckpoint:
        return EpochCheckpoint(tmp_path / "ck.safetensors", "toy-checkpoint", 1, identity={"config": {"epochs": epochs, "lr": 1e-3}})

    first = SeededToyNet()
    first.load_state_dict(init)
    fit_module(first, train, FitConfig(epochs=1, batch_size=16), progress=False, checkpoint=ckpt(1))
    resumed = SeededToyNet()  # other initial weights: the checkpoint's replace them
    fit_module(resumed, train, FitConfig(epochs=3, batch_size=16), progress=False, checkpoint=ckpt(3))
    assert first.seen + resumed.seen == straight.seen
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    other = EpochCheckpoint(tmp_path / "ck.safetensors", "toy-checkpoint", 1, identity={"config": {"epochs": 4, "lr": 1.0}})
    with pytest.raises(ConfigError, match=r"different config \(keys \['lr'\]\)"):
        fit_module(SeededToyNet(), train, FitConfig(epochs=4, batch_size=16), progress=False, checkpoint=other)


def test_checkpoint_needs_a_replayable_stream(data, tmp_path) -> None:  # noqa: ANN001
    train, _ = data
    with pytest.raises(ConfigError, match="epoch_seeds"):
        fit_module(ToyNet(), train, FitConfig(epochs=1), progress=False, checkpoint=EpochCheckpoint(tmp_path / "c", "toy", 1, {}))


def test_multivae_objective_drives_the_model_like_its_trainer(data, monkeypatch) -> None:  # noqa: ANN001
    """The MultiVae adapter (the extra itself is not needed): epochs 1-based, batch_ratio per
    step, update() after every epoch, the global RNG seeded per epoch, a history per epoch."""
    from dymo.recovery import multivae

    datasets = types.ModuleType("pythae.data.datasets")
    datasets.DatasetOutput = lambda data: data  # type: ignore[attr-defined]
    for name in ("pythae", "pythae.data"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "pythae.data.datasets", datasets)
    train, _ = data
    calls: list[tuple[int, float, float]] = []

    class FakeModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))
            self.updates = 0

        def forward(self, inputs: dict, epoch: int, dataset_size: int, batch_ratio: float) -> dict:  # noqa: ANN001
            calls.append((epoch, batch_ratio, float(torch.rand(()))))
            assert dataset_size == len(train)
            loss = (self.w - 1.0) ** 2 * len(inputs["v0"])
            out = types.SimpleNamespace(loss=loss, get=lambda key, default: default)
            return out  # type: ignore[return-value]

        def update(self) -> None:
            self.updates += 1

    rec = types.SimpleNamespace(_to_net=lambda k, v: v, config=types.SimpleNamespace(seed=3, batch_size=16), name="cmvae")
    history: list[dict[str, float]] = []
    model = FakeModel()
    objective = multivae._MultiVaeObjective(rec, model, len(train), history)  # type: ignore[arg-type]
    fit_module(objective, train, FitConfig(epochs=2, batch_size=16), progress=False)
    assert [(e, r) for e, r, _ in calls] == [(1, 0.0), (1, 1 / 3), (1, 2 / 3), (2, 0.0), (2, 1 / 3), (2, 2 / 3)]
    torch.manual_seed(multivae._epoch_seed(3, 1, 1))
    assert calls[3][2] == pytest.approx(float(torch.rand(())))  # epoch 2's first draw
    assert model.updates == 2 and [h["epoch"] for h in history] == [1, 2]
    assert np.isfinite(history[-1]["loss"])


def test_deterministic_mode_is_strict_off_the_gpu(monkeypatch):
    """Deterministic algorithms are required on the CPU; on a GPU (named, or found by "auto")
    an op without a deterministic CUDA kernel only warns."""
    import torch

    from dymo.training.engine import deterministic_mode

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert deterministic_mode("cpu") is True and deterministic_mode("auto") is True
    assert deterministic_mode("gpu") == "warn" and deterministic_mode("cuda") == "warn"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert deterministic_mode("auto") == "warn" and deterministic_mode("cpu") is True
