"""Layers shared by dualclip's towers: attention on transformers' attention interface, the MLPs (GELU-style and
gated: SwiGLU, GeGLU), LayerScale, rotary position embeddings, the transformer layer and the encoder stack; the
resampling of learned position embeddings to another patch grid; and the input check every image tower makes.

Attention runs through `ALL_ATTENTION_FUNCTIONS` (eager, sdpa, flex, flash, registered kernels) with masks from
transformers' mask utilities, exactly as transformers' CLIP does. Module and parameter names follow transformers
CLIP (`self_attn.q_proj`, `layer_norm1`, `mlp.fc1`, ...), so its checkpoints load unchanged.

The one addition is the pooled query: a tower whose output is only read at one position per row can ask the last
layer to compute that position alone (every position still serves as key and value).

Options a family's config may declare (absent: the CLIP layer): `key_bias=False` (no bias on `k_proj`, EVA),
`scale_attn_inner` (a LayerNorm on the heads' output before `out_proj`, EVA02), `swiglu_mlp`/`scale_mlp` (the SwiGLU
feed-forward, with a LayerNorm inside, EVA02), `geglu_mlp` (the GeGLU feed-forward, with a LayerNorm on its input,
ViTamin), `use_post_norm` (normalise each branch's output instead of its input, EVA02-E), `layer_scale_init_value`
(LayerScale). Rotary position embeddings are passed to the layers as a `(cos, sin)` pair.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import eager_attention_forward


def apply_rotary(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding in the interleaved layout (EVA/timm): channels `2i` and `2i + 1` rotate as a pair.

    `states` is `(batch, heads, length, head_dim)`; `cos`/`sin` are `(length, head_dim)` or `(batch, length,
    head_dim)`, each angle repeated for its pair. A position with `cos = 1`, `sin = 0` is left exactly as it is.
    """
    rotated = torch.stack([-states[..., 1::2], states[..., ::2]], dim=-1).reshape(states.shape)
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
    return (states * cos + rotated * sin).to(states.dtype)


class DualClipAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (transformers CLIP layout).

    `query_states`, when given, holds fewer positions than `hidden_states`: only they are queries. `num_heads`
    overrides the config's (an attention-pooling head has its own). `rotary` (`(cos, sin)` for the positions of
    `hidden_states`) rotates keys and queries; `query_rotary` gives the queries' own when `query_states` is a subset.
    """

    def __init__(self, config, num_heads: int | None = None):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = num_heads or config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = False
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=getattr(config, "key_bias", True))
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        if getattr(config, "scale_attn_inner", False):
            self.inner_norm = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        else:
            self.inner_norm = nn.Identity()
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def init_dualclip_weights(self, factor: float) -> None:
        """OpenAI's scheme, as transformers CLIP: in-projections scaled by depth, out-projection by width."""
        in_std = self.embed_dim**-0.5 * (2 * self.config.num_hidden_layers) ** -0.5 * factor
        for projection in (self.q_proj, self.k_proj, self.v_proj):
            init.normal_(projection.weight, std=in_std)
        init.normal_(self.out_proj.weight, std=self.embed_dim**-0.5 * factor)

    def forward(self, hidden_states, attention_mask=None, query_states=None, rotary=None, query_rotary=None, **kwargs):
        query_states = hidden_states if query_states is None else query_states
        query_shape = query_states.shape[:-1]
        queries = self.q_proj(query_states).view(*query_shape, -1, self.head_dim).transpose(1, 2)
        keys = self.k_proj(hidden_states).view(*hidden_states.shape[:-1], -1, self.head_dim).transpose(1, 2)
        values = self.v_proj(hidden_states).view(*hidden_states.shape[:-1], -1, self.head_dim).transpose(1, 2)
        if rotary is not None:
            queries = apply_rotary(queries, *(rotary if query_rotary is None else query_rotary))
            keys = apply_rotary(keys, *rotary)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            queries,
            keys,
            values,
            attention_mask,
            scaling=self.scale,
            dropout=0.0 if not self.training else self.dropout,
            **kwargs,
        )
        attn_output = attn_output.reshape(*query_shape, -1).contiguous()
        return self.out_proj(self.inner_norm(attn_output)), attn_weights


