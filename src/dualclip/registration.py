"""Registration of the dualclip classes with the transformers Auto classes and for `trust_remote_code` saving."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)

from .configuration_dualclip import DualClipConfig, DualClipTextConfig, DualClipVisionConfig
from .image_processing_dualclip import DualClipImageProcessor
from .modeling_dualclip import (
    DualClipModel,
    DualClipTextModel,
    DualClipTextModelWithProjection,
    DualClipVisionModel,
    DualClipVisionModelWithProjection,
)
from .processing_dualclip import DualClipProcessor
from .tokenization_dualclip import DualClipTokenizer

_CONFIGS = (DualClipConfig, DualClipTextConfig, DualClipVisionConfig)
# The class `AutoModel` builds for each config; the projection towers are reached through `auto_map` of their own.
_AUTO_MODELS = {DualClipConfig: DualClipModel, DualClipTextConfig: DualClipTextModel, DualClipVisionConfig: DualClipVisionModel}


def register_auto_classes() -> None:
    """Registers configs and models with the Auto classes (idempotent) and marks them for `auto_map` saving.

    `register_for_auto_class` makes `save_pretrained` copy the code files next to the weights and write
    `auto_map`, so the folder loads with `trust_remote_code=True` where dualclip is not installed.
    """
    for config_class in _CONFIGS:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
    for config_class, model_class in _AUTO_MODELS.items():
        AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(DualClipConfig, DualClipModel, exist_ok=True)
    DualClipModel.register_for_auto_class("AutoModel")
    DualClipTextModel.register_for_auto_class("AutoModel")
    DualClipVisionModel.register_for_auto_class("AutoModel")
    DualClipTextModelWithProjection.register_for_auto_class("AutoModel")
    DualClipVisionModelWithProjection.register_for_auto_class("AutoModel")

    # One class under both backend names: with torchvision installed, AutoImageProcessor asks for "torchvision"
    # first and would otherwise warn that it falls back to PIL.
    AutoImageProcessor.register(
        DualClipConfig,
        image_processor_classes={"pil": DualClipImageProcessor, "torchvision": DualClipImageProcessor},
        exist_ok=True,
    )
    for config_class in (DualClipConfig, DualClipTextConfig):
        AutoTokenizer.register(config_class, fast_tokenizer_class=DualClipTokenizer, exist_ok=True)
    DualClipTokenizer.register_for_auto_class("AutoTokenizer")
    AutoProcessor.register(DualClipConfig, DualClipProcessor, exist_ok=True)
    DualClipImageProcessor.register_for_auto_class("AutoImageProcessor")
    DualClipProcessor.register_for_auto_class("AutoProcessor")
