"""OpenCLIP's MobileCLIP and MobileCLIP2 image towers (timm, `vision_cfg.timm_model_name`) in dualclip's layout:
timm's FastViT/MCi towers (`fastvit_mci0` … `fastvit_mci4`) in the FastViT family (`modeling_dualclip_fastvit.py`),
and the ViTs (`vit_base_mci_224`, `vit_large_patch14_clip_224`) in the CLIP ViT family (`modeling_dualclip_vit.py`),
which computes what timm's `VisionTransformer` computes for them: pre-norm layers with q/k/v biases, exact GELU, the
final LayerNorm read at the class token, timm's classifier as `visual_projection` (with bias); MobileCLIP's ViT adds
its convolutional stem (`stem="mobileclip"`) and gives the class token no position embedding
(`class_position_embedding=False`), and has no LayerNorm before the encoder.

timm is not imported at conversion time: `FASTVIT_ARCHITECTURES` and `MOBILECLIP_VIT_ARCHITECTURES` hold what timm's
registered functions build (tests/test_mobileclip_family.py checks them against timm). `fastvit_vision_tower` checks
OpenCLIP's `vision_cfg` and the tensors against the table and renames the tensors.

A FastViT checkpoint holds either form of the reparameterisable parts: the training-time branches with their
BatchNorms (what OpenCLIP builds and releases), or the inference-time fused convolutions (`reparam_conv`, after
timm's or MobileCLIP's `reparameterize_model`). The form is read from the tensor names, kept as it is, and written in
the config (`reparameterized`). Every tensor is placed or named in a `ConversionError`: none is dropped.
"""

import math
import re

import torch

from ..modeling_dualclip_fastvit import DualClipFastVit, DualClipFastVitVisionConfig
from ..modeling_dualclip_vit import DualClipVisionConfig
from .errors import ConversionError
from .eva import _place_layer_tensor

_R, _A = "repmixer", "attention"


def _mci(depths, widths, mlp_ratio, token_mixers, se_downsamples, position_encodings, **options) -> dict:
    return dict(
        depths=list(depths), hidden_sizes=list(widths), mlp_ratios=[mlp_ratio] * len(depths),
        token_mixers=list(token_mixers), downsamples=[False] + [True] * (len(depths) - 1),
        se_downsamples=list(se_downsamples), position_encodings=list(position_encodings),
        **{"stem_scale_branch": True, "attention_norm": "batch_norm", **options},
    )


# MobileCLIP's MCi0-2: four stages, the last one attention with RepCPE and BatchNorm, squeeze-and-excitation in the
# last two downsamplings. MobileCLIP2's MCi3/4: five stages, two of attention with a LayerNorm, no squeeze-and-
# excitation, no 1x1 branch in the stem.
_MCI = dict(token_mixers=(_R, _R, _R, _A), se_downsamples=(False, False, True, True),
            position_encodings=(False, False, False, True))
_MCI_LARGE = dict(token_mixers=(_R, _R, _R, _A, _A), se_downsamples=(False,) * 5,
                  position_encodings=(False, False, False, True, True), stem_scale_branch=False,
                  attention_norm="layer_norm")

# Every FastViT name OpenCLIP 3.3's MobileCLIP configs use, as timm's registered function builds it.
FASTVIT_ARCHITECTURES = {
    "fastvit_mci0": _mci((2, 6, 10, 2), (64, 128, 256, 512), 3, **_MCI),
    "fastvit_mci1": _mci((4, 12, 20, 4), (64, 128, 256, 512), 3, **_MCI),
    "fastvit_mci2": _mci((4, 12, 24, 4), (80, 160, 320, 640), 3, **_MCI),
    "fastvit_mci3": _mci((2, 12, 24, 4, 2), (96, 192, 384, 768, 1536), 4, **_MCI_LARGE),
    "fastvit_mci4": _mci((2, 12, 24, 4, 4), (128, 256, 512, 1024, 2048), 4, **_MCI_LARGE),
}


def _vit(image_size, patch, width, depth, heads, eps, **options) -> dict:
    return dict(
        image_size=image_size, patch_size=patch, hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=4 * width, hidden_act="gelu", layer_norm_eps=eps, projection_bias=True,
        **{"pre_norm": True, "stem": "patch", "class_position_embedding": True, **options},
    )


