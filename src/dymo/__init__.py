"""dymo: inference-time dynamic modality selection for incomplete multimodal data."""

__version__ = "0.1.0"

from dymo.data.batch import MultimodalBatch  # noqa: E402
from dymo.data.specs import ModalitySpec  # noqa: E402

__all__ = ["MultimodalBatch", "ModalitySpec", "__version__"]
