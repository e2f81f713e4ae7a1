"""dualclip models: the text tower, the ViT image tower, and the dual model with its contrastive head.

State-dict keys follow transformers CLIP's on-disk layout (`text_model.encoder.layers.N.self_attn.q_proj`,
`vision_model.pre_layrnorm`, `text_projection`, `logit_scale`, ...); the variants stock CLIP lacks (LayerScale,
projection bias, logit bias, the ResNet tower) add keys and never rename shared ones.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_dualclip import DualClipConfig, DualClipTextConfig, DualClipVisionConfig

# CLIP keeps exp(logit_scale) at or below 100 (OpenAI clamps after every step); forward clamps to the same bound.
LOGIT_SCALE_MAX = math.log(100.0)


@dataclass
class DualClipTextModelOutput(ModelOutput):
    """Output of [`DualClipTextModelWithProjection`]; same fields and order as transformers' `CLIPTextModelOutput`."""

    text_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class DualClipVisionModelOutput(ModelOutput):
    """Output of [`DualClipVisionModelWithProjection`]; same fields and order as `CLIPVisionModelOutput`."""

    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class DualClipOutput(ModelOutput):
    """Output of [`DualClipModel`]; same fields and order as transformers' `CLIPOutput`.

    `logits_per_text[i, j]` is `exp(logit_scale) * cos(text_i, image_j)` (plus `logit_bias` when the model has one);
    `logits_per_image` is its transpose. `loss` is set when `return_loss=True`.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling = None
    vision_model_output: BaseModelOutputWithPooling = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


# ----------------------------------------------------------------------------------------------------------------------
# Shared transformer building blocks (text and ViT towers)
# ----------------------------------------------------------------------------------------------------------------------


def eager_attention(query, key, value, mask: torch.Tensor | None, scale: float, dropout: float):
    """Reference attention: explicit softmax in float32. `mask` is boolean, True where a key may be attended."""
    weights = torch.matmul(query, key.transpose(-1, -2)) * scale
    if mask is not None:
        weights = weights.masked_fill(~mask, torch.finfo(weights.dtype).min)
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout)
    return torch.matmul(weights, value), weights


class DualClipAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (transformers CLIP layout).

    Runs through `scaled_dot_product_attention`; the eager path (`attn_implementation="eager"`, or whenever
    attention weights are requested) is the reference and the only one that returns the weights.
    """

    def __init__(self, config: DualClipTextConfig | DualClipVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states, mask=None, is_causal=False, output_attentions=False, query_states=None):
        """Self-attention over `hidden_states`; with `query_states` (fewer positions) only those are queries."""
        batch, length, _ = hidden_states.shape
        query_states = hidden_states if query_states is None else query_states
        query = self.q_proj(query_states).view(batch, query_states.shape[1], self.num_heads, self.head_dim)
        query = query.transpose(1, 2)
        shape = (batch, length, self.num_heads, self.head_dim)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0

        if output_attentions or self.config._attn_implementation == "eager":
            if is_causal:
                mask = _causal_mask(length, hidden_states.device)
            output, weights = eager_attention(query, key, value, mask, self.scale, dropout)
        else:
            output = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=self.scale
            )
            weights = None
        output = output.transpose(1, 2).reshape(batch, query_states.shape[1], self.embed_dim)
        return self.out_proj(output), weights


