"""Data layer: modality specs, the batch contract, datasets and missing-modality scenarios."""

from dymo.data.batch import MultimodalBatch
from dymo.data.specs import ModalitySpec

__all__ = ["ModalitySpec", "MultimodalBatch"]
