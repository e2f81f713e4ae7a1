"""transformers CLIP folders, both ways.

The state-dict layouts are the same by design (ARCHITECTURE.md, decision 1), so both directions copy tensors
unchanged; only the config is translated. transformers >= 5 saves `CLIPTextModel`/`CLIPVisionModel` without the
`text_model.`/`vision_model.` prefix, which dualclip (and older transformers) keep: the prefix is added on import and
kept on export, since both old and new transformers load the prefixed form.

Export to transformers CLIP works for every model stock CLIP can express; the others stop with an error naming the
feature stock CLIP lacks.
"""

import json
from pathlib import Path

from ..configuration_dualclip import DualClipConfig
from ..configuration_dualclip_base import CLIP_MODEL_TYPES
from ..modeling_dualclip_text import DualClipTextConfig
from ..modeling_dualclip_vit import DualClipVisionConfig
from .errors import ConversionError
from .reading import TensorSource, read_checkpoint

# transformers CLIP class -> dualclip class, and the prefix its tower keys carry in dualclip's layout.
CLIP_TO_DUALCLIP = {
    "CLIPModel": ("DualClipModel", None),
    "CLIPTextModel": ("DualClipTextModel", "text_model."),
    "CLIPTextModelWithProjection": ("DualClipTextModelWithProjection", "text_model."),
    "CLIPVisionModel": ("DualClipVisionModel", "vision_model."),
    "CLIPVisionModelWithProjection": ("DualClipVisionModelWithProjection", "vision_model."),
}
DUALCLIP_TO_CLIP = {dual: clip for clip, (dual, _) in CLIP_TO_DUALCLIP.items()}
_CONFIG_CLASSES = {
    "dualclip": DualClipConfig,
    "dualclip_text_model": DualClipTextConfig,
    "dualclip_vision_model": DualClipVisionConfig,
}
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def read_folder_config(folder) -> dict:
    """The `config.json` of a model folder, as a dict."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None


def read_folder_weights(folder, progress: bool = False) -> TensorSource:
    """The tensors of a transformers folder: safetensors (lazily), or pickled `.bin` files (safely), sharded or not."""
    folder = Path(folder)
    for name in _WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        files = [path]
        if name.endswith(".index.json"):
            try:
                weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ConversionError(f"{path} is not a valid shard index: {error}") from None
            files = [folder / shard for shard in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"shards listed in {path} are missing: {', '.join(missing)}")
        if files[0].suffix == ".safetensors":
            return TensorSource(safetensors_paths=files)
        tensors = {}
        for file in files:
            checkpoint = read_checkpoint(file, progress=progress)
            tensors.update({k: checkpoint.tensors.pop(k) for k in checkpoint.tensors.keys()})
        return TensorSource(tensors)
    raise FileNotFoundError(f"{folder} has no weights ({', '.join(_WEIGHTS)})")


def model_class_name(config_dict: dict, keys) -> str:
    """The transformers CLIP (or dualclip) class a folder was saved from."""
    architectures = config_dict.get("architectures") or []
    known = set(CLIP_TO_DUALCLIP) | set(DUALCLIP_TO_CLIP)
    for name in architectures:
        if name in known:
            return name
    if architectures:
        raise ConversionError(f"unsupported architecture {architectures[0]!r} (supported: {', '.join(sorted(known))})")
    model_type = config_dict.get("model_type", "")
    projected = any(k.endswith("_projection.weight") for k in keys)
    base = {"clip": "CLIPModel", "dualclip": "CLIPModel"}.get(model_type)
    if base is None:
        tower = "Text" if model_type.endswith("text_model") else "Vision"
        base = f"CLIP{tower}Model{'WithProjection' if projected else ''}"
    return base if model_type.startswith("clip") else CLIP_TO_DUALCLIP[base][0]


def import_plan(keys, class_name: str) -> dict[str, list]:
    """Source key -> [(dualclip key, None)]: unchanged, but with the tower prefix that transformers 5 omits, and
    without the `position_ids` buffers older transformers saved."""
    prefix = CLIP_TO_DUALCLIP[class_name][1]
    plan = {}
    for key in keys:
        if key.endswith("embeddings.position_ids"):
            continue
        if prefix and not key.startswith(prefix) and not key.endswith("_projection.weight"):
            plan[key] = [(prefix + key, None)]
        else:
            plan[key] = [(key, None)]
    return plan


def dualclip_config_from_clip(folder, config_dict: dict):
    """The dualclip config of a transformers CLIP folder (translated by the dualclip config classes)."""
    model_type = config_dict.get("model_type")
    if model_type not in CLIP_MODEL_TYPES:
        raise ConversionError(f"{folder} is not a transformers CLIP folder (model_type {model_type!r})")
    config_class = _CONFIG_CLASSES[CLIP_MODEL_TYPES[model_type]]
    try:
        return config_class.from_pretrained(folder)
    except ValueError as error:
        raise ConversionError(f"cannot read {folder}/config.json: {error}") from None


# ----------------------------------------------------------------------------------------------------------------------
# dualclip -> transformers CLIP
# ----------------------------------------------------------------------------------------------------------------------


def _text_blockers(text) -> list[str]:
    if text.model_type != "dualclip_text_model":
        return [f"the {text.model_type} text tower (stock CLIP has CLIP text towers only)"]
    blockers = []
    if text.append_class_token:
        blockers.append("an appended text class token (CoCa)")
    if text.pooling == "first_eos" and text.eos_token_id == 2:
        blockers.append("pooling at end-of-text id 2 (stock CLIP reads eos_token_id 2 as its legacy argmax rule)")
    if text.pooling == "last":
        blockers.append("text pooling='last' (stock CLIP pools at the end-of-text token)")
    if not text.causal_mask:
        blockers.append("causal_mask=False (stock CLIP's text tower is always causal)")
    if text.projection_bias:
        blockers.append("a text projection bias")
    if text.layer_scale_init_value is not None:
        blockers.append("LayerScale in the text tower")
    return blockers


def _vision_blockers(vision) -> list[str]:
    if vision.model_type != "dualclip_vision_model":
        return [f"the {vision.model_type} image tower (stock CLIP has ViT towers only)"]
    blockers = []
    if not vision.pre_norm:
        blockers.append("pre_norm=False (stock CLIP always applies pre_layrnorm)")
    if vision.projection_bias:
        blockers.append("a visual projection bias")
    if vision.layer_scale_init_value is not None:
        blockers.append("LayerScale in the image tower")
    if vision.pooling != "class_token":
        blockers.append(f"image pooling={vision.pooling!r} (stock CLIP pools the class token)")
    if vision.stem != "patch":
        blockers.append(f"stem={vision.stem!r} (stock CLIP embeds patches with one convolution)")
    if not vision.class_position_embedding:
        blockers.append("class_position_embedding=False (stock CLIP gives the class token a position embedding)")
    return blockers


def stock_fields(config, stock_class) -> dict:
    fields = set(stock_class().to_dict()) - {"architectures", "dtype", "transformers_version", "_name_or_path"}
    values = {k: v for k, v in config.to_dict().items() if k in fields and k not in ("text_config", "vision_config")}
    values.pop("model_type", None)
    return values


def _clip_text_config(text):
    from transformers import CLIPTextConfig

    values = stock_fields(text, CLIPTextConfig)
    if text.pooling == "argmax":
        # Stock CLIP pools with argmax exactly when its eos_token_id is the legacy value 2.
        values["eos_token_id"] = 2
    return CLIPTextConfig(**values)


def clip_config_from_dualclip(config):
    """The transformers CLIP config of a dualclip config; `ConversionError` naming what stock CLIP cannot express."""
    from transformers import CLIPConfig, CLIPVisionConfig

    if isinstance(config, DualClipConfig):
        blockers = _text_blockers(config.text_config) + _vision_blockers(config.vision_config)
        if config.logit_bias_init_value is not None:
            blockers.append("a logit bias (SigLIP-style models)")
    elif isinstance(config, DualClipTextConfig):
        blockers = _text_blockers(config)
    else:
        blockers = _vision_blockers(config)
    if blockers:
        raise ConversionError(f"stock transformers CLIP cannot express this model: it has {'; '.join(blockers)}")
    if isinstance(config, DualClipTextConfig):
        return _clip_text_config(config)
    if isinstance(config, DualClipVisionConfig):
        return CLIPVisionConfig(**stock_fields(config, CLIPVisionConfig))
    top = stock_fields(config, CLIPConfig)
    return CLIPConfig(
        text_config=_clip_text_config(config.text_config).to_dict(),
        vision_config=CLIPVisionConfig(**stock_fields(config.vision_config, CLIPVisionConfig)).to_dict(),
        **top,
    )


def dualclip_config_from_folder(folder, config_dict: dict):
    """The config of a dualclip folder."""
    model_type = config_dict.get("model_type")
    if model_type not in _CONFIG_CLASSES:
        raise ConversionError(f"{folder} is not a dualclip folder (model_type {model_type!r})")
    try:
        return _CONFIG_CLASSES[model_type].from_pretrained(folder)
    except ValueError as error:
        raise ConversionError(f"cannot read {folder}/config.json: {error}") from None
