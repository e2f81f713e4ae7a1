"""OpenCLIP's SigLIP models (a timm ViT with attention pooling, OpenCLIP's bidirectional text tower pooled at the last
position) in the layout of transformers' `SiglipModel`, which the dualclip SigLIP family holds
(`modeling_dualclip_siglip.py`).

This is the state-dict mapping only: a pure function of the tensors, names in, names out. OpenCLIP's fused
projections (`attn.qkv` in timm, `attn.in_proj_*` in `nn.MultiheadAttention`) are split into transformers'
`q_proj`/`k_proj`/`v_proj`; timm's attention pool (`q` and `kv` Linears) is fused into the `in_proj` of the
`nn.MultiheadAttention` transformers' head uses. Keys it does not know (LayerScale, QK norm, class token, ...: options
the SigLIP family does not express) raise a `ConversionError` naming them, so nothing is silently dropped.

Numbers: OpenCLIP builds these towers with exact GELU (timm's default and OpenCLIP's `nn.GELU`), so a config for the
converted weights says `hidden_act="gelu"` on both sides, and `layer_norm_eps` as the source (1e-6 for SigLIP).
"""

import re

import torch

from ..configuration_dualclip import DualClipConfig
from ..modeling_dualclip_siglip import DualClipSiglipTextConfig, DualClipSiglipVisionConfig
from .errors import ConversionError
from .clip_layout import count_indices
from .openclip import (
    CARRIED_TOKENIZER_OPTIONS,
    TIMM_VISION_OPTIONS,
    activation,
    check_openclip_options,
    expect,
    layer_norm_eps,
    square,
)


def _siglip_vit(patch, width, depth, heads, mlp, resolution, exact_gelu):
    return dict(
        patch_size=patch, hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=mlp, image_size=resolution, hidden_act="gelu" if exact_gelu else "gelu_pytorch_tanh",
    )


# timm's SigLIP image towers as timm's registered functions build them (timm is not imported at conversion time;
# tests/test_siglip_conversion.py checks this table against timm). The MAP head has the same heads and MLP width.
# timm builds the first SigLIP releases with exact GELU and the later ones (SigLIP 2 sizes) with tanh GELU.
SIGLIP_VISION_ARCHITECTURES = {
    "vit_base_patch16_siglip_224": _siglip_vit(16, 768, 12, 12, 3072, 224, True),
    "vit_base_patch16_siglip_256": _siglip_vit(16, 768, 12, 12, 3072, 256, True),
    "vit_base_patch16_siglip_384": _siglip_vit(16, 768, 12, 12, 3072, 384, True),
    "vit_base_patch16_siglip_512": _siglip_vit(16, 768, 12, 12, 3072, 512, True),
    "vit_base_patch32_siglip_256": _siglip_vit(32, 768, 12, 12, 3072, 256, False),
    "vit_large_patch16_siglip_256": _siglip_vit(16, 1024, 24, 16, 4096, 256, True),
    "vit_large_patch16_siglip_384": _siglip_vit(16, 1024, 24, 16, 4096, 384, True),
    "vit_large_patch16_siglip_512": _siglip_vit(16, 1024, 24, 16, 4096, 512, False),
    "vit_so400m_patch14_siglip_224": _siglip_vit(14, 1152, 27, 16, 4304, 224, True),
    "vit_so400m_patch14_siglip_378": _siglip_vit(14, 1152, 27, 16, 4304, 378, True),
    "vit_so400m_patch14_siglip_384": _siglip_vit(14, 1152, 27, 16, 4304, 384, True),
    "vit_so400m_patch16_siglip_256": _siglip_vit(16, 1152, 27, 16, 4304, 256, False),
    "vit_so400m_patch16_siglip_384": _siglip_vit(16, 1152, 27, 16, 4304, 384, False),
    "vit_so400m_patch16_siglip_512": _siglip_vit(16, 1152, 27, 16, 4304, 512, False),
    "vit_giantopt_patch16_siglip_256": _siglip_vit(16, 1536, 40, 16, 6144, 256, False),
    "vit_giantopt_patch16_siglip_384": _siglip_vit(16, 1536, 40, 16, 6144, 384, False),
}

