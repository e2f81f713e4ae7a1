"""What every dualclip config shares: reading transformers CLIP `config.json` files, and finding a tower's family.

A tower config (text or image side) belongs to one tower family; `towers.py` maps each family's `model_type` to
its config and module. Loading a tower config through the public class of its side (`DualClipTextConfig`,
`DualClipVisionConfig`) returns the config of the family the saved `model_type` names.
"""

# Token ids of OpenAI's BPE vocabulary (fixed by the vocabulary file: 256 bytes x 2 + 48,894 merges + 2 specials).
OPENAI_VOCAB_SIZE = 49408
OPENAI_BOS_TOKEN_ID = 49406
OPENAI_EOS_TOKEN_ID = 49407

# transformers CLIP model types whose config.json we translate, mapped to the dualclip type that reads them.
CLIP_MODEL_TYPES = {"clip": "dualclip", "clip_text_model": "dualclip_text_model", "clip_vision_model": "dualclip_vision_model"}
# Keys transformers never reads back from a config.json; dropped when a stock config is translated.
_STOCK_ONLY_KEYS = ("text_config_dict", "vision_config_dict")


# transformers SigLIP model types read the same way (the SigLIP tower family holds transformers' SigLIP towers).
SIGLIP_MODEL_TYPES = {
    "siglip": "dualclip", "siglip_text_model": "dualclip_siglip_text_model",
    "siglip_vision_model": "dualclip_siglip_vision_model",
}
# `SiglipModel` always has a logit bias and never caps its logit scale; its towers end in their own heads.
_SIGLIP_MODEL_DEFAULTS = {"logit_bias_init_value": -10.0, "logit_scale_max": None, "loss_type": "sigmoid"}


def translate_clip_config_dict(config_dict: dict) -> dict:
    """A transformers CLIP or SigLIP config dict with dualclip's `model_type`s (sub-configs included); others
    unchanged."""
    model_type = config_dict.get("model_type")
    types = CLIP_MODEL_TYPES if model_type in CLIP_MODEL_TYPES else SIGLIP_MODEL_TYPES
    if model_type not in types:
        return config_dict
    translated = {k: v for k, v in config_dict.items() if k not in _STOCK_ONLY_KEYS}
    translated["model_type"] = types[model_type]
    for key in ("text_config", "vision_config"):
        if isinstance(translated.get(key), dict):
            translated[key] = translate_clip_config_dict({"model_type": f"{model_type}_{key[:-7]}_model",
                                                          **translated[key]})
    if model_type == "siglip":
        text = translated.get("text_config") or {}
        projection_dim = text.get("projection_size") or text.get("hidden_size", 768)
        translated = {**_SIGLIP_MODEL_DEFAULTS, "projection_dim": projection_dim, **translated}
    return translated


class TranslatesClipConfigs:
    """Reads `config.json` files written for transformers CLIP by renaming their `model_type`."""

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        return translate_clip_config_dict(config_dict), kwargs


class TowerConfig(TranslatesClipConfigs):
    """Base of the tower configs. `from_dict` on a side's public config class builds the family's own config."""

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        from .towers import tower_config_class

        family = tower_config_class(cls.base_config_key, config_dict)
        if family is not cls:
            return family.from_dict(family.translate_legacy_dict(config_dict), **kwargs)
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def describes_legacy_dict(cls, config_dict: dict) -> bool:
        """Whether a dict saved by an earlier dualclip version, without this family's `model_type`, is this family."""
        return False

    @classmethod
    def translate_legacy_dict(cls, config_dict: dict) -> dict:
        """The dict a config saved by an earlier dualclip version becomes; families with older layouts override it."""
        return config_dict
