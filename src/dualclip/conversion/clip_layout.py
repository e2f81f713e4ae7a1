"""The state-dict layout of OpenAI CLIP (which OpenCLIP keeps), read into dualclip's layout.

OpenAI layout, text tower at the top level (or under `text.` in OpenCLIP's custom-text models):
`token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.{attn.in_proj_weight, ln_1, mlp.c_fc, ...}`,
`ln_final`, `text_projection` (a `(width, embed_dim)` matrix, or an `nn.Linear` when OpenCLIP's `proj_bias` is set);
image tower under `visual.` (a ViT with `conv1`, `class_embedding`, `positional_embedding`, `ln_pre`, `transformer`,
`ln_post`, `proj`; or a ModifiedResNet with its stem, `layer1`..`layer4` and `attnpool`); `logit_scale`, and
OpenCLIP's `logit_bias`.

This module only knows names and shapes: `shape_facts` reads the architecture's sizes from the tensor shapes,
`build_config` turns them (plus the choices the shapes cannot tell) into a `DualClipConfig`, and `plan_conversion`
says which dualclip tensor comes from which source tensor.
"""

import math
import re
from dataclasses import dataclass, field

from ..configuration_dualclip import DualClipConfig
from ..modeling_dualclip_resnet import DualClipResNetConfig
from .errors import ConversionError

# dualclip names inside one transformer layer, for OpenAI's names (q/k/v come from splitting `attn.in_proj_*`).
_LAYER_RENAMES = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
    "ls_1.gamma": "layer_scale1.scale",
    "ls_2.gamma": "layer_scale2.scale",
}
_QKV = ("q_proj", "k_proj", "v_proj")
CAPTIONING_DECODER_PREFIX = "text_decoder."
_BATCH_NORM_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# How a source tensor becomes a dualclip tensor: None (as is), "T" (transpose: OpenAI stores projections as
# `x @ W`, nn.Linear as `x @ W.T`), "scalar" (OpenCLIP's `nonscalar_logit_scale` stores shape [1]), "first_row"
# (CoCa's attention-pool queries: the contrastive one), or ("chunk", i): the i-th third of a fused q/k/v tensor.
Transform = None | str | tuple


@dataclass
class ShapeFacts:
    """Architecture sizes read from the tensor shapes of an OpenAI-layout state dict (the text fields keep their
    defaults when only the image tower is in that layout)."""

    embed_dim: int
    text_prefix: str = ""
    vocab_size: int = 0
    context_length: int = 0
    text_width: int = 0
    text_layers: int = 0
    text_intermediate: int = 0
    text_projection_bias: bool = False
    text_layer_scale: bool = False
    backbone: str = "none"  # "vit", "resnet", or "none": the image tower is not in OpenAI's layout (timm's)
    image_size: int = 0
    num_channels: int = 3
    vision_width: int = 0  # ViT: transformer width; ResNet: stem width (`resnet_width`)
    vision_layers: int = 0
    vision_intermediate: int = 0
    patch_size: int = 0
    pre_norm: bool = True
    vision_layer_scale: bool = False
    resnet_layers: list[int] = field(default_factory=list)
    logit_bias: bool = False
    text_class_token: bool = False  # CoCa's appended text class token (`cls_emb`)
    vision_attention_pool: bool = False  # CoCa's attentional pooler (`attn_pool`)

    @property
    def vision_hidden_size(self) -> int:
        return self.vision_width * 32 if self.backbone == "resnet" else self.vision_width


def count_indices(keys, prefix: str) -> int:
    """How many distinct `prefix<N>.` indices occur among `keys`."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


def text_prefix_of(keys) -> str:
    """`"text."` for OpenCLIP's custom-text layout, `""` for the OpenAI layout."""
    return "text." if any(k.startswith("text.") for k in keys) else ""


