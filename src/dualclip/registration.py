"""Registration of the dualclip classes with the transformers Auto classes and for `trust_remote_code` saving."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)

from .configuration_dualclip import DualClipConfig
from .image_processing_dualclip import DualClipImageProcessor
from .modeling_dualclip import (
    DualClipModel,
    DualClipTextModel,
    DualClipTextModelWithProjection,
    DualClipVisionModel,
    DualClipVisionModelWithProjection,
)
from .modeling_dualclip_text import DualClipTextConfig
from .processing_dualclip import DualClipProcessor
from .tokenization_dualclip import DualClipTokenizer
from .towers import TOWERS

# The class `AutoModel` builds for each side's tower configs; the projection towers are reached through `auto_map`.
_TOWER_MODELS = {"text_config": DualClipTextModel, "vision_config": DualClipVisionModel}


def register_auto_classes() -> None:
    """Registers configs and models with the Auto classes (idempotent) and marks them for `auto_map` saving.

    `register_for_auto_class` makes `save_pretrained` copy the code files next to the weights and write
    `auto_map`, so the folder loads with `trust_remote_code=True` where dualclip is not installed.
    """
    AutoConfig.register(DualClipConfig.model_type, DualClipConfig, exist_ok=True)
    DualClipConfig.register_for_auto_class()
    AutoModel.register(DualClipConfig, DualClipModel, exist_ok=True)
    for side, families in TOWERS.items():
        for config_class, _ in families.values():
            AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
            config_class.register_for_auto_class()
            # One tower model class serves every family of its side; `AutoModel.register` would insist that the
            # class's own `config_class` is the family's, so the mapping is filled directly.
            AutoModel._model_mapping.register(config_class, _TOWER_MODELS[side], exist_ok=True)
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
