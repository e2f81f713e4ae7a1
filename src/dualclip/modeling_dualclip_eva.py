"""The EVA / Perception Encoder image tower family: timm's `Eva` vision transformer as OpenCLIP's EVA01, EVA02 and
PE-Core models use it.

What the family computes (timm's names in brackets, each a config field):
- patch embedding (with a bias unless a pre-transformer LayerNorm follows, as timm builds it), an optional class
  token, a learned position embedding for every token;
- optionally 2D rotary position embeddings on queries and keys in every layer (`use_rot_pos_emb`): EVA02's
  (`rope_ref_feat_shape` 16, grid offset 0, `ij` indexing) and PE's (its own reference grid, offset 1 but 0 for
  PE-bigG, `xy` indexing); the class token is never rotated;
- an optional LayerNorm before the encoder (`use_pre_transformer_norm`, PE);
- attention with separate q/k/v projections, with or without a key bias (`key_bias`: EVA's attention has none, PE's
  has one), optionally with a LayerNorm before the output projection (`scale_attn_inner`, EVA02);
- a GELU MLP, or SwiGLU (`swiglu_mlp`) with a LayerNorm inside (`scale_mlp`, EVA02);
- pre-norm layers, or post-norm layers (`use_post_norm`, EVA02-E);
- a final LayerNorm over every token, then pooling (`global_pool`): the class token (`token`, EVA), or timm's
  attention pool (`map`, `AttentionPoolLatent`, PE): a learned probe attends over every token, then a residual MLP.

timm's classifier `head` (OpenCLIP's `timm_proj: null`) is not part of the tower: it is the model classes'
`visual_projection`, a Linear with bias (`projection_bias=True`), `projection_dim` wide.

Module names follow the CLIP ViT tower where the parts are the same (`embeddings.patch_embedding`,
`embeddings.class_embedding`, `embeddings.position_embedding`, `pre_layrnorm`, `encoder.layers.N.self_attn.q_proj`,
`layer_norm1`, `mlp.fc1`, `post_layernorm`) and the SigLIP head where they are (`head.probe`, `head.layernorm`,
`head.mlp`); timm's names elsewhere (`mlp.fc1_g`, `mlp.fc1_x`, `mlp.norm`).
"""

from typing import Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_dualclip_base import TowerConfig
from .modeling_dualclip_base import DualClipPreTrainedModel
from .modeling_dualclip_layers import (
    DualClipAttention,
    DualClipEncoder,
    DualClipEncoderLayer,
    DualClipMLP,
    PooledQuery,
    check_pixel_values,
    resample_position_grid,
)

# timm's `rope_temperature`; every EVA and PE model uses the default.
ROPE_THETA = 10000.0


@strict
class DualClipEvaVisionConfig(TowerConfig, PreTrainedConfig):
    r"""
    Configuration of the EVA / Perception Encoder image tower (timm's `Eva`). The defaults are the image tower of
    OpenCLIP's EVA02-B-16 (timm `eva02_base_patch16_clip_224`, class-token pooling, projected to 512).

    The fields shared with `CLIPVisionConfig` keep their names and meanings. The others:

    Args:
        projection_bias (`bool`, defaults to `True`):
            Whether `visual_projection` has a bias (timm's classifier head has one).
        class_token (`bool`, defaults to `True`):
            Whether a class token precedes the patches (PE-bigG has none).
        use_pre_transformer_norm (`bool`, defaults to `False`):
            Whether a LayerNorm (`pre_layrnorm`) follows the embeddings (PE). The patch embedding then has no bias.
        key_bias (`bool`, defaults to `False`):
            Whether `k_proj` has a bias: EVA's attention has biases on queries and values only, PE's on all three.
        scale_attn_inner (`bool`, defaults to `True`):
            Whether a LayerNorm normalises the heads' output before `out_proj` (EVA02).
        swiglu_mlp (`bool`, defaults to `True`):
            Whether the MLP is SwiGLU, `fc2(silu(fc1_g(x)) * fc1_x(x))` (EVA02), instead of `fc2(act(fc1(x)))`.
        scale_mlp (`bool`, defaults to `True`):
            Whether a LayerNorm normalises the SwiGLU's hidden activations before `fc2` (EVA02; SwiGLU only).
        use_post_norm (`bool`, defaults to `False`):
            Whether the layers normalise each branch's output, `x + ln(f(x))` (EVA02-E), instead of its input.
        use_rot_pos_emb (`bool`, defaults to `True`):
            Whether queries and keys get 2D rotary position embeddings (EVA02, PE), besides the learned ones.
        rope_ref_feat_shape (`int`, defaults to 16):
            The patch grid the rotary frequencies are scaled to: position `i` of a `g`-wide grid is `i * ref / g`.
        rope_grid_offset (`float`, defaults to 0.0):
            Added to every grid index before scaling (PE: 1, but 0 for PE-bigG).
        rope_grid_indexing (`str`, defaults to `"ij"`):
            Which axis the first half of each head's rotary channels follows: the row (`"ij"`, EVA02) or the column
            (`"xy"`, PE).
        global_pool (`str`, defaults to `"token"`):
            The pooled output: the class token after the final LayerNorm (`"token"`), or the attention pool over
            every token (`"map"`, PE).
        attn_pool_num_heads (`int`, defaults to 8), attn_pool_mlp_ratio (`float`, defaults to 4.0):
            Heads and MLP width (a multiple of `hidden_size`) of the attention pool (`"map"` only).
        hidden_act (`str`, defaults to `"gelu"`):
            Activation of the GELU-style MLPs (layers without SwiGLU, the attention pool's). SwiGLU's gate is SiLU.
    """

    model_type = "dualclip_eva_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: int | float | None = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    projection_bias: bool = True

    class_token: bool = True
    use_pre_transformer_norm: bool = False
    key_bias: bool = False
    scale_attn_inner: bool = True
    swiglu_mlp: bool = True
    scale_mlp: bool = True
    use_post_norm: bool = False
    use_rot_pos_emb: bool = True
    rope_ref_feat_shape: int = 16
    rope_grid_offset: int | float = 0.0
    rope_grid_indexing: Literal["ij", "xy"] = "ij"
    global_pool: Literal["token", "map"] = "token"
    attn_pool_num_heads: int = 8
    attn_pool_mlp_ratio: int | float = 4.0

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})")
        head_dim = self.hidden_size // self.num_attention_heads
        if self.use_rot_pos_emb and head_dim % 4:
            raise ValueError(
                f"use_rot_pos_emb needs a head width (`hidden_size / num_attention_heads`) that is a multiple of 4 "
                f"(two axes, pairs of channels), got {head_dim}"
            )
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("`global_pool='token'` needs `class_token=True`")
        if self.global_pool == "map" and self.hidden_size % self.attn_pool_num_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `attn_pool_num_heads` "
                f"({self.attn_pool_num_heads})"
            )
        if self.scale_mlp and not self.swiglu_mlp:
            raise ValueError("`scale_mlp` (a LayerNorm inside the MLP) is only expressed with `swiglu_mlp=True`")


