"""OpenCLIP models whose text tower is a Hugging Face encoder (`text_cfg.hf_model_name`: RoBERTa, XLM-RoBERTa, NLLB's
M2M100 encoder) in the layout of dualclip's HF text family (`modeling_dualclip_hf_text.py`).

The encoder's own config is in neither OpenCLIP's model config nor its hub folders: OpenCLIP downloads it by
`hf_model_name`. It comes from a `config.json` in the source folder, or from `hf_text_config` (`--hf-text-config`);
`read_encoder_config` finds it, `hf_text_tower` checks it against the tensor shapes and renames the tensors
(`text.` -> `text_model.`: the family keeps OpenCLIP's `transformer.*` and `proj.*` names). The image tower beside it is
OpenCLIP's own ViT (roberta-ViT-B-32, xlm-roberta-*, nllb-clip-base/large) or timm's SigLIP ViT (nllb-clip-*-siglip).

Every tensor is placed or named in a `ConversionError`: none is dropped, except the `position_ids` buffer older
transformers saved with RoBERTa (a range, which OpenCLIP drops too).
"""

import json
from pathlib import Path

import torch
from transformers import PreTrainedConfig

from ..configuration_dualclip import DualClipConfig
from ..modeling_dualclip_hf_text import WITH_POOLING_LAYER, DualClipHFTextConfig, DualClipHFTextTransformer
from .building import convert_tensors
from .clip_layout import count_indices, plan_conversion
from .errors import ConversionError
from .openclip import (
    CARRIED_TOKENIZER_OPTIONS,
    TIMM_VISION_OPTIONS,
    check_openclip_options,
    expect,
    openclip_vision_tower,
)
from .siglip import SIGLIP_VISION_ARCHITECTURES, openclip_siglip_to_siglip_state_dict, siglip_vision_config

# OpenCLIP's options of a Hugging Face text tower (the encoder itself is `hf_model_name`'s config).
HF_TEXT_OPTIONS = frozenset({"hf_model_name", "hf_proj_type", "hf_pooler_type"})
# The encoder config's file name in a source folder (as transformers saves it).
ENCODER_CONFIG_NAME = "config.json"
# OpenCLIP's pooler names -> the family's `pooling` (`cls_pooler` reads the encoder's pooling layer when it has one).
_POOLING = {"mean_pooler": "mean", "cls_last_hidden_state_pooler": "cls", "cls_pooler": "cls_pooler"}
# What a source config.json says about its checkpoint rather than the architecture.
_CHECKPOINT_KEYS = ("architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path")
# Per encoder type: (config field, tensor under `text.transformer.`, dimension) the shapes tell, and the layer prefix.
_SHAPE_FIELDS = {
    "roberta": [
        ("vocab_size", "embeddings.word_embeddings.weight", 0),
        ("hidden_size", "embeddings.word_embeddings.weight", 1),
        ("max_position_embeddings", "embeddings.position_embeddings.weight", 0),
        ("type_vocab_size", "embeddings.token_type_embeddings.weight", 0),
        ("intermediate_size", "encoder.layer.0.intermediate.dense.weight", 0),
    ],
    "m2m_100": [
        ("vocab_size", "embed_tokens.weight", 0),
        ("d_model", "embed_tokens.weight", 1),
        ("encoder_ffn_dim", "layers.0.fc1.weight", 0),
    ],
}
_SHAPE_FIELDS["xlm-roberta"] = _SHAPE_FIELDS["roberta"]
_LAYERS = {"roberta": "encoder.layer.", "xlm-roberta": "encoder.layer.", "m2m_100": "layers."}
_TRANSFORMER = "text.transformer."
_LEGACY_POSITION_IDS = "text.transformer.embeddings.position_ids"


def hf_text_model_name(model_cfg: dict) -> str | None:
    """The Hugging Face model an OpenCLIP model config's text tower is (`text_cfg.hf_model_name`), or `None`."""
    text = model_cfg.get("text_cfg") if isinstance(model_cfg, dict) else None
    return (text or {}).get("hf_model_name") or None


