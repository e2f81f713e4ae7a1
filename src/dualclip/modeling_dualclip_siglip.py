"""The SigLIP tower family: transformers' own SigLIP towers, held as dualclip towers.

transformers' `SiglipTextModel` and `SiglipVisionModel` compute what SigLIP computes (big_vision's weights with
`hidden_act="gelu_pytorch_tanh"`, OpenCLIP's timm/text towers with exact `"gelu"`), so this family writes no twin of
them (ARCHITECTURE decision 3): each tower *is* the stock class,
with dualclip's base class in front of it for what every dualclip tower shares (the tower protocol of `towers.py`,
saving with `auto_map`). The forward, the modules, their names and the weight initialisation are transformers'
SigLIP's, so inside `DualClipModel` the state-dict keys are those of `SiglipModel` (`text_model.embeddings.…`,
`text_model.head.…`, `vision_model.head.probe`, …).

- Text: token + learned position embeddings, bidirectional encoder, `final_layer_norm`, pooled at the last position
  (which may be padding: SigLIP pads every caption to `max_position_embeddings` and was trained that way, without
  an attention mask). A mask passed anyway is applied, as `SiglipTextModel` applies it, unless the config says
  `mask_padding=False` (converted big_vision/OpenCLIP models, which never masked padding). Then the tower's own
  `head` Linear (with bias) into the joint space.
- Image: patch embedding (with bias), learned position embedding, no class token, encoder, `post_layernorm`, then
  the attention-pooling head (MAP: a learned probe attends over every patch) whose output is already in the joint
  space.

Both towers end in their own head, so their configs declare `pooled_output_projected`: the dual model adds no
`text_projection`/`visual_projection` Linear on top (they are identities, without weights, as in `SiglipModel`).

`pooled_only=True` computes everything: the MAP head attends over every patch of the last layer, and SigLIP's text
attention is bidirectional, so no position can be skipped by truncation; `last_hidden_state` stays full.
"""

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.siglip.configuration_siglip import SiglipTextConfig, SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import (
    SiglipAttention,
    SiglipEncoderLayer,
    SiglipTextModel,
    SiglipVisionModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .configuration_dualclip_base import TowerConfig
from .modeling_dualclip_base import DualClipPreTrainedModel
from .modeling_dualclip_layers import check_pixel_values, check_text_inputs


@strict
class DualClipSiglipTextConfig(TowerConfig, SiglipTextConfig):
    r"""
    Configuration of the SigLIP text tower: every field of transformers' `SiglipTextConfig` with its name, default
    and meaning (the text tower of `google/siglip-base-patch16-224`). The pooled output is `head(last position)`,
    `projection_size` wide (default: `hidden_size`), already in the joint space.

    Args:
        mask_padding (`bool`, defaults to `True`):
            Whether an `attention_mask` hides padding, as `SiglipTextModel` does with one. `False` for models trained
            attending to their pad tokens (big_vision's and OpenCLIP's SigLIP): a mask passed anyway is ignored.
    """

    model_type = "dualclip_siglip_text_model"
    base_config_key = "text_config"
    # The tower ends in its own head: the dual model adds no `text_projection` (see `modeling_dualclip.py`).
    pooled_output_projected = True

    mask_padding: bool = True

    @property
    def projection_dim(self) -> int:
        """Width of the joint space this tower writes into."""
        return self.projection_size

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})"
            )


@strict
class DualClipSiglipVisionConfig(TowerConfig, SiglipVisionConfig):
    r"""
    Configuration of the SigLIP image tower: every field of transformers' `SiglipVisionConfig` with its name,
    default and meaning (the image tower of `google/siglip-base-patch16-224`). `image_size` and `patch_size` are
    integers (square images and patches, as `SiglipVisionModel` computes them; an image size that is not a multiple
    of the patch size drops the last pixels, as the stride of the patch embedding does: so400m-patch14-384), and `vision_use_head` must be `True`:
    the attention-pooling head's output is the image embedding.
    """

    model_type = "dualclip_siglip_vision_model"
    base_config_key = "vision_config"
    # The attention-pooling head's output is the embedding: the dual model adds no `visual_projection`.
    pooled_output_projected = True

    @property
    def projection_dim(self) -> int:
        """Width of the joint space this tower writes into (the head keeps `hidden_size`)."""
        return self.hidden_size

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        if not isinstance(self.image_size, int) or not isinstance(self.patch_size, int):
            raise ValueError(
                f"`image_size` ({self.image_size!r}) and `patch_size` ({self.patch_size!r}) must be integers "
                "(square images and patches)"
            )
        if not self.vision_use_head:
            raise ValueError("`vision_use_head` must be True: the attention-pooling head's output is the image embedding")


class DualClipSiglipTextTransformer(DualClipPreTrainedModel, SiglipTextModel):
    """transformers' `SiglipTextModel` as a dualclip text tower; `pooler_output` is the head's output."""

    config: DualClipSiglipTextConfig
    base_model_prefix = "dualclip"
    input_modalities = ("text",)
    _no_split_modules = ["SiglipTextEmbeddings", "SiglipEncoderLayer"]
    _can_record_outputs = {"hidden_states": SiglipEncoderLayer, "attentions": SiglipAttention}

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.token_embedding = value

    def truncate_for_pooling(self, input_ids, attention_mask=None, position_ids=None):
        """Nothing to cut: attention is bidirectional and the pooled position is the last one."""
        return input_ids, attention_mask, position_ids

    def forward(
        self, input_ids=None, attention_mask=None, position_ids=None, pooled_only=False, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """`SiglipTextModel.forward`. `pooled_only` changes nothing (every position is computed, see the module)."""
        check_text_inputs(input_ids, attention_mask, self.config)
        if not self.config.mask_padding:
            attention_mask = None
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)


class DualClipSiglipVisionTransformer(DualClipPreTrainedModel, SiglipVisionModel):
    """transformers' `SiglipVisionModel` as a dualclip image tower; `pooler_output` is the attention-pooling head's."""

    config: DualClipSiglipVisionConfig
    base_model_prefix = "dualclip"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["SiglipVisionEmbeddings", "SiglipEncoderLayer", "SiglipMultiheadAttentionPoolingHead"]
    _can_record_outputs = {"hidden_states": SiglipEncoderLayer, "attentions": SiglipAttention}

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    def forward(
        self, pixel_values=None, interpolate_pos_encoding=False, pooled_only=False, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """`SiglipVisionModel.forward`. `pooled_only` changes nothing: the head attends over every patch."""
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)
        return super().forward(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)


# As transformers' SigLIP towers, each reads checkpoints that still carry its `text_model.`/`vision_model.` prefix.
register_checkpoint_conversion_mapping(
    "DualClipSiglipTextTransformer", [PrefixChange(prefix_to_remove="text_model")], overwrite=True
)
register_checkpoint_conversion_mapping(
    "DualClipSiglipVisionTransformer", [PrefixChange(prefix_to_remove="vision_model")], overwrite=True
)


__all__ = [
    "DualClipSiglipTextConfig",
    "DualClipSiglipTextTransformer",
    "DualClipSiglipVisionConfig",
    "DualClipSiglipVisionTransformer",
]