class DualClipEvaEmbeddings(nn.Module):
    """Patch embedding, optional class token, learned position embedding (class token included)."""

    def __init__(self, config: DualClipEvaVisionConfig):
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.grid_size = config.image_size // config.patch_size
        # timm drops the patch bias when a LayerNorm follows the embeddings.
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=self.patch_size, stride=self.patch_size,
            bias=not config.use_pre_transformer_norm,
        )
        self.class_embedding = nn.Parameter(torch.randn(config.hidden_size)) if config.class_token else None
        self.num_prefix_tokens = int(config.class_token)
        self.num_positions = self.grid_size**2 + self.num_prefix_tokens
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def init_dualclip_weights(self, factor: float) -> None:
        std = self.config.initializer_range * factor
        init.normal_(self.patch_embedding.weight, std=std)
        init.normal_(self.position_embedding.weight, std=std)
        if self.class_embedding is not None:
            init.normal_(self.class_embedding, std=std)

    def _position_weight(self, device) -> torch.Tensor:
        # Through the module, not `.weight`: under `device_map` offloading, accelerate brings a weight to the device
        # only when its module is called.
        return self.position_embedding(torch.arange(self.num_positions, device=device))

    def interpolate_pos_encoding(self, grid_height: int, grid_width: int, device) -> torch.Tensor:
        """Position embeddings for another patch grid: the grid resampled as timm's `resample_abs_pos_embed` does
        (bicubic, antialiased, in float32), the class token's unchanged."""
        weight = self._position_weight(device)
        if (grid_height, grid_width) == (self.grid_size, self.grid_size):
            return weight
        prefix, patches = weight[: self.num_prefix_tokens], weight[self.num_prefix_tokens :]
        grid = (self.grid_size, self.grid_size)
        return torch.cat([prefix, resample_position_grid(patches, grid, (grid_height, grid_width))])

    def forward(self, pixel_values, interpolate_pos_encoding=False):
        batch, _, height, width = pixel_values.shape
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        embeddings = patches
        if self.class_embedding is not None:
            embeddings = torch.cat([self.class_embedding.expand(batch, 1, -1), patches], dim=1)
        if interpolate_pos_encoding:
            grid = (height // self.patch_size, width // self.patch_size)
            return embeddings + self.interpolate_pos_encoding(*grid, embeddings.device)
        return embeddings + self._position_weight(embeddings.device)


class DualClipEvaRotaryEmbedding(nn.Module):
    """The `(cos, sin)` tables of timm's 2D rotary embedding (`RotaryEmbeddingCat` with `in_pixels=False`) for a
    patch grid, one row per token; the class token gets `cos = 1, sin = 0` (it is not rotated).

    Each head's channels are split in two halves, one per grid axis; within a half, pair `i` turns by
    `position * theta ** (-i / (head_dim / 4))`, where a patch's position along an axis is its index plus
    `rope_grid_offset`, scaled from the grid's size to `rope_ref_feat_shape`. Computed on the fly (no weights): it
    depends only on the grid, which `interpolate_pos_encoding` may change.
    """

    def __init__(self, config: DualClipEvaVisionConfig):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_bands = self.head_dim // 4
        self.num_prefix_tokens = int(config.class_token)
        self.reference = config.rope_ref_feat_shape
        self.offset = config.rope_grid_offset
        self.indexing = config.rope_grid_indexing

    def forward(self, grid_height: int, grid_width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        # Operation for operation as timm, so the tables are the same floats.
        exponents = torch.arange(self.num_bands, dtype=torch.int64, device=device).to(torch.float32) / self.num_bands
        bands = 1.0 / (ROPE_THETA**exponents)
        sizes = (grid_height, grid_width) if self.indexing == "ij" else (grid_width, grid_height)
        indices = [torch.arange(size, dtype=torch.int64, device=device).to(torch.float32) for size in sizes]
        axes = [(index + self.offset) / size * self.reference for index, size in zip(indices, sizes)]
        grid = torch.stack(torch.meshgrid(axes, indexing=self.indexing), dim=-1)  # (grid_height, grid_width, 2)
        angles = (grid.unsqueeze(-1) * bands).flatten(-2).flatten(0, -2)  # (tokens, head_dim / 2)
        cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
        if self.num_prefix_tokens:
            cos = torch.cat([cos.new_ones(self.num_prefix_tokens, self.head_dim), cos])
            sin = torch.cat([sin.new_zeros(self.num_prefix_tokens, self.head_dim), sin])
        return cos, sin


class DualClipEvaAttentionPool(nn.Module):
    """timm's `AttentionPoolLatent` (PE's `map` pooling): a learned probe attends over every token, then
    `x + mlp(layernorm(x))`. Attention on the attention interface, laid out as the rest of the tower."""

    def __init__(self, config: DualClipEvaVisionConfig):
        super().__init__()
        self.config = config
        self.probe = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.attention = DualClipAttention(config, num_heads=config.attn_pool_num_heads)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DualClipMLP(config, intermediate_size=int(config.hidden_size * config.attn_pool_mlp_ratio))

    def init_dualclip_weights(self, factor: float) -> None:
        init.normal_(self.probe, std=self.config.hidden_size**-0.5 * factor)

    def forward(self, hidden_states):
        probe = self.probe.expand(hidden_states.shape[0], -1, -1)
        pooled, _ = self.attention(hidden_states, query_states=probe)
        return (pooled + self.mlp(self.layernorm(pooled)))[:, 0]


class DualClipEvaVisionTransformer(DualClipPreTrainedModel):
    """EVA / PE image tower: embeddings, optional pre-LayerNorm, encoder (rotary embeddings optional), final LayerNorm
    over every token (`last_hidden_state`), then the class token or the attention pool (`pooler_output`)."""

    config: DualClipEvaVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["DualClipEvaEmbeddings", "DualClipEncoderLayer", "DualClipEvaAttentionPool"]
    # The attention pool's attention is not a layer's: only the encoder's are recorded.
    _can_record_outputs = {
        "hidden_states": DualClipEncoderLayer,
        "attentions": OutputRecorder(DualClipAttention, index=1, layer_name="encoder"),
    }

    def __init__(self, config: DualClipEvaVisionConfig):
        super().__init__(config)
        self.embeddings = DualClipEvaEmbeddings(config)
        if config.use_pre_transformer_norm:
            self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        else:
            self.pre_layrnorm = nn.Identity()
        self.rotary = DualClipEvaRotaryEmbedding(config) if config.use_rot_pos_emb else None
        self.encoder = DualClipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = DualClipEvaAttentionPool(config) if config.global_pool == "map" else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values, interpolate_pos_encoding=False, pooled_only=False, **kwargs: Unpack[TransformersKwargs]
    ):
        """`last_hidden_state` is every token after the final LayerNorm (timm's `forward_features`).

        `interpolate_pos_encoding=True` runs at another size as timm's `dynamic_img_size` does: position embeddings
        resampled, rotary tables computed for the new grid. `pooled_only=True` with class-token pooling: the last
        layer computes the class token alone and `last_hidden_state` is that token; the attention pool reads every
        token, so with it everything is computed."""
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        rotary = None
        if self.rotary is not None:
            patch = self.config.patch_size
            grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
            rotary = self.rotary(*grid, device=hidden_states.device)
        pooled_query = None
        if pooled_only and self.head is None:
            class_token = torch.zeros(hidden_states.shape[0], dtype=torch.long, device=hidden_states.device)
            pooled_query = PooledQuery(class_token)
        encoded = self.encoder(hidden_states, pooled_query=pooled_query, rotary=rotary, **kwargs).last_hidden_state
        last_hidden_state = self.post_layernorm(encoded)
        pooled = last_hidden_state[:, 0] if self.head is None else self.head(last_hidden_state)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled)


# As the other image towers, this one reads checkpoints that still carry its `vision_model.` prefix.
register_checkpoint_conversion_mapping(
    "DualClipEvaVisionTransformer", [PrefixChange(prefix_to_remove="vision_model")], overwrite=True
)


__all__ = ["DualClipEvaVisionConfig", "DualClipEvaVisionTransformer"]
