"""The ConvNeXt image tower family: transformers' own `ConvNextModel`, held as a dualclip tower, as OpenCLIP's
`convnext_*` models use timm's ConvNeXt.

transformers' `ConvNextModel` computes what timm's `ConvNeXt` computes in the configuration OpenCLIP uses (a 4x4
patchify stem with a channels-first LayerNorm; four stages, each after the first opened by a LayerNorm and a 2x2
stride-2 convolution; blocks of a 7x7 depthwise convolution, a channels-last LayerNorm, a Linear-GELU-Linear MLP
of 4x width and LayerScale; then the global average of the last feature map through a LayerNorm, timm's head
norm), so this family writes no twin of it (ARCHITECTURE decision 3): the tower *is* the stock class, with
dualclip's base class in front of it for what every dualclip tower shares. Inside `DualClipModel` its state-dict
keys are `ConvNextModel`'s under `vision_model.` (`embeddings.patch_embeddings`, `encoder.stages.N.layers.M.dwconv`,
`layernorm`, ...), and it returns what `ConvNextModel` returns (`last_hidden_state` the last feature map,
`(batch, channels, height, width)`; `hidden_states` the stem's and each stage's maps).

What differs from the stock class, each a config field:
- `layer_norm_eps` is the epsilon of *every* LayerNorm, as timm's `norm_eps` is (1e-6, and 1e-5 for
  `convnext_xxlarge`); `ConvNextModel` reads it for the final LayerNorm only and fixes the others at 1e-6.
- `projection_type`: OpenCLIP's `timm_proj`. `"linear"` projects the pooled output with the model classes'
  `visual_projection` (a Linear, with a bias when `projection_bias`); `"mlp"` (convnext_large_d) ends the tower in
  OpenCLIP's MLP head, `fc2(gelu(fc1(pooled)))` with `fc1` 2 x `projection_dim` wide: the config then declares
  `pooled_output_projected` and the model classes add no `visual_projection` (as for SigLIP's head).

The tower is convolutional: it runs at any image size as timm's does (no position embeddings, so
`interpolate_pos_encoding` changes nothing), and `pooled_only` changes nothing (the average reads every position).
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.convnext.configuration_convnext import ConvNextConfig
from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm, ConvNextModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_dualclip_base import TowerConfig
from .modeling_dualclip_base import DualClipPreTrainedModel
from .modeling_dualclip_layers import check_pixel_values


@strict
class DualClipConvNextVisionConfig(TowerConfig, ConvNextConfig):
    r"""
    Configuration of the ConvNeXt image tower: transformers' `ConvNextConfig` (same fields, names and meanings), with
    the defaults of OpenCLIP's convnext_base image tower (timm `convnext_base`, linear projection to 512). The width
    of the pooled output, `hidden_size`, is the last stage's (`hidden_sizes[-1]`).

    Args:
        layer_norm_eps (`float`, defaults to 1e-6):
            Epsilon of every LayerNorm (stem, downsampling layers, blocks, final), as timm's `norm_eps`.
        image_size (`int`, defaults to 224):
            The size the model was trained at (what the image processor resizes to); the tower runs at any size.
        projection_dim (`int`, defaults to 512):
            Width of the joint space.
        projection_type (`str`, defaults to `"linear"`):
            OpenCLIP's `timm_proj`: `"linear"` (the model classes' `visual_projection`) or `"mlp"` (the tower's own
            `head`, `fc2(gelu(fc1(pooled)))`, 2 x `projection_dim` wide inside).
        projection_bias (`bool`, defaults to `False`):
            OpenCLIP's `timm_proj_bias`: whether the Linear projection, or the MLP head's `fc2`, has a bias.
    """

    model_type = "dualclip_convnext_vision_model"
    base_config_key = "vision_config"

    hidden_sizes: list[int] | tuple[int, ...] = (128, 256, 512, 1024)
    depths: list[int] | tuple[int, ...] = (3, 3, 27, 3)
    layer_norm_eps: float = 1e-6
    image_size: int = 224
    projection_dim: int = 512
    projection_type: Literal["linear", "mlp"] = "linear"
    projection_bias: bool = False

    @property
    def hidden_size(self) -> int:
        """Width of the pooled output (the last stage's)."""
        return self.hidden_sizes[-1]

    @property
    def pooled_output_projected(self) -> bool:
        """With the MLP head the tower writes into the joint space itself (see `towers.py`)."""
        return self.projection_type == "mlp"

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        if not len(self.hidden_sizes) == len(self.depths) == self.num_stages:
            raise ValueError(
                f"`hidden_sizes` ({list(self.hidden_sizes)}) and `depths` ({list(self.depths)}) must have "
                f"`num_stages` ({self.num_stages}) entries"
            )
        if not isinstance(self.patch_size, int) or not isinstance(self.image_size, int):
            raise ValueError(
                f"`patch_size` ({self.patch_size!r}) and `image_size` ({self.image_size!r}) must be integers "
                "(square patches and images)"
            )


class DualClipConvNextMlpHead(nn.Module):
    """OpenCLIP's `timm_proj="mlp"` head (timm's `Mlp` without dropout): `fc2(gelu(fc1(pooled)))`."""

    def __init__(self, config: DualClipConvNextVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, 2 * config.projection_dim)
        self.activation_fn = ACT2FN["gelu"]
        self.fc2 = nn.Linear(2 * config.projection_dim, config.projection_dim, bias=config.projection_bias)

    def forward(self, pooled):
        return self.fc2(self.activation_fn(self.fc1(pooled)))


class DualClipConvNext(DualClipPreTrainedModel, ConvNextModel):
    """transformers' `ConvNextModel` as a dualclip image tower; `pooler_output` is the LayerNorm of the global average
    of the last feature map, through the MLP head when the config has one."""

    config: DualClipConvNextVisionConfig
    base_model_prefix = "dualclip"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ConvNextEmbeddings", "ConvNextLayer"]
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = _supports_attention_backend = False

    def __init__(self, config: DualClipConvNextVisionConfig):
        super().__init__(config)
        # `ConvNextModel` builds the inner LayerNorms with eps 1e-6 whatever the config says.
        for module in self.modules():
            if isinstance(module, ConvNextLayerNorm):
                module.eps = config.layer_norm_eps
        self.head = DualClipConvNextMlpHead(config) if config.projection_type == "mlp" else None
        self.post_init()

    def get_correct_attn_implementation(self, requested_attention, is_init_check=False) -> str:
        """Always `"eager"`: the tower has no attention, whatever implementation the dual model's text tower is asked
        to use (the encoder `ConvNextModel` builds, which shares this config, accepts no other)."""
        return "eager"

    def get_input_embeddings(self) -> nn.Module:
        """The stem's convolution, the layer that reads pixels."""
        return self.embeddings.patch_embeddings

    @can_return_tuple
    def forward(
        self, pixel_values=None, interpolate_pos_encoding=False, pooled_only=False, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """`ConvNextModel.forward`, at any image size (`interpolate_pos_encoding` changes nothing: there are no
        position embeddings), then the MLP head if any. `pooled_only` changes nothing: the average reads every
        position."""
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding=True)
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.weight.dtype)
        outputs = super().forward(pixel_values, return_dict=True, **kwargs)
        pooled = outputs.pooler_output if self.head is None else self.head(outputs.pooler_output)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state, pooler_output=pooled, hidden_states=outputs.hidden_states
        )


# As the other image towers, this one reads checkpoints that still carry its `vision_model.` prefix.
register_checkpoint_conversion_mapping("DualClipConvNext", [PrefixChange(prefix_to_remove="vision_model")], overwrite=True)


__all__ = ["DualClipConvNextVisionConfig", "DualClipConvNext"]