class DualClipMLP(nn.Module):
    """Two-layer feed-forward block (`fc1`, activation, `fc2`)."""

    def __init__(self, config: DualClipTextConfig | DualClipVisionConfig):
        super().__init__()
        self.config = config
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class DualClipLayerScale(nn.Module):
    """Per-channel learned scale on a residual branch (OpenCLIP `ls_init_value`)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, hidden_states):
        return hidden_states * self.scale


class DualClipEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`, with optional LayerScale."""

    def __init__(self, config: DualClipTextConfig | DualClipVisionConfig):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.self_attn = DualClipAttention(config)
        self.layer_norm1 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.mlp = DualClipMLP(config)
        self.layer_norm2 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        if config.layer_scale_init_value is not None:
            self.layer_scale1 = DualClipLayerScale(self.embed_dim, config.layer_scale_init_value)
            self.layer_scale2 = DualClipLayerScale(self.embed_dim, config.layer_scale_init_value)
        else:
            self.layer_scale1 = self.layer_scale2 = nn.Identity()

    def forward(self, hidden_states, mask=None, is_causal=False, output_attentions=False, query_positions=None):
        """`query_positions` (one index per row) computes only that position's output, shape (batch, 1, hidden);
        every position still serves as key and value. `mask` must then already be the one for those queries."""
        normed = self.layer_norm1(hidden_states)
        query_states = None
        if query_positions is not None:
            rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
            hidden_states = hidden_states[rows, query_positions].unsqueeze(1)
            query_states = normed[rows, query_positions].unsqueeze(1)
        attended, weights = self.self_attn(normed, mask, is_causal, output_attentions, query_states)
        hidden_states = hidden_states + self.layer_scale1(attended)
        hidden_states = hidden_states + self.layer_scale2(self.mlp(self.layer_norm2(hidden_states)))
        return hidden_states, weights


