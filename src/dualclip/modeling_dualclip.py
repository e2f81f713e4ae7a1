"""dualclip models: the base class, the five public model classes, their outputs and the contrastive head.

The towers come from the registry (`towers.py`); nothing here names a tower family. Called the way transformers
calls its CLIP classes, each class returns exactly what stock returns (fields, shapes, flags, numbers). What is
faster is explicit: `encode_text`/`encode_image` (OpenCLIP's API, pooled fast path) and `pooled_only=True`.

State-dict keys follow transformers CLIP's on-disk layout (`text_model.encoder.layers.N.self_attn.q_proj`,
`vision_model.pre_layrnorm`, `text_projection`, `logit_scale`, ...); variants stock CLIP lacks add keys and never
rename shared ones.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.modeling_utils import PreTrainedModel  # noqa: F401  (diffusers finds the loading methods by this name)
from transformers.utils.generic import can_return_tuple

from .configuration_dualclip import DualClipConfig
from .modeling_dualclip_base import DualClipPreTrainedModel
from .modeling_dualclip_text import DualClipTextConfig
from .modeling_dualclip_vit import DualClipVisionConfig
from .towers import build_tower


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


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """Unit-length rows. The norm is taken in float32: in float16 the sum of squares of a 768-wide feature
    overflows once entries reach ~9."""
    return features / features.float().norm(p=2, dim=-1, keepdim=True).to(features.dtype)


def joint_projection(tower_config, in_features: int, out_features: int) -> nn.Module:
    """The map from a tower's pooled output into the joint space: a Linear (`projection_bias` from the tower config),
    or the identity, without weights, for a family whose tower ends in its own head (`pooled_output_projected`)."""
    if getattr(tower_config, "pooled_output_projected", False):
        return nn.Identity()
    return nn.Linear(in_features, out_features, bias=tower_config.projection_bias)


def pooled_width(tower_config) -> int:
    """Width of a tower's `pooler_output`: `hidden_size`, unless its config says otherwise (`pooler_output_size`:
    CoCa's attentional pooler writes `projection_dim`-wide outputs)."""
    return getattr(tower_config, "pooler_output_size", tower_config.hidden_size)


def _init_projection(projection: nn.Module, std: float) -> None:
    if isinstance(projection, nn.Linear):
        init.normal_(projection.weight, std=std)


# Keys of the other tower found when one tower loads a full CLIP folder: expected, not worth a warning.
_IMAGE_SIDE_KEYS = [r"^vision_model\.", r"^visual_projection\."]
_TEXT_SIDE_KEYS = [r"^text_model\.", r"^text_projection\."]


class _TextSide:
    """Shared by the classes holding a text tower (`text_model`)."""

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    def _text_tower(self, input_ids, attention_mask, position_ids, pooled_only, kwargs) -> BaseModelOutputWithPooling:
        if pooled_only and _wants_intermediate_outputs(self, kwargs):
            pooled_only = False  # every position's output is being captured: compute them all
        if pooled_only and not torch.compiler.is_compiling():
            input_ids, attention_mask, position_ids = self.text_model.truncate_for_pooling(
                input_ids, attention_mask, position_ids
            )
        return self.text_model(
            input_ids, attention_mask, position_ids, pooled_only=pooled_only, return_dict=True, **kwargs
        )

    def _encode_text(self, input_ids, attention_mask, position_ids, normalize: bool) -> torch.Tensor:
        pooled = self._text_tower(input_ids, attention_mask, position_ids, True, {}).pooler_output
        features = self.text_projection(pooled)
        return l2_normalize(features) if normalize else features


class _VisionSide:
    """Shared by the classes holding an image tower (`vision_model`)."""

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.get_input_embeddings()

    def _vision_tower(self, pixel_values, interpolate_pos_encoding, pooled_only, kwargs) -> BaseModelOutputWithPooling:
        if pooled_only and _wants_intermediate_outputs(self, kwargs):
            pooled_only = False
        return self.vision_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            pooled_only=pooled_only,
            return_dict=True,
            **kwargs,
        )

    def _encode_image(self, pixel_values, normalize: bool, interpolate_pos_encoding: bool) -> torch.Tensor:
        pooled = self._vision_tower(pixel_values, interpolate_pos_encoding, True, {}).pooler_output
        features = self.visual_projection(pooled)
        return l2_normalize(features) if normalize else features


