"""Training the flexible backbone with Lightning (devices, DDP, precision, resume come from it)."""

from dymo.training.losses import prototype_logits, prototype_loss
from dymo.training.run import TrainConfig, load_backbone, train_backbone

__all__ = ["TrainConfig", "load_backbone", "prototype_logits", "prototype_loss", "train_backbone"]