# The ViTs OpenCLIP 3.3's MobileCLIP configs use, in `DualClipVisionConfig`'s terms (timm's classifier head has a
# bias; timm's default LayerNorm eps is 1e-6, the CLIP-style ViTs' 1e-5).
MOBILECLIP_VIT_ARCHITECTURES = {
    "vit_base_mci_224": _vit(224, 16, 768, 12, 12, 1e-6, pre_norm=False, stem="mobileclip",
                             class_position_embedding=False),
    "vit_large_patch14_clip_224": _vit(224, 14, 1024, 24, 16, 1e-5),
}

_TRUNK = "visual.trunk."


def fastvit_vision_tower(
    vision_cfg: dict, embed_dim: int, tensors: dict[str, torch.Tensor]
) -> tuple[DualClipFastVitVisionConfig | DualClipVisionConfig, dict[str, torch.Tensor]]:
    """The image tower of an OpenCLIP MobileCLIP/MobileCLIP2 model: its config and its tensors under dualclip's names.

    `vision_cfg` is OpenCLIP's `vision_cfg` (`timm_model_name` one of `FASTVIT_ARCHITECTURES`, pooled with
    `timm_pool="avg"`, or of `MOBILECLIP_VIT_ARCHITECTURES`, pooled with `"token"`; `timm_proj` null), `embed_dim`
    OpenCLIP's, `tensors` the state-dict entries under `visual.`. Returns the tower config (`projection_dim=embed_dim`,
    a projection bias: timm's head) and the tensors renamed to `vision_model.*` and `visual_projection.*`, as
    `DualClipModel` names them. OpenCLIP options other than the ones a timm tower reads are the caller's to check.
    Raises `ConversionError` naming the option, or the tensors, that do not fit.
    """
    name = vision_cfg.get("timm_model_name")
    if name in FASTVIT_ARCHITECTURES:
        _check_head(vision_cfg, name, "avg")
        config = _fastvit_config(vision_cfg, name, embed_dim, tensors)
        renamed = {key: _fastvit_name(key) for key in tensors}
    elif name in MOBILECLIP_VIT_ARCHITECTURES:
        _check_head(vision_cfg, name, "token")
        config = _vit_config(vision_cfg, name, embed_dim, tensors)
        renamed = _vit_names(tensors)
    else:
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_model_name={name!r}: the MobileCLIP towers are "
            f"{', '.join(sorted(FASTVIT_ARCHITECTURES) + sorted(MOBILECLIP_VIT_ARCHITECTURES))}"
        )
    return config, _place(renamed, tensors, config)


def _check_head(vision_cfg: dict, name: str, pool: str) -> None:
    # OpenCLIP's defaults (`CLIPVisionCfg`) are timm_pool="avg", timm_proj="linear".
    proj = vision_cfg.get("timm_proj", "linear")
    if proj is not None:
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_proj={proj!r}: the MobileCLIP towers are converted with "
            "timm's own classifier head as the projection (timm_proj null)"
        )
    if vision_cfg.get("timm_pool", "avg") != pool:
        raise ConversionError(
            f"unsupported OpenCLIP option vision_cfg.timm_pool={vision_cfg.get('timm_pool', 'avg')!r}: {name} is "
            f"converted with timm_pool={pool!r}"
        )


def _image_size(vision_cfg: dict) -> int:
    size = vision_cfg.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ConversionError(f"unsupported OpenCLIP option vision_cfg.image_size={size!r}: only square sizes")
        size = size[0]
    return size


def _mismatch(option: str, expected, found, evidence: str) -> ConversionError:
    return ConversionError(
        f"the checkpoint does not match the OpenCLIP config: {option} is {expected!r} in the config but "
        f"{found!r} in the checkpoint ({evidence})"
    )


def _check(found: dict, arch: dict, name: str) -> None:
    for option, (value, evidence) in found.items():
        if value != arch[option]:
            raise _mismatch(f"{option} (vision_cfg.timm_model_name={name!r})", arch[option], value, _TRUNK + evidence)


def _check_projection(tensors: dict, embed_dim: int, width: int, key: str) -> None:
    head = tensors.get(_TRUNK + key)
    if head is None:
        raise ConversionError(
            f"{_TRUNK}{key} missing: with vision_cfg.timm_proj null OpenCLIP projects with timm's classifier head"
        )
    if tuple(head.shape) != (embed_dim, width):
        raise _mismatch("embed_dim", embed_dim, head.shape[0], f"{_TRUNK}{key} {tuple(head.shape)}")