def read_encoder_config(src, hf_text_config=None) -> dict | None:
    """The encoder's config as a dict: from `hf_text_config` (a `config.json` path, a folder holding one, a dict or a
    transformers config), else from `config.json` in the source folder `src`; `None` when neither has one."""
    if isinstance(hf_text_config, PreTrainedConfig):
        return hf_text_config.to_dict()
    if isinstance(hf_text_config, dict):
        return dict(hf_text_config)
    if hf_text_config is not None:
        path = Path(hf_text_config)
        path = path / ENCODER_CONFIG_NAME if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(
                f"--hf-text-config {hf_text_config}: no such file (or folder with {ENCODER_CONFIG_NAME})"
            )
        return _read_json(path)
    if src is not None and Path(src).is_dir() and (Path(src) / ENCODER_CONFIG_NAME).is_file():
        return _read_json(Path(src) / ENCODER_CONFIG_NAME)
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} does not hold a config (a JSON object)")
    return data


def _missing_encoder_config(name: str) -> ConversionError:
    return ConversionError(
        f"the text tower is the Hugging Face model {name!r} (text_cfg.hf_model_name), whose config OpenCLIP downloads "
        "from the hub; OpenCLIP folders do not hold it. Save it as config.json in the source folder (python -c "
        f"\"from transformers import AutoConfig; AutoConfig.from_pretrained('{name}').save_pretrained('SRC')\"), "
        "or pass its config.json with --hf-text-config PATH (hf_text_config= in Python)"
    )


def hf_text_tower(
    text_cfg: dict, embed_dim: int, tensors: dict[str, torch.Tensor], encoder_config: dict | None
) -> tuple[DualClipHFTextConfig, dict[str, torch.Tensor]]:
    """The text tower of an OpenCLIP model with a Hugging Face text encoder: its config and its tensors under
    dualclip's names.

    `text_cfg` is OpenCLIP's (`hf_model_name`, `hf_pooler_type`, `hf_proj_type`; OpenCLIP's defaults `mean_pooler`
    and `mlp`), `embed_dim` OpenCLIP's, `tensors` the state-dict entries under `text.`, `encoder_config` the
    encoder's config dict (see `read_encoder_config`). Returns the tower config and the tensors renamed to
    `text_model.*`. Raises `ConversionError` naming the option, config field or tensors that do not fit.
    """
    name = text_cfg.get("hf_model_name")
    if encoder_config is None:
        raise _missing_encoder_config(name)
    encoder = {k: v for k, v in encoder_config.items() if k not in _CHECKPOINT_KEYS}
    model_type = encoder.get("model_type")
    if model_type not in _SHAPE_FIELDS:
        raise ConversionError(
            f"the encoder config of {name!r} has model_type {model_type!r}; dualclip's Hugging Face text towers are "
            f"{', '.join(map(repr, _SHAPE_FIELDS))} encoders (RoBERTa, XLM-RoBERTa, NLLB)"
        )
    if encoder.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"the encoder config of {name!r} has position_embedding_type="
                              f"{encoder['position_embedding_type']!r}; transformers 5 builds absolute positions only")
    width = _check_encoder_shapes(encoder, tensors, name)
    pooling = _pooling(text_cfg, model_type)
    projection = _projection(text_cfg, tensors, width, embed_dim)
    try:
        config = DualClipHFTextConfig(encoder_config=encoder, pooling=pooling, projection=projection,
                                      projection_dim=embed_dim)
    except ValueError as error:
        raise ConversionError(f"the encoder config of {name!r} is not a valid dualclip text tower: {error}") from None
    return config, _rename(tensors, config)


def _pooling(text_cfg: dict, model_type: str) -> str:
    pooler = text_cfg.get("hf_pooler_type", "mean_pooler")
    if pooler == "max_pooler":
        raise ConversionError(
            "unsupported OpenCLIP option text_cfg.hf_pooler_type='max_pooler': OpenCLIP's MaxPooler cannot run (it "
            "calls masked_fill with the long attention mask HFTextEncoder passes, which torch refuses, and would "
            "take the maximum over the padding if it ran), so no trained model uses it"
        )
    if pooler not in _POOLING:
        raise ConversionError(f"unsupported OpenCLIP option text_cfg.hf_pooler_type={pooler!r} (dualclip converts "
                              f"{', '.join(map(repr, _POOLING))})")
    if pooler == "cls_pooler" and model_type not in WITH_POOLING_LAYER:
        return "cls"  # OpenCLIP reads the encoder's `pooler_output` when it has one; NLLB's encoder has none
    return _POOLING[pooler]