_TEXT_LAYER = re.compile(r"^text\.transformer\.resblocks\.(\d+)\.(.+)$")
_VISION_LAYER = re.compile(r"^visual\.trunk\.blocks\.(\d+)\.(.+)$")

# Per-layer names: OpenCLIP text resblock / timm block -> transformers SigLIP encoder layer.
_TEXT_LAYER_NAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_VISION_LAYER_NAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
# Whole-tensor renames outside the layers.
_RENAMES = {
    "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "text.ln_final.weight": "text_model.final_layer_norm.weight",
    "text.ln_final.bias": "text_model.final_layer_norm.bias",
    "text.text_projection.weight": "text_model.head.weight",
    "text.text_projection.bias": "text_model.head.bias",
    "visual.trunk.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.trunk.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "visual.trunk.norm.weight": "vision_model.post_layernorm.weight",
    "visual.trunk.norm.bias": "vision_model.post_layernorm.bias",
    "visual.trunk.attn_pool.proj.weight": "vision_model.head.attention.out_proj.weight",
    "visual.trunk.attn_pool.proj.bias": "vision_model.head.attention.out_proj.bias",
    "visual.trunk.attn_pool.norm.weight": "vision_model.head.layernorm.weight",
    "visual.trunk.attn_pool.norm.bias": "vision_model.head.layernorm.bias",
    "visual.trunk.attn_pool.mlp.fc1.weight": "vision_model.head.mlp.fc1.weight",
    "visual.trunk.attn_pool.mlp.fc1.bias": "vision_model.head.mlp.fc1.bias",
    "visual.trunk.attn_pool.mlp.fc2.weight": "vision_model.head.mlp.fc2.weight",
    "visual.trunk.attn_pool.mlp.fc2.bias": "vision_model.head.mlp.fc2.bias",
    "logit_scale": "logit_scale",
    "logit_bias": "logit_bias",
}