# ----------------------------------------------------------------------------------------------------------------------
# FastViT / MCi
# ----------------------------------------------------------------------------------------------------------------------

_STAGE = re.compile(r"^visual\.trunk\.stages\.(\d+)\.")
_BLOCK = re.compile(r"^visual\.trunk\.stages\.(\d+)\.blocks\.(\d+)\.")


def _fastvit_config(vision_cfg: dict, name: str, embed_dim: int, tensors: dict) -> DualClipFastVitVisionConfig:
    """The config of the tensors' architecture, checked against the table; the form read from the stem's names."""
    arch = FASTVIT_ARCHITECTURES[name]
    keys = set(tensors)
    fused, branched = _TRUNK + "stem.0.reparam_conv.weight", _TRUNK + "stem.0.conv_kxk.0.conv.weight"
    if fused not in keys and branched not in keys:
        raise ConversionError(f"{branched} / {fused} missing: not an OpenCLIP timm FastViT image tower")
    reparameterized = fused in keys

    stages = sorted({int(m.group(1)) for key in keys if (m := _STAGE.match(key))})
    if stages != list(range(len(stages))):
        raise ConversionError(f"{_TRUNK}stages.N: the stage indices are not 0..n-1 (found {stages})")

    def has(key):
        return _TRUNK + key in keys

    def stage_list(read):
        return [read(index) for index in stages]

    def mlp_fc1(index):
        tensor = tensors.get(f"{_TRUNK}stages.{index}.blocks.0.mlp.fc1.weight")
        if tensor is None:
            raise ConversionError(f"{_TRUNK}stages.{index}.blocks.0.mlp.fc1.weight missing: not a timm FastViT stage")
        return tensor

    found = {
        "depths": (stage_list(lambda i: len({m.group(2) for k in keys if (m := _BLOCK.match(k)) and int(m.group(1)) == i})),
                   "stages.N.blocks.M"),
        "hidden_sizes": (stage_list(lambda i: mlp_fc1(i).shape[1]), "stages.N.blocks.0.mlp.fc1.weight"),
        "mlp_ratios": (stage_list(lambda i: mlp_fc1(i).shape[0] / mlp_fc1(i).shape[1]), "stages.N.blocks.0.mlp.fc1.weight"),
        "token_mixers": (stage_list(lambda i: _A if has(f"stages.{i}.blocks.0.token_mixer.qkv.weight") else _R),
                         "stages.N.blocks.0.token_mixer.qkv"),
        "downsamples": (stage_list(lambda i: any(k.startswith(f"{_TRUNK}stages.{i}.downsample.") for k in keys)),
                        "stages.N.downsample"),
        "se_downsamples": (stage_list(lambda i: has(f"stages.{i}.downsample.proj.0.se.fc1.weight")),
                           "stages.N.downsample.proj.0.se"),
        "position_encodings": (stage_list(lambda i: any(k.startswith(f"{_TRUNK}stages.{i}.pos_emb.") for k in keys)),
                               "stages.N.pos_emb"),
    }
    if not reparameterized:  # fused away otherwise
        found["stem_scale_branch"] = (has("stem.0.conv_scale.conv.weight"), "stem.0.conv_scale")
    attention = [i for i in stages if found["token_mixers"][0][i] == _A]
    if attention:
        batch_norm = has(f"stages.{attention[0]}.blocks.0.norm.running_mean")
        found["attention_norm"] = ("batch_norm" if batch_norm else "layer_norm",
                                   f"stages.{attention[0]}.blocks.0.norm.running_mean")
    _check(found, arch, name)
    config = DualClipFastVitVisionConfig(**arch, reparameterized=reparameterized, image_size=_image_size(vision_cfg),
                                         projection_dim=embed_dim)
    _check_projection(tensors, embed_dim, config.hidden_size, "head.fc.weight")
    return config