class DualClipEncoder(nn.Module):
    """A stack of [`DualClipEncoderLayer`]s that can collect every layer's output and attention weights."""

    def __init__(self, config: DualClipTextConfig | DualClipVisionConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([DualClipEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states,
        mask=None,
        is_causal=False,
        output_attentions=False,
        output_hidden_states=False,
        pooled_positions=None,
    ):
        """Returns `(last_hidden_state, hidden_states, attentions)`; the tuples are `None` unless requested.

        `hidden_states` holds the input embeddings followed by every layer's output. With `pooled_positions` (one
        index per row) the last layer computes only those positions, all a pooled read needs, and
        `last_hidden_state` is `(batch, 1, hidden)`.
        """
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        last_index = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if index == last_index and pooled_positions is not None:
                length = hidden_states.shape[1]
                hidden_states, weights = layer(
                    hidden_states,
                    mask=_pooled_query_mask(mask, is_causal, pooled_positions, length),
                    output_attentions=output_attentions,
                    query_positions=pooled_positions,
                )
            else:
                hidden_states, weights = layer(
                    hidden_states, mask=mask, is_causal=is_causal, output_attentions=output_attentions
                )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden_states, all_attentions


def _pooled_query_mask(mask, is_causal: bool, positions: torch.Tensor, length: int):
    """The rows of a `(batch, 1, length, length)` mask (or of the causal mask) that the pooled queries use."""
    if mask is not None:
        rows = torch.arange(mask.shape[0], device=mask.device)
        return mask[rows, 0, positions][:, None, None, :]
    if is_causal:
        keys = torch.arange(length, device=positions.device)
        return (keys[None, :] <= positions[:, None])[:, None, None, :]
    return None


def _causal_mask(length: int, device) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def _text_attention_mask(attention_mask, length: int, causal: bool):
    """Boolean `(batch, 1, length, length)` mask for the text tower, or `None` when plain causal/full suffices.

    Rows with no attendable key (a padded position before any real token, under left padding and a causal mask)
    attend to every key instead, so they stay finite; nothing reads those positions.
    """
    if attention_mask is None or (not _is_compiling() and bool(attention_mask.all())):
        return None
    mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, length, -1)
    if causal:
        mask = mask & _causal_mask(length, attention_mask.device)
    return mask | ~mask.any(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------------------
# Text tower
# ----------------------------------------------------------------------------------------------------------------------


class DualClipTextEmbeddings(nn.Module):
    """Token embedding plus learned absolute position embedding."""

    def __init__(self, config: DualClipTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids, position_ids=None):
        if position_ids is None:
            # Looked up through the module, not sliced from `.weight`: under `device_map` offloading, accelerate
            # brings a weight to the device only when its module is called.
            position_ids = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


def pooled_positions(input_ids: torch.Tensor, pooling: str, eos_token_id: int) -> torch.Tensor:
    """Index of the pooled position in each row.

    `"eos"`: the first position holding `eos_token_id`, or the last position for a row without one. `"argmax"`:
    the position of the largest id (OpenAI's rule; breaks when added tokens have ids above EOS). `"last"`: the
    last position.
    """
    length = input_ids.shape[-1]
    if pooling == "last":
        return torch.full(input_ids.shape[:1], length - 1, dtype=torch.long, device=input_ids.device)
    if pooling == "argmax":
        return input_ids.to(torch.int).argmax(dim=-1)
    is_eos = input_ids == eos_token_id
    first_eos = is_eos.to(torch.int).argmax(dim=-1)
    return torch.where(is_eos.any(dim=-1), first_eos, torch.full_like(first_eos, length - 1))


class DualClipTextTransformer(nn.Module):
    """Embeddings, encoder and final LayerNorm of the text tower; pooled at one position per row."""

    def __init__(self, config: DualClipTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = DualClipTextEmbeddings(config)
        self.encoder = DualClipEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _check_input_ids(self, input_ids):
        if input_ids is None:
            raise ValueError("input_ids is required: a (batch, sequence) tensor of token ids")
        if input_ids.dim() != 2 or input_ids.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(
                f"input_ids must be an integer tensor of shape (batch, sequence), got {input_ids.dtype} {tuple(input_ids.shape)}"
            )
        max_positions = self.config.max_position_embeddings
        if input_ids.shape[-1] > max_positions:
            raise ValueError(
                f"input_ids has {input_ids.shape[-1]} positions but max_position_embeddings is {max_positions}; "
                "truncate to that length (split longer prompts: see dualclip.conditioning)"
            )
        if not _is_compiling() and input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(
                f"input_ids holds ids outside the vocabulary: found {int(input_ids.min())}..{int(input_ids.max())}, "
                f"vocab_size is {self.config.vocab_size} (resize_token_embeddings after adding tokens)"
            )

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        output_attentions=False,
        output_hidden_states=False,
        pooled_only=False,
    ) -> BaseModelOutputWithPooling:
        self._check_input_ids(input_ids)
        config = self.config
        pool_at = pooled_positions(input_ids, config.pooling, config.eos_token_id)

        # Only the pooled position's output is read: the last layer computes it alone, and under a causal mask the
        # positions after the batch's last pooled position cannot change any of them, so they are not computed.
        computes_pooled_only = pooled_only and not (output_attentions or output_hidden_states)
        if computes_pooled_only and config.causal_mask and not _is_compiling():
            keep = int(pool_at.max()) + 1
            input_ids = input_ids[:, :keep]
            attention_mask = None if attention_mask is None else attention_mask[:, :keep]
            position_ids = None if position_ids is None else position_ids[..., :keep]

        hidden_states = self.embeddings(input_ids, position_ids)
        mask = _text_attention_mask(attention_mask, input_ids.shape[-1], config.causal_mask)
        last_hidden_state, all_hidden_states, all_attentions = self.encoder(
            hidden_states,
            mask=mask,
            is_causal=config.causal_mask and mask is None,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            pooled_positions=pool_at if computes_pooled_only else None,
        )
        last_hidden_state = self.final_layer_norm(last_hidden_state)
        if computes_pooled_only:
            pooled_output = last_hidden_state[:, 0]
        else:
            rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
            pooled_output = last_hidden_state[rows, pool_at.to(last_hidden_state.device)]
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


# ----------------------------------------------------------------------------------------------------------------------
# ViT image tower
# ----------------------------------------------------------------------------------------------------------------------


def check_pixel_values(pixel_values, config: DualClipVisionConfig, interpolate_pos_encoding: bool) -> None:
    """Raises a `ValueError` naming `pixel_values` when it is not a (batch, channels, height, width) image batch."""
    if pixel_values is None:
        raise ValueError("pixel_values is required: a (batch, channels, height, width) float tensor")
    if not torch.is_tensor(pixel_values) or pixel_values.dim() != 4 or not pixel_values.is_floating_point():
        shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a float tensor of shape (batch, channels, height, width), got {shape}")
    _, channels, height, width = pixel_values.shape
    if channels != config.num_channels:
        raise ValueError(f"pixel_values has {channels} channels, the model expects {config.num_channels}")
    size = config.image_size
    if not interpolate_pos_encoding and (height, width) != (size, size):
        raise ValueError(
            f"pixel_values is {height}x{width}, the model expects {size}x{size}; "
            "pass interpolate_pos_encoding=True to run at another size"
        )


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


class DualClipVisionTransformer(nn.Module):
    """ViT image tower: embeddings, optional pre-LayerNorm, encoder, class token through `post_layernorm`."""

    def __init__(self, config: DualClipVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = DualClipVisionEmbeddings(config)
        # `pre_layrnorm` keeps transformers CLIP's historical spelling so its checkpoints load unchanged.
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_norm else nn.Identity()
        self.encoder = DualClipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        pixel_values,
        output_attentions=False,
        output_hidden_states=False,
        interpolate_pos_encoding=False,
        pooled_only=False,
    ) -> BaseModelOutputWithPooling:
        """`pooled_only=True`: the last layer computes only the class token, the one position pooling reads, and
        `last_hidden_state` is that position alone. Ignored when hidden states or attentions are requested."""
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        class_token_only = pooled_only and not (output_attentions or output_hidden_states)
        class_token = torch.zeros(hidden_states.shape[0], dtype=torch.long, device=hidden_states.device)
        last_hidden_state, all_hidden_states, all_attentions = self.encoder(
            hidden_states,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            pooled_positions=class_token if class_token_only else None,
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=self.post_layernorm(last_hidden_state[:, 0]),
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


def build_vision_tower(config: DualClipVisionConfig) -> nn.Module:
    """The image tower the config names: a ViT or OpenAI's modified ResNet."""
    if config.backbone == "resnet":
        from .modeling_dualclip_resnet import DualClipResNet

        return DualClipResNet(config)
    return DualClipVisionTransformer(config)


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained-model classes
# ----------------------------------------------------------------------------------------------------------------------


class DualClipPreTrainedModel(PreTrainedModel):
    """Weight initialisation, loading and saving shared by every dualclip model class."""

    config_class = DualClipConfig
    base_model_prefix = "dualclip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = [
        "DualClipTextEmbeddings",
        "DualClipEncoderLayer",
        "DualClipVisionEmbeddings",
        "DualClipResNetStem",
        "DualClipBottleneck",
        "DualClipAttentionPool",
    ]

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """As `PreTrainedModel.save_pretrained`, but writes dualclip's own key layout (`text_model.`/`vision_model.`
        prefixes) even when the weights were loaded from a flat transformers 5 `CLIPTextModel` folder."""
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # transformers treats every model defined outside its own package as custom code, and for custom code it skips
        # modules without parameters of their own (attention, MLP, the dual model), whose `_init_weights` branches are
        # what give q/k/v/out, fc1/fc2 and the projections CLIP's scales. Our `_init_weights` only writes through
        # `transformers.initialization`, which never overwrites loaded weights, so the shortcut is not needed.
        super()._initialize_weights(module, is_custom_code=False)

    def _resolve_outputs(self, output_attentions, output_hidden_states, return_dict):
        config = self.config
        return (
            config.output_attentions if output_attentions is None else output_attentions,
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            config.return_dict if return_dict is None else return_dict,
        )

    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise as transformers CLIP does (OpenAI's scheme), scaled by `initializer_factor`."""
        super()._init_weights(module)
        config = self.config
        factor = config.initializer_factor
        if isinstance(module, DualClipTextEmbeddings):
            init.normal_(module.token_embedding.weight, std=factor * 0.02)
            init.normal_(module.position_embedding.weight, std=factor * 0.02)
        elif isinstance(module, DualClipVisionEmbeddings):
            init.normal_(module.class_embedding, std=module.embed_dim**-0.5 * factor)
            init.normal_(module.patch_embedding.weight, std=module.config.initializer_range * factor)
            init.normal_(module.position_embedding.weight, std=module.config.initializer_range * factor)
        elif isinstance(module, DualClipAttention):
            in_std = module.embed_dim**-0.5 * (2 * module.config.num_hidden_layers) ** -0.5 * factor
            for proj in (module.q_proj, module.k_proj, module.v_proj):
                init.normal_(proj.weight, std=in_std)
            init.normal_(module.out_proj.weight, std=module.embed_dim**-0.5 * factor)
        elif isinstance(module, DualClipMLP):
            hidden = module.config.hidden_size
            init.normal_(module.fc1.weight, std=(2 * hidden) ** -0.5 * factor)
            init.normal_(module.fc2.weight, std=hidden**-0.5 * (2 * module.config.num_hidden_layers) ** -0.5 * factor)
        elif isinstance(module, DualClipLayerScale):
            init.constant_(module.scale, module.init_value)
        elif hasattr(module, "init_dualclip_weights"):  # ResNet tower modules (modeling_dualclip_resnet.py)
            module.init_dualclip_weights(factor)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            init.zeros_(module.bias)
        if isinstance(module, (DualClipModel, DualClipTextModelWithProjection, DualClipVisionModelWithProjection)):
            for projection in (getattr(module, "text_projection", None), getattr(module, "visual_projection", None)):
                if projection is not None:
                    init.normal_(projection.weight, std=projection.in_features**-0.5 * factor)
        if isinstance(module, DualClipModel):
            init.constant_(module.logit_scale, config.logit_scale_init_value)
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, config.logit_bias_init_value)


# Keys of the other tower found when one tower loads a full CLIP folder: expected, not worth a warning.
_IMAGE_SIDE_KEYS = [r"^vision_model\.", r"^visual_projection\."]
_TEXT_SIDE_KEYS = [r"^text_model\.", r"^text_projection\."]


class _WithTextTower:
    """Shared by the classes holding a `text_model` (a [`DualClipTextTransformer`])."""

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value):
        self.text_model.embeddings.token_embedding = value

    def _run_text_tower(
        self, input_ids, attention_mask, position_ids, output_attentions, output_hidden_states, return_dict, pooled_only
    ) -> tuple[BaseModelOutputWithPooling, bool]:
        """The tower's output with the output flags resolved against the config; also returns `return_dict`."""
        output_attentions, output_hidden_states, return_dict = self._resolve_outputs(
            output_attentions, output_hidden_states, return_dict
        )
        outputs = self.text_model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            pooled_only=pooled_only,
        )
        return outputs, return_dict


