"""OpenAI's modified ResNet image tower family: RN50, RN101, RN50x4, RN50x16, RN50x64.

Differences from a torchvision ResNet, as in the CLIP paper: a stem of three 3x3 convolutions followed by an average
pool instead of one 7x7 convolution and a max pool; Bottlenecks that downsample by average pooling before their last
convolution (and before the shortcut convolution) instead of strided convolutions (anti-aliasing); and an attention
pool in place of global average pooling: the mean of the final feature map, prepended to it as a query token,
attends over all positions with multi-head attention.

The attention pool's output projection (OpenAI's `attnpool.c_proj`) is the model's `visual_projection`, so
`pooler_output` is the attended mean token before that projection, `hidden_size` (32 x `resnet_width`) wide.
"""

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_dualclip_base import TowerConfig
from .modeling_dualclip_base import DualClipPreTrainedModel
from .modeling_dualclip_layers import check_pixel_values

# Each Bottleneck widens its input `planes` by this factor; the final feature map has 32 x `resnet_width` channels.
BOTTLENECK_EXPANSION = 4
# Total downsampling of the tower: stem (conv stride 2, then pool 2) and stages 2-4 (pool 2 each).
RESNET_STRIDE = 32
# What dualclip versions before the tower registry wrote for this family, and the keys they wrote that it ignores.
_LEGACY_BACKBONE = "resnet"
_LEGACY_VIT_KEYS = ("backbone", "intermediate_size", "num_hidden_layers", "patch_size", "hidden_act", "layer_norm_eps",
                    "attention_dropout", "pre_norm", "projection_bias", "layer_scale_init_value")


@strict
class DualClipResNetConfig(TowerConfig, PreTrainedConfig):
    r"""
    Configuration of OpenAI's modified ResNet image tower (defaults: RN50).

    Args:
        resnet_layers (`list[int]`, defaults to `[3, 4, 6, 3]`): Bottleneck blocks in each of the four stages.
        resnet_width (`int`, defaults to 64): width of the stem; the final feature map has 32 x `resnet_width`
            channels.
        hidden_size (`int`, defaults to 2048): width of the attention pool, which must be 32 x `resnet_width`.
        num_attention_heads (`int`, defaults to 32): heads of the attention pool.
        projection_dim (`int`, defaults to 1024): output size of the pool's projection (the model's
            `visual_projection`, which always has a bias).
        image_size, num_channels, initializer_range, initializer_factor: as in `DualClipResNetConfig`.

    Configs saved by dualclip before the tower registry (a vision config with `backbone: "resnet"`) load as this.
    """

    model_type = "dualclip_resnet_vision_model"
    base_config_key = "vision_config"

    resnet_layers: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    resnet_width: int = 64
    hidden_size: int = 2048
    num_attention_heads: int = 32
    projection_dim: int = 1024
    num_channels: int = 3
    image_size: int = 224
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        self.resnet_layers = list(self.resnet_layers)
        super().__post_init__(**kwargs)

    @property
    def projection_bias(self) -> bool:
        """The attention pool's output projection has a bias, always."""
        return True

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        if len(self.resnet_layers) != 4 or not all(n > 0 for n in self.resnet_layers):
            raise ValueError(f"`resnet_layers` must be four positive block counts, got {self.resnet_layers!r}")
        if self.hidden_size != 32 * self.resnet_width:
            raise ValueError(f"`hidden_size` must be 32 x `resnet_width` ({32 * self.resnet_width}), got {self.hidden_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` ({self.num_attention_heads})"
            )
        if self.image_size % RESNET_STRIDE:
            raise ValueError(f"`image_size` must be a multiple of {RESNET_STRIDE}, got {self.image_size}")

    @classmethod
    def describes_legacy_dict(cls, config_dict: dict) -> bool:
        return config_dict.get("backbone") == _LEGACY_BACKBONE

    @classmethod
    def translate_legacy_dict(cls, config_dict: dict) -> dict:
        if not cls.describes_legacy_dict(config_dict):
            return config_dict
        translated = {k: v for k, v in config_dict.items() if k not in _LEGACY_VIT_KEYS}
        translated["model_type"] = cls.model_type
        return translated