def _split_qkv(prefix: str, fused: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    """`(3 * width, width)` fused in-projection (q, k, v stacked) -> `q_proj`, `k_proj`, `v_proj`."""
    for kind, tensor in fused.items():
        for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
            out[f"{prefix}.self_attn.{name}.{kind}"] = part.contiguous()


def openclip_siglip_to_siglip_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP SigLIP state dict (`text.*`, `visual.trunk.*`, `logit_scale`, `logit_bias`) under transformers'
    `SiglipModel` names, as `DualClipModel` with the SigLIP towers holds them.

    `logit_scale`/`logit_bias` keep OpenCLIP's scalar shape (dualclip's); `SiglipModel` itself stores 1-element
    vectors. A text tower without projection (OpenCLIP's `proj_type="none"`, whose text width is the joint width)
    gets an identity `head` with a zero bias: exact, since `x @ I + 0` is `x` in floating point. Raises
    `ConversionError` naming every key it cannot place.
    """
    out: dict[str, torch.Tensor] = {}
    # (Without OpenCLIP's text tower, e.g. beside a Hugging Face text encoder, only the image tower is mapped.)
    if "text.ln_final.weight" in state_dict and not any(key.startswith("text.text_projection") for key in state_dict):
        width = state_dict["text.ln_final.weight"].shape[0]
        reference = state_dict["text.ln_final.weight"]
        out["text_model.head.weight"] = torch.eye(width, dtype=reference.dtype, device=reference.device)
        out["text_model.head.bias"] = reference.new_zeros(width)
    unknown = []
    for key, tensor in state_dict.items():
        if key in _RENAMES:
            out[_RENAMES[key]] = tensor
        elif key == "text.text_projection":  # OpenCLIP without `proj_bias`: a (width, embed_dim) matrix, x @ P
            out["text_model.head.weight"] = tensor.t().contiguous()
            out["text_model.head.bias"] = tensor.new_zeros(tensor.shape[1])
        elif key == "text.positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = tensor
        elif key == "visual.trunk.pos_embed":  # (1, patches, width), no class token
            out["vision_model.embeddings.position_embedding.weight"] = tensor.reshape(tensor.shape[-2:])
        elif key == "visual.trunk.attn_pool.latent":  # (1, 1, width)
            out["vision_model.head.probe"] = tensor
        elif key.startswith("visual.trunk.attn_pool.") and key.rsplit(".", 2)[-2] in ("q", "kv"):
            pass  # fused below
        elif match := _TEXT_LAYER.match(key):
            layer, name = match.groups()
            prefix = f"text_model.encoder.layers.{layer}"
            if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
                _split_qkv(prefix, {name.rsplit("_", 1)[-1]: tensor}, out)
            elif (module := name.rsplit(".", 1)[0]) in _TEXT_LAYER_NAMES:
                out[f"{prefix}.{_TEXT_LAYER_NAMES[module]}.{name.rsplit('.', 1)[1]}"] = tensor
            else:
                unknown.append(key)
        elif match := _VISION_LAYER.match(key):
            layer, name = match.groups()
            prefix = f"vision_model.encoder.layers.{layer}"
            if name in ("attn.qkv.weight", "attn.qkv.bias"):
                _split_qkv(prefix, {name.rsplit(".", 1)[1]: tensor}, out)
            elif (module := name.rsplit(".", 1)[0]) in _VISION_LAYER_NAMES:
                out[f"{prefix}.{_VISION_LAYER_NAMES[module]}.{name.rsplit('.', 1)[1]}"] = tensor
            else:
                unknown.append(key)
        else:
            unknown.append(key)

    pool = "visual.trunk.attn_pool"
    for kind in ("weight", "bias"):
        q, kv = state_dict.get(f"{pool}.q.{kind}"), state_dict.get(f"{pool}.kv.{kind}")
        if q is None or kv is None:
            raise ConversionError(
                f"{pool}.q.{kind} / {pool}.kv.{kind} missing: the SigLIP family needs timm's attention pool (MAP head) "
                "with a query projection and biases"
            )
        # timm's kv Linear stacks k then v; nn.MultiheadAttention's in_proj stacks q, k, v.
        out[f"vision_model.head.attention.in_proj_{kind}"] = torch.cat([q, kv], dim=0)
    if unknown:
        raise ConversionError(
            "the SigLIP family cannot place these OpenCLIP/timm tensors (an option it does not express): "
            + ", ".join(sorted(unknown))
        )
    return out


def siglip_vision_config(vision: dict, tensors) -> DualClipSiglipVisionConfig:
    """The SigLIP image tower of an OpenCLIP model (`vision_cfg` naming a timm `vit_*_siglip_*` tower), checked
    against the checkpoint's tensor shapes (`tensors.shape(name)`)."""
    timm_name = vision["timm_model_name"]
    architecture = SIGLIP_VISION_ARCHITECTURES.get(timm_name)
    if architecture is None:
        raise ConversionError(f"unsupported OpenCLIP option vision_cfg.timm_model_name={timm_name!r}: not one of "
                              f"timm's SigLIP towers dualclip knows ({', '.join(SIGLIP_VISION_ARCHITECTURES)})")
    for key, allowed in (("timm_pool", ("map",)), ("timm_proj", ("none",))):
        if vision.get(key) not in allowed:
            raise ConversionError(f"unsupported OpenCLIP option vision_cfg.{key}={vision.get(key)!r} for a SigLIP "
                                  f"tower (supported: {', '.join(map(repr, allowed))})")
    image_size = square(vision.get("image_size", architecture["image_size"]), "vision_cfg.image_size")
    width, patch = architecture["hidden_size"], architecture["patch_size"]
    shape = tensors.shape
    expect("the timm tower's width", width, shape("visual.trunk.patch_embed.proj.weight")[0])
    expect("the timm tower's patch size", patch, shape("visual.trunk.patch_embed.proj.weight")[-1])
    expect("the timm tower's depth", architecture["num_hidden_layers"], count_indices(tensors.keys(), "visual.trunk.blocks."))
    expect("the timm tower's MLP width", architecture["intermediate_size"], shape("visual.trunk.blocks.0.mlp.fc1.weight")[0])
    expect("vision_cfg.image_size (patch grid)", (image_size // patch) ** 2, shape("visual.trunk.pos_embed")[1])
    return DualClipSiglipVisionConfig(**{**architecture, "image_size": image_size}, num_channels=3, layer_norm_eps=1e-6)


def siglip_config(model_cfg: dict, tensors) -> DualClipConfig:
    """The dualclip config of an OpenCLIP SigLIP model (a timm `vit_*_siglip_*` image tower and OpenCLIP's text
    tower), from its model config checked against the checkpoint's tensor shapes (`tensors.shape(name)`)."""
    check_openclip_options(model_cfg, TIMM_VISION_OPTIONS, CARRIED_TOKENIZER_OPTIONS | {"proj_type"})
    text = model_cfg["text_cfg"]
    vision_config = siglip_vision_config(model_cfg["vision_cfg"], tensors)
    shape = tensors.shape

    if text.get("pool_type", "argmax") != "last" or not text.get("no_causal_mask", False):
        raise ConversionError("unsupported OpenCLIP text tower for a SigLIP model: the SigLIP family needs "
                              "text_cfg.pool_type='last' and text_cfg.no_causal_mask=true")
    proj_type = text.get("proj_type") or "linear"
    if proj_type not in ("linear", "none") or (proj_type == "linear") != bool(text.get("proj_bias", False)):
        raise ConversionError(f"unsupported OpenCLIP text projection (proj_type={proj_type!r}, proj_bias="
                              f"{text.get('proj_bias', False)!r}): the SigLIP family has a biased Linear or none")
    text_width = text.get("width", 512)
    expect("text_cfg.width", text_width, shape("text.ln_final.weight")[0])
    expect("text_cfg.layers", text.get("layers", 12), count_indices(tensors.keys(), "text.transformer.resblocks."))
    expect("text_cfg.vocab_size", text.get("vocab_size"), shape("text.token_embedding.weight")[0])
    expect("text_cfg.context_length", text.get("context_length", 77), shape("text.positional_embedding")[0])
    text_mlp = int(text_width * text.get("mlp_ratio", 4.0))
    expect("text_cfg.mlp_ratio (MLP width)", text_mlp, shape("text.transformer.resblocks.0.mlp.c_fc.weight")[0])
    embed_dim = model_cfg["embed_dim"]
    expect("embed_dim", embed_dim, shape("text.text_projection.weight")[0] if proj_type == "linear" else text_width)
    expect("embed_dim (the image tower's width)", embed_dim, vision_config.hidden_size)
    expect("init_logit_bias", model_cfg.get("init_logit_bias") is not None, "logit_bias" in tensors)

    text_config = DualClipSiglipTextConfig(
        vocab_size=text["vocab_size"], hidden_size=text_width, intermediate_size=text_mlp,
        num_hidden_layers=text.get("layers", 12), num_attention_heads=text.get("heads", 8),
        max_position_embeddings=text.get("context_length", 77), projection_size=embed_dim,
        hidden_act=activation(text, False, "text_cfg."), layer_norm_eps=layer_norm_eps(text, "text_cfg."),
        # Set from the tokenizer when the source carries one; pooling and attention never read them.
        pad_token_id=None, bos_token_id=None, eos_token_id=None,
        # big_vision and OpenCLIP trained these towers attending to the padding.
        mask_padding=False,
    )
    return DualClipConfig(
        text_config=text_config, vision_config=vision_config, projection_dim=embed_dim,
        logit_bias_init_value=float(model_cfg.get("init_logit_bias", -10.0)), logit_scale_max=None,
        loss_type="sigmoid",
    )


__all__ = [
    "SIGLIP_VISION_ARCHITECTURES", "openclip_siglip_to_siglip_state_dict", "siglip_config", "siglip_vision_config",
]
