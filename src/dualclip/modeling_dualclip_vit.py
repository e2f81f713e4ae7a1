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
        stem (`str`, defaults to `"patch"`):
            The patch embedding. `"patch"`: one `patch_size` x `patch_size` convolution without bias (CLIP).
            `"mobileclip"`: MobileCLIP's convolutional stem (timm `vit_base_mci_224`, `patch_size` 16): a 4x4
            stride-4 convolution, then a 2x2 stride-2 one, each with BatchNorm and GELU, `hidden_size / 4` wide, then
            a 2x2 stride-2 convolution with bias to `hidden_size`.
        class_position_embedding (`bool`, defaults to `True`):
            Whether the class token has a position embedding (CLIP). `False`: only the patches have one, added before
            the class token is prepended (timm's `no_embed_class`, MobileCLIP's ViTs).
        projection_bias (`bool`, defaults to `False`):
            Whether `visual_projection` has a bias.
        layer_scale_init_value (`float`, *optional*):
            Initial value of LayerScale in every layer (OpenCLIP `ls_init_value`); `None` means none.
        pooling (`str`, defaults to `"class_token"`):
            What `pooler_output` is. `"class_token"`: `post_layernorm` of the class token (CLIP).
            `"patch_mean"`: `post_layernorm` of the mean of the patch tokens (OpenCLIP `pool_type="avg"` with
            `final_ln_after_pool`: CLIPA). `"normed_patch_mean"`: the mean of the patch tokens after
            `post_layernorm` (OpenCLIP `pool_type="avg"` alone). `"attention_pool"`: CoCa's attentional pooler
            (OpenCLIP `attentional_pool`): one learned query, `projection_dim` wide, attends over every token
            (`attention_pool_heads` heads), then `post_layernorm` (also `projection_dim` wide). CoCa's other 255
            queries feed its captioning decoder only and are not part of this tower.
        attention_pool_heads (`int`, defaults to 8):
            Heads of the attentional pooler (OpenCLIP `attn_pooler_heads`); read with `pooling="attention_pool"`.
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
    stem: Literal["patch", "mobileclip"] = "patch"
    class_position_embedding: bool = True
    projection_bias: bool = False
    layer_scale_init_value: int | float | None = None
    pooling: Literal["class_token", "patch_mean", "normed_patch_mean", "attention_pool"] = "class_token"
    attention_pool_heads: int = 8

    @property
    def pooler_output_size(self) -> int:
        """Width of `pooler_output`: `projection_dim` after the attentional pooler, else `hidden_size`."""
        return self.projection_dim if self.pooling == "attention_pool" else self.hidden_size

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})")
        if self.stem == "mobileclip" and (self.patch_size != MOBILECLIP_STEM_STRIDE or self.hidden_size % 4):
            raise ValueError(
                f"`stem='mobileclip'` needs `patch_size` {MOBILECLIP_STEM_STRIDE} (got {self.patch_size}) and a "
                f"`hidden_size` that is a multiple of 4 (got {self.hidden_size})"
            )
        if self.layer_scale_init_value is not None and self.layer_scale_init_value <= 0:
            raise ValueError(f"`layer_scale_init_value` must be None or positive, got {self.layer_scale_init_value}")
        if self.pooling == "attention_pool" and self.projection_dim % self.attention_pool_heads:
            raise ValueError(f"`projection_dim` ({self.projection_dim}) must be a multiple of `attention_pool_heads` "
                             f"({self.attention_pool_heads})")


class DualClipQueryPool(nn.Module):
    # Not named "...Attention...": transformers reads such a class in a module as an attention layer that must use
    # its attention interface, and would refuse `set_attn_implementation` for the whole tower.
    """CoCa's attentional pooler with its contrastive query only: `LayerNorm`ed learned query attends over the
    `LayerNorm`ed tokens (key/value width `hidden_size`, query width `projection_dim`)."""

    def __init__(self, config: DualClipVisionConfig):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, config.projection_dim))
        self.attention = nn.MultiheadAttention(
            config.projection_dim, config.attention_pool_heads, kdim=config.hidden_size, vdim=config.hidden_size,
            batch_first=True,
        )
        self.layernorm_query = nn.LayerNorm(config.projection_dim, eps=config.layer_norm_eps)
        self.layernorm_tokens = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def init_dualclip_weights(self, factor: float) -> None:
        init.normal_(self.query, std=factor * 0.02)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = self.layernorm_tokens(hidden_states)
        query = self.layernorm_query(self.query).expand(tokens.shape[0], -1, -1)
        return self.attention(query, tokens, tokens, need_weights=False)[0][:, 0]


