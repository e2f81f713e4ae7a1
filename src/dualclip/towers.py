"""The tower registry: every tower family dualclip builds, found by the `model_type` of its config.

A family is one flat module `modeling_dualclip_<family>.py` holding its config class and its tower, a
`DualClipPreTrainedModel` of its own (as transformers' CLIP towers are), which declares what the model classes
need from it:

- `_no_split_modules`: module class names `device_map` must keep on one device;
- `_can_record_outputs`: the modules transformers' output capture records (`hidden_states`, `attentions`);
- `get_input_embeddings()`;
- `forward(..., pooled_only=False, **kwargs)` returning a `BaseModelOutputWithPooling`; with `pooled_only=True`
  the tower may compute only what `pooler_output` reads;
- `init_dualclip_weights(factor)` on any of its modules that needs more than transformers' default init;
- on a text tower, `truncate_for_pooling(input_ids, attention_mask, position_ids)` (what the pooled fast path may cut);
- on its config, `pooled_output_projected = True` when the tower ends in its own head into the joint space (SigLIP):
  the model classes then add an identity, not a `text_projection`/`visual_projection` Linear, and the config's
  `projection_dim` gives that width, which `DualClipConfig.projection_dim` must equal.
"""

from .modeling_dualclip_convnext import DualClipConvNext, DualClipConvNextVisionConfig
from .modeling_dualclip_eva import DualClipEvaVisionConfig, DualClipEvaVisionTransformer
from .modeling_dualclip_fastvit import DualClipFastVit, DualClipFastVitVisionConfig
from .modeling_dualclip_hf_text import DualClipHFTextConfig, DualClipHFTextTransformer
from .modeling_dualclip_resnet import DualClipResNet, DualClipResNetConfig
from .modeling_dualclip_siglip import (
    DualClipSiglipTextConfig,
    DualClipSiglipTextTransformer,
    DualClipSiglipVisionConfig,
    DualClipSiglipVisionTransformer,
)
from .modeling_dualclip_text import DualClipTextConfig, DualClipTextTransformer
from .modeling_dualclip_vit import DualClipVisionConfig, DualClipVisionTransformer
from .modeling_dualclip_vitamin import DualClipVitaminVisionConfig, DualClipVitaminVisionTransformer

# side (the config key in `DualClipConfig`) -> {model_type: (config class, tower class)}; the first is the default.
TOWERS = {
    "text_config": {
        DualClipTextConfig.model_type: (DualClipTextConfig, DualClipTextTransformer),
        DualClipSiglipTextConfig.model_type: (DualClipSiglipTextConfig, DualClipSiglipTextTransformer),
        DualClipHFTextConfig.model_type: (DualClipHFTextConfig, DualClipHFTextTransformer),
    },
    "vision_config": {
        DualClipVisionConfig.model_type: (DualClipVisionConfig, DualClipVisionTransformer),
        DualClipResNetConfig.model_type: (DualClipResNetConfig, DualClipResNet),
        DualClipSiglipVisionConfig.model_type: (DualClipSiglipVisionConfig, DualClipSiglipVisionTransformer),
        DualClipEvaVisionConfig.model_type: (DualClipEvaVisionConfig, DualClipEvaVisionTransformer),
        DualClipFastVitVisionConfig.model_type: (DualClipFastVitVisionConfig, DualClipFastVit),
        DualClipVitaminVisionConfig.model_type: (DualClipVitaminVisionConfig, DualClipVitaminVisionTransformer),
        DualClipConvNextVisionConfig.model_type: (DualClipConvNextVisionConfig, DualClipConvNext),
    },
}


def tower_config_class(side: str, config_dict: dict):
    """The config class of the family `config_dict` describes (its `model_type`, or a family's legacy marker)."""
    families = TOWERS[side]
    for config_class, _ in families.values():
        if config_class.describes_legacy_dict(config_dict):
            return config_class
    model_type = config_dict.get("model_type") or next(iter(families))
    if model_type not in families:
        raise ValueError(
            f"{side}: model_type {model_type!r} is not a dualclip tower; known: {', '.join(map(repr, families))}"
        )
    return families[model_type][0]


def tower_config(side: str, value):
    """A tower config from a config instance, a dict (any family) or `None` (the side's default family)."""
    if value is None:
        value = {}
    if isinstance(value, dict):
        config_class = tower_config_class(side, value)
        return config_class(**config_class.translate_legacy_dict(value))
    for config_class, _ in TOWERS[side].values():
        if isinstance(value, config_class):
            return value
    raise TypeError(f"{side} must be a dict, a dualclip tower config or None, got {type(value).__name__}")


def build_tower(config):
    """The tower module for a tower config."""
    for families in TOWERS.values():
        if config.model_type in families:
            return families[config.model_type][1](config)
    raise ValueError(f"no dualclip tower family has model_type {config.model_type!r}")

