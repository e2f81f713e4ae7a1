"""dualclip: CLIP-family dual image/text towers for Hugging Face transformers.

Importing the package registers every dualclip class with the transformers Auto classes.
"""

from .configuration_dualclip import DualClipConfig
from .image_processing_dualclip import DualClipImageProcessor
from .modeling_dualclip import (
    DualClipModel,
    DualClipPreTrainedModel,
    DualClipTextModel,
    DualClipTextModelWithProjection,
    DualClipVisionModel,
    DualClipVisionModelWithProjection,
)
from .modeling_dualclip_resnet import DualClipResNetConfig
from .modeling_dualclip_text import DualClipTextConfig
from .modeling_dualclip_vit import DualClipVisionConfig
from .processing_dualclip import DualClipProcessor
from .registration import register_auto_classes
from .tiny_model import TINY_MODEL_PATH
from .tokenization_dualclip import DualClipTokenizer
from .training import DualClipDataCollator, freeze_tower

__version__ = "0.1.0"

register_auto_classes()

__all__ = [
    "DualClipConfig",
    "DualClipTextConfig",
    "DualClipVisionConfig",
    "DualClipResNetConfig",
    "DualClipModel",
    "DualClipPreTrainedModel",
    "DualClipTextModel",
    "DualClipTextModelWithProjection",
    "DualClipVisionModel",
    "DualClipVisionModelWithProjection",
    "DualClipImageProcessor",
    "DualClipProcessor",
    "DualClipTokenizer",
    "DualClipDataCollator",
    "freeze_tower",
    "TINY_MODEL_PATH",
]