def shape_facts(tensors, vision: bool = True, text: bool = True) -> ShapeFacts:
    """Reads the architecture from the shapes of an OpenAI-layout state dict (as OpenAI's `build_model` does);
    with `vision=False`, the text tower's alone (`backbone="none"`); with `text=False`, the image tower's alone (its
    projection gives `embed_dim`)."""
    keys = tensors.keys()
    shape = tensors.shape
    t = text_prefix_of(keys) if text else ""
    try:
        if text:
            projection = f"{t}text_projection" if f"{t}text_projection" in tensors else f"{t}text_projection.weight"
            proj_bias = projection.endswith(".weight")
            embed_dim = shape(projection)[0 if proj_bias else 1]
            text_width = shape(f"{t}ln_final.weight")[0]
            facts = dict(
                text_prefix=t,
                vocab_size=shape(f"{t}token_embedding.weight")[0],
                context_length=shape(f"{t}positional_embedding")[0],
                text_width=text_width,
                text_layers=count_indices(keys, f"{t}transformer.resblocks."),
                text_intermediate=shape(f"{t}transformer.resblocks.0.mlp.c_fc.weight")[0],
                embed_dim=embed_dim,
                text_projection_bias=proj_bias,
                text_layer_scale=f"{t}transformer.resblocks.0.ls_1.gamma" in tensors,
                logit_bias="logit_bias" in tensors,
                text_class_token=f"{t}cls_emb" in tensors,
            )
        else:
            image_projection = ("visual.proj", 1) if "visual.proj" in tensors else ("visual.attnpool.c_proj.weight", 0)
            facts = dict(embed_dim=shape(image_projection[0])[image_projection[1]], logit_bias="logit_bias" in tensors)
        if not vision:
            facts.update(backbone="none")
        elif "visual.proj" in tensors:
            patch_shape = shape("visual.conv1.weight")
            positions = shape("visual.positional_embedding")[0]
            grid = math.isqrt(positions - 1)
            if grid * grid + 1 != positions:
                raise ConversionError(f"visual.positional_embedding has {positions} rows: not a square grid plus one")
            facts.update(
                backbone="vit",
                vision_width=patch_shape[0],
                num_channels=patch_shape[1],
                patch_size=patch_shape[-1],
                image_size=patch_shape[-1] * grid,
                vision_layers=count_indices(keys, "visual.transformer.resblocks."),
                vision_intermediate=shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
                pre_norm="visual.ln_pre.weight" in tensors,
                vision_layer_scale="visual.transformer.resblocks.0.ls_1.gamma" in tensors,
                vision_attention_pool="visual.attn_pool.query" in tensors,
            )
        elif "visual.attnpool.positional_embedding" in tensors:
            positions = shape("visual.attnpool.positional_embedding")[0]
            grid = math.isqrt(positions - 1)
            if grid * grid + 1 != positions:
                raise ConversionError(f"visual.attnpool.positional_embedding has {positions} rows: not a grid plus one")
            facts.update(
                backbone="resnet",
                vision_width=shape("visual.layer1.0.conv1.weight")[0],
                num_channels=shape("visual.conv1.weight")[1],
                image_size=grid * 32,
                resnet_layers=[count_indices(keys, f"visual.layer{stage}.") for stage in (1, 2, 3, 4)],
            )
        else:
            raise ConversionError(
                "no image tower in the OpenAI/OpenCLIP layout (neither `visual.proj` nor `visual.attnpool`); "
                "timm or Hugging Face towers are not supported"
            )
    except KeyError as missing:
        raise ConversionError(f"not a CLIP state dict in the OpenAI/OpenCLIP layout: no tensor {missing}") from None
    return ShapeFacts(**facts)


def text_config_dict(
    facts: ShapeFacts,
    *,
    text_heads: int,
    hidden_act: str,
    layer_norm_eps: float = 1e-5,
    pooling: str = "argmax",
    eos_token_id: int | None = None,
    bos_token_id: int | None = None,
    pad_token_id: int | None = 0,
    causal_mask: bool = True,
    layer_scale_init_value: float | None = None,
) -> dict:
    """`DualClipTextConfig` arguments for the text tower of `facts` and the choices shapes cannot tell."""
    return dict(
        vocab_size=facts.vocab_size,
        hidden_size=facts.text_width,
        intermediate_size=facts.text_intermediate,
        projection_dim=facts.embed_dim,
        num_hidden_layers=facts.text_layers,
        num_attention_heads=text_heads,
        max_position_embeddings=facts.context_length,
        hidden_act=hidden_act,
        layer_norm_eps=layer_norm_eps,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pooling=pooling,
        causal_mask=causal_mask,
        # OpenAI and OpenCLIP trained their text towers attending to the padding (they never pass a mask).
        mask_padding=False,
        projection_bias=facts.text_projection_bias,
        layer_scale_init_value=layer_scale_init_value if facts.text_layer_scale else None,
        append_class_token=facts.text_class_token,
    )


