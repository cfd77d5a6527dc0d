"""Models: modality encoders (a registry by kind) and the flexible fusion backbone."""

from dymo.models.backbone import BackboneConfig, FlexibleBackbone, FusionOutput
from dymo.models.encoders import build_encoder, register_encoder

__all__ = ["BackboneConfig", "FlexibleBackbone", "FusionOutput", "build_encoder", "register_encoder"]
