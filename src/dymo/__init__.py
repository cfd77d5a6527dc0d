"""dymo: inference-time dynamic modality selection for incomplete multimodal data."""

__version__ = "0.1.0"

from dymo.data.batch import MultimodalBatch  # noqa: E402
from dymo.data.specs import ModalitySpec  # noqa: E402

__all__ = ["DyMoClassifier", "MultimodalBatch", "ModalitySpec", "__version__"]


def __getattr__(name: str):  # noqa: ANN202 - lazy: `import dymo` stays light
    if name == "DyMoClassifier":
        from dymo.inference.classifier import DyMoClassifier

        return DyMoClassifier
    raise AttributeError(f"module 'dymo' has no attribute {name!r}")
