"""The Hugging Face text tower family: a transformers text encoder, pooled and projected into the joint space, as
OpenCLIP's `HFTextEncoder` builds it (`roberta-ViT-B-32`, `xlm-roberta-base-ViT-B-32`, `xlm-roberta-large-ViT-H-14`,
`nllb-clip-*`).

The tower holds the encoder itself, built from the nested `encoder_config` (transformers' own `RobertaModel`,
`XLMRobertaModel`, or the encoder half of `M2M100Model` for NLLB): this family writes none of their code. What it
adds is OpenCLIP's:

- the attention mask: padding is masked (`attention_mask = input_ids != pad_token_id` when none is given, as
  OpenCLIP builds it; a mask passed is used as given);
- pooling (`pooling`): the mean over unmasked positions (OpenCLIP's `mean_pooler`), the first position (`cls`:
  `cls_last_hidden_state_pooler`, and `cls_pooler` on encoders without a pooling layer, NLLB's), or the encoder's
  own pooling layer on the first position, `tanh(dense(h[:, 0]))` (`cls_pooler`: OpenCLIP's `cls_pooler` on
  RoBERTa/XLM-R, built with `add_pooling_layer=True`);
- the projection into the joint space (`projection`): a Linear without bias, OpenCLIP's MLP (Linear, exact GELU,
  Linear, no biases, hidden width `(hidden_size + projection_dim) // 2`), or none when the widths already agree.

The projection is part of the tower (`pooled_output_projected`, as in the SigLIP family), not the model's
`text_projection`: OpenCLIP's MLP is not a Linear, and with the tower owning all three forms the layout is one
(`text_model.proj.*`, OpenCLIP's own names under `text.`) whatever the config says. `pooler_output` is thus already
in the joint space, and the model classes add an identity.

State-dict keys are OpenCLIP's with `text.` read as `text_model.`: `text_model.transformer.<encoder's own keys>`
(`embeddings.word_embeddings.weight`, `encoder.layer.N...`; `embed_tokens.weight`, `layers.N...` for NLLB) and
`text_model.proj.weight` (Linear) or `text_model.proj.0.weight`/`text_model.proj.2.weight` (MLP).

Attention is bidirectional, so `pooled_only=True` computes everything and `truncate_for_pooling` cuts nothing.
`output_hidden_states`/`output_attentions` are the held encoder's, recorded by transformers' output capture in it
(attentions need `attn_implementation="eager"`, as for the encoder alone).
"""

from typing import Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.m2m_100.modeling_m2m_100 import M2M100Encoder
from transformers.models.roberta.modeling_roberta import RobertaModel
from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_dualclip_base import TowerConfig
from .modeling_dualclip_base import DualClipPreTrainedModel
from .modeling_dualclip_layers import check_text_inputs

# The encoder each `encoder_config.model_type` builds: the text-input half of the transformers model (NLLB's is the
# encoder of an encoder-decoder, as OpenCLIP takes `AutoModel.from_config(config).encoder`).
ENCODER_CLASSES = {"roberta": RobertaModel, "xlm-roberta": XLMRobertaModel, "m2m_100": M2M100Encoder}
# Encoders that build a pooling layer (`add_pooling_layer`), which `pooling="cls_pooler"` reads.
WITH_POOLING_LAYER = {"roberta", "xlm-roberta"}
# The encoder config of xlm-roberta-base (its config.json): OpenCLIP's `xlm-roberta-base-ViT-B-32` text tower.
XLM_ROBERTA_BASE = dict(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5)