def vision_config_dict(
    facts: ShapeFacts,
    *,
    vision_heads: int,
    vision_hidden_act: str,
    vision_layer_norm_eps: float = 1e-5,
    vision_layer_scale_init_value: float | None = None,
    vision_pooling: str = "class_token",
    attention_pool_heads: int = 8,
) -> dict:
    """Image tower config arguments (`DualClipVisionConfig`, or `DualClipResNetConfig`'s with its `model_type`) for
    the image tower of `facts` and the choices shapes cannot tell (ResNet towers use ReLU regardless)."""
    vision = dict(
        hidden_size=facts.vision_hidden_size,
        projection_dim=facts.embed_dim,
        num_attention_heads=vision_heads,
        num_channels=facts.num_channels,
        image_size=facts.image_size,
    )
    if facts.backbone == "vit":
        vision.update(
            hidden_act=vision_hidden_act,
            layer_norm_eps=vision_layer_norm_eps,
            intermediate_size=facts.vision_intermediate,
            num_hidden_layers=facts.vision_layers,
            patch_size=facts.patch_size,
            pre_norm=facts.pre_norm,
            layer_scale_init_value=vision_layer_scale_init_value if facts.vision_layer_scale else None,
            pooling=vision_pooling,
            attention_pool_heads=attention_pool_heads,
        )
    else:
        vision.update(model_type=DualClipResNetConfig.model_type, resnet_layers=facts.resnet_layers,
                      resnet_width=facts.vision_width)
    return vision


def build_config(
    facts: ShapeFacts,
    *,
    text_heads: int,
    vision_heads: int,
    hidden_act: str,
    vision_hidden_act: str | None = None,
    text_layer_norm_eps: float = 1e-5,
    vision_layer_norm_eps: float = 1e-5,
    pooling: str = "argmax",
    eos_token_id: int | None = None,
    bos_token_id: int | None = None,
    pad_token_id: int | None = 0,
    causal_mask: bool = True,
    text_layer_scale_init_value: float | None = None,
    vision_layer_scale_init_value: float | None = None,
    logit_bias_init_value: float | None = None,
    loss_type: str = "infonce",
    vision_pooling: str = "class_token",
    attention_pool_heads: int = 8,
) -> DualClipConfig:
    """The `DualClipConfig` for `facts` and the choices that tensor shapes cannot tell.

    `hidden_act` applies to both towers unless `vision_hidden_act` is given (ResNet towers use ReLU regardless).
    """
    text = text_config_dict(
        facts, text_heads=text_heads, hidden_act=hidden_act, layer_norm_eps=text_layer_norm_eps, pooling=pooling,
        eos_token_id=eos_token_id, bos_token_id=bos_token_id, pad_token_id=pad_token_id, causal_mask=causal_mask,
        layer_scale_init_value=text_layer_scale_init_value,
    )
    vision = vision_config_dict(
        facts, vision_heads=vision_heads, vision_hidden_act=vision_hidden_act or hidden_act,
        vision_layer_norm_eps=vision_layer_norm_eps, vision_layer_scale_init_value=vision_layer_scale_init_value,
        vision_pooling=vision_pooling, attention_pool_heads=attention_pool_heads,
    )
    try:
        return DualClipConfig(
            text_config=text,
            vision_config=vision,
            projection_dim=facts.embed_dim,
            logit_bias_init_value=logit_bias_init_value if facts.logit_bias else None,
            loss_type=loss_type,
        )
    except ValueError as error:
        raise ConversionError(f"the checkpoint's architecture is not a valid dualclip model: {error}") from None


def _layer_targets(rest: str, prefix: str) -> list[tuple[str, Transform]] | None:
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        part = rest.rsplit("_", 1)[1]
        return [(f"{prefix}self_attn.{name}.{part}", ("chunk", i)) for i, name in enumerate(_QKV)]
    if rest in _LAYER_RENAMES:
        return [(prefix + _LAYER_RENAMES[rest], None)]
    return None


