"""Train a tiny backbone on synthetic data (used by the DDP and resume tests as a subprocess).

usage: train_tiny.py RUN_DIR --devices N --batch-size B [--strategy ddp] [--epochs E]
       [--resume] [--kill-at-epoch E]   (SIGKILL itself at the first batch of epoch E)
"""

import argparse
import os
import signal

import lightning as L

from dymo.data.synthetic import make_synthetic_splits
from dymo.models import BackboneConfig
from dymo.training import TrainConfig, train_backbone


class KillAt(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--kill-at-epoch", type=int, default=None)
    a = p.parse_args()
    data = make_synthetic_splits(128, 32, 32, kinds=("image", "vector", "image"))
    cfg = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]})
    tcfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, proto_start_epoch=1, patience=100, seed=3, optimizer=a.optimizer, lr=0.05 if a.optimizer == 'sgd' else 1e-3)
    if a.kill_at_epoch is not None:
        import dymo.training.run as run_mod

        orig = L.Trainer.__init__

        def patched(self, *args, **kw):
            kw["callbacks"] = [*kw.get("callbacks", []), KillAt(a.kill_at_epoch)]
            orig(self, *args, **kw)

        run_mod.L.Trainer.__init__ = patched
    train_backbone(data, a.run, cfg, tcfg, accelerator="cpu", devices=a.devices, strategy=a.strategy, resume=a.resume, progress=False, evaluate_test=False)


if __name__ == "__main__":
    main()
