"""Configurations of the dualclip towers and the dual model.

Every field of transformers' `CLIPTextConfig`, `CLIPVisionConfig` and `CLIPConfig` keeps its name, default and
meaning here; the extra fields describe the variants that OpenAI and OpenCLIP checkpoints use. A `config.json`
written by transformers CLIP (`model_type` `clip`, `clip_text_model`, `clip_vision_model`) is read by translating it.
"""

import math

from transformers.configuration_utils import PreTrainedConfig

# Token ids of OpenAI's BPE vocabulary (fixed by the vocabulary file: 256 bytes x 2 + 48,894 merges + 2 specials).
OPENAI_VOCAB_SIZE = 49408
OPENAI_BOS_TOKEN_ID = 49406
OPENAI_EOS_TOKEN_ID = 49407
# Before transformers PR #24773, CLIP configs said `eos_token_id: 2` and pooled at the argmax of the ids.
LEGACY_EOS_TOKEN_ID = 2

TEXT_POOLING_TYPES = ("eos", "last", "argmax")
VISION_BACKBONES = ("vit", "resnet")
LOSS_TYPES = ("infonce", "sigmoid")
# transformers CLIP model types whose config.json we translate, mapped to the dualclip type that reads them.
CLIP_MODEL_TYPES = {"clip": "dualclip", "clip_text_model": "dualclip_text_model", "clip_vision_model": "dualclip_vision_model"}
# Keys transformers never reads back from a config.json; dropped when a stock config is translated.
_STOCK_ONLY_KEYS = ("text_config_dict", "vision_config_dict")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"`{field}` {message}")


def _require_positive_int(config, *fields: str) -> None:
    for field in fields:
        value = getattr(config, field)
        _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
                 f"must be a positive integer, got {value!r}")


