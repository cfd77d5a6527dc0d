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

import contextlib
import errno
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, DistributedSampler

import dymo
from dymo.data.dataset import MultimodalDataset, SplitDataset, _identity
from dymo.data.specs import specs_from_list, specs_to_list
from dymo.errors import BundleError, ConfigError
from dymo.models.backbone import BackboneConfig, FlexibleBackbone
from dymo.training.config import TrainConfig
from dymo.training.engine import TrainingDiverged, deterministic_mode
from dymo.training.module import BackboneModule
from dymo.training.subsets import subset_accuracy_summary
from dymo.utils.artifact import component_manifest, load_weights, read_manifest
from dymo.utils.io import atomic_replace_from, save_tensors, write_json

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file, then renamed: never truncated."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        try:
            atomic_replace_from(lambda tmp: torch.save(checkpoint, tmp), path)
        except RuntimeError as e:
            # torch reports a failed write (disk full, read-only) as "enforce fail at
            # inline_container.cc"; say what it is, naming the file.
            if "inline_container" in str(e) or "PytorchStreamWriter" in str(e) or "file write failed" in str(e):
                raise OSError(errno.EIO, "could not write the checkpoint (disk full or not writable?)", str(path)) from None
            raise


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


def _launched_child() -> bool:
    """True in the extra processes Lightning launches for DDP (LOCAL_RANK / NODE_RANK > 0): the
    main process has already checked, locked and written the run folder."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 or int(os.environ.get("NODE_RANK", "0") or 0) > 0


def data_fingerprint(data: SplitDataset) -> str:
    """What a run was trained on: specs, class names and a sampled hash of the train and val
    arrays and labels (see :func:`dymo.utils.artifact.array_fingerprint`)."""
    from dymo.utils.artifact import array_fingerprint, sha256_json

    parts: dict[str, Any] = {"specs": specs_to_list(data.specs), "class_names": list(data.class_names)}
    for split in ("train", "val"):
        if split in data.splits:
            ds = data[split]
            parts[split] = {s.name: array_fingerprint(ds.arrays[s.name]) for s in data.specs}
            parts[split]["__labels__"] = array_fingerprint(ds.labels)
    return sha256_json(parts)


def _provenance(config: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: data, specs, backbone, training config
    (epochs aside: a larger --epochs extends a run)."""
    from dymo.utils.artifact import sha256_json

    train = {**config["train"], "epochs": 0}
    return {
        "data_fingerprint": config.get("data_fingerprint"),
        "model_sha256": sha256_json({"specs": config["specs"], "backbone": config["backbone"], "train": train}),
        "epochs": config["train"]["epochs"],
    }


class _Provenance(L.Callback):
    """Stamps every checkpoint with what it was trained from; checked by --resume."""

    def __init__(self, stamp: dict[str, Any]) -> None:
        self.stamp = stamp

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["dymo_provenance"] = self.stamp


