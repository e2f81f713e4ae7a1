"""OpenCLIP checkpoints: the model config (OpenCLIP's JSON) says what tensor shapes cannot.

Every option of OpenCLIP's `CLIPVisionCfg`/`CLIPTextCfg` is either translated, known to be irrelevant to inference
(`patch_dropout`, `output_tokens`, settings of a timm/HF tower that is not used), or refused with an error naming it.
Unknown options are refused too: a newer OpenCLIP option could change the computation.
"""

import difflib
import importlib.util
import json
from pathlib import Path

from ..configuration_dualclip import DualClipConfig
from ..configuration_dualclip_base import OPENAI_VOCAB_SIZE
from .clip_layout import (
    CAPTIONING_DECODER_PREFIX,
    ShapeFacts,
    build_config,
    shape_facts,
    text_config_dict,
    vision_config_dict,
)
from .errors import ConversionError
from .openai import OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD, openai_text_tokens

HUB_CONFIG_NAME = "open_clip_config.json"
HUB_WEIGHTS_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
)

# Options that do not change a converted model: training-time only, or settings of a tower type that is not built.
_IGNORED_TOP = {"init_logit_scale", "custom_text", "cast_dtype", "output_dict"}
# CoCa's captioning decoder: its tensors are left out (dualclip converts the contrastive towers only).
_CAPTIONING = {"multimodal_cfg"}
_IGNORED_VISION = {
    "patch_dropout", "output_tokens", "attn_pooler_queries",
    "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path",
}
_IGNORED_TEXT = {"output_tokens", "pad_id", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}

_HANDLED_TOP = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_bias", "nonscalar_logit_scale"}
_HANDLED_VISION = {
    "layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value", "no_ln_pre",
    "act_kwargs", "norm_kwargs", "pool_type", "final_ln_after_pool", "attentional_pool", "attn_pooler_heads",
}
_HANDLED_TEXT = {
    "context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value", "eos_id",
    "no_causal_mask", "pool_type", "proj_bias", "act_kwargs", "norm_kwargs", "embed_cls",
}

# Options dualclip cannot express, with the value(s) that are harmless (OpenCLIP's defaults); anything else stops.
_REFUSED_TOP = {}
_CUSTOM_BLOCK = {
    "block_type": (None, "default"), "qk_norm": (False,), "scaled_cosine_attn": (False,), "scale_heads": (False,),
    "scale_attn_inner": (False,), "scale_attn": (False,), "scale_fc": (False,),
}
_REFUSED_VISION = {
    **_CUSTOM_BLOCK, "timm_model_name": (None, ""), "attentional_pool": (False,), "pos_embed_type": ("learnable",),
}
_REFUSED_TEXT = {
    **_CUSTOM_BLOCK, "hf_model_name": (None, ""), "hf_tokenizer_name": (None, ""), "tokenizer_kwargs": (None, {}),
    "tokenizer_mode": (None, ""), "proj_type": ("linear",), "final_ln_after_pool": (False,),
}
_WHY = {
    "timm_model_name": "timm image towers",
    "hf_model_name": "Hugging Face text towers",
    "hf_tokenizer_name": "tokenizers other than OpenAI's BPE",
    "tokenizer_kwargs": "tokenizer settings other than OpenAI's",
    "tokenizer_mode": "tokenizer settings other than OpenAI's",
    "pos_embed_type": "position embeddings other than learned ones",
    "pool_type": "pooling other than eos/argmax/last (text)",
    "final_ln_after_pool": "LayerNorm after pooling",
    "proj_type": "projections other than linear",
}


# A timm image tower: OpenCLIP reads these and ignores its own ViT options (`layers`, `width`, ...).
TIMM_VISION_OPTIONS = {"image_size", "timm_model_name"}
# A tokenizer carried from the source folder (see `tokenizer_settings`).
CARRIED_TOKENIZER_OPTIONS = {"hf_tokenizer_name", "tokenizer_kwargs"}
_TOKENIZER_KWARGS = {"clean", "strip_sep_token"}


