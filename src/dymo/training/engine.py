"""The one training engine: Lightning runs the loop, a module says what to minimise.

Everything dymo trains besides the backbone run (baselines, MoPoE, the MultiVae adapter, the
unimodal / judge classifiers) is an ``nn.Module`` with one method, trained by :func:`fit_module`::

    training_loss(batch, generator) -> loss            # a scalar tensor, or
                                    -> (loss, logs)    # logs: dict of scalars for the progress bar

and, optionally::

    validation_scores(batch) -> Tensor [B] or [B, K]   # higher is better; selects the best epoch
    on_epoch_start(epoch) / on_epoch_end(epoch)         # 0-based epochs (schedules, statistics)
    epoch_seeds(epoch) -> (shuffle_seed, noise_seed)    # a replayable per-epoch randomness stream
    divergence_hint: str                                # appended to the non-finite-loss error

The policies, the same for every module:

- **Optimiser**: Adam over the parameters that require a gradient (``lr``, ``weight_decay``).
- **Best epoch**: with a validation set and ``validation_scores``, the epoch with the best
  validation score (mean over samples, then over the K columns; the first best on ties); its
  weights are kept in memory and loaded back at the end, so fitting writes no files. Early
  stopping after ``patience`` epochs without improvement. Without validation: the last epoch.
- **Randomness**: the ``generator`` handed to ``training_loss`` is a CPU generator. By default
  it is fresh per optimiser step, seeded by ``(seed, global step)``, and one shuffling generator
  seeded by ``seed`` runs through the whole fit. A module with ``epoch_seeds`` instead gets, for
  epoch ``e``, a loader shuffled with ``shuffle_seed`` and one generator seeded by ``noise_seed``
  shared by that epoch's steps: epoch ``e`` replays the same randomness whatever came before,
  which is what makes a resumed fit equal an uninterrupted one.
- **Checkpoint / resume**: with an :class:`EpochCheckpoint`, the weights (the module's state dict
  keys as they are), the optimiser state (``optim.<param index>.<key>``) and
  the number of finished epochs are written atomically after every epoch; a later fit with the
  same checkpoint resumes after the last finished epoch (a larger ``epochs`` extends the fit; any
  other change of what the checkpoint names is refused). Resuming needs ``epoch_seeds``.
- **Divergence**: a non-finite loss stops the fit with :class:`TrainingDiverged`.

The DyMo backbone (:mod:`dymo.training.run`) is a LightningModule of its own, because its run
folder keeps Lightning checkpoints and logs for ``dymo train backbone --resume``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from dymo.config import Config
from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset, _identity
from dymo.errors import BundleError, ConfigError, DymoError

log = logging.getLogger("dymo.training")


class TrainingDiverged(DymoError, FloatingPointError):
    """A non-finite loss or weights during training (learning rate too high, bad data)."""


@dataclass
class FitConfig(Config):
    """The training budget of a module trained by :func:`fit_module`.

    Defaults follow :class:`~dymo.training.config.TrainConfig` (Adam, lr 1e-3, a few epochs,
    early stopping on the validation score): small enough for a CPU.
    """

    epochs: int = 4
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3
    seed: int = 0
    max_train_samples: int | None = None
    eval_batch_size: int = 512
    accelerator: str = "cpu"

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("FitConfig: epochs, batch_size and eval_batch_size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"FitConfig: lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"FitConfig: weight_decay must be >= 0, got {self.weight_decay}")
        if self.patience < 1:
            raise ConfigError(f"FitConfig: patience must be >= 1, got {self.patience}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ConfigError("FitConfig: max_train_samples must be >= 1 (or null)")


def deterministic_mode(accelerator: str) -> bool | str:
    """Lightning's ``deterministic`` for ``accelerator``: deterministic algorithms everywhere,
    but on a GPU only a warning where CUDA has no deterministic kernel (scatter-add, ...)."""
    import torch

    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "warn" if gpu else True


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed per (run seed, epoch, stream) so a resumed epoch replays the same randomness."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


class EpochCheckpoint:
    """An atomically rewritten safetensors checkpoint of a fit (see the module doc).

    ``kind`` and ``fmt`` identify the file; ``identity`` (JSON-able values) must match on resume,
    except the key ``epochs`` of a dict value named ``config`` (a larger budget extends a fit).
    ``extra()`` gives more JSON-able metadata to store (a training history); :meth:`load` returns
    it. Messages name the file.
    """

    def __init__(self, path: str | Path, kind: str, fmt: int, identity: Mapping[str, Any], extra: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.kind, self.fmt = kind, fmt
        self.identity = dict(identity)
        self.extra = extra
        self.optim_state: dict[int, dict[str, torch.Tensor]] | None = None

    def save(self, module: nn.Module, optimizer: torch.optim.Optimizer, epochs_done: int) -> None:
        from dymo.utils.io import save_tensors

        tensors = dict(module.state_dict())
        if any(k.startswith("optim.") for k in tensors):
            raise ConfigError(f"{self.path}: a module with a top-level part named 'optim' cannot be checkpointed")
        for idx, st in optimizer.state_dict()["state"].items():
            for key, value in st.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
        meta = {"kind": self.kind, "format": str(self.fmt), "epochs_done": str(epochs_done)}
        meta.update({k: json.dumps(v) for k, v in self.identity.items()})
        if self.extra is not None:
            meta.update({k: json.dumps(v) for k, v in self.extra().items()})
        save_tensors(self.path, tensors, metadata=meta)

    def load(self, module: nn.Module) -> tuple[int, dict[str, Any]]:
        """Load the weights into ``module`` (the optimiser state is applied by :func:`fit_module`);
        return ``(finished epochs, the stored extra metadata)``."""
        from safetensors import safe_open

        from dymo.utils.io import load_tensors

        path = self.path
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_tensors(path)
        except Exception as e:  # safetensors raises its own error types
            raise BundleError(f"{path}: truncated or corrupt checkpoint ({e}); delete it to start over") from None
        if meta.get("kind") != self.kind or meta.get("format") != str(self.fmt):
            raise BundleError(f"{path}: not a {self.kind.removesuffix('-checkpoint')} checkpoint of format {self.fmt}")
        for key, now in self.identity.items():
            saved = json.loads(meta[key]) if key in meta else None
            if key == "config" and isinstance(now, dict) and isinstance(saved, dict):
                diff = sorted(k for k in now if k != "epochs" and saved.get(k) != now[k])
                if diff:
                    raise ConfigError(f"{path}: checkpoint was trained with a different config (keys {diff}); use another run_dir")
            elif saved != now:
                raise BundleError(f"{path}: checkpoint is for other {key} than this fit (other modalities or data?)")
        state = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise BundleError(f"{path}: weights do not fit the model ({e})") from None
        optim: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                optim.setdefault(int(idx), {})[key] = v
        self.optim_state = optim
        known = {"kind", "format", "epochs_done", *self.identity}
        extra = {k: json.loads(v) for k, v in meta.items() if k not in known}
        return int(meta["epochs_done"]), extra


class _EpochShuffle(Sampler[int]):
    """Each pass, the order of the first pass of ``dataset.loader(shuffle=True, seed=s)`` for
    ``s = shuffle_seed()`` (read when the pass starts): the same order however often Lightning
    starts a pass over an epoch, and whatever the epochs before it were."""

    def __init__(self, n: int, shuffle_seed: Callable[[], int]) -> None:
        self.n, self.shuffle_seed = n, shuffle_seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.shuffle_seed())
        # A DataLoader(shuffle=True, generator=g) first draws its workers' base seed from g, then
        # the permutation (tests/test_training_engine.py checks that the orders agree).
        torch.empty((), dtype=torch.int64).random_(generator=g)
        yield from torch.randperm(self.n, generator=g).tolist()


@functools.cache
def _engine_class() -> type:
    """The LightningModule around any module with ``training_loss`` (see the module doc); made
    on first use so that importing a component that trains through the engine does not load
    Lightning."""
    import lightning as L

    class _Engine(L.LightningModule):
        """The engine proper: Lightning calls these hooks; they call the module's."""

        def __init__(
            self, net: nn.Module, cfg: FitConfig, train: MultimodalDataset, val: MultimodalDataset | None,
            name: str, start_epoch: int, checkpoint: EpochCheckpoint | None,
        ) -> None:
            super().__init__()
            self.net = net
            self.cfg = cfg
            self.train_set, self.val_set = train, val
            self.component = name
            self.start_epoch = start_epoch
            self.checkpoint = checkpoint
            self.best_score = -float("inf")
            self.best_state: dict[str, torch.Tensor] | None = None
            self._loader: Any = None
            self._epoch_gen: torch.Generator | None = None
            self._step_in_epoch = 0
            self._sum: torch.Tensor | None = None
            self._count = 0

        @property
        def epoch(self) -> int:
            """0-based epoch of the whole fit (counting epochs finished before a resume)."""
            return self.start_epoch + self.current_epoch

        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            return batch.to(device)

        def train_dataloader(self) -> Any:
            if self._loader is None:
                seeds = getattr(self.net, "epoch_seeds", None)
                if seeds is None:  # one loader, one shuffling generator for the whole fit
                    self._loader = self.train_set.loader(self.cfg.batch_size, shuffle=True, seed=self.cfg.seed)
                else:
                    sampler = _EpochShuffle(len(self.train_set), lambda: seeds(self.epoch)[0])
                    # A generator of its own: the DataLoader draws its worker base seed from it, not
                    # from the global RNG.
                    self._loader = DataLoader(
                        self.train_set, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=_identity, generator=torch.Generator()
                    )
            return self._loader

        def val_dataloader(self) -> Any:
            return [] if self.val_set is None else self.val_set.loader(self.cfg.eval_batch_size)

        def on_train_epoch_start(self) -> None:
            seeds = getattr(self.net, "epoch_seeds", None)
            self._epoch_gen = None if seeds is None else torch.Generator().manual_seed(seeds(self.epoch)[1])
            self._step_in_epoch = 0
            hook = getattr(self.net, "on_epoch_start", None)
            if hook is not None:
                hook(self.epoch)

        def training_step(self, batch: MultimodalBatch, batch_idx: int) -> torch.Tensor:
            g = self._epoch_gen or torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.global_step)
            out = self.net.training_loss(batch, g)
            loss, logs = (out, {}) if isinstance(out, torch.Tensor) else out
            self._step_in_epoch += 1
            if not bool(torch.isfinite(loss.detach()).all()):
                hint = getattr(self.net, "divergence_hint", "lower lr (or check the data)")
                raise TrainingDiverged(
                    f"{self.component}: loss became {float(loss.detach())} at epoch {self.epoch + 1}, step {self._step_in_epoch}; {hint}"
                )
            self.log("train_loss", loss.detach(), prog_bar=True, batch_size=len(batch))
            for key, value in logs.items():
                self.log(key, value.detach() if isinstance(value, torch.Tensor) else value, prog_bar=True, batch_size=len(batch))
            return loss

        def on_train_epoch_end(self) -> None:
            hook = getattr(self.net, "on_epoch_end", None)
            if hook is not None:
                hook(self.epoch)
            if self.checkpoint is not None:
                self.checkpoint.save(self.net, self.optimizers().optimizer, self.epoch + 1)  # type: ignore[union-attr]

        def on_validation_epoch_start(self) -> None:
            self._sum, self._count = None, 0

        def validation_step(self, batch: MultimodalBatch, batch_idx: int) -> None:
            scores = self.net.validation_scores(batch)
            scores = scores.float().reshape(len(batch), -1)
            self._sum = scores.sum(0) if self._sum is None else self._sum + scores.sum(0)
            self._count += len(batch)

        def on_validation_epoch_end(self) -> None:
            if self._sum is None:
                return
            score = float((self._sum / max(self._count, 1)).mean())
            self.log("val_score", score, prog_bar=True)
            if score > self.best_score:
                self.best_score = score
                self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}

        def configure_optimizers(self) -> torch.optim.Optimizer:
            params = [p for p in self.net.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            if self.checkpoint is not None and self.checkpoint.optim_state is not None:
                opt.load_state_dict({"state": self.checkpoint.optim_state, "param_groups": opt.state_dict()["param_groups"]})
            return opt

    return _Engine


def fit_module(
    net: nn.Module,
    train: MultimodalDataset,
    cfg: FitConfig,
    *,
    val: MultimodalDataset | None = None,
    progress: bool = True,
    name: str = "model",
    checkpoint: EpochCheckpoint | None = None,
    device: torch.device | str | None = None,
) -> float | None:
    """Train ``net`` on ``train`` (see the module doc for the policies); leave it in eval mode
    on the CPU (or on ``device`` when given). Returns the best validation score (None without
    ``val``). With ``checkpoint``, resumes from it when its file exists."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    if checkpoint is not None and getattr(net, "epoch_seeds", None) is None:
        raise ConfigError(f"{name}: resuming needs a module with epoch_seeds (a replayable randomness stream)")
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        train = train.subset(range(cfg.max_train_samples))
    start = 0
    if checkpoint is not None and checkpoint.path.exists():
        start, extra = checkpoint.load(net)
        hook = getattr(net, "on_resume", None)
        if hook is not None:
            hook(start, extra)
        log.info("%s: resumed from %s after epoch %d", name, checkpoint.path, start)
    scored = val is not None and hasattr(net, "validation_scores")
    target = torch.device(device) if device is not None else None
    if target is not None and target.type == "cuda":
        accelerator, devices = "cuda", [target.index or 0]
    else:
        accelerator, devices = cfg.accelerator if target is None else target.type, 1
    if start < cfg.epochs:
        net.train()  # Lightning keeps the mode it finds; a second fit (DynMM's gate) starts from eval
        engine = _engine_class()(net, cfg, train, val if scored else None, name, start, checkpoint)
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            max_epochs=cfg.epochs - start,
            callbacks=[EarlyStopping(monitor="val_score", mode="max", patience=cfg.patience)] if scored else [],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=1.0 if scored else 0,
            deterministic=deterministic_mode(accelerator),
        )
        trainer.fit(engine)
        if engine.best_state is not None:
            net.load_state_dict(engine.best_state)
        best = engine.best_score if scored else None
    else:
        best = None
    net.to(target if target is not None else torch.device("cpu")).eval()
    if best is not None:
        log.info("%s: best validation score %.4f", name, best)
    return best