# MobileCLIP's convolutional stem reduces the image 4 x 2 x 2 times, as a 16-pixel patch embedding does.
MOBILECLIP_STEM_STRIDE = 16


class DualClipMobileClipStem(nn.Module):
    """MobileCLIP's convolutional patch embedding (timm `vit_base_mci_224`'s `ConvStem`): `conv1` (4x4, stride 4) and
    `conv2` (2x2, stride 2), each followed by BatchNorm and GELU, `hidden_size / 4` wide; `conv3` (2x2, stride 2, with
    bias) to `hidden_size`."""

    def __init__(self, config: DualClipVisionConfig):
        super().__init__()
        width = config.hidden_size // 4
        self.conv1 = nn.Conv2d(config.num_channels, width, kernel_size=4, stride=4, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=2, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, config.hidden_size, kernel_size=2, stride=2)

    def forward(self, pixel_values):
        hidden_states = F.gelu(self.bn1(self.conv1(pixel_values)))
        hidden_states = F.gelu(self.bn2(self.conv2(hidden_states)))
        return self.conv3(hidden_states)


class DualClipVisionEmbeddings(nn.Module):
    """Class token, non-overlapping patch embedding (or MobileCLIP's stem), learned position embedding
    (interpolable), for the class token too unless the config says `class_position_embedding=False`."""

    def __init__(self, config: DualClipVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(self.embed_dim))
        if config.stem == "mobileclip":
            self.patch_embedding = DualClipMobileClipStem(config)
        else:
            self.patch_embedding = nn.Conv2d(
                config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=False
            )
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_prefix_positions = int(config.class_position_embedding)
        self.num_positions = self.num_patches + self.num_prefix_positions
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)

    def init_dualclip_weights(self, factor: float) -> None:
        init.normal_(self.class_embedding, std=self.embed_dim**-0.5 * factor)
        if isinstance(self.patch_embedding, nn.Conv2d):
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
        prefix = self.num_prefix_positions
        patch_pos = weight[prefix:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_height, grid_width), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, -1)
        return torch.cat([weight[:prefix].unsqueeze(0), patch_pos], dim=1)

    def forward(self, pixel_values, interpolate_pos_encoding=False):
        batch, _, height, width = pixel_values.shape
        patches = self.patch_embedding(pixel_values.to(self.class_embedding.dtype)).flatten(2).transpose(1, 2)
        class_token = self.class_embedding.expand(batch, 1, -1)
        if interpolate_pos_encoding:
            positions = self.interpolate_pos_encoding(height, width)
        else:
            positions = self._position_weight(patches.device)
        if not self.num_prefix_positions:
            return torch.cat([class_token, patches + positions], dim=1)
        return torch.cat([class_token, patches], dim=1) + positions


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
        if config.pooling == "attention_pool":
            self.attention_pool = DualClipQueryPool(config)
        self.post_layernorm = nn.LayerNorm(config.pooler_output_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values, interpolate_pos_encoding=False, pooled_only=False, **kwargs: Unpack[TransformersKwargs]
    ):
        """`pooled_only=True` with class-token pooling: the last layer computes only the class token, the one
        position pooling reads, and `last_hidden_state` is that position alone (patch means and the attentional
        pooler read every position)."""
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
        if self.config.pooling == "attention_pool":
            return self.post_layernorm(self.attention_pool(last_hidden_state))
        return self.post_layernorm(last_hidden_state[:, 1:]).mean(dim=1)



# As transformers' `CLIPVisionModel`, the tower reads checkpoints that still carry its `vision_model.` prefix.
register_checkpoint_conversion_mapping(
    "DualClipVisionTransformer", [PrefixChange(prefix_to_remove="vision_model")], overwrite=True
)


__all__ = ["DualClipVisionConfig", "DualClipVisionTransformer"]
