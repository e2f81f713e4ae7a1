"""The CLIP ViT image tower family: class token, patch embedding, learned (interpolable) position embedding,
optional pre-LayerNorm, pre-norm transformer, class token through `post_layernorm`.

Module names follow transformers' `CLIPVisionModel` (`embeddings.patch_embedding`, `pre_layrnorm`,
`encoder.layers.N`, `post_layernorm`), so CLIP vision checkpoints load unchanged.
"""

import math
from typing import Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_dualclip_base import TowerConfig
from .modeling_dualclip_base import DualClipPreTrainedModel
from .modeling_dualclip_layers import (
    DualClipAttention,
    DualClipEncoder,
    DualClipEncoderLayer,
    PooledQuery,
    check_pixel_values,
)


@strict
class DualClipVisionConfig(TowerConfig, PreTrainedConfig):
    r"""
    Configuration of the dualclip ViT image tower, and the public config class of the image side: loading a saved
    image-tower config through it returns the config of the family it names (e.g. `DualClipResNetConfig`).

    Every field of `CLIPVisionConfig` keeps its name, default and meaning (OpenAI ViT-B/32 image tower). The extra
    fields:

    Args:
        pre_norm (`bool`, defaults to `True`):
            Whether the ViT applies `pre_layrnorm` to the embeddings (OpenCLIP `no_ln_pre` sets it to `False`).
        projection_bias (`bool`, defaults to `False`):
            Whether `visual_projection` has a bias.
        layer_scale_init_value (`float`, *optional*):
            Initial value of LayerScale in every layer (OpenCLIP `ls_init_value`); `None` means none.
        pooling (`str`, defaults to `"class_token"`):
            What `pooler_output` is. `"class_token"`: `post_layernorm` of the class token (CLIP).
            `"patch_mean"`: `post_layernorm` of the mean of the patch tokens (OpenCLIP `pool_type="avg"` with
            `final_ln_after_pool`: CLIPA). `"normed_patch_mean"`: the mean of the patch tokens after
            `post_layernorm` (OpenCLIP `pool_type="avg"` alone).
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

    pre_norm: bool = True
    projection_bias: bool = False
    layer_scale_init_value: int | float | None = None
    pooling: Literal["class_token", "patch_mean", "normed_patch_mean"] = "class_token"

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})")
        if self.layer_scale_init_value is not None and self.layer_scale_init_value <= 0:
            raise ValueError(f"`layer_scale_init_value` must be None or positive, got {self.layer_scale_init_value}")


class DualClipVisionEmbeddings(nn.Module):
    """Class token, non-overlapping patch embedding, learned position embedding (interpolable)."""

    def __init__(self, config: DualClipVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=False
        )
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)

    def init_dualclip_weights(self, factor: float) -> None:
        init.normal_(self.class_embedding, std=self.embed_dim**-0.5 * factor)
        init.normal_(self.patch_embedding.weight, std=self.config.initializer_range * factor)
        init.normal_(self.position_embedding.weight, std=self.config.initializer_range * factor)

    def _position_weight(self, device) -> torch.Tensor:
        # Through the module, not `.weight`: under `device_map` offloading, accelerate brings a weight to the device
        # only when its module is called.
        return self.position_embedding(torch.arange(self.num_positions, device=device))

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a `height` x `width` image: the patch grid resized bicubically (as CLIP/DINO)."""
        weight = self._position_weight(self.class_embedding.device)
        grid_height, grid_width = height // self.patch_size, width // self.patch_size
        if grid_height * grid_width == self.num_patches and grid_height == grid_width:
            return weight.unsqueeze(0)
        side = int(math.isqrt(self.num_patches))
        patch_pos = weight[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_height, grid_width), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, -1)
        return torch.cat([weight[:1].unsqueeze(0), patch_pos], dim=1)

    def forward(self, pixel_values, interpolate_pos_encoding=False):
        batch, _, height, width = pixel_values.shape
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        class_token = self.class_embedding.expand(batch, 1, -1)
        embeddings = torch.cat([class_token, patches], dim=1)
        if interpolate_pos_encoding:
            return embeddings + self.interpolate_pos_encoding(height, width)
        return embeddings + self._position_weight(embeddings.device)


class DualClipVisionTransformer(DualClipPreTrainedModel):
    """ViT image tower: embeddings, optional pre-LayerNorm, encoder, class token through `post_layernorm`."""

    config: DualClipVisionConfig
    _no_split_modules = ["DualClipVisionEmbeddings", "DualClipEncoderLayer"]
    _can_record_outputs = {"hidden_states": DualClipEncoderLayer, "attentions": DualClipAttention}

    def __init__(self, config: DualClipVisionConfig):
        super().__init__(config)
        self.embeddings = DualClipVisionEmbeddings(config)
        # `pre_layrnorm` keeps transformers CLIP's historical spelling so its checkpoints load unchanged.
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_norm else nn.Identity()
        self.encoder = DualClipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values, interpolate_pos_encoding=False, pooled_only=False, **kwargs: Unpack[TransformersKwargs]
    ):
        """`pooled_only=True` with class-token pooling: the last layer computes only the class token, the one
        position pooling reads, and `last_hidden_state` is that position alone (patch means read every position)."""
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        pooled_query = None
        if pooled_only and self.config.pooling == "class_token":
            class_token = torch.zeros(hidden_states.shape[0], dtype=torch.long, device=hidden_states.device)
            pooled_query = PooledQuery(class_token)
        last_hidden_state = self.encoder(hidden_states, pooled_query=pooled_query, **kwargs).last_hidden_state
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=self.pool(last_hidden_state))

    def pool(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """`pooler_output` from the encoder's output (see `DualClipVisionConfig.pooling`)."""
        if self.config.pooling == "class_token":
            return self.post_layernorm(last_hidden_state[:, 0])
        if self.config.pooling == "patch_mean":
            return self.post_layernorm(last_hidden_state[:, 1:].mean(dim=1))
        return self.post_layernorm(last_hidden_state[:, 1:]).mean(dim=1)



# As transformers' `CLIPVisionModel`, the tower reads checkpoints that still carry its `vision_model.` prefix.
register_checkpoint_conversion_mapping(
    "DualClipVisionTransformer", [PrefixChange(prefix_to_remove="vision_model")], overwrite=True
)


__all__ = ["DualClipVisionConfig", "DualClipVisionTransformer"]
