"""OpenCLIP's ConvNeXt image towers (timm's `ConvNeXt`, `vision_cfg.timm_model_name`) in the layout of dualclip's
ConvNeXt family (`modeling_dualclip_convnext.py`, transformers' `ConvNextModel`).

timm is not imported at conversion time: `CONVNEXT_ARCHITECTURES` holds what timm's registered function builds for
each name OpenCLIP's configs use (tests/test_convnext_family.py checks the table against timm). OpenCLIP's
`TimmModel` builds these towers with `timm_pool` `""` (timm's own average pool) and `timm_proj` `"linear"` or
`"mlp"`: the trunk keeps timm's head norm (the LayerNorm of the pooled features) and drops its classifier; OpenCLIP
adds `head.proj` (a Linear) or `head.mlp` (timm's `Mlp`, `2 * embed_dim` wide inside) after it.
`convnext_vision_tower` checks OpenCLIP's `vision_cfg` and the tensor shapes against the table, and renames:

- `visual.trunk.stem.{0,1}` -> `vision_model.embeddings.{patch_embeddings,layernorm}`;
- `visual.trunk.stages.N.downsample.{0,1}` -> `vision_model.encoder.stages.N.downsampling_layer.{0,1}`;
- `visual.trunk.stages.N.blocks.M.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}` ->
  `vision_model.encoder.stages.N.layers.M.{dwconv,layernorm,pwconv1,pwconv2,layer_scale_parameter}`;
- `visual.trunk.head.norm` -> `vision_model.layernorm`;
- `visual.head.proj` -> `visual_projection`, or `visual.head.mlp.fc{1,2}` -> `vision_model.head.fc{1,2}`.

Every tensor is placed or named in a `ConversionError`: none is dropped.
"""

import re

import torch

from ..modeling_dualclip_convnext import DualClipConvNextVisionConfig
from .errors import ConversionError


def _arch(depths, dims, layer_norm_eps=1e-6) -> dict:
    return {"depths": list(depths), "hidden_sizes": list(dims), "layer_norm_eps": layer_norm_eps}


