"""medlens.models: one factory over smp (segmentation) and timm (classification); pretrained weights."""

from medlens.models.factory import SEG_ARCHITECTURES, create_model, list_encoders, list_models
from medlens.models.parts import (
    backbone_parameters,
    freeze_backbone,
    get_encoder,
    gradcam_target_layer,
    gradcam_target_layer_name,
    head_parameters,
    model_summary,
)
from medlens.models.pretrained import find_offline_mobilenet_v2, load_pretrained

__all__ = [
    "SEG_ARCHITECTURES",
    "backbone_parameters",
    "create_model",
    "find_offline_mobilenet_v2",
    "freeze_backbone",
    "get_encoder",
    "gradcam_target_layer",
    "gradcam_target_layer_name",
    "head_parameters",
    "list_encoders",
    "list_models",
    "load_pretrained",
    "model_summary",
]