@strict
class DualClipHFTextConfig(TowerConfig, PreTrainedConfig):
    r"""
    Configuration of the Hugging Face text tower: a transformers encoder (`encoder_config`), pooled and projected into
    the joint space as OpenCLIP's `HFTextEncoder` does. The defaults are the text tower of OpenCLIP's
    `xlm-roberta-base-ViT-B-32` (xlm-roberta-base, mean pooling, MLP projection to 512).

    Args:
        encoder_config (`dict` or `PreTrainedConfig`, *optional*):
            The encoder's own config (its `config.json`; `model_type` `"roberta"`, `"xlm-roberta"` or `"m2m_100"`);
            default: xlm-roberta-base's.
        pooling (`str`, defaults to `"mean"`):
            `"mean"`: the mean of the last hidden states over unmasked positions. `"cls"`: the first position's.
            `"cls_pooler"`: the encoder's pooling layer on the first position (RoBERTa, XLM-R).
        projection (`str`, defaults to `"mlp"`):
            Into the joint space: `"linear"` (no bias), `"mlp"` (Linear, GELU, Linear; no biases), or `"none"` (the
            pooled output is the embedding: `projection_dim` must equal the encoder's width).
        projection_dim (`int`, defaults to 512):
            Width of the joint space.

    The encoder's sizes and special ids read through: `vocab_size`, `hidden_size`, `num_hidden_layers`,
    `pad_token_id`, `bos_token_id`, `eos_token_id`, and `max_position_embeddings` (the longest input the encoder
    takes: RoBERTa-style position ids start after `pad_token_id`, so two positions fewer than its table).
    These towers always mask padding (`mask_padding` is `True`).
    """

    model_type = "dualclip_hf_text_model"
    base_config_key = "text_config"
    sub_configs_defaults = {
        "encoder_config": SubConfigSpec(AutoConfig, model_type="xlm-roberta", init_kwargs=XLM_ROBERTA_BASE)
    }
    # The tower ends in its own projection: the dual model adds no `text_projection` (see `modeling_dualclip.py`).
    pooled_output_projected = True
    # OpenCLIP always passes `input_ids != pad_token_id` as the attention mask.
    mask_padding = True

    encoder_config: dict | PreTrainedConfig | None = None
    pooling: Literal["mean", "cls", "cls_pooler"] = "mean"
    projection: Literal["none", "linear", "mlp"] = "mlp"
    projection_dim: int = 512

    @property
    def vocab_size(self) -> int:
        return self.encoder_config.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:  # `resize_token_embeddings` sets it
        self.encoder_config.vocab_size = value

    @property
    def hidden_size(self) -> int:
        return self.encoder_config.hidden_size

    @property
    def num_hidden_layers(self) -> int:
        return self.encoder_config.num_hidden_layers

    @property
    def pad_token_id(self) -> int | None:
        return self.encoder_config.pad_token_id

    @property
    def bos_token_id(self) -> int | None:
        return self.encoder_config.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.encoder_config.eos_token_id

    @property
    def max_position_embeddings(self) -> int:
        encoder = self.encoder_config
        if encoder.model_type == "m2m_100":  # sinusoidal positions: the table is the training length
            return encoder.max_position_embeddings
        return encoder.max_position_embeddings - encoder.pad_token_id - 1

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        model_type = self.encoder_config.model_type
        if model_type not in ENCODER_CLASSES:
            raise ValueError(
                f"`encoder_config.model_type` is {model_type!r}; the Hugging Face text tower family holds "
                f"{', '.join(map(repr, ENCODER_CLASSES))} encoders"
            )
        if getattr(self.encoder_config, "is_decoder", False):
            raise ValueError("`encoder_config.is_decoder` must be False: the tower is a bidirectional encoder")
        if self.pooling == "cls_pooler" and model_type not in WITH_POOLING_LAYER:
            raise ValueError(f"`pooling='cls_pooler'` reads the encoder's pooling layer; a {model_type!r} encoder has "
                             "none (use 'cls')")
        if self.projection == "none" and self.projection_dim != self.hidden_size:
            raise ValueError(f"`projection='none'` needs `projection_dim` ({self.projection_dim}) equal to the "
                             f"encoder's width ({self.hidden_size})")
        if self.pad_token_id is None:
            raise ValueError("`encoder_config.pad_token_id` must be set: the attention mask is built from it")


def projection_head(config: DualClipHFTextConfig) -> nn.Module:
    """OpenCLIP's `HFTextEncoder.proj` for `config.projection`."""
    width, out = config.hidden_size, config.projection_dim
    if config.projection == "none":
        return nn.Identity()
    if config.projection == "linear":
        return nn.Linear(width, out, bias=False)
    hidden = (width + out) // 2
    return nn.Sequential(nn.Linear(width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, out, bias=False))


class DualClipHFTextTransformer(DualClipPreTrainedModel):
    """A transformers text encoder (`transformer`), OpenCLIP's pooling and its projection (`proj`); `pooler_output`
    is in the joint space."""

    config: DualClipHFTextConfig
    input_modalities = ("text",)
    # The held encoder is a transformers model: transformers gathers its `_no_split_modules` and runs its own
    # initialisation and output capture.
    _no_split_modules = []

    def __init__(self, config: DualClipHFTextConfig):
        super().__init__(config)
        encoder_class = ENCODER_CLASSES[config.encoder_config.model_type]
        if config.encoder_config.model_type in WITH_POOLING_LAYER:
            self.transformer = encoder_class(config.encoder_config, add_pooling_layer=config.pooling == "cls_pooler")
        else:
            self.transformer = encoder_class(config.encoder_config)
        self.proj = projection_head(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.transformer.set_input_embeddings(value)

    def truncate_for_pooling(self, input_ids, attention_mask=None, position_ids=None):
        """Nothing to cut: attention is bidirectional."""
        return input_ids, attention_mask, position_ids

    def _pool(self, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls_pooler":
            return outputs.pooler_output
        hidden = outputs.last_hidden_state
        if self.config.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1)

    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, position_ids=None, pooled_only=False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """Encodes `input_ids` (batch, sequence); without `attention_mask`, padding (`pad_token_id`) is masked.
        `last_hidden_state` is the encoder's; `pooler_output` the pooled, projected embedding. `pooled_only` changes
        nothing (every position is computed). `position_ids` are passed to RoBERTa-style encoders (NLLB's takes
        none)."""
        config = self.config
        check_text_inputs(input_ids, attention_mask, config)
        if attention_mask is None:
            attention_mask = (input_ids != config.pad_token_id).long()
        if position_ids is not None:
            if config.encoder_config.model_type == "m2m_100":
                raise ValueError("position_ids: NLLB's (M2M100's) encoder computes its positions from the padding")
            kwargs["position_ids"] = position_ids
        # The tower's config holds the output defaults a caller sets (e.g. `from_pretrained(output_hidden_states=...)`).
        kwargs.setdefault("output_hidden_states", config.output_hidden_states)
        kwargs.setdefault("output_attentions", config.output_attentions)
        outputs = self.transformer(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.proj(self._pool(outputs, attention_mask)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# As the other text towers, this one reads checkpoints that still carry its `text_model.` prefix.
register_checkpoint_conversion_mapping(
    "DualClipHFTextTransformer", [PrefixChange(prefix_to_remove="text_model")], overwrite=True
)


__all__ = ["DualClipHFTextConfig", "DualClipHFTextTransformer"]
