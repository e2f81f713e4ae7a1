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

from .errors import ConversionError

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
    vectors. Raises `ConversionError` naming every key it cannot place.
    """
    out: dict[str, torch.Tensor] = {}
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


__all__ = ["openclip_siglip_to_siglip_state_dict"]
