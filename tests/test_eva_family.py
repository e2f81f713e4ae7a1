"""The EVA / Perception Encoder image-tower family against OpenCLIP + timm: OpenCLIP's released EVA01/EVA02/PE-Core
configs at reduced width and depth (timm's own `Eva`, with every flag of the released timm function) convert with
`eva_vision_tower` to the same image embeddings; `EVA_ARCHITECTURES` is what timm's registered functions build; the
family saves, loads through AutoModel and runs through every attention implementation alike."""

import json

import pytest
import torch
from family_checks import (
    TOLERANCE,
    assert_round_trips,
    convert_and_compare_with_openclip,
    image_features_without_dualclip,
    image_tower_of,
    pixels,
    relative_error,
)
import openclip_timm_refs
from openclip_timm_refs import openclip_model, register_timm_model, released_model_config

import dualclip  # noqa: F401  (registers the Auto classes)
from dualclip import DualClipConfig, DualClipModel, DualClipVisionModelWithProjection
from dualclip.conversion import ConversionError
from dualclip.conversion.eva import EVA_ARCHITECTURES, eva_vision_tower
from dualclip.modeling_dualclip_eva import DualClipEvaVisionConfig

# Reduced towers: width 32 in 2 heads of 16 (rotary needs a multiple of 4; PE's attention pool keeps its 8 heads of
# 4), 2 layers; every other argument (image size, patch size, MLP ratio, flags, rotary grid) as released.
WIDTH, DEPTH, HEADS, EMBED_DIM = 32, 2, 2, 24
TEXT = dict(width=32, heads=2, layers=1)
# OpenCLIP config -> timm name; one per combination of options (PE-Core-T/S/L have PE-Core-B's, EVA02-L-14 EVA02-B's).
RELEASED = {
    "EVA01-g-14": "eva_giant_patch14_224",  # fused qkv with q/v biases, GELU MLP, no rotary
    "EVA02-B-16": "eva02_base_patch16_clip_224",  # rotary (ij, 14 -> 16 grid), SwiGLU + norm, inner attention norm
    "EVA02-L-14-336": "eva02_large_patch14_clip_336",  # the same on a 24 -> 16 grid
    "EVA02-E-14": "eva02_enormous_patch14_clip_224",  # post-norm layers
    "PE-Core-B-16": "vit_pe_core_base_patch16_224",  # pre-norm, key bias, rotary (xy, offset 1), attention pool
    "PE-Core-bigG-14-448": "vit_pe_core_gigantic_patch14_448",  # ... without class token, offset 0
}


def released_timm_arguments(timm_name: str) -> dict:
    return openclip_timm_refs.released_timm_arguments("eva", "_create_eva", timm_name)


def timm_meta_model(timm_name: str, pool: str):
    """timm's model as OpenCLIP builds it (classifier head, `pool`), on the meta device."""
    import timm

    with torch.device("meta"):
        return timm.create_model(timm_name, num_classes=EMBED_DIM, global_pool=pool)


