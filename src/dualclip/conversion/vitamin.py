"""OpenCLIP's ViTamin image towers (timm's hybrid `vitamin_*`, `vision_cfg.timm_model_name`) in the layout of
dualclip's ViTamin family (`modeling_dualclip_vitamin.py`).

timm is not imported at conversion time: `VITAMIN_ARCHITECTURES` holds what timm's registered function builds for
each name OpenCLIP's configs use (tests/test_vitamin_family.py checks the table against timm). `vitamin_vision_tower`
checks OpenCLIP's `vision_cfg` and the tensor shapes against that table, and renames the tensors:

- `visual.trunk.patch_embed.backbone.*` (the convolutional part) -> `vision_model.embeddings.*`, names unchanged;
- `visual.trunk.pos_embed` -> `vision_model.embeddings.position_embedding.weight`;
- `visual.trunk.blocks.N.*` -> `vision_model.encoder.layers.N.*`; timm's fused `attn.qkv` is split into
  `q_proj`/`k_proj`/`v_proj`, the GeGLU MLP's `norm`, `w0`, `w1`, `w2` become `input_norm`, `fc1_g`, `fc1_x`, `fc2`;
- `visual.trunk.fc_norm` (the LayerNorm after the mean) -> `vision_model.post_layernorm`;
- OpenCLIP's `visual.head.proj` (`timm_proj: "linear"`) -> `visual_projection`.

Every tensor is placed or named in a `ConversionError`: none is dropped.
"""

import math
import re

import torch

from ..modeling_dualclip_vitamin import VITAMIN_STRIDE, DualClipVitaminVisionConfig
from .errors import ConversionError
from .openclip import square


def _arch(image_size, stem, stages, width, depth, heads, position_embeddings=True) -> dict:
    # Every ViTamin: two MBConv stages of 2 and 4 blocks, GeGLU MLP twice the width, LayerNorm eps 1e-6, exact GELU.
    return {
        "image_size": image_size, "stem_size": stem, "conv_stage_sizes": list(stages), "conv_stage_depths": [2, 4],
        "hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads, "intermediate_size": 2 * width,
        "use_position_embeddings": position_embeddings, "layer_norm_eps": 1e-6, "hidden_act": "gelu",
    }


# Every timm name OpenCLIP 3.3's ViTamin configs use, as timm's registered function builds it. L and L2 are the same
# tower (their OpenCLIP text towers differ); XL has no position embeddings.
VITAMIN_ARCHITECTURES = {
    "vitamin_small_224": _arch(224, 64, (64, 128), 384, 14, 6),
    "vitamin_base_224": _arch(224, 128, (128, 256), 768, 14, 12),
    **{f"vitamin_{large}_{size}": _arch(size, 160, (160, 320), 1024, 31, 16)
       for large in ("large", "large2") for size in (224, 256, 336, 384)},
    **{f"vitamin_xlarge_{size}": _arch(size, 192, (192, 384), 1152, 32, 16, position_embeddings=False)
       for size in (256, 336, 384)},
}

_TRUNK = "visual.trunk."
_BACKBONE = re.compile(
    r"^visual\.trunk\.patch_embed\.backbone\.("
    r"stem\.(?:conv1|norm1|conv2)"
    r"|stages\.\d+\.\d+\.(?:shortcut\.expand|pre_norm|conv1_1x1|conv2_kxk|conv3_1x1)"
    r"|pool\.(?:norm|proj)"
    r")\.(?:weight|bias)$"
)
_STAGE_BLOCK = re.compile(r"^visual\.trunk\.patch_embed\.backbone\.stages\.(\d+)\.(\d+)\.")
_LAYER = re.compile(r"^visual\.trunk\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
# timm block module -> dualclip encoder-layer module.
_LAYER_MODULES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "mlp.norm": "mlp.input_norm",
    "mlp.w0": "mlp.fc1_g",
    "mlp.w1": "mlp.fc1_x",
    "mlp.w2": "mlp.fc2",
}
_RENAMES = {
    "visual.trunk.fc_norm.weight": "vision_model.post_layernorm.weight",
    "visual.trunk.fc_norm.bias": "vision_model.post_layernorm.bias",
    "visual.head.proj.weight": "visual_projection.weight",
    "visual.head.proj.bias": "visual_projection.bias",
}


