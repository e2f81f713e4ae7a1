"""The ViTamin image tower family: timm's hybrid `vitamin_*` models as OpenCLIP's ViTamin-S/B/L/L2/XL use them.

What the family computes (timm's names in brackets):
- a convolutional stem (`Stem`): a 3x3 convolution with stride 2, LayerNorm over channels and GELU, a 3x3 convolution;
- two stages of MBConv blocks (`MbConvLNBlock`), each stage halving the resolution in its first block: LayerNorm over
  channels, 1x1 expansion (4x, rounded to a multiple of 8), GELU, depthwise 3x3 (stride 2 in a stage's first block),
  GELU, 1x1 projection, plus a shortcut (3x3 average pool and a 1x1 convolution where the width changes);
- a LayerNorm over channels and a 3x3 convolution with stride 2 into the transformer's width (`StridedConv`): one
  token per 16x16 pixels;
- a learned position embedding for every token (none for ViTamin-XL), no class token;
- pre-norm transformer layers whose MLP is GeGLU with a LayerNorm on its input (`GeGluMlp`);
- the mean of every token through a final LayerNorm (timm's `global_pool="avg"` with `fc_norm`).

Every LayerNorm has eps 1e-6 (`layer_norm_eps`) and every activation is the exact GELU (`hidden_act`). OpenCLIP's
`timm_proj: "linear"` head is the model classes' `visual_projection` (bias when `timm_proj_bias`).

Module names: timm's for the convolutional part (`embeddings.stem.conv1`, `embeddings.stages.S.B.conv2_kxk`,
`embeddings.pool.proj`, the strided convolution), the CLIP ViT tower's for the rest (`embeddings.position_embedding`,
`encoder.layers.N.self_attn.q_proj`, `layer_norm1`, `post_layernorm`), the shared gated MLP's in the layers
(`mlp.input_norm`, `mlp.fc1_g`, `mlp.fc1_x`, `mlp.fc2`).
"""

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm
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
    check_pixel_values,
    resample_position_grid,
)

# Pixels per token along a side: the stem, both MBConv stages and the strided convolution each halve the image.
VITAMIN_STRIDE = 16
# An MBConv block's hidden width is its output width times this, rounded as timm's `make_divisible` does.
MBCONV_EXPANSION = 4


@strict
class DualClipVitaminVisionConfig(TowerConfig, PreTrainedConfig):
    r"""
    Configuration of the ViTamin image tower (timm's `vitamin_*`). The defaults are the image tower of OpenCLIP's
    ViTamin-B (timm `vitamin_base_224`, projected to 512).

    The fields shared with `CLIPVisionConfig` keep their names and meanings (`hidden_size` is the transformer's
    width). The others:

    Args:
        stem_size (`int`, defaults to 128):
            Channels of the convolutional stem.
        conv_stage_sizes (`list[int]`, defaults to `[128, 256]`):
            Channels of the two MBConv stages.
        conv_stage_depths (`list[int]`, defaults to `[2, 4]`):
            MBConv blocks in each of the two stages.
        use_position_embeddings (`bool`, defaults to `True`):
            Whether a learned position embedding is added to the tokens (ViTamin-XL has none).
        projection_bias (`bool`, defaults to `False`):
            Whether `visual_projection` has a bias (OpenCLIP's `timm_proj_bias`).
        hidden_act (`str`, defaults to `"gelu"`):
            Activation of the convolutions and of the GeGLU gate.
    """

    model_type = "dualclip_vitamin_vision_model"
    base_config_key = "vision_config"
    # The layers' MLP is always GeGLU (see `DualClipGatedMLP`): a declaration to the shared layers, not an option.
    geglu_mlp = True

    stem_size: int = 128
    conv_stage_sizes: list[int] | tuple[int, ...] = (128, 256)
    conv_stage_depths: list[int] | tuple[int, ...] = (2, 4)
    hidden_size: int = 768
    intermediate_size: int = 1536
    projection_dim: int = 512
    num_hidden_layers: int = 14
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    use_position_embeddings: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: int | float | None = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    projection_bias: bool = False

    def __post_init__(self, **kwargs):
        self.conv_stage_sizes = list(self.conv_stage_sizes)
        self.conv_stage_depths = list(self.conv_stage_depths)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        for name in ("conv_stage_sizes", "conv_stage_depths"):
            values = getattr(self, name)
            if len(values) != 2 or not all(value > 0 for value in values):
                raise ValueError(f"`{name}` must be two positive numbers (ViTamin has two MBConv stages), got {values}")
        if self.image_size % VITAMIN_STRIDE:
            raise ValueError(f"`image_size` must be a multiple of {VITAMIN_STRIDE}, got {self.image_size}")