def architecture_of(model) -> dict:
    """A timm `Eva` read into `EVA_ARCHITECTURES`' terms, from its modules and tensor shapes."""
    from timm.layers import AttentionRope, SwiGLU
    from timm.models.eva import EvaBlockPostNorm

    block = model.blocks[0]
    swiglu = isinstance(block.mlp, SwiGLU)
    fc1 = block.mlp.fc1_g if swiglu else block.mlp.fc1
    # What the family takes for granted: learned position embeddings (class token included), no register tokens,
    # no LayerScale, the final norm before pooling (no fc_norm), exact GELU or SwiGLU's SiLU.
    assert model.pos_embed is not None and model.reg_token is None and not model.no_embed_class
    assert getattr(block, "gamma_1", None) is None and getattr(block, "gamma_2", None) is None
    assert isinstance(model.fc_norm, torch.nn.Identity) and not isinstance(model.norm, torch.nn.Identity)
    assert isinstance(block.mlp.act, torch.nn.SiLU) if swiglu else block.mlp.act.approximate == "none"
    arch = {
        "image_size": model.patch_embed.img_size[0],
        "patch_size": model.patch_embed.patch_size[0],
        "hidden_size": model.embed_dim,
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": block.attn.num_heads,
        "intermediate_size": fc1.out_features,
        "class_token": model.cls_token is not None,
        "use_pre_transformer_norm": not isinstance(model.norm_pre, torch.nn.Identity),
        # EVA's attention keeps a zero, non-persistent `k_bias`; AttentionRope's fused qkv has a full bias.
        "key_bias": isinstance(block.attn, AttentionRope) and block.attn.qkv.bias is not None,
        "scale_attn_inner": not isinstance(block.attn.norm, torch.nn.Identity),
        "swiglu_mlp": swiglu,
        "scale_mlp": not isinstance(block.mlp.norm, torch.nn.Identity),
        "use_post_norm": isinstance(block, EvaBlockPostNorm),
        "use_rot_pos_emb": model.rope is not None,
        "layer_norm_eps": model.norm.eps,
        "hidden_act": "gelu",  # of the GELU MLPs (asserted above); SwiGLU's gate is always SiLU
    }
    if model.rope is not None:
        rope = model.rope
        assert (rope.temperature, rope.in_pixels, rope.rotate_half, rope.grid_type) == (10000, False, False, "index")
        assert rope.ref_feat_shape[0] == rope.ref_feat_shape[1]
        arch.update(rope_ref_feat_shape=rope.ref_feat_shape[0], rope_grid_offset=rope.grid_offset,
                    rope_grid_indexing=rope.grid_indexing)
    if model.attn_pool is not None:
        pool = model.attn_pool
        assert isinstance(pool.mlp.act, torch.nn.GELU) and pool.latent_len == 1 and pool.pool == "token"
        arch.update(attn_pool_num_heads=pool.num_heads, attn_pool_mlp_ratio=pool.mlp.fc1.out_features / model.embed_dim)
    return arch


@pytest.mark.parametrize("timm_name", sorted(EVA_ARCHITECTURES))
def test_architecture_table_is_what_timm_builds(timm_name):
    pool = "map" if "attn_pool_num_heads" in EVA_ARCHITECTURES[timm_name] else "token"
    model = timm_meta_model(timm_name, pool)
    assert architecture_of(model) == EVA_ARCHITECTURES[timm_name]
    assert model.head.weight.shape == (EMBED_DIM, model.embed_dim)


def test_the_table_covers_every_openclip_eva_and_pe_config():
    from pathlib import Path

    import open_clip

    folder = Path(open_clip.__file__).parent / "model_configs"
    names = {json.loads(path.read_text())["vision_cfg"].get("timm_model_name") for path in folder.glob("*.json")}
    assert {n for n in names if n and n.startswith(("eva", "vit_pe_core"))} == set(EVA_ARCHITECTURES)


def reduced(openclip_name: str):
    """OpenCLIP's config `openclip_name` with a reduced timm tower registered under a test name, and the table entry
    for it (the released timm name's, at the reduced sizes)."""
    from timm.models.eva import Eva

    timm_name = RELEASED[openclip_name]
    arguments = released_timm_arguments(timm_name)
    image_size = EVA_ARCHITECTURES[timm_name]["image_size"]
    arguments.update(img_size=image_size, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS)
    test_name = f"dualclip_test_{timm_name}"
    register_timm_model(test_name, Eva, **arguments)

    cfg = released_model_config(openclip_name)
    cfg["embed_dim"] = EMBED_DIM
    cfg["vision_cfg"]["timm_model_name"] = test_name
    cfg["text_cfg"].update(TEXT)
    arch = dict(EVA_ARCHITECTURES[timm_name], hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                intermediate_size=int(WIDTH * arguments["mlp_ratio"]))
    return cfg, test_name, arch, arguments


@pytest.fixture(scope="module", params=list(RELEASED))
def converted(request):
    """(OpenCLIP model, converted DualClipVisionModelWithProjection, its config dict, timm arguments)."""
    cfg, test_name, arch, arguments = reduced(request.param)
    reference = openclip_model(f"dualclip-test-{request.param}", cfg)
    model = image_tower_of(reference, cfg, eva_vision_tower, EVA_ARCHITECTURES, test_name, arch)
    return request.param, reference, model, arguments


@torch.no_grad()
def test_image_embeddings_equal_openclip(converted):
    name, reference, model, _ = converted
    images = pixels(model.config.image_size)
    want = reference.encode_image(images)
    errors = {
        "forward": relative_error(model(images).image_embeds, want),
        "encode_image": relative_error(model.encode_image(images), want),
        "pooled_only": relative_error(model(images, pooled_only=True).image_embeds, want),
    }
    print(f"\n{name}: relative error {max(errors.values()):.2e} ({errors})")
    assert max(errors.values()) < TOLERANCE, errors