def _require_choice(config, field: str, choices) -> None:
    value = getattr(config, field)
    _require(value in choices, field, f"must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _require_layer_scale(config) -> None:
    value = config.layer_scale_init_value
    _require(value is None or (isinstance(value, (int, float)) and value > 0), "layer_scale_init_value",
             f"must be None (no LayerScale) or a positive number, got {value!r}")


class _TranslatesClipConfigs:
    """Reads `config.json` files written for transformers CLIP by renaming their `model_type`."""

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        return _translate_clip_config_dict(config_dict), kwargs


def _translate_clip_config_dict(config_dict: dict) -> dict:
    model_type = config_dict.get("model_type")
    if model_type not in CLIP_MODEL_TYPES:
        return config_dict
    translated = {k: v for k, v in config_dict.items() if k not in _STOCK_ONLY_KEYS}
    translated["model_type"] = CLIP_MODEL_TYPES[model_type]
    for key in ("text_config", "vision_config"):
        if isinstance(translated.get(key), dict):
            translated[key] = _translate_clip_config_dict(translated[key])
    return translated


class DualClipTextConfig(_TranslatesClipConfigs, PreTrainedConfig):
    r"""
    Configuration of the dualclip text tower: a causal (by default) transformer pooled at its end-of-text token.

    The fields shared with `CLIPTextConfig` keep their names, defaults and meanings (OpenAI ViT-B/32 text tower).
    The extra fields describe OpenCLIP variants:

    Args:
        pooling (`str`, defaults to `"eos"`):
            Which position the pooled output comes from. `"eos"`: the first position holding `eos_token_id`
            (robust to added tokens with ids above EOS; a row without EOS pools its last position). `"last"`:
            the last position. `"argmax"`: the position of the largest id (OpenAI's original rule).
        causal_mask (`bool`, defaults to `True`):
            Whether attention is causal. OpenCLIP's `no_causal_mask` models set it to `False`.
        projection_bias (`bool`, defaults to `False`):
            Whether `text_projection` has a bias (OpenCLIP `proj_bias`).
        layer_scale_init_value (`float`, *optional*):
            Initial value of LayerScale on both residual branches of every layer (OpenCLIP `ls_init_value`).
            `None` means no LayerScale.

    A legacy `eos_token_id` of 2 (transformers configs before PR #24773, which pooled with argmax) is read as the
    tokenizer's real end-of-text id: 49407 for OpenAI's vocabulary, or `vocab_size - 1` for a smaller vocabulary.
    On ordinary inputs EOS is the largest id, so this pools where argmax did, and it stays right when added
    tokens (textual inversion) get ids above EOS.
    """

    model_type = "dualclip_text_model"
    base_config_key = "text_config"

    vocab_size: int = OPENAI_VOCAB_SIZE
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int | None = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float | None = 1e-5
    attention_dropout: int | float | None = 0.0
    initializer_range: float = 0.02
    initializer_factor: float | None = 1.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = OPENAI_BOS_TOKEN_ID
    eos_token_id: int | list[int] | None = OPENAI_EOS_TOKEN_ID

    pooling: str = "eos"
    causal_mask: bool = True
    projection_bias: bool = False
    layer_scale_init_value: int | float | None = None

    def __post_init__(self, **kwargs):
        if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
            self.eos_token_id = (
                OPENAI_EOS_TOKEN_ID if self.vocab_size >= OPENAI_VOCAB_SIZE else self.vocab_size - 1
            )
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        _require_positive_int(self, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                              "num_attention_heads", "max_position_embeddings")
        _require(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
                 f"({self.hidden_size}) must be a multiple of `num_attention_heads` ({self.num_attention_heads})")
        _require(self.projection_dim is None or (isinstance(self.projection_dim, int) and self.projection_dim > 0),
                 "projection_dim", f"must be None or a positive integer, got {self.projection_dim!r}")
        _require_choice(self, "pooling", TEXT_POOLING_TYPES)
        _require(isinstance(self.causal_mask, bool), "causal_mask", f"must be True or False, got {self.causal_mask!r}")
        _require_layer_scale(self)
        if self.pooling == "eos":
            _require(isinstance(self.eos_token_id, int) and 0 <= self.eos_token_id < self.vocab_size, "eos_token_id",
                     f"must be an id inside the vocabulary (0 to {self.vocab_size - 1}) when pooling='eos', "
                     f"got {self.eos_token_id!r}")


class DualClipVisionConfig(_TranslatesClipConfigs, PreTrainedConfig):
    r"""
    Configuration of the dualclip image tower: a ViT (as in `CLIPVisionConfig`) or OpenAI's modified ResNet.

    The fields shared with `CLIPVisionConfig` keep their names, defaults and meanings (OpenAI ViT-B/32 image
    tower). The extra fields:

    Args:
        backbone (`str`, defaults to `"vit"`):
            `"vit"` or `"resnet"` (OpenAI's ModifiedResNet: three-convolution stem, anti-aliased Bottlenecks,
            attention pooling). For `"resnet"`, `hidden_size` is the width of the attention pool (32 x
            `resnet_width`) and `num_attention_heads` its head count.
        pre_norm (`bool`, defaults to `True`):
            Whether the ViT applies `pre_layrnorm` to the embeddings (OpenCLIP `no_ln_pre` sets it to `False`).
        projection_bias (`bool`, defaults to `False`):
            Whether `visual_projection` has a bias. ResNet towers always have one (the attention pool's output
            projection), and require `True`.
        layer_scale_init_value (`float`, *optional*):
            Initial value of LayerScale in every ViT layer (OpenCLIP `ls_init_value`); `None` means none.
        resnet_layers (`list[int]`, defaults to `[3, 4, 6, 3]`):
            Bottleneck blocks in each of the four ResNet stages (RN50). Used when `backbone="resnet"`.
        resnet_width (`int`, defaults to 64):
            Width of the ResNet stem. Used when `backbone="resnet"`.
    """

    model_type = "dualclip_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: int | float | None = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    backbone: str = "vit"
    pre_norm: bool = True
    projection_bias: bool = False
    layer_scale_init_value: int | float | None = None
    resnet_layers: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    resnet_width: int = 64

    def __post_init__(self, **kwargs):
        self.resnet_layers = list(self.resnet_layers)
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        _require_choice(self, "backbone", VISION_BACKBONES)
        _require_positive_int(self, "hidden_size", "num_attention_heads", "num_channels", "image_size",
                              "projection_dim")
        _require(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
                 f"({self.hidden_size}) must be a multiple of `num_attention_heads` ({self.num_attention_heads})")
        _require_layer_scale(self)
        if self.backbone == "vit":
            _require_positive_int(self, "intermediate_size", "num_hidden_layers", "patch_size")
            _require(self.image_size % self.patch_size == 0, "image_size",
                     f"({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})")
        else:
            _require_positive_int(self, "resnet_width")
            _require(len(self.resnet_layers) == 4 and all(isinstance(n, int) and n > 0 for n in self.resnet_layers),
                     "resnet_layers", f"must be four positive block counts, got {self.resnet_layers!r}")
            _require(self.hidden_size == 32 * self.resnet_width, "hidden_size",
                     f"must be 32 x `resnet_width` ({32 * self.resnet_width}) for a ResNet tower, got {self.hidden_size}")
            _require(self.image_size % 32 == 0, "image_size",
                     f"must be a multiple of 32 for a ResNet tower, got {self.image_size}")
            _require(self.projection_bias, "projection_bias",
                     "must be True for a ResNet tower (its attention pool's output projection has a bias)")
            _require(self.layer_scale_init_value is None, "layer_scale_init_value",
                     "applies to ViT towers only; it must be None for a ResNet tower")


class DualClipConfig(_TranslatesClipConfigs, PreTrainedConfig):
    r"""
    Configuration of [`DualClipModel`]: a text tower, an image tower, and the contrastive head.

    Args:
        text_config (`dict` or `DualClipTextConfig`, *optional*): the text tower.
        vision_config (`dict` or `DualClipVisionConfig`, *optional*): the image tower.
        projection_dim (`int`, defaults to 512): size of the shared embedding space.
        logit_scale_init_value (`float`, defaults to 2.6592): initial log of the logit scale (ln(1/0.07)), as CLIP.
        logit_bias_init_value (`float`, *optional*): initial logit bias (SigLIP uses -10). `None`: no bias.
        loss_type (`str`, defaults to `"infonce"`): `"infonce"` (softmax contrastive) or `"sigmoid"` (SigLIP,
            needs `logit_bias_init_value`).
        loss_gather_features (`bool`, defaults to `True`): under `torch.distributed` with more than one process,
            score each process's rows against the features of every process (negatives from the global batch).
    """

    model_type = "dualclip"
    sub_configs_defaults = {"text_config": DualClipTextConfig, "vision_config": DualClipVisionConfig}

    text_config: dict | DualClipTextConfig | None = None
    vision_config: dict | DualClipVisionConfig | None = None
    projection_dim: int | None = 512
    logit_scale_init_value: float | int | None = 2.6592
    initializer_factor: float | None = 1.0

    logit_bias_init_value: int | float | None = None
    loss_type: str = "infonce"
    loss_gather_features: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        _require_choice(self, "loss_type", LOSS_TYPES)
        _require(self.loss_type != "sigmoid" or self.logit_bias_init_value is not None, "logit_bias_init_value",
                 "must be set when loss_type='sigmoid' (SigLIP initialises it to -10.0)")
        _require(self.logit_scale_init_value is not None and math.isfinite(self.logit_scale_init_value),
                 "logit_scale_init_value", f"must be a finite number, got {self.logit_scale_init_value!r}")
        _require_positive_int(self, "projection_dim")


__all__ = ["DualClipConfig", "DualClipTextConfig", "DualClipVisionConfig"]
