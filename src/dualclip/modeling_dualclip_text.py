"""The CLIP text tower family: token + learned position embeddings, pre-norm transformer (causal by default),
final LayerNorm, pooled at one position per row (end-of-text by default).

Module names follow transformers' `CLIPTextModel` (`embeddings.token_embedding`, `encoder.layers.N`,
`final_layer_norm`), so CLIP text checkpoints, LoRAs and textual-inversion embeddings apply unchanged.
"""

from typing import Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_dualclip_base import OPENAI_BOS_TOKEN_ID, OPENAI_EOS_TOKEN_ID, OPENAI_VOCAB_SIZE, TowerConfig
from .modeling_dualclip_base import DualClipPreTrainedModel
from .modeling_dualclip_layers import (
    DualClipAttention,
    DualClipEncoder,
    DualClipEncoderLayer,
    PooledQuery,
    check_text_inputs,
    supports_pooled_query,
)

# Before transformers PR #24773, CLIP configs said `eos_token_id: 2` and pooled at the argmax of the ids.
LEGACY_EOS_TOKEN_ID = 2
# The pooled fast path cuts captions after the batch's last pooled position, rounded up to a multiple of this,
# so that a compiled tower sees at most `max_position_embeddings / 8` distinct lengths.
TRUNCATION_BUCKET = 8