@torch.no_grad()
def test_eager_and_sdpa_give_the_same_numbers(converted):
    _, _, model, _ = converted
    images = pixels(model.config.image_size, seed=1)
    sdpa = model(images, output_hidden_states=True)
    model.set_attn_implementation("eager")
    try:
        eager = model(images, output_hidden_states=True, output_attentions=True)
        eager_fast = model.encode_image(images)
    finally:
        model.set_attn_implementation("sdpa")
    assert relative_error(eager.image_embeds, sdpa.image_embeds) < TOLERANCE
    assert relative_error(eager_fast, sdpa.image_embeds) < TOLERANCE
    assert len(eager.hidden_states) == len(sdpa.hidden_states) == DEPTH + 1
    assert len(eager.attentions) == DEPTH  # the encoder's, not the attention pool's
    for mine, theirs in zip(eager.hidden_states, sdpa.hidden_states):
        assert relative_error(mine, theirs) < TOLERANCE


@pytest.mark.parametrize("converted", ["EVA02-B-16", "PE-Core-B-16"], indirect=True)
@torch.no_grad()
def test_other_image_sizes_as_timm_dynamic_img_size(converted):
    """`interpolate_pos_encoding=True` computes what timm's `Eva(dynamic_img_size=True)` does with these weights."""
    from timm.models.eva import Eva

    _, reference, model, arguments = converted
    pool = "map" if model.config.global_pool == "map" else "token"
    dynamic = Eva(**{**arguments, "dynamic_img_size": True, "num_classes": EMBED_DIM, "global_pool": pool}).eval()
    dynamic.load_state_dict(reference.visual.trunk.state_dict())
    for height, width in ((160, 160), (96, 160)):  # a wider image tells rows from columns
        images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(2))
        want = dynamic(images)
        got = model.encode_image(images, interpolate_pos_encoding=True)
        assert relative_error(got, want) < TOLERANCE, (height, width)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(pixels(160))


@pytest.mark.slow
@pytest.mark.parametrize("openclip_name", ["EVA02-B-16", "PE-Core-B-16"])
@torch.no_grad()
def test_full_size_image_tower_equals_openclip(openclip_name):
    """The released image tower at full size (random weights; text tower reduced)."""
    cfg = released_model_config(openclip_name)
    cfg["text_cfg"].update(TEXT)
    reference = openclip_model(f"dualclip-test-full-{openclip_name}", cfg)
    tensors = {key: value for key, value in reference.state_dict().items() if key.startswith("visual.")}
    config, state = eva_vision_tower(cfg["vision_cfg"], cfg["embed_dim"], tensors)
    model = DualClipVisionModelWithProjection(config).eval()
    model.load_state_dict(state, strict=True)
    images = pixels(config.image_size, batch=1)
    error = relative_error(model.encode_image(images), reference.encode_image(images))
    print(f"\n{openclip_name} (full size): relative error {error:.2e}")
    assert error < TOLERANCE


def openclip_eva02_tensors():
    cfg, test_name, arch, _ = reduced("EVA02-B-16")
    reference = openclip_model("dualclip-test-errors", cfg)
    return cfg, test_name, arch, {k: v for k, v in reference.state_dict().items() if k.startswith("visual.")}