def vitamin_vision_tower(
    vision_cfg: dict, embed_dim: int, tensors: dict[str, torch.Tensor]
) -> tuple[DualClipVitaminVisionConfig, dict[str, torch.Tensor]]:
    """The image tower of an OpenCLIP ViTamin model: its config and its tensors under dualclip's names.

    `vision_cfg` is OpenCLIP's `vision_cfg` (`timm_model_name` one of `VITAMIN_ARCHITECTURES`, `timm_pool` `""` or
    `"avg"`, `timm_proj` `"linear"`), `embed_dim` OpenCLIP's, `tensors` the state-dict entries under `visual.`.
    Returns the tower config (`projection_dim=embed_dim`, `projection_bias` from `timm_proj_bias`) and the tensors
    renamed to `vision_model.*` and `visual_projection.*`, as `DualClipModel` names them. OpenCLIP options other than
    the ones a timm tower reads are the caller's to check. Raises `ConversionError` naming the option, or the
    tensors, that do not fit.
    """
    name = vision_cfg.get("timm_model_name")
    if name not in VITAMIN_ARCHITECTURES:
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_model_name={name!r}: the ViTamin family converts "
            f"{', '.join(sorted(VITAMIN_ARCHITECTURES))}"
        )
    arch = VITAMIN_ARCHITECTURES[name]
    projection_bias = _head_options(vision_cfg)
    image_size = _image_size(vision_cfg, name, arch)
    _check_shapes(tensors, name, arch, embed_dim, projection_bias)
    try:
        config = DualClipVitaminVisionConfig(
            **{**arch, "image_size": image_size}, projection_dim=embed_dim, projection_bias=projection_bias
        )
    except ValueError as error:
        raise ConversionError(f"the ViTamin tower of {name} is not a valid dualclip tower: {error}") from None
    return config, _rename(tensors)


def _head_options(vision_cfg: dict) -> bool:
    """Whether the projection has a bias, after checking OpenCLIP's pooling and projection options."""
    # OpenCLIP's defaults (`CLIPVisionCfg`) are timm_pool="avg", timm_proj="linear", timm_proj_bias=False.
    pool, proj = vision_cfg.get("timm_pool", "avg"), vision_cfg.get("timm_proj", "linear")
    if pool not in ("", "avg"):
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_pool={pool!r}: the ViTamin family pools as timm's ViTamin "
            "does, the mean of every token through a LayerNorm ('' keeps that default, 'avg' names it)"
        )
    if proj != "linear":
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_proj={proj!r}: the ViTamin family converts OpenCLIP's "
            "linear projection after timm's pooling (timm_proj 'linear')"
        )
    return bool(vision_cfg.get("timm_proj_bias", False))


def _image_size(vision_cfg: dict, name: str, arch: dict) -> int:
    """The size OpenCLIP runs the tower at: its `image_size`, which sets the preprocessing (OpenCLIP does not pass it
    to timm). With position embeddings the tower only runs at the size timm builds it for; without (XL) the size is
    free: OpenCLIP's ViTamin-XL-384 says 256, and runs at 256."""
    image_size = square(vision_cfg.get("image_size", 224), "vision_cfg.image_size")
    if arch["use_position_embeddings"] and image_size != arch["image_size"]:
        raise ConversionError(
            f"the OpenCLIP config does not match timm's {name}: vision_cfg.image_size is {image_size!r} but timm "
            f"builds {name} for {arch['image_size']}-pixel images"
        )
    return image_size


