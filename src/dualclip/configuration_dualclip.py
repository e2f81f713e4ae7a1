"""Configuration of the dual model: a text tower config, an image tower config (any registered family, see
`towers.py`), and the contrastive head.

Every field of transformers' `CLIPConfig` keeps its name, default and meaning; a `config.json` written by
transformers CLIP (`model_type` `clip`, `clip_text_model`, `clip_vision_model`) is read by translating it.
"""

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from .configuration_dualclip_base import TranslatesClipConfigs
from .towers import tower_config

# OpenCLIP (and OpenAI) clamp the logit scale to ln(100) after every optimizer step while training CLIP.
CLIP_LOGIT_SCALE_MAX = math.log(100.0)


@strict
class DualClipConfig(TranslatesClipConfigs, PreTrainedConfig):
    r"""
    Configuration of [`DualClipModel`]: a text tower, an image tower, and the contrastive head.

    Args:
        text_config (`dict` or a text tower config, *optional*): the text tower (default: `DualClipTextConfig`).
        vision_config (`dict` or an image tower config, *optional*): the image tower; a dict's `model_type` names its
            family (default: `DualClipVisionConfig`, a ViT).
        projection_dim (`int`, defaults to 512): size of the shared embedding space.
        logit_scale_init_value (`float`, defaults to 2.6592): initial log of the logit scale (ln(1/0.07)), as CLIP.
        logit_bias_init_value (`float`, *optional*): initial logit bias (SigLIP uses -10). `None`: no bias.
        logit_scale_max (`float`, *optional*, defaults to ln(100)): training-time cap on the log logit scale, applied
            to the parameter after each optimizer step by `dualclip.training.ClampLogitScaleCallback` (OpenCLIP's
            CLIP recipe). `None`: no cap (SigLIP). Logits are never clamped in `forward`.
        loss_type (`str`, defaults to `"infonce"`): `"infonce"` (softmax contrastive) or `"sigmoid"` (SigLIP,
            needs `logit_bias_init_value`).
        loss_gather_features (`bool`, defaults to `True`): under `torch.distributed` with more than one process,
            score each process's rows against the features of every process (negatives from the global batch).
    """

    model_type = "dualclip"
    # Resolution of the tower configs is ours (any registered family); transformers still learns the sub-config
    # keys from here, e.g. to set the attention implementation on both towers.
    sub_configs_defaults = {}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    projection_dim: int | None = 512
    logit_scale_init_value: float | int | None = 2.6592
    initializer_factor: float | None = 1.0

    logit_bias_init_value: int | float | None = None
    logit_scale_max: int | float | None = CLIP_LOGIT_SCALE_MAX
    loss_type: Literal["infonce", "sigmoid"] = "infonce"
    loss_gather_features: bool = True

    def __post_init__(self, **kwargs):
        self.text_config = tower_config("text_config", self.text_config)
        self.vision_config = tower_config("vision_config", self.vision_config)
        super().__post_init__(**kwargs)

    @property
    def sub_configs(self) -> dict:
        return {"text_config": type(self.text_config), "vision_config": type(self.vision_config)}

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        if self.loss_type == "sigmoid" and self.logit_bias_init_value is None:
            raise ValueError("`logit_bias_init_value` must be set when loss_type='sigmoid' (SigLIP initialises it to -10.0)")
        if self.logit_scale_init_value is None or not math.isfinite(self.logit_scale_init_value):
            raise ValueError(f"`logit_scale_init_value` must be a finite number, got {self.logit_scale_init_value!r}")
        for side in ("text_config", "vision_config"):
            tower = getattr(self, side)
            # A family whose tower ends in its own head writes into the joint space itself: no projection to resize.
            if getattr(tower, "pooled_output_projected", False) and tower.projection_dim != self.projection_dim:
                raise ValueError(
                    f"`projection_dim` ({self.projection_dim}) must equal the width of the {side} tower's pooled "
                    f"output ({tower.projection_dim}): that tower projects into the joint space itself"
                )


__all__ = ["DualClipConfig"]