def _text_targets(key: str) -> list[tuple[str, Transform]] | None:
    simple = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "text_projection.weight": "text_projection.weight",
        "text_projection.bias": "text_projection.bias",
        "cls_emb": "text_model.embeddings.class_embedding",
    }
    if key in simple:
        return [(simple[key], None)]
    if key == "text_projection":
        return [("text_projection.weight", "T")]
    if m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key):
        return _layer_targets(m.group(2), f"text_model.encoder.layers.{m.group(1)}.")
    return None


def _vit_targets(key: str) -> list[tuple[str, Transform]] | None:
    simple = {
        "class_embedding": "vision_model.embeddings.class_embedding",
        "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "ln_post.weight": "vision_model.post_layernorm.weight",
        "ln_post.bias": "vision_model.post_layernorm.bias",
    }
    if key in simple:
        return [(simple[key], None)]
    if key == "proj":
        return [("visual_projection.weight", "T")]
    if key == "attn_pool.query":  # CoCa: the first query is the contrastive one; the others feed its decoder
        return [("vision_model.attention_pool.query", "first_row")]
    if m := re.fullmatch(r"attn_pool\.(?:attn\.(.+)|ln_q\.(.+)|ln_k\.(.+))", key):
        attn, query_norm, token_norm = m.groups()
        if attn:
            return [(f"vision_model.attention_pool.attention.{attn}", None)]
        if query_norm:
            return [(f"vision_model.attention_pool.layernorm_query.{query_norm}", None)]
        return [(f"vision_model.attention_pool.layernorm_tokens.{token_norm}", None)]
    if m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key):
        return _layer_targets(m.group(2), f"vision_model.encoder.layers.{m.group(1)}.")
    return None


def _resnet_targets(key: str) -> list[tuple[str, Transform]] | None:
    conv_or_bn = rf"conv[123]\.weight|bn[123]\.(?:{'|'.join(_BATCH_NORM_PARTS)})"
    if re.fullmatch(conv_or_bn, key):
        return [(f"vision_model.embeddings.{key}", None)]
    if m := re.fullmatch(r"layer([1-4])\.(\d+)\.(.+)", key):
        block, rest = f"vision_model.stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.", m.group(3)
        if re.fullmatch(conv_or_bn, rest):
            return [(block + rest, None)]
        # OpenAI's shortcut is Sequential(avgpool "-1", conv "0", bn "1").
        if s := re.fullmatch(r"downsample\.([01])\.(.+)", rest):
            return [(block + ("shortcut_conv." if s.group(1) == "0" else "shortcut_bn.") + s.group(2), None)]
        return None
    if m := re.fullmatch(r"attnpool\.(positional_embedding|[qkv]_proj\.(?:weight|bias))", key):
        return [(f"vision_model.attention_pool.{m.group(1)}", None)]
    if m := re.fullmatch(r"attnpool\.c_proj\.(weight|bias)", key):
        return [(f"visual_projection.{m.group(1)}", None)]
    return None


def plan_conversion(keys, facts: ShapeFacts) -> dict[str, list[tuple[str, Transform]]]:
    """For every source tensor, the dualclip tensors made from it. Unknown source tensors are an error."""
    plan, unknown = {}, []
    for key in keys:
        targets = None
        if key.startswith(CAPTIONING_DECODER_PREFIX) and facts.text_class_token:
            continue  # CoCa's captioning decoder: not converted (dualclip has no captioning)
        if key == "logit_scale" or key == "logit_bias":
            targets = [(key, "scalar")]
        elif key.startswith("visual.") and facts.backbone != "none":
            rest = key[len("visual."):]
            targets = _vit_targets(rest) if facts.backbone == "vit" else _resnet_targets(rest)
        elif key.startswith(facts.text_prefix):
            targets = _text_targets(key[len(facts.text_prefix):])
        if targets is None:
            unknown.append(key)
        else:
            plan[key] = targets
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise ConversionError(
            f"{len(unknown)} tensors have no place in a dualclip model: {shown}. The checkpoint holds parts "
            "dualclip does not support (e.g. a CoCa decoder, attentional pooling, timm or Hugging Face towers)"
        )
    return plan