def _mismatch(option: str, expected, found, evidence: str) -> ConversionError:
    return ConversionError(
        f"the checkpoint does not match the OpenCLIP config: {option} is {expected!r} in the config but "
        f"{found!r} in the checkpoint ({evidence})"
    )


def _check_shapes(tensors: dict, name: str, arch: dict, embed_dim: int, projection_bias: bool) -> None:
    """The architecture the tensors have, against the table (`timm_model_name`) and OpenCLIP's options."""
    def shape(key):
        if key not in tensors:
            raise ConversionError(f"{key} missing: not an OpenCLIP timm ViTamin image tower ({name})")
        return tuple(tensors[key].shape)

    backbone = _TRUNK + "patch_embed.backbone."
    blocks = {}
    for key in tensors:
        if match := _STAGE_BLOCK.match(key):
            stage, block = map(int, match.groups())
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    found = {
        "stem_size": (shape(backbone + "stem.conv1.weight")[0], "patch_embed.backbone.stem.conv1.weight"),
        "conv_stage_depths": ([blocks[stage] for stage in sorted(blocks)], "patch_embed.backbone.stages.S.B"),
        "hidden_size": (shape(backbone + "pool.proj.weight")[0], "patch_embed.backbone.pool.proj.weight"),
        "num_hidden_layers": (
            len({m.group(1) for key in tensors if (m := _LAYER.match(key))}), "blocks.N"
        ),
        "use_position_embeddings": (_TRUNK + "pos_embed" in tensors, "pos_embed"),
    }
    found["conv_stage_sizes"] = (
        [shape(f"{backbone}stages.{stage}.0.conv3_1x1.weight")[0] for stage in sorted(blocks)],
        "patch_embed.backbone.stages.S.0.conv3_1x1.weight",
    )
    found["intermediate_size"] = (shape(_TRUNK + "blocks.0.mlp.w0.weight")[0], "blocks.0.mlp.w0.weight")
    if found["use_position_embeddings"][0]:
        positions = shape(_TRUNK + "pos_embed")
        grid = math.isqrt(positions[1])
        found["image_size"] = (grid * VITAMIN_STRIDE, f"pos_embed {positions}")
    for option, (value, evidence) in found.items():
        if value != arch[option]:
            raise _mismatch(f"{option} (vision_cfg.timm_model_name={name!r})", arch[option], value, _TRUNK + evidence)

    head = shape("visual.head.proj.weight")
    if head != (embed_dim, arch["hidden_size"]):
        raise _mismatch("embed_dim", embed_dim, head[0], f"visual.head.proj.weight {head}")
    has_bias = "visual.head.proj.bias" in tensors
    if has_bias != projection_bias:
        raise _mismatch("vision_cfg.timm_proj_bias", projection_bias, has_bias, "visual.head.proj.bias")


def _rename(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, tensor in tensors.items():
        if key in _RENAMES:
            out[_RENAMES[key]] = tensor
        elif _BACKBONE.match(key):
            out["vision_model.embeddings." + key[len(_TRUNK + "patch_embed.backbone."):]] = tensor
        elif key == _TRUNK + "pos_embed":  # (1, positions, width)
            out["vision_model.embeddings.position_embedding.weight"] = tensor.reshape(tensor.shape[-2:])
        elif match := _LAYER.match(key):
            index, module, kind = match.groups()
            prefix = f"vision_model.encoder.layers.{index}."
            if module == "attn.qkv":  # q, k, v stacked
                for projection, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{projection}.{kind}"] = part
            elif module in _LAYER_MODULES:
                out[f"{prefix}{_LAYER_MODULES[module]}.{kind}"] = tensor
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            "the ViTamin family cannot place these OpenCLIP/timm tensors (an option it does not express): "
            + ", ".join(sorted(unknown))
        )
    return out


__all__ = ["VITAMIN_ARCHITECTURES", "vitamin_vision_tower"]
