"""OpenCLIP's EVA01, EVA02 and PE-Core image towers (timm's `Eva`, `vision_cfg.timm_model_name`) in the layout of
dualclip's EVA family (`modeling_dualclip_eva.py`).

timm is not imported at conversion time: `EVA_ARCHITECTURES` holds what timm's registered function builds for each
name OpenCLIP's configs use (tests/test_eva_family.py checks the table against timm). `eva_vision_tower` checks
OpenCLIP's `vision_cfg` and the tensor shapes against that table, and renames the tensors:

- `visual.trunk.blocks.N.*` -> `vision_model.encoder.layers.N.*`; timm's fused `attn.qkv` (with EVA's `q_bias` and
  `v_bias`, or PE's full `qkv.bias`) is split into `q_proj`/`k_proj`/`v_proj`;
- the attention pool's `latent`, `q` and `kv` -> `head.probe`, `head.attention.q_proj`, `k_proj` and `v_proj`;
- timm's classifier `head` (OpenCLIP's `timm_proj: null`) -> `visual_projection`.

Every tensor is placed or named in a `ConversionError`: none is dropped.
"""

import math
import re

import torch

from ..modeling_dualclip_eva import DualClipEvaVisionConfig
from .errors import ConversionError

# timm's `Eva` defaults, in the config's names: what an architecture below does not say.
_EVA = dict(
    class_token=True, use_pre_transformer_norm=False, key_bias=False, scale_attn_inner=False, swiglu_mlp=False,
    scale_mlp=False, use_post_norm=False, use_rot_pos_emb=False, layer_norm_eps=1e-6, hidden_act="gelu",
)
# EVA02's CLIP towers: SwiGLU with a LayerNorm inside, a LayerNorm before the attention output, EVA02's rotary grid.
_EVA02_CLIP = dict(
    swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
    use_rot_pos_emb=True, rope_ref_feat_shape=16, rope_grid_offset=0.0, rope_grid_indexing="ij",
)
# Perception Encoder: LayerNorm before the encoder, key bias, PE's rotary grid, attention pool (8 heads, MLP x4).
_PE_CORE = dict(
    use_pre_transformer_norm=True, key_bias=True, use_rot_pos_emb=True, rope_grid_offset=1.0,
    rope_grid_indexing="xy", attn_pool_num_heads=8, attn_pool_mlp_ratio=4.0, layer_norm_eps=1e-5,
)


def _arch(image_size, patch, width, depth, heads, mlp, **options) -> dict:
    return {
        **_EVA, "image_size": image_size, "patch_size": patch, "hidden_size": width, "num_hidden_layers": depth,
        "num_attention_heads": heads, "intermediate_size": mlp, **options,
    }


# Every timm name OpenCLIP 3.3's EVA01/EVA02/PE-Core configs use, as timm's registered function builds it.
EVA_ARCHITECTURES = {
    "eva_giant_patch14_224": _arch(224, 14, 1408, 40, 16, 6144),
    "eva02_base_patch16_clip_224": _arch(224, 16, 768, 12, 12, 2048, **_EVA02_CLIP),
    "eva02_large_patch14_clip_224": _arch(224, 14, 1024, 24, 16, 2730, **_EVA02_CLIP),
    "eva02_large_patch14_clip_336": _arch(336, 14, 1024, 24, 16, 2730, **_EVA02_CLIP),
    "eva02_enormous_patch14_clip_224": _arch(224, 14, 1792, 64, 16, 15360, use_post_norm=True),
    "vit_pe_core_tiny_patch16_384": _arch(384, 16, 192, 12, 3, 768, **_PE_CORE, rope_ref_feat_shape=24),
    "vit_pe_core_small_patch16_384": _arch(384, 16, 384, 12, 6, 1536, **_PE_CORE, rope_ref_feat_shape=24),
    "vit_pe_core_base_patch16_224": _arch(224, 16, 768, 12, 12, 3072, **_PE_CORE, rope_ref_feat_shape=14),
    "vit_pe_core_large_patch14_336": _arch(336, 14, 1024, 24, 16, 4096, **_PE_CORE, rope_ref_feat_shape=24),
    "vit_pe_core_gigantic_patch14_448": _arch(
        448, 14, 1536, 50, 16, 8960, **{**_PE_CORE, "rope_grid_offset": 0.0}, rope_ref_feat_shape=32, class_token=False
    ),
}

