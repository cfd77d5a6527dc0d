"""Train a backbone into a run folder, and load it back.

A run folder holds::

    config.json            dymo version, data reference, modality specs, class names, backbone + training configs
    backbone.safetensors   the best weights (by validation accuracy averaged over all subsets)
    metrics.json           test accuracy per subset summary, training time
    logs/                  Lightning CSV log (metrics.csv) and optional TensorBoard
    checkpoints/           Lightning checkpoints (last.ckpt, best.ckpt) for --resume only

Lightning checkpoints are torch pickles written by our atomic CheckpointIO; users and bundles
only ever read the safetensors weights.
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, DistributedSampler

import dymo
from dymo.config import Config
from dymo.data.dataset import MultimodalDataset, SplitDataset, _identity
from dymo.data.specs import specs_from_list, specs_to_list
from dymo.errors import BundleError, ConfigError
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.utils.io import atomic_replace_from, load_tensors, read_json, save_tensors, write_json

log = logging.getLogger(__name__)


@dataclass
class TrainConfig(Config):
    """Training budget and loss settings (METHOD.md, Pipeline item 3)."""

    epochs: int = 4
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    subsets_per_batch: int | None = None  # None: 5 for >= 4 modalities, else 2
    # "stratified": every singleton and the full set in every batch, plus the K random subsets
    # (the encoders still run once per batch); "random": the paper's K random subsets only.
    subset_schedule: Literal["stratified", "random"] = "stratified"
    proto_weight: float = 1.0
    proto_start_epoch: int = 2  # 0-based: the third epoch, as in the paper
    temperature: float = 0.1
    patience: int = 3
    seed: int = 0
    max_train_samples: int | None = None
    eval_batch_size: int = 512

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("TrainConfig: epochs and batch_size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"TrainConfig: lr must be positive, got {self.lr}")
        if self.subsets_per_batch is not None and self.subsets_per_batch < 1:
            raise ConfigError("TrainConfig: subsets_per_batch must be >= 1")
        if self.temperature <= 0:
            raise ConfigError("TrainConfig: temperature must be positive")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ConfigError(f"TrainConfig: max_train_samples must be >= 1 (or null for all), got {self.max_train_samples}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file, then renamed: never truncated."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        atomic_replace_from(lambda tmp: torch.save(checkpoint, tmp), path)


class _DataModule(L.LightningDataModule):
    def __init__(self, train: MultimodalDataset, val: MultimodalDataset, cfg: TrainConfig) -> None:
        super().__init__()
        self.train_ds, self.val_ds, self.cfg = train, val, cfg

    def _loader(self, ds: MultimodalDataset, batch_size: int, shuffle: bool) -> DataLoader:
        world = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        # One seeded permutation per epoch (Lightning calls set_epoch): a resumed run and every
        # DDP rank see the same order as an uninterrupted single-process run.
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.cfg.seed, drop_last=False)
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=_identity)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch.to(device)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, self.cfg.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_ds, self.cfg.eval_batch_size, False)


def train_backbone(
    data: SplitDataset,
    run_dir: str | os.PathLike,
    backbone: BackboneConfig | None = None,
    train: TrainConfig | None = None,
    *,
    data_ref: dict[str, Any] | None = None,
    accelerator: str = "cpu",
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str = "32-true",
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = False,
    evaluate_test: bool = True,
) -> Path:
    """Train on ``data['train']`` (complete data; missingness is simulated by subsets), pick
    the best epoch by ``data['val']``, export the best weights to safetensors."""
    from dymo.training.module import BackboneModule

    backbone = backbone or BackboneConfig()
    train = train or TrainConfig()
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    config = {
        "dymo_version": dymo.__version__,
        "kind": "backbone",
        "data": data_ref or {"name": data.name},
        "specs": specs_to_list(data.specs),
        "class_names": data.class_names,
        "backbone": backbone.to_dict(),
        "train": train.to_dict(),
    }
    if resume and (run / "config.json").exists():
        old = read_json(run / "config.json")
        for key in ("specs", "backbone", "train"):
            before, now = old.get(key), config[key]
            if key == "train" and isinstance(before, dict) and "subset_schedule" not in before:
                before = {**before, "subset_schedule": "random"}  # runs from before the option trained this way
            if key == "train" and isinstance(before, dict) and before.get("epochs", 0) <= now["epochs"]:
                # A larger --epochs extends a run (no schedule depends on it); nothing else may change.
                before, now = {**before, "epochs": 0}, {**now, "epochs": 0}
            if before != now:
                raise ConfigError(f"--resume: {run}/config.json has a different {key!r} than this command; use a new run folder")
    if resume and last.exists() and not zipfile.is_zipfile(last):
        # Checkpoints are written atomically, so this is a damaged or foreign file; torch.load
        # would fail deep inside Lightning.
        raise BundleError(f"--resume: {last} is truncated or corrupt (not a torch checkpoint); delete it to start over")
    write_json(run / "config.json", config)

    L.seed_everything(train.seed, workers=True, verbose=False)
    train_ds = data["train"]
    if train.max_train_samples is not None and train.max_train_samples < len(train_ds):
        train_ds = train_ds.subset(range(train.max_train_samples))
    module = BackboneModule(specs_to_list(data.specs), data.num_classes, backbone.to_dict(), train.to_dict())
    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_acc", mode="max", save_top_k=1, enable_version_counter=False)
    # Saved at the end of every epoch (save_last only follows top-k saves): what --resume reads.
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    # Lightning's CSV logger overwrites an existing metrics.csv: a resumed run logs beside it
    # (logs/resume-1/metrics.csv, ...) so the first part's log is kept.
    version = ""
    if resume and (run / "logs" / "metrics.csv").exists():
        version = next(f"resume-{k}" for k in range(1, 10_000) if not (run / "logs" / f"resume-{k}").exists())
    loggers: list[Any] = [CSVLogger(run, name="logs", version=version)]
    if tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run, name="logs", version="tb"))
    if strategy in ("ddp", "ddp_spawn"):
        # The training step touches every parameter (see BackboneModule.loss_for_tokens), so DDP
        # needs no search for unused parameters.
        from lightning.pytorch.strategies import DDPStrategy

        strategy_obj: Any = DDPStrategy(find_unused_parameters=False, start_method="spawn" if strategy == "ddp_spawn" else "popen")
    else:
        strategy_obj = strategy
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy_obj,
        num_nodes=num_nodes,
        precision=precision,
        max_epochs=train.epochs,
        callbacks=[best_cb, last_cb, EarlyStopping(monitor="val_acc", mode="max", patience=train.patience)],
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=_DataModule(train_ds, data["val"], train), ckpt_path=str(last) if resume and last.exists() else None)
    train_seconds = time.perf_counter() - t0
    if trainer.global_rank != 0:
        return run
    best_path = best_cb.best_model_path or str(last)
    state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    save_tensors(run / "backbone.safetensors", module.backbone.state_dict(), metadata={"dymo_version": dymo.__version__})
    metrics: dict[str, Any] = {
        "train_seconds": round(train_seconds, 1),
        "epochs_run": int(trainer.current_epoch),
        "best_val_acc": float(best_cb.best_model_score) if best_cb.best_model_score is not None else None,
        "train_samples": len(train_ds),
    }
    if evaluate_test and "test" in data.splits:
        from dymo.evaluation.subsets import subset_accuracy_summary

        metrics["test"] = subset_accuracy_summary(module.backbone.eval(), data["test"], data.modalities, train.eval_batch_size)
    write_json(run / "metrics.json", metrics)
    return run


def load_backbone(run_dir: str | os.PathLike, map_location: str = "cpu") -> FlexibleBackbone:
    """Rebuild the backbone of a run (or bundle) folder from config.json + backbone.safetensors."""
    run = Path(run_dir)
    cfg_path, w_path = run / "config.json", run / "backbone.safetensors"
    if not cfg_path.exists() or not w_path.exists():
        raise BundleError(f"{run}: not a trained backbone run (needs config.json and backbone.safetensors)")
    try:
        cfg = read_json(cfg_path)
    except ValueError as e:
        raise BundleError(f"{cfg_path}: corrupt JSON ({e})") from None
    if cfg.get("dymo_version") != dymo.__version__:
        raise BundleError(f"{run}: written by dymo {cfg.get('dymo_version')!r}, this is dymo {dymo.__version__}; retrain or use that version")
    model = FlexibleBackbone(specs_from_list(cfg["specs"]), len(cfg["class_names"]), BackboneConfig.from_dict(cfg["backbone"]))
    try:
        state = load_tensors(w_path)
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise BundleError(f"{w_path}: truncated or corrupt weights file ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BundleError(f"{w_path}: weights do not fit this backbone config/specs ({str(e).splitlines()[0]})") from None
    return model.to(map_location).eval()