# timm module -> dualclip module, at the start of a name under `visual.trunk.` (tried in order).
_FASTVIT_PREFIXES = [
    (re.compile(r"^stem\.(\d+)\."), r"embeddings.layers.\1."),
    (re.compile(r"^stages\.(\d+)\.downsample\.proj\.0\."), r"stages.\1.downsample.large_kernel."),
    (re.compile(r"^stages\.(\d+)\.downsample\.proj\.1\."), r"stages.\1.downsample.pointwise."),
    (re.compile(r"^stages\.(\d+)\.pos_emb\."), r"stages.\1.position_encoding."),
    (re.compile(r"^(stages\.\d+\.blocks\.\d+\.token_mixer\.)proj\."), r"\1out_proj."),
]
_QKV = ("q_proj", "k_proj", "v_proj")


def _fastvit_name(key: str) -> str | tuple | None:
    """The dualclip name of one timm tensor; for the fused `qkv` the names of its three parts; `None` if unknown."""
    if not key.startswith(_TRUNK):
        return None
    rest = key[len(_TRUNK):]
    if rest in ("head.fc.weight", "head.fc.bias"):
        return "visual_projection." + rest.rsplit(".", 1)[1]
    if rest.endswith(".token_mixer.qkv.weight"):
        module = rest[: -len("qkv.weight")]
        return tuple(f"vision_model.{module}{projection}.weight" for projection in _QKV)
    for pattern, replacement in _FASTVIT_PREFIXES:
        rest = pattern.sub(replacement, rest)
    return "vision_model." + rest


# ----------------------------------------------------------------------------------------------------------------------
# ViTs (CLIP ViT family)
# ----------------------------------------------------------------------------------------------------------------------

_VIT_LAYER = re.compile(r"^visual\.trunk\.blocks\.(\d+)\.(.+)$")
_VIT_RENAMES = {
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.backbone.0.conv.weight": "embeddings.patch_embedding.conv1.weight",
    "patch_embed.backbone.1.conv.weight": "embeddings.patch_embedding.conv2.weight",
    "patch_embed.backbone.2.conv.weight": "embeddings.patch_embedding.conv3.weight",
    "patch_embed.backbone.2.conv.bias": "embeddings.patch_embedding.conv3.bias",
    "norm_pre.weight": "pre_layrnorm.weight",
    "norm_pre.bias": "pre_layrnorm.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_STEM_NORMS = {"patch_embed.backbone.0.bn.": "embeddings.patch_embedding.bn1.",
               "patch_embed.backbone.1.bn.": "embeddings.patch_embedding.bn2."}