def check_openclip_options(model_cfg: dict, vision_handled: set = frozenset(), text_handled: set = frozenset()) -> None:
    """Refuses unknown options and options dualclip cannot express (naming them), except those a family handles:
    `vision_handled`/`text_handled` (`TIMM_VISION_OPTIONS` makes OpenCLIP's own ViT options irrelevant)."""
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(model_cfg):
        raise ConversionError("an OpenCLIP model config needs `embed_dim`, `vision_cfg` and `text_cfg`")
    timm = "timm_model_name" in vision_handled
    _check_options(model_cfg, "", _HANDLED_TOP | _CAPTIONING, _IGNORED_TOP, _REFUSED_TOP)
    _check_options(model_cfg["vision_cfg"], "vision_cfg.", vision_handled if timm else _HANDLED_VISION | vision_handled,
                   _IGNORED_VISION | (_HANDLED_VISION if timm else set()), _REFUSED_VISION)
    _check_options(model_cfg["text_cfg"], "text_cfg.", _HANDLED_TEXT | text_handled, _IGNORED_TEXT, _REFUSED_TEXT)
    if "tokenizer_kwargs" in text_handled:
        unknown = set(model_cfg["text_cfg"].get("tokenizer_kwargs") or {}) - _TOKENIZER_KWARGS
        if unknown:
            raise ConversionError(f"unsupported OpenCLIP option text_cfg.tokenizer_kwargs: {', '.join(sorted(unknown))} "
                                  f"(dualclip carries {', '.join(sorted(_TOKENIZER_KWARGS))})")


def _check_options(cfg: dict, where: str, handled: set, ignored: set, refused: dict) -> None:
    for key, value in cfg.items():
        if key in refused and key not in handled:
            if value not in refused[key]:
                why = _WHY.get(key, "custom attention blocks (qk_norm, cosine attention, head/attention/MLP scales)")
                raise ConversionError(
                    f"unsupported OpenCLIP option {where}{key}={value!r}: dualclip does not support {why}"
                )
        elif key not in handled and key not in ignored:
            raise ConversionError(f"unknown OpenCLIP option {where}{key}={value!r}; refusing to guess what it does")