def _projection(text_cfg: dict, tensors: dict, width: int, embed_dim: int) -> str:
    """OpenCLIP's `hf_proj_type` (`CLIPTextCfg` default `"mlp"`) checked against the `text.proj.*` tensors (`width`:
    the encoder's)."""
    proj_type = text_cfg.get("hf_proj_type", "mlp")
    if proj_type is None:
        # OpenCLIP: no projection when the encoder's width already is `embed_dim` (and none at all otherwise).
        if width != embed_dim:
            raise ConversionError(f"unsupported OpenCLIP option text_cfg.hf_proj_type=None with an encoder of width "
                                  f"{width} and embed_dim {embed_dim}: OpenCLIP builds no projection then")
        found = [key for key in tensors if key.startswith("text.proj.")]
        if found:
            raise ConversionError(f"text_cfg.hf_proj_type is None (no projection) but the checkpoint has "
                                  f"{', '.join(sorted(found))}")
        return "none"
    if proj_type not in ("linear", "mlp"):
        raise ConversionError(f"unsupported OpenCLIP option text_cfg.hf_proj_type={proj_type!r} (linear, mlp or "
                              "None are)")
    last = "text.proj.weight" if proj_type == "linear" else "text.proj.2.weight"
    if last not in tensors:
        raise ConversionError(f"text_cfg.hf_proj_type is {proj_type!r} but the checkpoint has no {last} (found: "
                              f"{', '.join(sorted(k for k in tensors if k.startswith('text.proj'))) or 'none'})")
    expect("embed_dim", embed_dim, tensors[last].shape[0])
    return proj_type


def _check_encoder_shapes(encoder: dict, tensors: dict, name: str) -> int:
    """The encoder config's sizes against the tensors (heads and epsilons are not in the shapes); returns the
    encoder's width (its token embedding's)."""
    model_type = encoder["model_type"]

    def mismatch(field, configured, found, evidence):
        return ConversionError(
            f"the encoder config does not match the checkpoint: {field} is {configured!r} in the config of {name!r} "
            f"but {found!r} in the weights ({evidence}); is it the config of the model the checkpoint was trained from?"
        )

    for field, key, dim in _SHAPE_FIELDS[model_type]:
        tensor = tensors.get(_TRANSFORMER + key)
        if tensor is None:
            raise ConversionError(f"{_TRANSFORMER}{key} missing: not an OpenCLIP {model_type} text tower")
        if field in encoder and encoder[field] != tensor.shape[dim]:
            raise mismatch(field, encoder[field], tensor.shape[dim], f"{_TRANSFORMER}{key} {tuple(tensor.shape)}")
    layers_field = "num_hidden_layers" if model_type != "m2m_100" else "encoder_layers"
    layers = count_indices(tensors.keys(), _TRANSFORMER + _LAYERS[model_type])
    if layers_field in encoder and encoder[layers_field] != layers:
        raise mismatch(layers_field, encoder[layers_field], layers, f"{_TRANSFORMER}{_LAYERS[model_type]}N")
    return tensors[_TRANSFORMER + _SHAPE_FIELDS[model_type][0][1]].shape[1]


def _rename(tensors: dict[str, torch.Tensor], config: DualClipHFTextConfig) -> dict[str, torch.Tensor]:
    """`text.*` -> `text_model.*`, checked name by name and shape by shape against the tower `config` builds."""
    position_ids = tensors.pop(_LEGACY_POSITION_IDS, None)
    if position_ids is not None and not torch.equal(position_ids.flatten(), torch.arange(position_ids.numel())):
        raise ConversionError(f"{_LEGACY_POSITION_IDS} is not the range 0..n-1 transformers saved; cannot place it")
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in DualClipHFTextTransformer(config).state_dict().items()}
    out = {"text_model." + key[len("text."):]: tensor for key, tensor in tensors.items()}
    unknown = sorted("text." + key[len("text_model."):] for key in set(out) - {f"text_model.{k}" for k in expected})
    missing = sorted(f"text.{key}" for key in expected if f"text_model.{key}" not in out)
    misshapen = [f"text.{key} {tuple(out['text_model.' + key].shape)} (expected {shape})"
                 for key, shape in expected.items() if f"text_model.{key}" in out
                 and tuple(out["text_model." + key].shape) != shape]
    problems = [f"{label}: {', '.join(names)}" for label, names in
                (("no place for", unknown), ("missing", missing), ("with the wrong shape", misshapen)) if names]
    if problems:
        raise ConversionError("the Hugging Face text tower does not fit the checkpoint (" + "; ".join(problems) + ")")
    return out