class DualClipMLP(nn.Module):
    """Two-layer feed-forward block (`fc1`, activation, `fc2`); `intermediate_size` overrides the config's."""

    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        self.config = config
        intermediate_size = intermediate_size or config.intermediate_size
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, config.hidden_size)

    def init_dualclip_weights(self, factor: float) -> None:
        hidden = self.config.hidden_size
        init.normal_(self.fc1.weight, std=(2 * hidden) ** -0.5 * factor)
        init.normal_(self.fc2.weight, std=hidden**-0.5 * (2 * self.config.num_hidden_layers) ** -0.5 * factor)

    def forward(self, hidden_states):
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class DualClipGatedMLP(nn.Module):
    """Gated feed-forward block, `fc2(norm(act(fc1_g(x)) * fc1_x(x)))` (timm's names and layout): SwiGLU (EVA02), a
    SiLU gate with the LayerNorm `norm` there when the config says `scale_mlp`; or, when the config says
    `geglu_mlp` (ViTamin), GeGLU: a `hidden_act` gate on the output of a LayerNorm of its own (`input_norm`)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        geglu = getattr(config, "geglu_mlp", False)
        if geglu:
            self.input_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        else:
            self.input_norm = nn.Identity()
        self.activation_fn = ACT2FN[config.hidden_act if geglu else "silu"]
        self.fc1_g = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc1_x = nn.Linear(config.hidden_size, config.intermediate_size)
        if getattr(config, "scale_mlp", False):
            self.norm = nn.LayerNorm(config.intermediate_size, eps=config.layer_norm_eps)
        else:
            self.norm = nn.Identity()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def init_dualclip_weights(self, factor: float) -> None:
        hidden = self.config.hidden_size
        for projection in (self.fc1_g, self.fc1_x):
            init.normal_(projection.weight, std=(2 * hidden) ** -0.5 * factor)
        init.normal_(self.fc2.weight, std=hidden**-0.5 * (2 * self.config.num_hidden_layers) ** -0.5 * factor)

    def forward(self, hidden_states):
        hidden_states = self.input_norm(hidden_states)
        gated = self.activation_fn(self.fc1_g(hidden_states)) * self.fc1_x(hidden_states)
        return self.fc2(self.norm(gated))


class DualClipLayerScale(nn.Module):
    """Per-channel learned scale on a residual branch (OpenCLIP `ls_init_value`)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def init_dualclip_weights(self, factor: float) -> None:
        init.constant_(self.scale, self.init_value)

    def forward(self, hidden_states):
        return hidden_states * self.scale