@strict
class DualClipTextConfig(TowerConfig, PreTrainedConfig):
    r"""
    Configuration of the dualclip text tower: a causal (by default) transformer pooled at its end-of-text token.

    Every field of `CLIPTextConfig` keeps its name, default and meaning (OpenAI ViT-B/32 text tower). The extra
    fields describe OpenCLIP variants:

    Args:
        pooling (`str`, defaults to `"eos"`):
            Which position the pooled output comes from. `"eos"`: the first position holding `eos_token_id` (robust
            to added tokens with ids above EOS; as transformers CLIP, a row without EOS pools position 0).
            `"last"`: the last position. `"argmax"`: the position of the largest id (OpenAI's original rule).
            `"first_eos"`: the first position holding `eos_token_id`, whatever its value: `"eos"` without the legacy
            reading of id 2 below, for vocabularies whose real end-of-text id is 2 (MetaCLIP 2's `</s>`).
        causal_mask (`bool`, defaults to `True`):
            Whether attention is causal. OpenCLIP's `no_causal_mask` models set it to `False`.
        mask_padding (`bool`, defaults to `True`):
            Whether an `attention_mask` hides padding, as in transformers' CLIP. `False` for models trained attending
            to their pad tokens (OpenAI CLIP, OpenCLIP): a mask passed anyway is ignored, so the numbers stay the
            original's (with a bidirectional mask or `pooling="last"` the pooled output itself depends on it).
        projection_bias (`bool`, defaults to `False`):
            Whether `text_projection` has a bias (OpenCLIP `proj_bias`).
        layer_scale_init_value (`float`, *optional*):
            Initial value of LayerScale on both residual branches of every layer (OpenCLIP `ls_init_value`).
            `None` means no LayerScale.
        append_class_token (`bool`, defaults to `False`):
            CoCa's text tower (OpenCLIP `embed_cls`): a learned embedding (`embeddings.class_embedding`) appended
            after the tokens, so a sequence holds `max_position_embeddings - 1` tokens; use with `pooling="last"`,
            which then pools that position. Attention keys are masked as OpenCLIP's CoCa masks them in every
            released model (`correct_cls_mask=False`): key `j > 0` only when token `j - 1` is not `pad_token_id`.

    A legacy `eos_token_id` of 2 (transformers configs before PR #24773, which pooled with argmax) is read as
    OpenAI's real end-of-text id 49407 when the vocabulary is OpenAI's, so added tokens (textual inversion) with
    larger ids cannot move the pooled position. With any other vocabulary the real id is unknown and it pools with
    argmax, as transformers does.
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

    pooling: Literal["eos", "first_eos", "last", "argmax"] = "eos"
    causal_mask: bool = True
    mask_padding: bool = True
    projection_bias: bool = False
    layer_scale_init_value: int | float | None = None
    append_class_token: bool = False

    def __post_init__(self, **kwargs):
        legacy = self.eos_token_id == LEGACY_EOS_TOKEN_ID and self.pooling == "eos"
        if legacy and self.vocab_size == OPENAI_VOCAB_SIZE:
            self.eos_token_id = OPENAI_EOS_TOKEN_ID
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        if self.layer_scale_init_value is not None and self.layer_scale_init_value <= 0:
            raise ValueError(f"`layer_scale_init_value` must be None or positive, got {self.layer_scale_init_value}")
        if self.append_class_token and (self.pooling != "last" or self.pad_token_id is None):
            raise ValueError("`append_class_token=True` needs `pooling='last'` (the appended position is the pooled "
                             "one) and a `pad_token_id` (its key mask reads it)")

    @property
    def pools_by_argmax(self) -> bool:
        return self.pooling == "argmax" or (self.pooling == "eos" and self.eos_token_id == LEGACY_EOS_TOKEN_ID)


class DualClipTextEmbeddings(nn.Module):
    """Token embedding plus learned absolute position embedding."""

    def __init__(self, config: DualClipTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        if config.append_class_token:
            self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))

    def init_dualclip_weights(self, factor: float) -> None:
        init.normal_(self.token_embedding.weight, std=factor * 0.02)
        init.normal_(self.position_embedding.weight, std=factor * 0.02)
        if hasattr(self, "class_embedding"):
            init.normal_(self.class_embedding, std=factor * 0.01)

    def forward(self, input_ids, position_ids=None):
        embeddings = self.token_embedding(input_ids)
        if hasattr(self, "class_embedding"):
            embeddings = torch.cat([embeddings, self.class_embedding.expand(embeddings.shape[0], 1, -1)], dim=1)
        if position_ids is None:
            # Looked up through the module, not sliced from `.weight`: under `device_map` offloading, accelerate
            # brings a weight to the device only when its module is called.
            position_ids = torch.arange(embeddings.shape[1], device=input_ids.device)
        return embeddings + self.position_embedding(position_ids)


class DualClipTextTransformer(DualClipPreTrainedModel):
    """Embeddings, encoder and final LayerNorm of the text tower; pooled at one position per row."""

    config: DualClipTextConfig
    _no_split_modules = ["DualClipTextEmbeddings", "DualClipEncoderLayer"]
    _can_record_outputs = {"hidden_states": DualClipEncoderLayer, "attentions": DualClipAttention}

    def __init__(self, config: DualClipTextConfig):
        super().__init__(config)
        self.embeddings = DualClipTextEmbeddings(config)
        self.encoder = DualClipEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.token_embedding = value

    def pooled_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Index of the pooled position in each row (see `DualClipTextConfig.pooling`)."""
        config = self.config
        if config.pooling == "last":
            last = input_ids.shape[-1] - 1 + config.append_class_token
            return torch.full(input_ids.shape[:1], last, dtype=torch.long, device=input_ids.device)
        if config.pools_by_argmax:
            return input_ids.to(torch.int).argmax(dim=-1)
        return (input_ids == config.eos_token_id).int().argmax(dim=-1)

    def truncate_for_pooling(self, input_ids, attention_mask=None, position_ids=None):
        """Under a causal mask, positions after the batch's last pooled position cannot change any pooled output:
        cuts them off (rounded up to a multiple of 8). Likewise a padding mask that hides nothing at or before any
        row's pooled position (right padding, as tokenizers pad) cannot change one, and is dropped, which lets
        attention run its unmasked causal kernel. Syncs once with the device to read both facts."""
        if not self.config.mask_padding:
            attention_mask = None
        if not self.config.causal_mask:
            return input_ids, attention_mask, position_ids
        positions = self.pooled_positions(input_ids)
        facts = [positions.max() + 1]
        if attention_mask is not None:
            keys = torch.arange(input_ids.shape[-1], device=input_ids.device)
            seen_by_pooled = keys[None, :] <= positions[:, None]
            facts.append(((attention_mask == 0) & seen_by_pooled).any().to(facts[0].dtype))
        needed, *padding_seen = torch.stack(facts).tolist()
        keep = min(-(-needed // TRUNCATION_BUCKET) * TRUNCATION_BUCKET, input_ids.shape[-1])
        if attention_mask is not None and not padding_seen[0]:
            attention_mask = None
        return (
            input_ids[:, :keep],
            None if attention_mask is None else attention_mask[:, :keep],
            None if position_ids is None else position_ids[..., :keep],
        )

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, input_ids, attention_mask=None, position_ids=None, pooled_only=False, **kwargs: Unpack[TransformersKwargs]
    ):
        """Encodes `input_ids` (batch, sequence). `pooled_only=True`: the last layer computes the pooled position
        alone and `last_hidden_state` is `(batch, 1, hidden)`, that position."""
        config = self.config
        check_text_inputs(input_ids, attention_mask, config)
        if not config.mask_padding:
            attention_mask = None
        pool_at = self.pooled_positions(input_ids)
        hidden_states = self.embeddings(input_ids, position_ids)
        if config.append_class_token:
            attention_mask = self._class_token_key_mask(input_ids, attention_mask)
        if config.causal_mask:
            # No cache; passed by position (its name changed between transformers 5.23 and 5.24).
            mask = create_causal_mask(config, hidden_states, attention_mask, None)
        else:
            mask = create_bidirectional_mask(config=config, inputs_embeds=hidden_states, attention_mask=attention_mask)

        pooled_query = None
        if pooled_only and supports_pooled_query(config):
            key_mask = None if attention_mask is None else attention_mask.bool()
            if config.causal_mask:
                keys = torch.arange(hidden_states.shape[1], device=input_ids.device)
                causal = keys[None, :] <= pool_at[:, None]
                key_mask = causal if key_mask is None else key_mask & causal
            pooled_query = PooledQuery(pool_at, key_mask)

        kwargs["is_causal"] = config.causal_mask
        last_hidden_state = self.encoder(hidden_states, mask, pooled_query=pooled_query, **kwargs).last_hidden_state
        last_hidden_state = self.final_layer_norm(last_hidden_state)
        if pooled_query is not None:
            pooled_output = last_hidden_state[:, 0]
        else:
            rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
            pooled_output = last_hidden_state[rows, pool_at.to(last_hidden_state.device)]
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)

    def _class_token_key_mask(self, input_ids, attention_mask=None) -> torch.Tensor:
        """OpenCLIP CoCa's key mask over tokens + appended class token: key `j > 0` attends only when token `j - 1`
        is not padding (every released CoCa was trained with this one-position shift), key 0 always; combined with a
        passed padding mask (extended to the class position) when the config masks padding."""
        valid = input_ids != self.config.pad_token_id
        keys = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        if attention_mask is not None:
            keys = keys & torch.cat([attention_mask.bool(), torch.ones_like(valid[:, :1])], dim=1)
        return keys.long()



# As transformers' `CLIPTextModel`, the tower reads checkpoints that still carry its `text_model.` prefix.
register_checkpoint_conversion_mapping(
    "DualClipTextTransformer", [PrefixChange(prefix_to_remove="text_model")], overwrite=True
)


__all__ = ["DualClipTextConfig", "DualClipTextTransformer"]