def square(value, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConversionError(f"unsupported OpenCLIP option {name}={value!r}: only square sizes are supported")
        value = value[0]
    return value


def activation(cfg: dict, quick_gelu: bool, where: str) -> str:
    act_kwargs = cfg.get("act_kwargs") or {}
    if not act_kwargs:
        return "quick_gelu" if quick_gelu else "gelu"
    if not quick_gelu and act_kwargs == {"approximate": "tanh"}:
        return "gelu_pytorch_tanh"
    raise ConversionError(f"unsupported OpenCLIP option {where}act_kwargs={act_kwargs!r}")


def layer_norm_eps(cfg: dict, where: str) -> float:
    norm_kwargs = cfg.get("norm_kwargs") or {}
    if set(norm_kwargs) - {"eps"}:
        raise ConversionError(f"unsupported OpenCLIP option {where}norm_kwargs={norm_kwargs!r} (only eps is supported)")
    return float(norm_kwargs.get("eps", 1e-5))


def expect(name: str, configured, found) -> None:
    if configured != found:
        raise ConversionError(
            f"the OpenCLIP config does not match the checkpoint: {name} is {configured!r} in the config but "
            f"{found!r} in the weights (wrong --openclip-model or --openclip-config?)"
        )


def openclip_config(model_cfg: dict, tensors) -> tuple[DualClipConfig, ShapeFacts]:
    """The dualclip config of an OpenCLIP model, from its model config checked against the checkpoint's shapes."""
    check_openclip_options(model_cfg, text_handled=CARRIED_TOKENIZER_OPTIONS)
    facts = shape_facts(tensors)
    decoder = any(key.startswith(CAPTIONING_DECODER_PREFIX) for key in tensors.keys())
    expect("multimodal_cfg (CoCa's captioning decoder)", "multimodal_cfg" in model_cfg, decoder)
    vision_settings = _vision_settings(model_cfg, facts)
    text_settings = _text_settings(model_cfg, facts)
    logit_bias = model_cfg.get("init_logit_bias")
    config = build_config(
        facts,
        text_heads=text_settings.pop("text_heads"),
        text_layer_norm_eps=text_settings.pop("layer_norm_eps"),
        text_layer_scale_init_value=text_settings.pop("layer_scale_init_value"),
        logit_bias_init_value=None if logit_bias is None else float(logit_bias),
        # SigLIP-style models are the ones initialised with a logit bias.
        loss_type="infonce" if logit_bias is None else "sigmoid",
        **vision_settings,
        **text_settings,
    )
    return config, facts


def openclip_vision_tower(model_cfg: dict, tensors) -> tuple[dict, ShapeFacts]:
    """`(image tower config arguments, facts)` for OpenCLIP's own image tower of a model whose text tower is not in
    OpenAI's layout (a Hugging Face encoder), checked against the shapes of its image tensors."""
    facts = shape_facts(tensors, text=False)
    expect("embed_dim", model_cfg["embed_dim"], facts.embed_dim)
    return vision_config_dict(facts, **_vision_settings(model_cfg, facts)), facts


def _vision_settings(model_cfg: dict, facts: ShapeFacts) -> dict:
    """`vision_config_dict` arguments from OpenCLIP's `vision_cfg` (its defaults: `CLIPVisionCfg`), checked against
    the shapes."""
    vision = model_cfg["vision_cfg"]
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    expect("vision_cfg.attentional_pool", vision.get("attentional_pool", False) is not False,
           facts.vision_attention_pool)
    resnet = isinstance(vision.get("layers", 12), (list, tuple))
    expect("vision_cfg.layers (ResNet or ViT)", "resnet" if resnet else "vit", facts.backbone)
    image_size = square(vision.get("image_size", 224), "vision_cfg.image_size")
    expect("vision_cfg.image_size", image_size, facts.image_size)
    expect("vision_cfg.width", vision.get("width", 768), facts.vision_width)
    head_width = vision.get("head_width", 64)
    if resnet:
        expect("vision_cfg.layers", list(vision["layers"]), facts.resnet_layers)
        vision_heads = facts.vision_hidden_size // head_width
    else:
        expect("vision_cfg.layers", vision.get("layers", 12), facts.vision_layers)
        patch_size = square(vision.get("patch_size", 16), "vision_cfg.patch_size")
        expect("vision_cfg.patch_size", patch_size, facts.patch_size)
        mlp_width = int(facts.vision_width * vision.get("mlp_ratio", 4.0))
        expect("vision_cfg.mlp_ratio (MLP width)", mlp_width, facts.vision_intermediate)
        expect("vision_cfg.no_ln_pre", bool(vision.get("no_ln_pre", False)), not facts.pre_norm)
        expect("vision_cfg.ls_init_value", vision.get("ls_init_value") is not None, facts.vision_layer_scale)
        vision_heads = facts.vision_width // head_width
    return dict(
        vision_heads=vision_heads,
        vision_hidden_act=activation(vision, quick_gelu, "vision_cfg."),
        vision_layer_norm_eps=layer_norm_eps(vision, "vision_cfg."),
        vision_layer_scale_init_value=vision.get("ls_init_value"),
        vision_pooling=_vision_pooling(vision, resnet),
        attention_pool_heads=vision.get("attn_pooler_heads", 8),
    )


def openclip_text_tower(model_cfg: dict, tensors) -> tuple[dict, ShapeFacts]:
    """`(DualClipTextConfig arguments, facts)` for the OpenCLIP text tower of a model whose image tower is not in
    OpenAI's layout (timm's), checked against the shapes of its text tensors."""
    facts = shape_facts(tensors, vision=False)
    return text_config_dict(facts, **_text_settings(model_cfg, facts)), facts


def _text_settings(model_cfg: dict, facts: ShapeFacts) -> dict:
    """`text_config_dict` arguments from OpenCLIP's `text_cfg` (its defaults: `CLIPTextCfg`), checked against the
    shapes."""
    text = model_cfg["text_cfg"]
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    expect("embed_dim", model_cfg["embed_dim"], facts.embed_dim)
    expect("text_cfg.width", text.get("width", 512), facts.text_width)
    expect("text_cfg.layers", text.get("layers", 12), facts.text_layers)
    expect("text_cfg.vocab_size", text.get("vocab_size", OPENAI_VOCAB_SIZE), facts.vocab_size)
    expect("text_cfg.embed_cls", bool(text.get("embed_cls", False)), facts.text_class_token)
    # CoCa's appended class token has a position of its own.
    expect("text_cfg.context_length", text.get("context_length", 77) + facts.text_class_token, facts.context_length)
    mlp_width = int(facts.text_width * text.get("mlp_ratio", 4.0))
    expect("text_cfg.mlp_ratio (MLP width)", mlp_width, facts.text_intermediate)
    expect("text_cfg.ls_init_value", text.get("ls_init_value") is not None, facts.text_layer_scale)
    expect("text_cfg.proj_bias", bool(text.get("proj_bias", False)), facts.text_projection_bias)
    expect("init_logit_bias", model_cfg.get("init_logit_bias") is not None, facts.logit_bias)

    # OpenCLIP: an appended class token (CoCa) overrides pool_type: always the last position.
    pool_type = "last" if facts.text_class_token else text.get("pool_type", "argmax")
    if pool_type == "argmax":
        tokens = openai_text_tokens(facts.vocab_size)
    elif pool_type == "eos":
        eos_id = text.get("eos_id", 2)
        # "eos" reads id 2 as transformers' legacy argmax rule; a real end-of-text id 2 (MetaCLIP 2) is "first_eos".
        tokens = {**openai_text_tokens(facts.vocab_size), "pooling": "first_eos" if eos_id == 2 else "eos",
                  "eos_token_id": eos_id}
    elif pool_type == "last":
        tokens = {**openai_text_tokens(facts.vocab_size), "pooling": "last"}
    else:
        raise ConversionError(f"unsupported OpenCLIP option text_cfg.pool_type={pool_type!r} (eos, argmax, last are)")

    return dict(
        text_heads=text.get("heads", 8),
        hidden_act=activation(text, quick_gelu, "text_cfg."),
        layer_norm_eps=layer_norm_eps(text, "text_cfg."),
        pad_token_id=0,
        causal_mask=not text.get("no_causal_mask", False),
        layer_scale_init_value=text.get("ls_init_value"),
        **tokens,
    )


def _vision_pooling(vision: dict, resnet: bool) -> str:
    """dualclip's `pooling` for OpenCLIP's ViT `attentional_pool`, `pool_type` and `final_ln_after_pool`."""
    pool_type, after = vision.get("pool_type", "tok"), bool(vision.get("final_ln_after_pool", False))
    attentional = vision.get("attentional_pool", False)
    if attentional is not False:
        if attentional is not True or resnet or pool_type != "tok":
            raise ConversionError(f"unsupported OpenCLIP option vision_cfg.attentional_pool={attentional!r} (with "
                                  f"pool_type={pool_type!r}): dualclip converts CoCa's pooler (True, class token)")
        return "attention_pool"
    if resnet:
        if pool_type != "tok" or after:
            raise ConversionError("unsupported OpenCLIP option for a ResNet image tower: vision_cfg.pool_type / "
                                  "final_ln_after_pool (its attention pool is fixed)")
        return "class_token"
    if pool_type == "tok":
        return "class_token"  # the LayerNorm commutes with taking one token: `final_ln_after_pool` changes nothing
    if pool_type == "avg":
        return "patch_mean" if after else "normed_patch_mean"
    raise ConversionError(f"unsupported OpenCLIP option vision_cfg.pool_type={pool_type!r}: dualclip's ViT pools the "
                          "class token ('tok') or the patch mean ('avg')")


def openclip_model_config_path(model_name: str) -> Path:
    """The JSON file of a standard OpenCLIP model config, read from the installed `open_clip` package.

    The package is located, never imported (importing it needs torchvision).
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(
            "--openclip-model reads OpenCLIP's model configs from the open_clip package, which is not installed "
            "(pip install --no-deps open_clip_torch); or pass the model config JSON with --openclip-config"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    name = model_name.replace("/", "-")
    path = folder / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.json"))
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConversionError(f"--openclip-model {model_name!r} is not one of OpenCLIP's model configs{hint}")
    return path


def read_openclip_json(path) -> tuple[dict, dict]:
    """`(model_cfg, preprocess_cfg)` from a model-config JSON or a hub-style `open_clip_config.json`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such OpenCLIP config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None
    if isinstance(data, dict) and "model_cfg" in data:
        return data["model_cfg"], data.get("preprocess_cfg") or {}
    return data, {}


def image_settings(model_cfg: dict, preprocess_cfg: dict) -> dict:
    """Arguments of `image_processor_settings` for an OpenCLIP model: its `preprocess_cfg`, else OpenCLIP's defaults."""
    size = preprocess_cfg.get("size", model_cfg.get("vision_cfg", {}).get("image_size", 224))
    return dict(
        image_size=square(size, "preprocess_cfg.size"),
        mean=tuple(preprocess_cfg.get("mean", OPENAI_IMAGE_MEAN)),
        std=tuple(preprocess_cfg.get("std", OPENAI_IMAGE_STD)),
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
        resize_mode=preprocess_cfg.get("resize_mode", "shortest"),
    )