def resample_position_grid(positions: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Learned position embeddings of a patch grid, `(grid[0] * grid[1], width)` in row-major order, resampled to
    `new_grid` as timm's `resample_abs_pos_embed` does (bicubic, antialiased, in float32); unchanged for the same grid.
    """
    if tuple(grid) == tuple(new_grid):
        return positions
    patches = positions.reshape(1, *grid, -1).permute(0, 3, 1, 2).float()
    patches = nn.functional.interpolate(patches, size=tuple(new_grid), mode="bicubic", align_corners=False,
                                        antialias=True)
    return patches.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(positions.dtype)


class DualClipEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`, with optional LayerScale; or, when
    the config says `use_post_norm` (EVA02-E), post-norm: `x + ln1(attn(x))`, then `x + ln2(mlp(x))`."""

    def __init__(self, config):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.post_norm = getattr(config, "use_post_norm", False)
        self.self_attn = DualClipAttention(config)
        self.layer_norm1 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        gated = getattr(config, "swiglu_mlp", False) or getattr(config, "geglu_mlp", False)
        self.mlp = DualClipGatedMLP(config) if gated else DualClipMLP(config)
        self.layer_norm2 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        layer_scale = getattr(config, "layer_scale_init_value", None)
        if layer_scale is not None:
            self.layer_scale1 = DualClipLayerScale(self.embed_dim, layer_scale)
            self.layer_scale2 = DualClipLayerScale(self.embed_dim, layer_scale)
        else:
            self.layer_scale1 = self.layer_scale2 = nn.Identity()

    def forward(self, hidden_states, attention_mask=None, query_positions=None, rotary=None, **kwargs):
        """`query_positions` (one index per row) computes only that position's output, shape (batch, 1, hidden);
        `attention_mask` must then be the one for those queries. `rotary`: `(cos, sin)`, `(length, head_dim)` each,
        for rotary position embeddings."""
        attention_input = hidden_states if self.post_norm else self.layer_norm1(hidden_states)
        query_states = query_rotary = None
        if query_positions is not None:
            rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
            hidden_states = hidden_states[rows, query_positions].unsqueeze(1)
            query_states = attention_input[rows, query_positions].unsqueeze(1)
            if rotary is not None:
                query_rotary = tuple(table[query_positions].unsqueeze(1) for table in rotary)
        attended, _ = self.self_attn(
            attention_input, attention_mask, query_states=query_states, rotary=rotary, query_rotary=query_rotary,
            **kwargs,
        )
        if self.post_norm:
            hidden_states = hidden_states + self.layer_norm1(attended)
            return hidden_states + self.layer_norm2(self.mlp(hidden_states))
        hidden_states = hidden_states + self.layer_scale1(attended)
        return hidden_states + self.layer_scale2(self.mlp(self.layer_norm2(hidden_states)))


class PooledQuery:
    """What the last layer needs to compute only the pooled positions: one index per row, and the mask of the keys
    each of them may attend to (`(batch, length)` booleans, or `None` for all)."""

    def __init__(self, positions: torch.Tensor, key_mask: torch.Tensor | None = None):
        self.positions = positions
        self.key_mask = key_mask


def supports_pooled_query(config) -> bool:
    """Whether the attention implementation has a mask function, which the pooled query's per-row key mask needs
    (implementations registered without one receive no mask at all)."""
    return config._attn_implementation in ALL_MASK_ATTENTION_FUNCTIONS


class DualClipEncoder(nn.Module):
    """A stack of [`DualClipEncoderLayer`]s."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([DualClipEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds, attention_mask=None, pooled_query: PooledQuery | None = None, **kwargs):
        """With `pooled_query` the last layer computes only those positions: `last_hidden_state` is
        `(batch, 1, hidden)`."""
        hidden_states = inputs_embeds
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if index == last and pooled_query is not None:
                rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
                query_mask = create_bidirectional_mask(
                    config=self.config,
                    inputs_embeds=hidden_states[rows, pooled_query.positions].unsqueeze(1),
                    attention_mask=pooled_query.key_mask,
                    encoder_hidden_states=hidden_states,
                )
                kwargs = {**kwargs, "is_causal": False}
                hidden_states = layer(hidden_states, query_mask, query_positions=pooled_query.positions, **kwargs)
            else:
                hidden_states = layer(hidden_states, attention_mask, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


def check_pixel_values(pixel_values, config, interpolate_pos_encoding: bool) -> None:
    """Raises a `ValueError` naming `pixel_values` when it is not a (batch, channels, height, width) image batch.

    NaN pixels are not checked (that would sync the device): they give NaN features for that image only.
    """
    if pixel_values is None:
        raise ValueError("pixel_values is required: a (batch, channels, height, width) float tensor")
    if not torch.is_tensor(pixel_values) or pixel_values.dim() != 4 or not pixel_values.is_floating_point():
        shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a float tensor of shape (batch, channels, height, width), got {shape}")
    batch, channels, height, width = pixel_values.shape
    if batch == 0:
        raise ValueError("pixel_values is empty (batch of 0 images)")
    if channels != config.num_channels:
        raise ValueError(f"pixel_values has {channels} channels, the model expects {config.num_channels}")
    size = config.image_size
    if not interpolate_pos_encoding and (height, width) != (size, size):
        raise ValueError(
            f"pixel_values is {height}x{width}, the model expects {size}x{size}; "
            "pass interpolate_pos_encoding=True to run at another size"
        )


def check_text_inputs(input_ids, attention_mask, config) -> None:
    """Raises a `ValueError` naming the argument for inputs the tower cannot encode; never syncs a GPU."""
    if input_ids is None:
        raise ValueError("input_ids is required: a (batch, sequence) tensor of token ids")
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.is_floating_point():
        shape = tuple(input_ids.shape) if torch.is_tensor(input_ids) else type(input_ids).__name__
        raise ValueError(f"input_ids must be an integer tensor of shape (batch, sequence), got {shape}")
    if 0 in input_ids.shape:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): pass at least one token per row")
    # A tower that appends a class token (CoCa) keeps one position for it.
    class_token = getattr(config, "append_class_token", False)
    if input_ids.shape[-1] > config.max_position_embeddings - class_token:
        raise ValueError(
            f"input_ids has {input_ids.shape[-1]} positions but max_position_embeddings is "
            f"{config.max_position_embeddings}{' (one of them for the appended class token)' if class_token else ''}; "
            "truncate to fit (split longer prompts: see dualclip.conditioning)"
        )
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}: "
            "they must be equal (one mask entry per token)"
        )
    # Out-of-range ids fail inside the embedding with an opaque message; on CPU checking costs nothing.
    if input_ids.device.type == "cpu" and not torch.compiler.is_compiling() and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
        raise ValueError(
            f"input_ids holds ids outside the vocabulary: found {int(input_ids.min())}..{int(input_ids.max())}, "
            f"vocab_size is {config.vocab_size} (resize_token_embeddings after adding tokens)"
        )