def test_conversion_errors_name_what_does_not_fit(monkeypatch):
    cfg, test_name, arch, tensors = openclip_eva02_tensors()
    monkeypatch.setitem(EVA_ARCHITECTURES, test_name, arch)
    vision = cfg["vision_cfg"]

    def convert(vision_cfg=vision, embed_dim=EMBED_DIM, state=tensors):
        return eva_vision_tower(vision_cfg, embed_dim, state)

    with pytest.raises(ConversionError, match="timm_model_name='eva02_tiny_patch14_224'"):
        convert(dict(vision, timm_model_name="eva02_tiny_patch14_224"))
    with pytest.raises(ConversionError, match="timm_pool='avg'"):
        convert(dict(vision, timm_pool="avg"))
    with pytest.raises(ConversionError, match="timm_proj='linear'"):
        convert({k: v for k, v in vision.items() if k != "timm_proj"})  # OpenCLIP's default
    with pytest.raises(ConversionError, match="timm_pool.*'map'"):
        convert(dict(vision, timm_pool="map"))
    with pytest.raises(ConversionError, match="image_size is 336 .* 224"):
        convert(dict(vision, image_size=336))
    with pytest.raises(ConversionError, match="embed_dim is 512 in the config but 24"):
        convert(embed_dim=512)
    monkeypatch.setitem(EVA_ARCHITECTURES, test_name, dict(arch, num_hidden_layers=3))
    with pytest.raises(ConversionError, match="num_hidden_layers .* 3 in the config but 2"):
        convert()
    # EVA01's architecture for EVA02 tensors: the SwiGLU MLP gives it away.
    monkeypatch.setitem(EVA_ARCHITECTURES, test_name, dict(arch, swiglu_mlp=False, scale_mlp=False))
    with pytest.raises(ConversionError, match="swiglu_mlp .* False in the config but True"):
        convert()
    monkeypatch.setitem(EVA_ARCHITECTURES, test_name, arch)
    extra = {"visual.trunk.blocks.1.gamma_1": torch.ones(WIDTH), "visual.head.proj.weight": torch.ones(1)}
    state = {**tensors, **extra}
    with pytest.raises(ConversionError, match=r"visual\.head\.proj\.weight, visual\.trunk\.blocks\.1\.gamma_1"):
        convert(state=state)
    config, renamed = convert()
    assert isinstance(config, DualClipEvaVisionConfig) and config.projection_dim == EMBED_DIM
    assert set(renamed) == set(DualClipVisionModelWithProjection(config).state_dict())


def test_config_checks():
    # Strict configs wrap the ValueError of `validate_architecture` (as for the other families).
    with pytest.raises(Exception, match="class_token"):
        DualClipEvaVisionConfig(class_token=False, global_pool="token")
    with pytest.raises(Exception, match="scale_mlp"):
        DualClipEvaVisionConfig(swiglu_mlp=False, scale_mlp=True)
    with pytest.raises(Exception, match="multiple of 4"):
        DualClipEvaVisionConfig(hidden_size=36, num_attention_heads=6)


SMALL = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=32,
             patch_size=8, projection_dim=24)
PE_SMALL = dict(SMALL, key_bias=True, use_pre_transformer_norm=True, swiglu_mlp=False, scale_mlp=False,
                scale_attn_inner=False, rope_grid_indexing="xy", rope_grid_offset=1.0, global_pool="map",
                attn_pool_num_heads=4, layer_norm_eps=1e-5)


def dual_model(vision: dict) -> DualClipModel:
    config = DualClipConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                             num_attention_heads=2, vocab_size=99, max_position_embeddings=16,
                                             bos_token_id=97, eos_token_id=98, pad_token_id=0),
                            vision_config=dict(vision, model_type="dualclip_eva_vision_model"), projection_dim=24)
    assert isinstance(config.vision_config, DualClipEvaVisionConfig)
    torch.manual_seed(0)
    model = DualClipModel(config).eval()
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor).all(), name
    return model


@pytest.mark.parametrize("vision", [SMALL, PE_SMALL], ids=["eva02", "pe"])
def test_save_and_auto_model_round_trip(tmp_path, vision):
    assert_round_trips(dual_model(vision), tmp_path, "modeling_dualclip_eva", "DualClipEvaVisionTransformer", pixels(32))


@torch.no_grad()
def test_folder_loads_with_trust_remote_code_without_dualclip(tmp_path):
    model = dual_model(PE_SMALL)
    features = image_features_without_dualclip(model, tmp_path, pixels(32))
    assert torch.equal(features, model.get_image_features(pixels(32)).pooler_output)


@pytest.mark.parametrize("openclip_name", ["EVA02-B-16", "PE-Core-B-16", "EVA01-g-14"])
def test_dualclip_convert_gives_open_clips_features_and_logits(openclip_name, tmp_path):
    """The whole model through `dualclip convert` (an OpenCLIP hub folder: timm's Eva image tower beside OpenCLIP's
    causal text tower): text features, image features and logits as open_clip's, with the processor's mask."""
    cfg, test_name, arch, _ = reduced(openclip_name)
    reference = openclip_model(f"dualclip-convert-{openclip_name}", cfg)
    result, _, errors = convert_and_compare_with_openclip(reference, cfg, tmp_path, EVA_ARCHITECTURES, test_name, arch)
    assert "EVA/PE" in result.architecture
    assert max(errors.values()) < TOLERANCE, errors
