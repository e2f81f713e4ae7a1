"""OpenAI CLIP checkpoints: the architecture is read from tensor shapes, as OpenAI's `build_model` does.

OpenAI's rules that the shapes cannot tell: 64-wide attention heads in every transformer and in the ResNet's attention
pool, QuickGELU, LayerNorm eps 1e-5, a causal text tower pooled at the end-of-text token (the largest id).
"""

import torch

from ..configuration_dualclip import DualClipConfig
from ..configuration_dualclip_base import OPENAI_BOS_TOKEN_ID, OPENAI_EOS_TOKEN_ID, OPENAI_VOCAB_SIZE
from .clip_layout import ShapeFacts, build_config, shape_facts
from .errors import ConversionError
from .model_card import layers

OPENAI_HEAD_WIDTH = 64
OPENAI_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# The released models, by the sizes that identify them: (backbone, vision width, vision layers, patch size,
# image size, embedding size, text width). Every released text tower has 12 layers and a 77-token context.
OPENAI_ARCHITECTURES = {
    "ViT-B/32": ("vit", 768, 12, 32, 224, 512, 512),
    "ViT-B/16": ("vit", 768, 12, 16, 224, 512, 512),
    "ViT-L/14": ("vit", 1024, 24, 14, 224, 768, 768),
    "ViT-L/14@336px": ("vit", 1024, 24, 14, 336, 768, 768),
    "RN50": ("resnet", 64, (3, 4, 6, 3), None, 224, 1024, 512),
    "RN101": ("resnet", 64, (3, 4, 23, 3), None, 224, 512, 512),
    "RN50x4": ("resnet", 80, (4, 6, 10, 6), None, 288, 640, 640),
    "RN50x16": ("resnet", 96, (6, 8, 18, 8), None, 384, 768, 768),
    "RN50x64": ("resnet", 128, (3, 15, 36, 10), None, 448, 1024, 1024),
}


def _signature(facts: ShapeFacts) -> tuple:
    layers = tuple(facts.resnet_layers) if facts.backbone == "resnet" else facts.vision_layers
    patch = facts.patch_size if facts.backbone == "vit" else None
    return (facts.backbone, facts.vision_width, layers, patch, facts.image_size, facts.embed_dim, facts.text_width)


def architecture_name(facts: ShapeFacts) -> str:
    """The released model these sizes belong to (`"ViT-B/32"`, `"RN50x4"`, ...), or a description of them."""
    for name, signature in OPENAI_ARCHITECTURES.items():
        if _signature(facts) == signature and facts.text_layers == 12:
            if facts.context_length == 77:
                return name
            return f"{name} with {facts.context_length} text positions (Long-CLIP: 248)"
    if facts.backbone == "vit":
        vision = f"ViT (width {facts.vision_width}, {layers(facts.vision_layers)}, patch {facts.patch_size})"
    else:
        vision = f"ResNet (width {facts.vision_width}, blocks {'-'.join(map(str, facts.resnet_layers))})"
    positions = "" if facts.context_length == 77 else f", {facts.context_length} text positions"
    return (
        f"{vision} at {facts.image_size}px, text transformer (width {facts.text_width}, {layers(facts.text_layers)}"
        f"{positions}), {facts.embed_dim}-d embeddings"
    )


def _heads(width: int, what: str) -> int:
    if width % OPENAI_HEAD_WIDTH:
        raise ConversionError(
            f"{what} width {width} is not a multiple of {OPENAI_HEAD_WIDTH}, OpenAI's head width; "
            "an OpenCLIP model? Convert it with --from openclip and its model config"
        )
    return width // OPENAI_HEAD_WIDTH


def openai_text_tokens(vocab_size: int) -> dict:
    """Pooling and special-token ids for an OpenAI-style text tower with `vocab_size` ids.

    With OpenAI's vocabulary, pooling at the first end-of-text token is exactly OpenAI's argmax rule (EOS is the
    largest id) and stays right after tokens are added; with any other vocabulary the argmax rule is kept as is.
    """
    if vocab_size == OPENAI_VOCAB_SIZE:
        return dict(pooling="eos", bos_token_id=OPENAI_BOS_TOKEN_ID, eos_token_id=OPENAI_EOS_TOKEN_ID)
    return dict(pooling="argmax", bos_token_id=None, eos_token_id=None)


# Long-CLIP (248 text positions, OpenAI's layout): the first 20 positions keep CLIP's trained embedding
# (`positional_embedding`), the others come from `positional_embedding_res` (its `mask1`/`mask2`).
LONG_CLIP_KEPT_POSITIONS = 20


def fold_long_clip_positions(tensors) -> bool:
    """Folds a Long-CLIP checkpoint's two position embeddings into the one they add up to, in place in `tensors`
    (a `TensorSource`): rows `:20` of `positional_embedding`, the rest of `positional_embedding_res`. Exact (the
    original multiplies by 0/1 masks and adds). Returns whether the checkpoint was Long-CLIP's."""
    if "positional_embedding_res" not in tensors:
        return False
    kept, stretched = tensors.pop("positional_embedding"), tensors.pop("positional_embedding_res")
    if kept.shape != stretched.shape or kept.shape[0] <= LONG_CLIP_KEPT_POSITIONS:
        raise ConversionError(
            f"positional_embedding {tuple(kept.shape)} and positional_embedding_res {tuple(stretched.shape)} are "
            f"not Long-CLIP's (two equal position tables longer than {LONG_CLIP_KEPT_POSITIONS})"
        )
    tensors.put("positional_embedding", torch.cat([kept[:LONG_CLIP_KEPT_POSITIONS],
                                                   stretched[LONG_CLIP_KEPT_POSITIONS:]]))
    return True


def openai_config(tensors) -> tuple[DualClipConfig, ShapeFacts]:
    """The dualclip config of an OpenAI CLIP state dict (Long-CLIP's included: see `fold_long_clip_positions`, done
    here), and the sizes read from it."""
    fold_long_clip_positions(tensors)
    facts = shape_facts(tensors)
    extras = [
        name
        for name, present in (
            ("`text.` prefix (custom text tower)", facts.text_prefix),
            ("LayerScale", facts.text_layer_scale or facts.vision_layer_scale),
            ("text projection bias", facts.text_projection_bias),
            ("logit_bias", facts.logit_bias),
            ("no ln_pre", not facts.pre_norm),
        )
        if present
    ]
    if extras:
        raise ConversionError(
            f"this is not an OpenAI CLIP checkpoint (it has {', '.join(extras)}); it looks like an OpenCLIP one: "
            "convert it with --from openclip and --openclip-config or --openclip-model"
        )
    if facts.backbone == "vit":
        vision_heads = _heads(facts.vision_width, "vision")
    else:
        vision_heads = _heads(facts.vision_hidden_size, "attention-pool")
    config = build_config(
        facts,
        text_heads=_heads(facts.text_width, "text"),
        vision_heads=vision_heads,
        hidden_act="quick_gelu",
        pad_token_id=0,
        **openai_text_tokens(facts.vocab_size),
    )
    return config, facts