def _mbconv_hidden_size(out_size: int, divisor: int = 8) -> int:
    """An MBConv block's expanded width: `MBCONV_EXPANSION * out_size` rounded to a multiple of `divisor` as timm's
    `make_divisible` does (to the nearest, but never more than 10% down)."""
    value = MBCONV_EXPANSION * out_size
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _channel_norm(config: DualClipVitaminVisionConfig, channels: int) -> ConvNextLayerNorm:
    """LayerNorm over the channels of a (batch, channels, height, width) map (timm's `LayerNorm2d`)."""
    return ConvNextLayerNorm(channels, eps=config.layer_norm_eps, data_format="channels_first")


class DualClipVitaminStem(nn.Module):
    """3x3 convolution with stride 2, LayerNorm over channels, activation, 3x3 convolution."""

    def __init__(self, config: DualClipVitaminVisionConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(config.num_channels, config.stem_size, kernel_size=3, stride=2, padding=1)
        self.norm1 = _channel_norm(config, config.stem_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.conv2 = nn.Conv2d(config.stem_size, config.stem_size, kernel_size=3, padding=1)

    def forward(self, pixel_values):
        return self.conv2(self.activation_fn(self.norm1(self.conv1(pixel_values))))


class DualClipVitaminDownsample(nn.Module):
    """The shortcut of a stage's first MBConv block: 3x3 average pool with stride 2 (padding not counted), then a 1x1
    convolution (`expand`) where the width changes."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1, count_include_pad=False)
        self.expand = nn.Conv2d(in_size, out_size, kernel_size=1) if in_size != out_size else nn.Identity()

    def forward(self, hidden_states):
        return self.expand(self.pool(hidden_states))


class DualClipVitaminMBConv(nn.Module):
    """Pre-norm inverted bottleneck: `shortcut(x) + conv3_1x1(act(conv2_kxk(act(conv1_1x1(pre_norm(x))))))`, the
    depthwise `conv2_kxk` with stride 2 in a stage's first block (whose shortcut then downsamples too)."""

    def __init__(self, config: DualClipVitaminVisionConfig, in_size: int, out_size: int, first: bool):
        super().__init__()
        hidden = _mbconv_hidden_size(out_size)
        stride = 2 if first else 1
        self.shortcut = DualClipVitaminDownsample(in_size, out_size) if first else nn.Identity()
        self.pre_norm = _channel_norm(config, in_size)
        self.conv1_1x1 = nn.Conv2d(in_size, hidden, kernel_size=1)
        self.conv2_kxk = nn.Conv2d(hidden, hidden, kernel_size=3, stride=stride, padding=1, groups=hidden)
        self.conv3_1x1 = nn.Conv2d(hidden, out_size, kernel_size=1)
        self.activation_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        residual = self.shortcut(hidden_states)
        hidden_states = self.activation_fn(self.conv1_1x1(self.pre_norm(hidden_states)))
        hidden_states = self.activation_fn(self.conv2_kxk(hidden_states))
        return self.conv3_1x1(hidden_states) + residual


class DualClipVitaminStridedConv(nn.Module):
    """LayerNorm over channels, then a 3x3 convolution with stride 2 into the transformer's width."""

    def __init__(self, config: DualClipVitaminVisionConfig):
        super().__init__()
        in_size = config.conv_stage_sizes[-1]
        self.norm = _channel_norm(config, in_size)
        self.proj = nn.Conv2d(in_size, config.hidden_size, kernel_size=3, stride=2, padding=1)

    def forward(self, hidden_states):
        return self.proj(self.norm(hidden_states))


class DualClipVitaminEmbeddings(nn.Module):
    """The convolutional part (timm's `MbConvStages`), its map flattened to tokens, plus the learned position
    embedding (when the config has one)."""

    def __init__(self, config: DualClipVitaminVisionConfig):
        super().__init__()
        self.config = config
        self.stem = DualClipVitaminStem(config)
        sizes = [config.stem_size, *config.conv_stage_sizes]
        self.stages = nn.ModuleList(
            nn.Sequential(*(
                DualClipVitaminMBConv(config, sizes[stage] if block == 0 else sizes[stage + 1], sizes[stage + 1],
                                      first=block == 0)
                for block in range(depth)
            ))
            for stage, depth in enumerate(config.conv_stage_depths)
        )
        self.pool = DualClipVitaminStridedConv(config)
        self.grid_size = config.image_size // VITAMIN_STRIDE
        self.num_positions = self.grid_size**2
        if config.use_position_embeddings:
            self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)
        else:
            self.position_embedding = None

    def init_dualclip_weights(self, factor: float) -> None:
        if self.position_embedding is not None:
            init.normal_(self.position_embedding.weight, std=self.config.initializer_range * factor)

    def forward(self, pixel_values, interpolate_pos_encoding=False):
        hidden_states = self.stem(pixel_values.to(self.stem.conv1.weight.dtype))
        for stage in self.stages:
            hidden_states = stage(hidden_states)
        feature_map = self.pool(hidden_states)
        embeddings = feature_map.flatten(2).transpose(1, 2)
        if self.position_embedding is None:
            return embeddings
        # Through the module, not `.weight`: under `device_map` offloading, accelerate brings a weight to the device
        # only when its module is called.
        positions = self.position_embedding(torch.arange(self.num_positions, device=embeddings.device))
        if interpolate_pos_encoding:
            positions = resample_position_grid(positions, (self.grid_size, self.grid_size), feature_map.shape[-2:])
        return embeddings + positions


class DualClipVitaminVisionTransformer(DualClipPreTrainedModel):
    """ViTamin image tower: convolutional embeddings, encoder (`last_hidden_state`, every token), the mean of the
    tokens through `post_layernorm` (`pooler_output`)."""

    config: DualClipVitaminVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["DualClipVitaminEmbeddings", "DualClipEncoderLayer"]
    _can_record_outputs = {"hidden_states": DualClipEncoderLayer, "attentions": DualClipAttention}

    def __init__(self, config: DualClipVitaminVisionConfig):
        super().__init__(config)
        self.embeddings = DualClipVitaminEmbeddings(config)
        self.encoder = DualClipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The stem's first convolution, the layer that reads pixels."""
        return self.embeddings.stem.conv1

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values, interpolate_pos_encoding=False, pooled_only=False, **kwargs: Unpack[TransformersKwargs]
    ):
        """`last_hidden_state` is every token after the last layer (timm's `forward_features`; the final LayerNorm
        applies to the mean only).

        `interpolate_pos_encoding=True` runs at another size as timm's `dynamic_img_size` does: the position
        embeddings resampled to the new token grid (without position embeddings, ViTamin-XL, it only lifts the size
        check). `pooled_only` changes nothing: the mean reads every token."""
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding)
        last_hidden_state = self.encoder(hidden_states, **kwargs).last_hidden_state
        pooled = self.post_layernorm(last_hidden_state.mean(dim=1))
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled)


# As the other image towers, this one reads checkpoints that still carry its `vision_model.` prefix.
register_checkpoint_conversion_mapping(
    "DualClipVitaminVisionTransformer", [PrefixChange(prefix_to_remove="vision_model")], overwrite=True
)


__all__ = ["DualClipVitaminVisionConfig", "DualClipVitaminVisionTransformer"]