class _FiniteGuard(L.Callback):
    """Stops training at the first non-finite loss (cheaper than Lightning's detect_anomaly)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            cfg = getattr(pl_module, "train_cfg", None)
            lr = f" (lr {cfg.lr})" if cfg is not None else ""
            raise TrainingDiverged(
                f"training diverged: the loss is {float(loss.detach())} at epoch {trainer.current_epoch}, "
                f"batch {batch_idx}{lr}; lower --lr (or check the data). Nothing was exported"
            )


def _check_resume(run: Path, config: dict[str, Any], last: Path) -> None:
    """Refuse --resume when the run folder or its checkpoint was made from other data / config."""
    old = read_run_config(run)
    for key in ("specs", "backbone", "train"):
        before, now = old.get(key), config[key]
        if key == "train" and isinstance(before, dict) and "subset_schedule" not in before:
            before = {**before, "subset_schedule": "random"}  # runs from before the option trained this way
        if key == "train" and isinstance(before, dict) and before.get("epochs", 0) <= now["epochs"]:
            # A larger --epochs extends a run (no schedule depends on it); nothing else may change.
            before, now = {**before, "epochs": 0}, {**now, "epochs": 0}
        if before != now:
            raise ConfigError(f"--resume: {run}/config.json has a different {key!r} than this command; use a new run folder")
    before_data = old.get("data_fingerprint")
    if before_data is not None and before_data != config["data_fingerprint"]:
        raise ConfigError(
            f"--resume: {run} was trained on other data ({old.get('data', {}).get('name')!r}, fingerprint "
            f"{before_data[:12]}...) than --data {config['data'].get('name')!r} ({config['data_fingerprint'][:12]}...); "
            "use a new run folder"
        )
    if not last.exists():
        return
    if not zipfile.is_zipfile(last):
        # Checkpoints are written atomically, so this is a damaged or foreign file; torch.load
        # would fail deep inside Lightning.
        raise BundleError(f"--resume: {last} is truncated or corrupt (not a torch checkpoint); delete it to start over")
    try:
        stamp = torch.load(last, map_location="cpu", weights_only=False, mmap=True).get("dymo_provenance")
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise BundleError(f"--resume: {last} is unreadable ({e}); delete it to start over") from None
    if stamp is None:
        return  # a checkpoint from before checkpoints were stamped: config.json was checked above
    now = _provenance(config)
    if stamp.get("data_fingerprint") != now["data_fingerprint"]:
        raise ConfigError(f"--resume: {last} was trained on other data than --data {config['data'].get('name')!r}; use a new run folder")
    if stamp.get("model_sha256") != now["model_sha256"] or stamp.get("epochs", 0) > now["epochs"]:
        raise ConfigError(
            f"--resume: {last} was written by a run with another config than {run}/config.json (a restart "
            "with new settings was interrupted before its first checkpoint?); use --force to start the run over"
        )


def check_trainer_options(accelerator: str, devices: int | str, strategy: str, num_nodes: int, precision: str) -> None:
    """ConfigError naming the option for Lightning settings it refuses (nothing is written)."""
    if isinstance(devices, str) and devices != "auto" and not devices.lstrip("-").isdigit() and "," not in devices:
        raise ConfigError(f"--devices {devices!r}: expected a count, a comma-separated list of device ids, or 'auto'")
    if num_nodes < 1:
        raise ConfigError(f"--num-nodes must be >= 1, got {num_nodes}")
    try:
        L.Trainer(
            accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes, precision=precision,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )
    except Exception as e:  # noqa: BLE001 - Lightning raises ValueError, MisconfigurationException, RuntimeError
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        low = msg.lower()
        values = {"accelerator": accelerator, "devices": devices, "strategy": strategy, "precision": precision}
        named = [k for k, v in values.items() if k in low or (len(str(v)) >= 3 and str(v).lower() in low)] or list(values)
        opts = ", ".join(f"--{k} {values[k]!r}" for k in named)
        raise ConfigError(f"{opts}: {msg}") from None


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
    force: bool = False,
    progress: bool = True,
    tensorboard: bool = False,
    evaluate_test: bool = True,
) -> Path:
    """Train on ``data['train']``, pick the best epoch by ``data['val']``, export the best
    weights to safetensors.

    Missingness is simulated by fusing K random subsets per batch; on an incomplete training
    set (``observed`` False somewhere) each sample fuses only the part of each subset it
    observes (see :meth:`BackboneModule.loss_for_tokens`), and validation scores each subset on
    the samples that observe it.

    ``run_dir`` must be new or empty, or hold a backbone run: ``resume`` continues it (refused
    when its data or config differ), ``force`` replaces it. Anything else is refused before
    anything is written. The folder is locked while training; a training that fails (diverged,
    disk full, bad option) removes a run folder it created and exports nothing."""
    import shutil

    from dymo.utils.artifact import LOCK_FILE, check_output, folder_lock

    backbone = backbone or BackboneConfig()
    train = train or TrainConfig()
    n_train = len(data["train"]) if train.max_train_samples is None else min(len(data["train"]), train.max_train_samples)
    if train.epochs is None:
        train = train.with_budget(n_train)
        log.info("training budget: %d to %d epochs for %d training samples (early stopping after %d without gain)",
                 train.min_epochs, train.epochs, n_train, train.patience)
    run = Path(run_dir)
    ckpt_dir = run / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    config = {
        **component_manifest("backbone-run", "backbone"),
        "data": data_ref or {"name": data.name},
        "data_fingerprint": data_fingerprint(data),
        "specs": specs_to_list(data.specs),
        "class_names": data.class_names,
        "backbone": backbone.to_dict(),
        "train": train.to_dict(),
    }
    child = _launched_child()
    existed = run.exists() and any(not p.name.startswith(".") for p in run.iterdir())
    if not child:
        # Everything is checked before anything is written.
        check_output(run, "backbone-run", replace=True, option="run folder")  # never a foreign folder
        if existed and not resume and not force:
            raise ConfigError(f"{run}: holds a backbone run already; pass --resume to continue it or --force to replace it")
        if resume and existed:
            _check_resume(run, config, last)
        check_trainer_options(accelerator, devices, strategy, num_nodes, precision)

    L.seed_everything(train.seed, workers=True, verbose=False)
    train_ds = data["train"]
    if train.max_train_samples is not None and train.max_train_samples < len(train_ds):
        train_ds = train_ds.subset(range(train.max_train_samples))
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if not child:
            stack.enter_context(folder_lock(run))
            if force and existed and not resume:
                for p in run.iterdir():  # a dymo backbone run (checked above): start it over
                    if p.name != LOCK_FILE:
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        try:
            return _fit_and_export(
                run, config, data, train_ds, backbone, train, resume=resume and existed and not force,
                accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes, precision=precision,
                progress=progress, tensorboard=tensorboard, evaluate_test=evaluate_test, write=not child,
            )
        except KeyboardInterrupt:
            raise  # the run folder stays, for --resume
        except BaseException:
            if not child and (created or (force and not resume)) and not (run / "backbone.safetensors").exists():
                shutil.rmtree(run, ignore_errors=True)  # a failed fresh run leaves nothing behind
            raise


def _fit_and_export(
    run: Path,
    config: dict[str, Any],
    data: SplitDataset,
    train_ds: MultimodalDataset,
    backbone: BackboneConfig,
    train: TrainConfig,
    *,
    resume: bool,
    accelerator: str,
    devices: int | str,
    strategy: str,
    num_nodes: int,
    precision: str,
    progress: bool,
    tensorboard: bool,
    evaluate_test: bool,
    write: bool,
) -> Path:
    import signal

    ckpt_dir = run / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if write:
        write_json(run / "config.json", config)
    module = BackboneModule(specs_to_list(data.specs), data.num_classes, backbone.to_dict(), train.to_dict())
    if not (resume and last.exists()):  # a resumed run restores them with the weights
        from dymo.models.encoders import fit_encoder_statistics

        fit_encoder_statistics(module.backbone, train_ds)
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
        min_epochs=train.min_epochs,
        callbacks=[
            best_cb, last_cb, EarlyStopping(monitor="val_acc", mode="max", patience=train.patience),
            _FiniteGuard(), _Provenance(_provenance(config)),
        ],
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=deterministic_mode(accelerator),
        log_every_n_steps=10,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=_DataModule(train_ds, data["val"], train), ckpt_path=str(last) if resume and last.exists() else None)
    except SystemExit:
        if trainer.interrupted:
            # Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT from then on: give the
            # user back a KeyboardInterrupt (exit 130 with the resume command) and their Ctrl-C.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    train_seconds = time.perf_counter() - t0
    if trainer.global_rank != 0:
        return run
    # The best checkpoint of THIS folder (a copied run's resumed callback state names the folder
    # it was copied from).
    best_name = Path(best_cb.best_model_path).name if best_cb.best_model_path else ""
    best_path = str(ckpt_dir / best_name) if best_name and (ckpt_dir / best_name).exists() else str(last)
    state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    weights = module.backbone.state_dict()
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingDiverged(f"training diverged: weight {bad[0]!r} holds NaN or Inf (lr {train.lr}); lower --lr. Nothing was exported")
    save_tensors(run / "backbone.safetensors", weights, metadata={"dymo_version": dymo.__version__})
    metrics: dict[str, Any] = {
        "train_seconds": round(train_seconds, 1),
        "epochs_run": int(trainer.current_epoch),
        "best_val_acc": float(best_cb.best_model_score) if best_cb.best_model_score is not None else None,
        "train_samples": len(train_ds),
    }
    if evaluate_test and "test" in data.splits:
        metrics["test"] = subset_accuracy_summary(module.backbone.eval(), data["test"], data.modalities, train.eval_batch_size)
    write_json(run / "metrics.json", metrics)
    return run


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run folder's ``config.json``, checked like every manifest (format, version, the keys dymo
    reads; BundleError naming the file)."""
    run = Path(run_dir)
    cfg = read_manifest(
        run, "backbone-run", required={"specs": list, "class_names": list, "backbone": dict, "data": dict},
        what="backbone run (from `dymo train backbone`)",
    )
    if not isinstance(cfg["data"].get("name"), str):
        raise BundleError(f"{run / 'config.json'}: 'data' has no dataset 'name'")
    return cfg


def load_backbone(run_dir: str | os.PathLike, map_location: str = "cpu") -> FlexibleBackbone:
    """Rebuild the backbone of a run (or bundle) folder from config.json + backbone.safetensors."""
    run = Path(run_dir)
    cfg_path, w_path = run / "config.json", run / "backbone.safetensors"
    if not cfg_path.exists() or not w_path.exists():
        raise BundleError(f"{run}: not a trained backbone run (needs config.json and backbone.safetensors)")
    cfg = read_run_config(run)
    model = FlexibleBackbone(specs_from_list(cfg["specs"]), len(cfg["class_names"]), BackboneConfig.from_saved(cfg["backbone"]))
    state = load_weights(w_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BundleError(f"{w_path}: weights do not fit this backbone config/specs ({str(e).splitlines()[0]})") from None
    return model.to(map_location).eval()