def _vit_config(vision_cfg: dict, name: str, embed_dim: int, tensors: dict) -> DualClipVisionConfig:
    arch = MOBILECLIP_VIT_ARCHITECTURES[name]

    def get(key):
        return tensors.get(_TRUNK + key)

    class_token, pos_embed, fc1 = get("cls_token"), get("pos_embed"), get("blocks.0.mlp.fc1.weight")
    if class_token is None or pos_embed is None or fc1 is None:
        raise ConversionError(
            f"{_TRUNK}cls_token / pos_embed / blocks.0.mlp.fc1.weight missing: not an OpenCLIP timm ViT image tower"
        )
    mobileclip_stem = get("patch_embed.backbone.0.conv.weight") is not None
    patch = get("patch_embed.proj.weight")
    found = {
        "hidden_size": (class_token.shape[-1], "cls_token"),
        "num_hidden_layers": (len({m.group(1) for key in tensors if (m := _VIT_LAYER.match(key))}), "blocks.N"),
        "intermediate_size": (fc1.shape[0], "blocks.0.mlp.fc1.weight"),
        "stem": ("mobileclip" if mobileclip_stem else "patch", "patch_embed.backbone"),
        "pre_norm": (get("norm_pre.weight") is not None, "norm_pre"),
    }
    if patch is not None:
        found["patch_size"] = (patch.shape[-1], "patch_embed.proj.weight")
    _check(found, arch, name)
    image_size = _image_size(vision_cfg)
    # OpenCLIP does not pass image_size to timm: the ViT only runs at the size timm builds it for.
    if image_size != arch["image_size"]:
        raise ConversionError(
            f"the OpenCLIP config does not match timm's {name}: vision_cfg.image_size is {image_size!r} but timm "
            f"builds {name} for {arch['image_size']}-pixel images"
        )
    patches = (arch["image_size"] // arch["patch_size"]) ** 2
    class_position = arch["class_position_embedding"]
    if pos_embed.shape[-2] != patches + class_position:
        raise _mismatch(f"the number of position embeddings ({name}: {patches} patches, class token "
                        f"{'with' if class_position else 'without'} one)", patches + class_position,
                        pos_embed.shape[-2], f"{_TRUNK}pos_embed {tuple(pos_embed.shape)}")
    _check_projection(tensors, embed_dim, arch["hidden_size"], "head.weight")
    return DualClipVisionConfig(**arch, projection_dim=embed_dim)


def _vit_names(tensors: dict) -> dict:
    """dualclip name(s) -> source name for the timm ViT's tensors; unknown ones under `None` keys (named later)."""
    renamed = {}
    for key, tensor in tensors.items():
        rest = key[len(_TRUNK):] if key.startswith(_TRUNK) else None
        stem_norm = next((prefix for prefix in _STEM_NORMS if rest and rest.startswith(prefix)), None)
        if rest in _VIT_RENAMES:
            renamed[key] = "vision_model." + _VIT_RENAMES[rest]
        elif stem_norm:
            renamed[key] = "vision_model." + _STEM_NORMS[stem_norm] + rest[len(stem_norm):]
        elif rest in ("head.weight", "head.bias"):
            renamed[key] = "visual_projection." + rest.split(".")[1]
        elif rest == "cls_token":
            renamed[key] = "vision_model.embeddings.class_embedding"
        elif rest == "pos_embed":
            renamed[key] = "vision_model.embeddings.position_embedding.weight"
        elif match := _VIT_LAYER.match(key):
            index, name = match.groups()
            placed = {}
            if _place_layer_tensor(f"vision_model.encoder.layers.{index}.", name, tensor, placed):
                renamed[key] = tuple(placed) if len(placed) > 1 else next(iter(placed))
            else:
                renamed[key] = None
        else:
            renamed[key] = None
    return renamed


# ----------------------------------------------------------------------------------------------------------------------
# Placing the tensors
# ----------------------------------------------------------------------------------------------------------------------


def _expected_tensors(config) -> dict[str, tuple]:
    """dualclip name -> shape of every tensor the converted tower (with its projection) holds, from the model built
    on the meta device."""
    if isinstance(config, DualClipFastVitVisionConfig):
        tower = DualClipFastVit
    else:
        from ..modeling_dualclip_vit import DualClipVisionTransformer as tower
    with torch.device("meta"):
        model = tower(config)
    expected = {f"vision_model.{key}": tuple(value.shape) for key, value in model.state_dict().items()}
    expected["visual_projection.weight"] = (config.projection_dim, config.hidden_size)
    expected["visual_projection.bias"] = (config.projection_dim,)
    return expected


def _place(renamed: dict, tensors: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The tensors under their dualclip names (`renamed`: source name -> name, names of a fused q/k/v's parts, or
    `None`), reshaped where timm keeps extra dimensions (`cls_token`, `pos_embed`); every tensor placed, every
    expected one present, shapes as the config builds them."""
    expected = _expected_tensors(config)
    out, sources, unknown = {}, {}, []
    for key, names in renamed.items():
        if names is None:
            unknown.append(key)
            continue
        parts = names if isinstance(names, tuple) else (names,)
        values = tensors[key].chunk(len(parts), dim=0) if isinstance(names, tuple) else (tensors[key],)
        if any(name not in expected for name in parts):
            unknown.append(key)
            continue
        for name, value in zip(parts, values):
            out[name], sources[name] = value, key
    if unknown:
        raise ConversionError(
            "the MobileCLIP conversion cannot place these OpenCLIP/timm tensors (an option it does not express, or "
            "a checkpoint that mixes training-time and reparameterised parts): " + ", ".join(sorted(unknown))
        )
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ConversionError(
            f"the checkpoint lacks tensors the converted tower needs ({len(missing)}, in dualclip's names): "
            + ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        )
    for name, tensor in out.items():
        shape = expected[name]
        if tuple(tensor.shape) != shape:
            if math.prod(tensor.shape) != math.prod(shape) or tensor.dim() <= len(shape):
                raise ConversionError(
                    f"tensor {sources[name]} has shape {tuple(tensor.shape)}; the converted tower needs {shape} for "
                    f"{name}"
                )
            out[name] = tensor.reshape(shape)
    return out


__all__ = ["FASTVIT_ARCHITECTURES", "MOBILECLIP_VIT_ARCHITECTURES", "fastvit_vision_tower"]