# Every timm name OpenCLIP 3.3's convnext_* configs use, as timm's registered function builds it. What the family
# takes for granted (the test asserts it of timm): a 4x4 patch stem, 7x7 depthwise kernels, an MLP of 4x width with
# Linear layers (`conv_mlp=False`), biases everywhere, LayerScale, GELU, the head norm after the pool.
CONVNEXT_ARCHITECTURES = {
    "convnext_tiny": _arch((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": _arch((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": _arch((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": _arch((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": _arch((3, 3, 27, 3), (256, 512, 1024, 2048)),
    "convnext_xxlarge": _arch((3, 4, 30, 3), (384, 768, 1536, 3072), layer_norm_eps=1e-5),
}
PATCH_SIZE = 4

_TRUNK = "visual.trunk."
_BLOCK = re.compile(r"^visual\.trunk\.stages\.(\d+)\.blocks\.(\d+)\.(.+)$")
_DOWNSAMPLE = re.compile(r"^visual\.trunk\.stages\.(\d+)\.downsample\.([01])\.(weight|bias)$")
# timm block tensor -> transformers `ConvNextLayer` tensor.
_BLOCK_TENSORS = {
    "conv_dw.weight": "dwconv.weight",
    "conv_dw.bias": "dwconv.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    "mlp.fc1.weight": "pwconv1.weight",
    "mlp.fc1.bias": "pwconv1.bias",
    "mlp.fc2.weight": "pwconv2.weight",
    "mlp.fc2.bias": "pwconv2.bias",
    "gamma": "layer_scale_parameter",
}
# Whole-tensor renames outside the stages (OpenCLIP name -> dualclip name).
_RENAMES = {
    "visual.trunk.stem.0.weight": "vision_model.embeddings.patch_embeddings.weight",
    "visual.trunk.stem.0.bias": "vision_model.embeddings.patch_embeddings.bias",
    "visual.trunk.stem.1.weight": "vision_model.embeddings.layernorm.weight",
    "visual.trunk.stem.1.bias": "vision_model.embeddings.layernorm.bias",
    "visual.trunk.head.norm.weight": "vision_model.layernorm.weight",
    "visual.trunk.head.norm.bias": "vision_model.layernorm.bias",
    "visual.head.proj.weight": "visual_projection.weight",
    "visual.head.proj.bias": "visual_projection.bias",
    "visual.head.mlp.fc1.weight": "vision_model.head.fc1.weight",
    "visual.head.mlp.fc1.bias": "vision_model.head.fc1.bias",
    "visual.head.mlp.fc2.weight": "vision_model.head.fc2.weight",
    "visual.head.mlp.fc2.bias": "vision_model.head.fc2.bias",
}


def convnext_vision_tower(
    vision_cfg: dict, embed_dim: int, tensors: dict[str, torch.Tensor]
) -> tuple[DualClipConvNextVisionConfig, dict[str, torch.Tensor]]:
    """The image tower of an OpenCLIP ConvNeXt model: its config and its tensors under dualclip's names.

    `vision_cfg` is OpenCLIP's `vision_cfg` (`timm_model_name` one of `CONVNEXT_ARCHITECTURES`, `timm_pool` `""` or
    `"avg"`, `timm_proj` `"linear"` or `"mlp"`, optional `timm_proj_bias`), `embed_dim` OpenCLIP's, `tensors` the
    state-dict entries under `visual.`. Returns the tower config (`projection_dim=embed_dim`) and the tensors renamed
    to `vision_model.*` and `visual_projection.*`, as `DualClipModel` names them. OpenCLIP options other than the ones
    a timm tower reads are the caller's to check. Raises `ConversionError` naming the option, or the tensors, that do
    not fit.
    """
    name = vision_cfg.get("timm_model_name")
    if name not in CONVNEXT_ARCHITECTURES:
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_model_name={name!r}: the ConvNeXt family converts "
            f"{', '.join(sorted(CONVNEXT_ARCHITECTURES))}"
        )
    arch = CONVNEXT_ARCHITECTURES[name]
    projection_type, projection_bias = _head(vision_cfg)
    image_size = _image_size(vision_cfg)
    _check_shapes(tensors, name, arch, projection_type, projection_bias, embed_dim)
    try:
        config = DualClipConvNextVisionConfig(
            **arch, patch_size=PATCH_SIZE, image_size=image_size, projection_dim=embed_dim,
            projection_type=projection_type, projection_bias=projection_bias,
        )
    except ValueError as error:
        raise ConversionError(f"the ConvNeXt image tower is not a valid dualclip tower: {error}") from None
    return config, _rename(tensors)


def _head(vision_cfg: dict) -> tuple[str, bool]:
    # OpenCLIP's defaults (`CLIPVisionCfg`): timm_pool="avg", timm_proj="linear", timm_proj_bias=False.
    pool, proj = vision_cfg.get("timm_pool", "avg"), vision_cfg.get("timm_proj", "linear")
    if pool not in ("", "avg"):
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_pool={pool!r}: the ConvNeXt family converts timm's average "
            "pool followed by its head norm ('' or 'avg')"
        )
    if proj not in ("linear", "mlp"):
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_proj={proj!r}: the ConvNeXt family converts OpenCLIP's "
            "'linear' and 'mlp' projections after timm's head norm"
        )
    bias = vision_cfg.get("timm_proj_bias", False)
    if not isinstance(bias, bool):
        raise ConversionError(f"unsupported OpenCLIP option vision_cfg.timm_proj_bias={bias!r}: expected true or false")
    return proj, bias


def _image_size(vision_cfg: dict) -> int:
    # The tower is convolutional (it runs at any size); the size is what the image processor resizes to.
    size = vision_cfg.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ConversionError(f"unsupported OpenCLIP option vision_cfg.image_size={size!r}: only square sizes are "
                                  "supported")
        size = size[0]
    if not isinstance(size, int) or size <= 0:
        raise ConversionError(f"unsupported OpenCLIP option vision_cfg.image_size={size!r}: expected a positive integer")
    return size


def _mismatch(option: str, expected, found, evidence: str) -> ConversionError:
    return ConversionError(
        f"the checkpoint does not match the OpenCLIP config: {option} is {expected!r} in the config but "
        f"{found!r} in the checkpoint ({evidence})"
    )


def _check_shapes(tensors: dict, name: str, arch: dict, projection_type: str, projection_bias: bool,
                  embed_dim: int) -> None:
    """The architecture the tensors have, against the table (`timm_model_name`) and OpenCLIP's head options."""
    stem, head_norm = tensors.get(_TRUNK + "stem.0.weight"), tensors.get(_TRUNK + "head.norm.weight")
    if stem is None or head_norm is None:
        raise ConversionError(
            f"{_TRUNK}stem.0.weight / {_TRUNK}head.norm.weight missing: not an OpenCLIP timm `ConvNeXt` image tower"
        )
    option = f"(vision_cfg.timm_model_name={name!r})"
    if stem.shape[-1] != PATCH_SIZE:
        raise _mismatch(f"the stem's patch size {option}", PATCH_SIZE, stem.shape[-1], f"{_TRUNK}stem.0.weight")
    blocks = {}
    for key, tensor in tensors.items():
        if (match := _BLOCK.match(key)) and match.group(3) == "conv_dw.weight":
            blocks.setdefault(int(match.group(1)), {})[int(match.group(2))] = tensor.shape[0]
    stages = [blocks[index] for index in sorted(blocks)]
    found = {
        "depths": ([len(stage) for stage in stages], "stages.N.blocks.M"),
        "hidden_sizes": ([stage[min(stage)] for stage in stages], "stages.N.blocks.0.conv_dw.weight"),
    }
    for field, (value, evidence) in found.items():
        if value != arch[field]:
            raise _mismatch(f"{field} {option}", arch[field], value, _TRUNK + evidence)
    for index in range(len(stages)):
        if tensors.get(f"{_TRUNK}stages.{index}.blocks.0.gamma") is None:
            raise ConversionError(f"{_TRUNK}stages.{index}.blocks.0.gamma missing: the ConvNeXt family converts "
                                  "towers with LayerScale, as timm builds them for OpenCLIP")

    has_linear, has_mlp = "visual.head.proj.weight" in tensors, "visual.head.mlp.fc1.weight" in tensors
    found_type = "linear" if has_linear else "mlp" if has_mlp else None
    if found_type != projection_type:
        raise _mismatch("vision_cfg.timm_proj", projection_type, found_type, "visual.head.proj / visual.head.mlp")
    # The Linear, or the MLP's last layer, writes `embed_dim` features (other widths are checked when the tensors are
    # loaded into the tower).
    prefix = "visual.head.proj" if projection_type == "linear" else "visual.head.mlp.fc2"
    weight, bias_key = tensors.get(f"{prefix}.weight"), f"{prefix}.bias"
    if weight is None:
        raise ConversionError(f"{prefix}.weight missing: OpenCLIP's timm_proj={projection_type!r} head is incomplete")
    if weight.shape[0] != embed_dim:
        raise _mismatch("embed_dim", embed_dim, weight.shape[0], f"{prefix}.weight {tuple(weight.shape)}")
    if (bias_key in tensors) != projection_bias:
        raise _mismatch("vision_cfg.timm_proj_bias", projection_bias, bias_key in tensors, bias_key)


def _rename(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, tensor in tensors.items():
        if key in _RENAMES:
            out[_RENAMES[key]] = tensor
        elif (match := _BLOCK.match(key)) and match.group(3) in _BLOCK_TENSORS:
            stage, block, name = match.groups()
            out[f"vision_model.encoder.stages.{stage}.layers.{block}.{_BLOCK_TENSORS[name]}"] = tensor
        elif match := _DOWNSAMPLE.match(key):
            stage, index, kind = match.groups()
            out[f"vision_model.encoder.stages.{stage}.downsampling_layer.{index}.{kind}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            "the ConvNeXt family cannot place these OpenCLIP/timm tensors (an option it does not express): "
            + ", ".join(sorted(unknown))
        )
    return out


__all__ = ["CONVNEXT_ARCHITECTURES", "convnext_vision_tower"]