class DualClipResNetStem(nn.Module):
    """Three 3x3 convolutions (the first with stride 2), each with BatchNorm and ReLU, then a 2x2 average pool."""

    def __init__(self, config: DualClipResNetConfig):
        super().__init__()
        width = config.resnet_width
        self.conv1 = nn.Conv2d(config.num_channels, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.pool = nn.AvgPool2d(2)

    def forward(self, pixel_values):
        hidden_states = F.relu(self.bn1(self.conv1(pixel_values)))
        hidden_states = F.relu(self.bn2(self.conv2(hidden_states)))
        hidden_states = F.relu(self.bn3(self.conv3(hidden_states)))
        return self.pool(hidden_states)


class DualClipBottleneck(nn.Module):
    """1x1 -> 3x3 -> (average pool when strided) -> 1x1 convolutions, each with BatchNorm, plus a shortcut.

    The shortcut is the identity, or, when the stride or the channel count changes, an average pool (when strided)
    followed by a 1x1 convolution and BatchNorm (`shortcut_conv`, `shortcut_bn`).
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        if stride > 1 or in_channels != out_channels:
            self.shortcut_pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.shortcut_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(out_channels)
        else:
            self.shortcut_pool = self.shortcut_conv = self.shortcut_bn = None

    def init_dualclip_weights(self, factor: float):
        """Zero the last BatchNorm's scale so that every block starts as its shortcut (as OpenAI initialises)."""
        init.zeros_(self.bn3.weight)

    def forward(self, hidden_states):
        out = F.relu(self.bn1(self.conv1(hidden_states)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.pool(out)))
        if self.shortcut_conv is not None:
            hidden_states = self.shortcut_bn(self.shortcut_conv(self.shortcut_pool(hidden_states)))
        return F.relu(out + hidden_states)


class DualClipResNetStage(nn.Module):
    """`num_blocks` Bottlenecks; the first one changes the width and (for `stride` 2) halves the resolution."""

    def __init__(self, in_channels: int, planes: int, num_blocks: int, stride: int):
        super().__init__()
        out_channels = planes * BOTTLENECK_EXPANSION
        self.blocks = nn.ModuleList(
            [DualClipBottleneck(in_channels, planes, stride)]
            + [DualClipBottleneck(out_channels, planes) for _ in range(num_blocks - 1)]
        )

    def forward(self, hidden_states):
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return hidden_states


class DualClipAttentionPool(nn.Module):
    """Multi-head attention of the feature map's mean (as the only query) over the mean and every position.

    Keys and values come from the mean token and all positions, each plus a learned position embedding (index 0 for
    the mean token, then the spatial grid in row-major order). Returns the attended mean token, `hidden_size` wide,
    before the output projection (the model's `visual_projection`).
    """

    def __init__(self, config: DualClipResNetConfig):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.grid_size = config.image_size // RESNET_STRIDE
        positions = torch.randn(self.grid_size**2 + 1, self.embed_dim) * self.embed_dim**-0.5
        self.positional_embedding = nn.Parameter(positions)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def init_dualclip_weights(self, factor: float):
        """OpenAI's scheme: position embedding and projections drawn with std `hidden_size ** -0.5`."""
        std = self.embed_dim**-0.5 * factor
        init.normal_(self.positional_embedding, std=std)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            init.normal_(proj.weight, std=std)

    def position_embeddings(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a `height` x `width` feature map: the grid resized bicubically if needed."""
        weight = self.positional_embedding
        if (height, width) == (self.grid_size, self.grid_size):
            return weight
        grid = weight[1:].reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        # Bicubic interpolation in float32: the fp16 CPU kernel is missing on some builds and loses precision.
        grid = F.interpolate(grid.float(), size=(height, width), mode="bicubic", align_corners=False).to(weight.dtype)
        return torch.cat([weight[:1], grid.permute(0, 2, 3, 1).reshape(height * width, -1)])

    def forward(self, feature_map):
        batch, channels, height, width = feature_map.shape
        tokens = feature_map.flatten(2).transpose(1, 2)  # (batch, height * width, channels)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.position_embeddings(height, width).to(tokens.dtype)

        def heads(x):
            return x.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        query = heads(self.q_proj(tokens[:, :1]))
        key, value = heads(self.k_proj(tokens)), heads(self.v_proj(tokens))
        attended = F.scaled_dot_product_attention(query, key, value)
        return attended.transpose(1, 2).reshape(batch, channels)


class DualClipResNet(DualClipPreTrainedModel):
    """OpenAI's modified ResNet: stem, four stages of Bottlenecks, attention pool.

    `forward` returns a `BaseModelOutputWithPooling` with:
    - `pooler_output`: (batch, `hidden_size`), the attention pool's output before `visual_projection`;
    - `last_hidden_state`: the final feature map as (batch, height * width, `hidden_size`), positions in row-major
      order (7 x 7 = 49 of them for a 224 x 224 input);
    - `hidden_states` (when requested): five feature maps in (batch, channels, height, width) layout, as convolutional
      towers usually return them: the stem's output, then the output of each of the four stages. The last one is
      `last_hidden_state` before flattening (`last_hidden_state == hidden_states[-1].flatten(2).transpose(1, 2)`);
    - `attentions`: always `None` (the tower has no self-attention layers; the pool's weights are not returned).
    """

    config: DualClipResNetConfig
    _no_split_modules = ["DualClipResNetStem", "DualClipBottleneck", "DualClipAttentionPool"]
    # Stage outputs, with the stem's output (the first stage's input) before them.
    _can_record_outputs = {"hidden_states": OutputRecorder(DualClipResNetStage)}

    def __init__(self, config: DualClipResNetConfig):
        super().__init__(config)
        width = config.resnet_width
        self.embeddings = DualClipResNetStem(config)
        stages, in_channels = [], width
        for index, num_blocks in enumerate(config.resnet_layers):
            planes = width * 2**index
            stages.append(DualClipResNetStage(in_channels, planes, num_blocks, stride=1 if index == 0 else 2))
            in_channels = planes * BOTTLENECK_EXPANSION
        self.stages = nn.ModuleList(stages)
        self.attention_pool = DualClipAttentionPool(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The stem's first convolution, the layer that reads pixels."""
        return self.embeddings.conv1

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values, interpolate_pos_encoding=False, pooled_only=False, **kwargs: Unpack[TransformersKwargs]
    ):
        """Encodes `pixel_values` (batch, channels, height, width); other sizes than `image_size` need
        `interpolate_pos_encoding=True`. `pooled_only` changes nothing: the attention pool already computes only its
        one query."""
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)
        hidden_states = self.embeddings(pixel_values.to(self.embeddings.conv1.weight.dtype))
        for stage in self.stages:
            hidden_states = stage(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states.flatten(2).transpose(1, 2),
            pooler_output=self.attention_pool(hidden_states),
        )


__all__ = ["DualClipResNetConfig", "DualClipResNet"]