_TRUNK = "visual.trunk."
_LAYER = re.compile(r"^visual\.trunk\.blocks\.(\d+)\.(.+)$")
# timm block module -> dualclip encoder-layer module.
_LAYER_MODULES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.norm": "self_attn.inner_norm",
    "attn.proj": "self_attn.out_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc1_g": "mlp.fc1_g",
    "mlp.fc1_x": "mlp.fc1_x",
    "mlp.norm": "mlp.norm",
    "mlp.fc2": "mlp.fc2",
}
# Whole-tensor renames outside the blocks (timm name under `visual.trunk.` -> dualclip name).
_RENAMES = {
    "patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "norm_pre.weight": "vision_model.pre_layrnorm.weight",
    "norm_pre.bias": "vision_model.pre_layrnorm.bias",
    "norm.weight": "vision_model.post_layernorm.weight",
    "norm.bias": "vision_model.post_layernorm.bias",
    "attn_pool.latent": "vision_model.head.probe",
    "attn_pool.q.weight": "vision_model.head.attention.q_proj.weight",
    "attn_pool.q.bias": "vision_model.head.attention.q_proj.bias",
    "attn_pool.proj.weight": "vision_model.head.attention.out_proj.weight",
    "attn_pool.proj.bias": "vision_model.head.attention.out_proj.bias",
    "attn_pool.norm.weight": "vision_model.head.layernorm.weight",
    "attn_pool.norm.bias": "vision_model.head.layernorm.bias",
    "attn_pool.mlp.fc1.weight": "vision_model.head.mlp.fc1.weight",
    "attn_pool.mlp.fc1.bias": "vision_model.head.mlp.fc1.bias",
    "attn_pool.mlp.fc2.weight": "vision_model.head.mlp.fc2.weight",
    "attn_pool.mlp.fc2.bias": "vision_model.head.mlp.fc2.bias",
    "head.weight": "visual_projection.weight",
    "head.bias": "visual_projection.bias",
}


def eva_vision_tower(
    vision_cfg: dict, embed_dim: int, tensors: dict[str, torch.Tensor]
) -> tuple[DualClipEvaVisionConfig, dict[str, torch.Tensor]]:
    """The image tower of an OpenCLIP EVA/PE model: its config and its tensors under dualclip's names.

    `vision_cfg` is OpenCLIP's `vision_cfg` (`timm_model_name` one of `EVA_ARCHITECTURES`, `timm_pool` `"token"` or
    `"map"`, `timm_proj` null), `embed_dim` OpenCLIP's, `tensors` the state-dict entries under `visual.`. Returns the
    tower config (`projection_dim=embed_dim`, with a projection bias: timm's head) and the tensors renamed to
    `vision_model.*` and `visual_projection.*`, as `DualClipModel` names them. OpenCLIP options other than the ones a
    timm tower reads are the caller's to check. Raises `ConversionError` naming the option, or the tensors, that do
    not fit.
    """
    name = vision_cfg.get("timm_model_name")
    if name not in EVA_ARCHITECTURES:
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_model_name={name!r}: the EVA/PE family converts "
            f"{', '.join(sorted(EVA_ARCHITECTURES))}"
        )
    arch = EVA_ARCHITECTURES[name]
    pool = _pooling(vision_cfg, name, arch)
    _check_config_sizes(vision_cfg, name, arch)
    _check_shapes(tensors, name, arch, pool, embed_dim)
    config = DualClipEvaVisionConfig(**arch, global_pool=pool, projection_dim=embed_dim, projection_bias=True)
    return config, _rename(tensors)


def _pooling(vision_cfg: dict, name: str, arch: dict) -> str:
    # OpenCLIP's defaults (`CLIPVisionCfg`) are timm_pool="avg", timm_proj="linear".
    pool, proj = vision_cfg.get("timm_pool", "avg"), vision_cfg.get("timm_proj", "linear")
    if proj is not None:
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_proj={proj!r}: the EVA/PE family converts timm's own "
            "classifier head as the projection (timm_proj null)"
        )
    if pool not in ("token", "map"):
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_pool={pool!r}: the EVA/PE family pools the class token "
            "('token') or with the attention pool ('map')"
        )
    if pool == "token" and not arch["class_token"]:
        raise ConversionError(f"unsupported OpenCLIP option vision_cfg.timm_pool='token': {name} has no class token")
    if pool == "map" and "attn_pool_num_heads" not in arch:
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_pool='map' with {name}: the attention pool is converted for "
            "the PE towers only"
        )
    return pool


def _check_config_sizes(vision_cfg: dict, name: str, arch: dict) -> None:
    # OpenCLIP does not pass image_size to timm: the tower only runs at the size timm builds it for.
    image_size = vision_cfg.get("image_size", 224)
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2 and image_size[0] == image_size[1]:
        image_size = image_size[0]
    if image_size != arch["image_size"]:
        raise ConversionError(
            f"the OpenCLIP config does not match timm's {name}: vision_cfg.image_size is {image_size!r} but timm "
            f"builds {name} for {arch['image_size']}-pixel images"
        )


def _mismatch(option: str, expected, found, evidence: str) -> ConversionError:
    return ConversionError(
        f"the checkpoint does not match the OpenCLIP config: {option} is {expected!r} in the config but "
        f"{found!r} in the checkpoint ({evidence})"
    )