def _wants_intermediate_outputs(model, kwargs) -> bool:
    config = model.config
    return bool(
        kwargs.get("output_hidden_states", config.output_hidden_states)
        or kwargs.get("output_attentions", config.output_attentions)
    )


class DualClipTextModel(_TextSide, DualClipPreTrainedModel):
    """The text tower without projection: token-level states and the pooled (EOS) state.

    This is the `text_encoder` of Stable Diffusion 1.x/2.x and the first encoder of SDXL and Flux. Its
    `text_model.final_layer_norm` is where diffusers applies the final norm after clip-skip.
    """

    config: DualClipTextConfig
    input_modalities = ("text",)
    _keys_to_ignore_on_load_unexpected = _IMAGE_SIDE_KEYS + [r"^text_projection\.", r"^logit_(scale|bias)$"]

    def __init__(self, config: DualClipTextConfig):
        super().__init__(config)
        self.text_model = build_tower(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pooled_only: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """Encodes `input_ids` (batch, sequence), as transformers' `CLIPTextModel.forward`.

        `pooled_only=True` promises that only `pooler_output` is read: under a causal mask the positions after the
        batch's last pooled position are not computed and the last layer computes the pooled position alone (same
        pooled numbers, a fraction of the work); `last_hidden_state` is then `(batch, 1, hidden)`, the pooled
        position. It is ignored when hidden states or attentions are requested.
        """
        return self._text_tower(input_ids, attention_mask, position_ids, pooled_only, kwargs)


class DualClipTextModelWithProjection(_TextSide, DualClipPreTrainedModel):
    """The text tower plus `text_projection`: `text_embeds` in the joint space (SDXL's `text_encoder_2`)."""

    config: DualClipTextConfig
    input_modalities = ("text",)
    _keys_to_ignore_on_load_unexpected = _IMAGE_SIDE_KEYS + [r"^logit_(scale|bias)$"]

    def __init__(self, config: DualClipTextConfig):
        super().__init__(config)
        self.text_model = build_tower(config)
        self.text_projection = joint_projection(config, config.hidden_size, config.projection_dim)
        self.post_init()

    def init_dualclip_weights(self, factor: float) -> None:
        _init_projection(self.text_projection, self.config.hidden_size**-0.5 * factor)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pooled_only: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DualClipTextModelOutput:
        """Encodes `input_ids` and projects the pooled state; `pooled_only` as in [`DualClipTextModel.forward`]."""
        text_outputs = self._text_tower(input_ids, attention_mask, position_ids, pooled_only, kwargs)
        return DualClipTextModelOutput(
            text_embeds=self.text_projection(text_outputs.pooler_output),
            last_hidden_state=text_outputs.last_hidden_state,
            hidden_states=text_outputs.hidden_states,
            attentions=text_outputs.attentions,
        )

    def encode_text(self, input_ids, normalize: bool = False, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Projected text features `(batch, projection_dim)`, as OpenCLIP's `encode_text`; computes only what the
        pooled position needs. `normalize=True` returns unit-length rows."""
        return self._encode_text(input_ids, attention_mask, position_ids, normalize)


class DualClipVisionModel(_VisionSide, DualClipPreTrainedModel):
    """The image tower without projection: patch-level states and the pooled state."""

    config: DualClipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _keys_to_ignore_on_load_unexpected = _TEXT_SIDE_KEYS + [r"^visual_projection\.", r"^logit_(scale|bias)$"]

    def __init__(self, config: DualClipVisionConfig):
        super().__init__(config)
        self.vision_model = build_tower(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        pooled_only: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """Encodes `pixel_values` (batch, channels, height, width); other sizes need `interpolate_pos_encoding`.

        `pooled_only=True` promises that only `pooler_output` is read: the last layer then computes the pooled
        position alone (same pooled numbers, less work) and `last_hidden_state` is `(batch, 1, hidden)`.
        """
        return self._vision_tower(pixel_values, interpolate_pos_encoding, pooled_only, kwargs)


class DualClipVisionModelWithProjection(_VisionSide, DualClipPreTrainedModel):
    """The image tower plus `visual_projection`: `image_embeds` in the joint space."""

    config: DualClipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _keys_to_ignore_on_load_unexpected = _TEXT_SIDE_KEYS + [r"^logit_(scale|bias)$"]

    def __init__(self, config: DualClipVisionConfig):
        super().__init__(config)
        self.vision_model = build_tower(config)
        self.visual_projection = joint_projection(config, pooled_width(config), config.projection_dim)
        self.post_init()

    def init_dualclip_weights(self, factor: float) -> None:
        _init_projection(self.visual_projection, pooled_width(self.config) ** -0.5 * factor)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        pooled_only: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DualClipVisionModelOutput:
        """Encodes `pixel_values` and projects the pooled state; `pooled_only` as in [`DualClipVisionModel.forward`]."""
        vision_outputs = self._vision_tower(pixel_values, interpolate_pos_encoding, pooled_only, kwargs)
        return DualClipVisionModelOutput(
            image_embeds=self.visual_projection(vision_outputs.pooler_output),
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )

    def encode_image(self, pixel_values, normalize: bool = False, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Projected image features `(batch, projection_dim)`, as OpenCLIP's `encode_image`; computes only what the
        pooled position needs. `normalize=True` returns unit-length rows."""
        return self._encode_image(pixel_values, normalize, interpolate_pos_encoding)


class DualClipModel(_TextSide, _VisionSide, DualClipPreTrainedModel):
    """Both towers, their projections and the contrastive head (`logit_scale`, optional `logit_bias`).

    `forward` returns image-text logits and, with `return_loss=True`, the loss named by `config.loss_type`,
    with negatives gathered across processes under `torch.distributed` (see `dualclip.losses`). The logit scale is
    used as it is (never clamped here); `config.logit_scale_max` caps it during training only.
    """

    config: DualClipConfig
    _extra_auto_classes = ("AutoModelForZeroShotImageClassification",)

    def __init__(self, config: DualClipConfig):
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        self.projection_dim = config.projection_dim
        self.text_embed_dim = text_config.hidden_size
        self.vision_embed_dim = vision_config.hidden_size
        self.text_model = build_tower(text_config)
        self.vision_model = build_tower(vision_config)
        self.visual_projection = joint_projection(vision_config, pooled_width(vision_config), self.projection_dim)
        self.text_projection = joint_projection(text_config, self.text_embed_dim, self.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        if config.logit_bias_init_value is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init_value)))
        else:
            self.logit_bias = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def init_dualclip_weights(self, factor: float) -> None:
        _init_projection(self.text_projection, self.text_embed_dim**-0.5 * factor)
        _init_projection(self.visual_projection, pooled_width(self.config.vision_config) ** -0.5 * factor)
        init.constant_(self.logit_scale, self.config.logit_scale_init_value)
        if self.logit_bias is not None:
            init.constant_(self.logit_bias, self.config.logit_bias_init_value)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pooled_only: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """Text tower output with `pooler_output` replaced by the projected text features (transformers 5).

        `pooled_only=True` as in [`DualClipTextModel.forward`]. For the features alone, [`encode_text`] is the
        short way.
        """
        outputs = self._text_tower(input_ids, attention_mask, position_ids, pooled_only, kwargs)
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        pooled_only: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """Image tower output with `pooler_output` replaced by the projected image features (transformers 5).

        `pooled_only=True` as in [`DualClipVisionModel.forward`]; [`encode_image`] is the short way to the features.
        """
        outputs = self._vision_tower(pixel_values, interpolate_pos_encoding, pooled_only, kwargs)
        outputs.pooler_output = self.visual_projection(outputs.pooler_output)
        return outputs

    def encode_text(self, input_ids, normalize: bool = False, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Projected text features `(batch, projection_dim)`, as OpenCLIP's `encode_text`; computes only what the
        pooled position needs. `normalize=True` returns unit-length rows."""
        return self._encode_text(input_ids, attention_mask, position_ids, normalize)

    def encode_image(self, pixel_values, normalize: bool = False, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Projected image features `(batch, projection_dim)`, as OpenCLIP's `encode_image`; computes only what the
        pooled position needs. `normalize=True` returns unit-length rows."""
        return self._encode_image(pixel_values, normalize, interpolate_pos_encoding)

    def logits(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """`logits_per_text` for normalised embeddings: `exp(logit_scale) * text @ image.T` (+ `logit_bias`)."""
        # With `device_map` the towers and the head may sit on different devices; the logits live with the text side.
        device = text_embeds.device
        logits = torch.matmul(text_embeds, image_embeds.t().to(device)) * self.logit_scale.exp().to(device)
        if self.logit_bias is not None:
            logits = logits + self.logit_bias.to(device)
        return logits

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        pooled_only: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DualClipOutput:
        """Scores every text against every image, as transformers' `CLIPModel.forward`.

        `text_model_output`/`vision_model_output` are the outputs of `get_text_features`/`get_image_features`: their
        `pooler_output` holds the projected (not yet normalised) features. `pooled_only=True`: both towers compute
        only what the logits use, and their `last_hidden_state` is the pooled position alone.
        """
        vision_outputs = self.get_image_features(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, pooled_only=pooled_only, **kwargs
        )
        text_outputs = self.get_text_features(
            input_ids, attention_mask, position_ids, pooled_only=pooled_only, **kwargs
        )
        image_embeds = l2_normalize(vision_outputs.pooler_output)
        text_embeds = l2_normalize(text_outputs.pooler_output)
        if return_loss and image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(
                f"return_loss needs one caption per image: got {image_embeds.shape[0]} images (pixel_values) "
                f"and {text_embeds.shape[0]} captions (input_ids)"
            )
        logits_per_text = self.logits(text_embeds, image_embeds)

        loss = None
        if return_loss:
            from .losses import clip_loss

            loss = clip_loss(
                self.config.loss_type,
                image_embeds,
                text_embeds,
                self.logit_scale,
                self.logit_bias,
                gather=self.config.loss_gather_features,
            )

        return DualClipOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


# transformers >= 5 saves `CLIPTextModel`/`CLIPVisionModel` (and `SiglipTextModel`/`SiglipVisionModel`, whose towers
# end in a `head`) without the `text_model.`/`vision_model.` prefix that older folders (and ours) carry; both layouts
# load. Registered here so `trust_remote_code` loading gets it too.
_FLAT_TOWER_KEYS = {
    DualClipTextModel: ("text_model", "embeddings|encoder|final_layer_norm|head"),
    DualClipVisionModel: ("vision_model", "embeddings|pre_layrnorm|encoder|post_layernorm|head"),
}
for _tower_class, (_prefix, _modules) in _FLAT_TOWER_KEYS.items():
    register_checkpoint_conversion_mapping(
        _tower_class.__name__,
        [WeightRenaming(source_patterns=rf"^({_modules})\.", target_patterns=rf"{_prefix}.\1.")],
        overwrite=True,
    )


class ToParameterShape(ConversionOps):
    """Loads a tensor reshaped to the parameter it fills (same elements): transformers' SigLIP stores `logit_scale`
    and `logit_bias` as 1-element vectors, dualclip (as CLIP and OpenCLIP) as scalars."""

    def convert(self, input_dict, source_patterns, target_patterns, model=None, full_layer_name=None, **kwargs):
        tensors = next(iter(input_dict.values()))
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        return {target_patterns[0]: tensor.reshape(model.get_parameter(full_layer_name).shape)}

    @property
    def reverse_op(self) -> ConversionOps:
        return ToParameterShape()


register_checkpoint_conversion_mapping(
    "DualClipModel",
    [WeightConverter(name, name, [ToParameterShape()]) for name in ("logit_scale", "logit_bias")],
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