def convert_hf_text_model(
    model_cfg: dict, source, encoder_config: dict | None, dtype: torch.dtype
) -> tuple[DualClipConfig, dict[str, torch.Tensor], str]:
    """`(config, tensors, family)` for an OpenCLIP model with a Hugging Face text tower, tensors cast to `dtype`;
    `source` (a `TensorSource`) is emptied. The image tower is OpenCLIP's own ViT or timm's SigLIP ViT."""
    timm_name = (model_cfg.get("vision_cfg") or {}).get("timm_model_name")
    if timm_name and timm_name not in SIGLIP_VISION_ARCHITECTURES:
        raise ConversionError(f"unsupported OpenCLIP option vision_cfg.timm_model_name={timm_name!r} beside a Hugging "
                              "Face text tower: dualclip converts OpenCLIP's own ViT or timm's SigLIP towers there")
    check_openclip_options(model_cfg, TIMM_VISION_OPTIONS if timm_name else frozenset(),
                           HF_TEXT_OPTIONS | CARRIED_TOKENIZER_OPTIONS)
    embed_dim = model_cfg["embed_dim"]
    text_tensors = {key: source.pop(key) for key in source.keys() if key.startswith("text.")}
    text_config, tensors = hf_text_tower(model_cfg["text_cfg"], embed_dim, text_tensors, encoder_config)
    logit_bias = model_cfg.get("init_logit_bias")
    expect("init_logit_bias", logit_bias is not None, "logit_bias" in source)
    try:
        if timm_name:  # SigLIP: timm's image tower, the logit bias, no cap on the logit scale
            vision_config = siglip_vision_config(model_cfg["vision_cfg"], source)
            expect("embed_dim (the image tower's width)", embed_dim, vision_config.hidden_size)
            tensors.update(openclip_siglip_to_siglip_state_dict({key: source.pop(key) for key in source.keys()}))
            head = dict(logit_bias_init_value=float(logit_bias), logit_scale_max=None, loss_type="sigmoid")
            family = "SigLIP image tower, Hugging Face text tower"
        else:
            vision_config, facts = openclip_vision_tower(model_cfg, source)
            tensors.update(convert_tensors(source, plan_conversion(source.keys(), facts), dtype))
            head = dict(logit_bias_init_value=None if logit_bias is None else float(logit_bias),
                        loss_type="infonce" if logit_bias is None else "sigmoid")
            family = "Hugging Face text tower"
    except KeyError as missing:
        raise ConversionError(f"not an OpenCLIP image tower: no tensor {missing}") from None
    try:
        config = DualClipConfig(text_config=text_config, vision_config=vision_config, projection_dim=embed_dim, **head)
    except ValueError as error:
        raise ConversionError(f"the checkpoint's architecture is not a valid dualclip model: {error}") from None
    return config, {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, family


def refuse_stock_export(config) -> None:
    """Raises the `ConversionError` of an export to stock transformers when `config` holds a Hugging Face text tower."""
    text = getattr(config, "text_config", config)
    if isinstance(text, DualClipHFTextConfig):
        raise ConversionError(
            f"no stock transformers class expresses a CLIP-style pair with a Hugging Face text encoder "
            f"({text.encoder_config.model_type}, pooled and projected as OpenCLIP does): keep the dualclip folder "
            "(AutoModel loads it with dualclip installed, or with trust_remote_code=True without it)"
        )


__all__ = ["HF_TEXT_OPTIONS", "convert_hf_text_model", "hf_text_model_name", "hf_text_tower", "read_encoder_config"]