def _check_shapes(tensors: dict, name: str, arch: dict, pool: str, embed_dim: int) -> None:
    """The architecture the tensors have, against the table (`timm_model_name`) and OpenCLIP's options."""
    def get(key):
        return tensors.get(_TRUNK + key)

    patch_weight, pos_embed = get("patch_embed.proj.weight"), get("pos_embed")
    if patch_weight is None or pos_embed is None:
        raise ConversionError(
            f"{_TRUNK}patch_embed.proj.weight / {_TRUNK}pos_embed missing: not an OpenCLIP timm `Eva` image tower"
        )
    found = {
        "hidden_size": (patch_weight.shape[0], "patch_embed.proj.weight"),
        "patch_size": (patch_weight.shape[-1], "patch_embed.proj.weight"),
        "num_hidden_layers": (len({m.group(1) for key in tensors if (m := _LAYER.match(key))}), "blocks.N"),
        "class_token": (get("cls_token") is not None, "cls_token"),
        "use_pre_transformer_norm": (get("norm_pre.weight") is not None, "norm_pre"),
        "swiglu_mlp": (get("blocks.0.mlp.fc1_g.weight") is not None, "blocks.0.mlp.fc1_g"),
        "scale_mlp": (get("blocks.0.mlp.norm.weight") is not None, "blocks.0.mlp.norm"),
        "scale_attn_inner": (get("blocks.0.attn.norm.weight") is not None, "blocks.0.attn.norm"),
        "key_bias": (
            get("blocks.0.attn.qkv.bias") is not None or get("blocks.0.attn.k_proj.bias") is not None,
            "blocks.0.attn.qkv.bias / k_proj.bias",
        ),
    }
    fc1 = get("blocks.0.mlp.fc1_g.weight") if found["swiglu_mlp"][0] else get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        found["intermediate_size"] = (fc1.shape[0], "blocks.0.mlp.fc1")
    grid = math.isqrt(pos_embed.shape[1] - int(found["class_token"][0]))
    found["image_size"] = (grid * found["patch_size"][0], f"pos_embed {tuple(pos_embed.shape)}")
    for option, (value, evidence) in found.items():
        if value != arch[option]:
            raise _mismatch(f"{option} (vision_cfg.timm_model_name={name!r})", arch[option], value, _TRUNK + evidence)

    has_pool = get("attn_pool.latent") is not None
    if has_pool != (pool == "map"):
        raise _mismatch("vision_cfg.timm_pool", pool, "map" if has_pool else "not 'map'", f"{_TRUNK}attn_pool.latent")
    pool_fc1 = get("attn_pool.mlp.fc1.weight")
    if pool == "map" and pool_fc1 is not None:
        pool_mlp = int(arch["hidden_size"] * arch["attn_pool_mlp_ratio"])
        if pool_fc1.shape[0] != pool_mlp:
            raise _mismatch(f"the attention pool's MLP width ({name})", pool_mlp, pool_fc1.shape[0],
                            f"{_TRUNK}attn_pool.mlp.fc1.weight")
    head = get("head.weight")
    if head is None:
        raise ConversionError(
            f"{_TRUNK}head.weight missing: with vision_cfg.timm_proj null OpenCLIP projects with timm's classifier head"
        )
    if tuple(head.shape) != (embed_dim, arch["hidden_size"]):
        raise _mismatch("embed_dim", embed_dim, head.shape[0], f"{_TRUNK}head.weight {tuple(head.shape)}")


def _rename(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, tensor in tensors.items():
        rest = key[len(_TRUNK):] if key.startswith(_TRUNK) else None
        if rest in _RENAMES:
            out[_RENAMES[rest]] = tensor
        elif rest == "cls_token":  # (1, 1, width)
            out["vision_model.embeddings.class_embedding"] = tensor.reshape(tensor.shape[-1])
        elif rest == "pos_embed":  # (1, positions, width)
            out["vision_model.embeddings.position_embedding.weight"] = tensor.reshape(tensor.shape[-2:])
        elif rest in ("attn_pool.kv.weight", "attn_pool.kv.bias"):  # k then v
            kind = rest.rsplit(".", 1)[1]
            keys, values = tensor.chunk(2, dim=0)
            out[f"vision_model.head.attention.k_proj.{kind}"] = keys
            out[f"vision_model.head.attention.v_proj.{kind}"] = values
        elif match := _LAYER.match(key):
            index, name = match.groups()
            if not _place_layer_tensor(f"vision_model.encoder.layers.{index}.", name, tensor, out):
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            "the EVA/PE family cannot place these OpenCLIP/timm tensors (an option it does not express): "
            + ", ".join(sorted(unknown))
        )
    return out


def _place_layer_tensor(prefix: str, name: str, tensor: torch.Tensor, out: dict) -> bool:
    """Puts one tensor of a timm block (`name` inside the block) under `prefix`; `False` if it has no place."""
    if name in ("attn.q_bias", "attn.v_bias"):  # EVA's fused qkv has biases on queries and values only
        out[f"{prefix}self_attn.{name[len('attn.')]}_proj.bias"] = tensor
        return True
    module, _, kind = name.rpartition(".")
    if module == "attn.qkv":  # q, k, v stacked
        for projection, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
            out[f"{prefix}self_attn.{projection}.{kind}"] = part
        return True
    if module in _LAYER_MODULES and kind in ("weight", "bias"):
        out[f"{prefix}{_LAYER_MODULES[module]}.{kind}"] = tensor
        return True
    return False


__all__ = ["EVA_ARCHITECTURES", "eva_vision_tower"]