class _WithVisionTower:
    """Shared by the classes holding a `vision_model` (ViT or ResNet tower)."""

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    def _run_vision_tower(
        self, pixel_values, output_attentions, output_hidden_states, interpolate_pos_encoding, return_dict, pooled_only
    ) -> tuple[BaseModelOutputWithPooling, bool]:
        """The tower's output with the output flags resolved against the config; also returns `return_dict`."""
        output_attentions, output_hidden_states, return_dict = self._resolve_outputs(
            output_attentions, output_hidden_states, return_dict
        )
        outputs = self.vision_model(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            pooled_only=pooled_only,
        )
        return outputs, return_dict


class DualClipTextModel(_WithTextTower, DualClipPreTrainedModel):
    """The text tower without projection: token-level states and the pooled (EOS) state.

    This is the `text_encoder` of Stable Diffusion 1.x/2.x and the first encoder of SDXL and Flux. Its
    `text_model.final_layer_norm` is where diffusers applies the final norm after clip-skip.
    """

    config_class = DualClipTextConfig
    input_modalities = ("text",)
    _no_split_modules = ["DualClipTextEmbeddings", "DualClipEncoderLayer"]
    _keys_to_ignore_on_load_unexpected = _IMAGE_SIDE_KEYS + [r"^text_projection\.", r"^logit_(scale|bias)$"]

    def __init__(self, config: DualClipTextConfig):
        super().__init__(config)
        self.text_model = DualClipTextTransformer(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Encodes `input_ids` (batch, sequence).

        `pooled_only=True` promises that only `pooler_output` is read: the last layer computes the pooled position
        alone and, under a causal mask, positions after the batch's last pooled position are not computed (same
        pooled numbers, a fraction of the work); `last_hidden_state` is then `(batch, 1, hidden)`, the pooled
        position. It is ignored when hidden states or attentions are requested.
        """
        outputs, return_dict = self._run_text_tower(
            input_ids, attention_mask, position_ids, output_attentions, output_hidden_states, return_dict, pooled_only
        )
        return outputs if return_dict else outputs.to_tuple()


class DualClipTextModelWithProjection(_WithTextTower, DualClipPreTrainedModel):
    """The text tower plus `text_projection`: `text_embeds` in the joint space (SDXL's `text_encoder_2`)."""

    config_class = DualClipTextConfig
    input_modalities = ("text",)
    _no_split_modules = ["DualClipTextEmbeddings", "DualClipEncoderLayer"]
    _keys_to_ignore_on_load_unexpected = _IMAGE_SIDE_KEYS + [r"^logit_(scale|bias)$"]

    def __init__(self, config: DualClipTextConfig):
        super().__init__(config)
        self.text_model = DualClipTextTransformer(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=config.projection_bias)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> tuple | DualClipTextModelOutput:
        """Encodes `input_ids` and projects the pooled state; `pooled_only` as in [`DualClipTextModel.forward`]."""
        text_outputs, return_dict = self._run_text_tower(
            input_ids, attention_mask, position_ids, output_attentions, output_hidden_states, return_dict, pooled_only
        )
        outputs = DualClipTextModelOutput(
            text_embeds=self.text_projection(text_outputs.pooler_output),
            last_hidden_state=text_outputs.last_hidden_state,
            hidden_states=text_outputs.hidden_states,
            attentions=text_outputs.attentions,
        )
        return outputs if return_dict else outputs.to_tuple()


class DualClipVisionModel(_WithVisionTower, DualClipPreTrainedModel):
    """The image tower without projection: patch-level states and the pooled state."""

    config_class = DualClipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _keys_to_ignore_on_load_unexpected = _TEXT_SIDE_KEYS + [r"^visual_projection\.", r"^logit_(scale|bias)$"]

    def __init__(self, config: DualClipVisionConfig):
        super().__init__(config)
        self.vision_model = build_vision_tower(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Encodes `pixel_values` (batch, channels, height, width); other sizes need `interpolate_pos_encoding`.

        `pooled_only=True` promises that only `pooler_output` is read: the last layer then computes the class token
        alone (same pooled numbers, less work) and `last_hidden_state` is `(batch, 1, hidden)`, that position.
        """
        outputs, return_dict = self._run_vision_tower(
            pixel_values, output_attentions, output_hidden_states, interpolate_pos_encoding, return_dict, pooled_only
        )
        return outputs if return_dict else outputs.to_tuple()


class DualClipVisionModelWithProjection(_WithVisionTower, DualClipPreTrainedModel):
    """The image tower plus `visual_projection`: `image_embeds` in the joint space."""

    config_class = DualClipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _keys_to_ignore_on_load_unexpected = _TEXT_SIDE_KEYS + [r"^logit_(scale|bias)$"]

    def __init__(self, config: DualClipVisionConfig):
        super().__init__(config)
        self.vision_model = build_vision_tower(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=config.projection_bias)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> tuple | DualClipVisionModelOutput:
        """Encodes `pixel_values` and projects the pooled state; `pooled_only` as in [`DualClipVisionModel.forward`]."""
        vision_outputs, return_dict = self._run_vision_tower(
            pixel_values, output_attentions, output_hidden_states, interpolate_pos_encoding, return_dict, pooled_only
        )
        outputs = DualClipVisionModelOutput(
            image_embeds=self.visual_projection(vision_outputs.pooler_output),
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )
        return outputs if return_dict else outputs.to_tuple()


def _l2_normalize(features: torch.Tensor) -> torch.Tensor:
    # The norm in float32: in float16 the sum of squares of a 768-wide feature overflows once entries reach ~9.
    return features / features.float().norm(p=2, dim=-1, keepdim=True).to(features.dtype)


class DualClipModel(_WithTextTower, DualClipPreTrainedModel):
    """Both towers, their projections and the contrastive head (`logit_scale`, optional `logit_bias`).

    `forward` returns image-text logits and, with `return_loss=True`, the loss named by `config.loss_type`,
    with negatives gathered across processes under `torch.distributed` (see `dualclip.losses`).
    """

    config_class = DualClipConfig

    def __init__(self, config: DualClipConfig):
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        self.projection_dim = config.projection_dim
        self.text_embed_dim = text_config.hidden_size
        self.vision_embed_dim = vision_config.hidden_size
        self.text_model = DualClipTextTransformer(text_config)
        self.vision_model = build_vision_tower(vision_config)
        self.visual_projection = nn.Linear(
            self.vision_embed_dim, self.projection_dim, bias=vision_config.projection_bias
        )
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=text_config.projection_bias)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        if config.logit_bias_init_value is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init_value)))
        else:
            self.logit_bias = None
        self.post_init()

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pooled_only: bool = True,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Text tower output with `pooler_output` replaced by the projected text features (transformers 5 convention).

        By default (`pooled_only=True`) only what the pooled position needs is computed (see
        [`DualClipTextModel.forward`]): identical features, and `last_hidden_state` is the pooled position alone.
        """
        outputs = self.text_model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            pooled_only=pooled_only,
        )
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        pooled_only: bool = True,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Image tower output with `pooler_output` replaced by the projected image features.

        With `pooled_only=True` (the default) the last layer computes only the pooled position: identical
        features, and `last_hidden_state` is that position alone.
        """
        outputs = self.vision_model(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            pooled_only=pooled_only,
        )
        outputs.pooler_output = self.visual_projection(outputs.pooler_output)
        return outputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        pooled_only: bool = True,
        **kwargs,
    ) -> tuple | DualClipOutput:
        """Scores every text against every image.

        As in transformers 5, `text_model_output`/`vision_model_output` are the outputs of `get_text_features`/
        `get_image_features`: their `pooler_output` holds the projected (not yet normalised) features.
        `pooled_only` (default `True`) as in [`get_text_features`] and [`get_image_features`]: both towers compute
        only what the logits use, and their `last_hidden_state` is the pooled position alone.
        """
        output_attentions, output_hidden_states, return_dict = self._resolve_outputs(
            output_attentions, output_hidden_states, return_dict
        )
        outputs_wanted = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        vision_outputs = self.get_image_features(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, pooled_only=pooled_only, **outputs_wanted
        )
        text_outputs = self.get_text_features(
            input_ids, attention_mask, position_ids, pooled_only=pooled_only, **outputs_wanted
        )
        image_embeds = _l2_normalize(vision_outputs.pooler_output)
        text_embeds = _l2_normalize(text_outputs.pooler_output)
        if image_embeds.shape[0] != text_embeds.shape[0] and return_loss:
            raise ValueError(
                f"return_loss needs one caption per image: got {image_embeds.shape[0]} images (pixel_values) "
                f"and {text_embeds.shape[0]} captions (input_ids)"
            )

        # With `device_map` the towers and the head may sit on different devices; the logits live with the text side.
        logit_scale = self.logit_scale.clamp(max=LOGIT_SCALE_MAX).to(text_embeds.device)
        logits_per_text = torch.matmul(text_embeds, image_embeds.t().to(text_embeds.device)) * logit_scale.exp()
        if self.logit_bias is not None:
            logits_per_text = logits_per_text + self.logit_bias.to(text_embeds.device)

        loss = None
        if return_loss:
            from .losses import clip_loss

            loss = clip_loss(
                self.config.loss_type,
                image_embeds,
                text_embeds,
                logit_scale,
                self.logit_bias,
                gather=self.config.loss_gather_features,
            )

        outputs = DualClipOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )
        return outputs if return_dict else outputs.to_tuple()


# transformers >= 5 saves `CLIPTextModel`/`CLIPVisionModel` without the `text_model.`/`vision_model.` prefix that
# older folders (and ours) carry; both layouts load. Registered here so `trust_remote_code` loading gets it too.
_FLAT_TOWER_KEYS = {
    DualClipTextModel: ("text_model", "embeddings|encoder|final_layer_norm"),
    DualClipVisionModel: ("vision_model", "embeddings|pre_layrnorm|encoder|post_layernorm"),
}
for _tower_class, (_prefix, _modules) in _FLAT_TOWER_KEYS.items():
    register_checkpoint_conversion_mapping(
        _tower_class.__name__,
        [WeightRenaming(source_patterns=rf"^({_modules})\.", target_patterns=rf"{_prefix}.\1.")],
        overwrite=True,
    )


__all__ = [
    "DualClipModel",
    "DualClipPreTrainedModel",
    "DualClipTextModel",
    "DualClipTextModelWithProjection",
    "DualClipVisionModel",
    "DualClipVisionModelWithProjection",
]
