"""The ViTamin image-tower family against OpenCLIP + timm: OpenCLIP's released ViTamin configs at reduced width and
depth (timm's own hybrid `vitamin_*`, every other argument of the released timm function) convert with
`vitamin_vision_tower`, and whole models with `convert_checkpoint`, to the same features and logits;
`VITAMIN_ARCHITECTURES` is what timm's registered functions build; the family saves, loads through AutoModel and runs
through every attention implementation alike."""

import dataclasses
import functools
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
from dualclip.conversion.vitamin import VITAMIN_ARCHITECTURES, vitamin_vision_tower
from dualclip.modeling_dualclip_vitamin import DualClipVitaminVisionConfig

# Reduced towers: stem and MBConv stages 8 and 16 channels wide (the stem as wide as the first stage, as released),
# transformer width 32 in 2 heads, 2 layers; everything else (image size, stage depths, GeGLU ratio, position
# embeddings or none) as released.
STEM, STAGES, WIDTH, DEPTH, HEADS, EMBED_DIM = 8, (8, 16), 32, 2, 2, 24
TEXT = dict(width=32, heads=2, layers=1)
# OpenCLIP config -> timm name, one per combination of options: S, B, L and L2 differ only in widths and depths.
RELEASED = {
    "ViTamin-S": "vitamin_small_224",  # learned position embeddings on a 14 x 14 grid
    "ViTamin-L-336": "vitamin_large_336",  # ... on an odd grid (21 x 21)
    "ViTamin-XL-384": "vitamin_xlarge_384",  # no position embeddings; OpenCLIP's config runs it at 256, not 384
}


def released_timm_arguments(timm_name: str) -> dict:
    return openclip_timm_refs.released_timm_arguments("vitamin", "_create_vitamin", timm_name)


def architecture_of(model) -> dict:
    """A timm ViTamin read into `VITAMIN_ARCHITECTURES`' terms, from its modules, after asserting what the family
    takes for granted."""
    from timm.layers import GELU, HybridEmbed, LayerNorm2d
    from timm.models.vision_transformer import Attention, Block
    from timm.models.vitamin import Downsample2d, GeGluMlp, MbConvLNBlock, Stem, StridedConv

    embed, backbone = model.patch_embed, model.patch_embed.backbone
    # No projection after the convolutions, no class or register tokens, no pre-norm; the mean of every token through
    # `fc_norm` (the final norm moved after the pool), no attention pool.
    assert isinstance(embed, HybridEmbed) and isinstance(embed.proj, torch.nn.Identity)
    assert model.cls_token is None and model.reg_token is None and model.num_prefix_tokens == 0
    assert isinstance(model.norm_pre, torch.nn.Identity) and isinstance(model.norm, torch.nn.Identity)
    assert model.global_pool == "avg" and model.attn_pool is None and isinstance(model.fc_norm, torch.nn.LayerNorm)
    # Convolutions as the family builds them.
    assert isinstance(backbone.stem, Stem)
    conv1, conv2 = backbone.stem.conv1, backbone.stem.conv2
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((3, 3), (2, 2), (1, 1)) and conv1.bias is not None
    assert (conv2.kernel_size, conv2.stride, conv2.padding) == ((3, 3), (1, 1), (1, 1)) and conv2.bias is not None
    sizes = [backbone.stem.out_chs]
    for stage in backbone.stages:
        for index, block in enumerate(stage):
            assert isinstance(block, MbConvLNBlock)
            first = index == 0
            assert block.in_chs == (sizes[-1] if first else block.out_chs)
            assert isinstance(block.shortcut, Downsample2d) if first else isinstance(block.shortcut, torch.nn.Identity)
            if first:
                pool = block.shortcut.pool
                assert (pool.kernel_size, pool.stride, pool.padding, pool.count_include_pad) == (3, 2, 1, False)
                assert isinstance(block.shortcut.expand, torch.nn.Conv2d) == (block.in_chs != block.out_chs)
            assert isinstance(block.pre_norm.act, torch.nn.Identity) and isinstance(block.down, torch.nn.Identity)
            depthwise = block.conv2_kxk
            assert depthwise.groups == depthwise.in_channels == block.conv1_1x1.out_channels
            assert (depthwise.kernel_size, depthwise.stride, depthwise.padding) == ((3, 3), (2 if first else 1,) * 2,
                                                                                     (1, 1))
            assert block.conv1_1x1.out_channels == 4 * block.out_chs  # `make_divisible` leaves these widths alone
        sizes.append(stage[0].out_chs)
    assert isinstance(backbone.pool, StridedConv) and isinstance(backbone.pool.norm, LayerNorm2d)
    proj = backbone.pool.proj
    assert (proj.kernel_size, proj.stride, proj.padding) == ((3, 3), (2, 2), (1, 1)) and proj.bias is not None
    # Plain pre-norm blocks: fused qkv with bias, no q/k norm, no inner norm, no LayerScale; GeGLU MLP.
    for block in model.blocks:
        assert type(block) is Block and type(block.attn) is Attention and block.attn.qkv.bias is not None
        assert all(isinstance(m, torch.nn.Identity) for m in (block.attn.q_norm, block.attn.k_norm, block.attn.norm,
                                                              block.ls1, block.ls2))
        assert isinstance(block.mlp, GeGluMlp) and block.mlp.w0.bias is not None
    # One LayerNorm epsilon and the exact GELU everywhere.
    norms = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    activations = [m for m in model.modules() if isinstance(m, (torch.nn.GELU, GELU))]
    assert all(getattr(m, "approximate", "none") == "none" for m in activations)
    assert len(activations) == 1 + sum(2 * len(stage) for stage in backbone.stages) + len(model.blocks)
    assert len(norms) == 1
    block = model.blocks[0]
    grid = model.patch_embed.grid_size
    image_size = model.patch_embed.img_size[0]
    assert grid == (image_size // 16,) * 2
    if model.pos_embed is not None:
        assert model.pos_embed.shape[1] == grid[0] * grid[1]
    return {
        "image_size": image_size,
        "stem_size": backbone.stem.out_chs,
        "conv_stage_sizes": sizes[1:],
        "conv_stage_depths": [len(stage) for stage in backbone.stages],
        "hidden_size": model.embed_dim,
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": block.attn.num_heads,
        "intermediate_size": block.mlp.w0.out_features,
        "use_position_embeddings": model.pos_embed is not None,
        "layer_norm_eps": norms.pop(),
        "hidden_act": "gelu",  # asserted above
    }


@pytest.mark.parametrize("timm_name", sorted(VITAMIN_ARCHITECTURES))
def test_architecture_table_is_what_timm_builds(timm_name):
    """The table entry is timm's model (on the meta device, as OpenCLIP builds it), and its tensors convert to
    exactly the tensors, with the same shapes, of the dualclip tower the entry configures."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(timm_name)
        model.reset_classifier(0)  # OpenCLIP's `timm_pool: ""`, `timm_proj: "linear"`
    assert architecture_of(model) == VITAMIN_ARCHITECTURES[timm_name]

    tensors = {f"visual.trunk.{key}": value for key, value in model.state_dict().items()}
    tensors["visual.head.proj.weight"] = torch.empty(EMBED_DIM, model.embed_dim, device="meta")
    arch = VITAMIN_ARCHITECTURES[timm_name]
    config, renamed = vitamin_vision_tower(
        {"timm_model_name": timm_name, "timm_pool": "", "timm_proj": "linear", "image_size": arch["image_size"]},
        EMBED_DIM, tensors,
    )
    with torch.device("meta"):
        ours = DualClipVisionModelWithProjection(config).state_dict()
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_the_table_covers_every_openclip_vitamin_config():
    from pathlib import Path

    import open_clip

    folder = Path(open_clip.__file__).parent / "model_configs"
    names = {json.loads(path.read_text())["vision_cfg"].get("timm_model_name") for path in folder.glob("*.json")}
    assert {n for n in names if n and n.startswith("vitamin")} == set(VITAMIN_ARCHITECTURES)


def reduced(openclip_name: str):
    """OpenCLIP's config `openclip_name` with a reduced timm tower registered under a test name, the table entry for
    it (the released timm name's, at the reduced sizes) and the timm factory with its arguments."""
    from timm.models import vitamin

    timm_name = RELEASED[openclip_name]
    arguments = released_timm_arguments(timm_name)
    embed_cfg = arguments["embed_cfg"]
    arguments.update(
        embed_cfg=dataclasses.replace(embed_cfg, embed_dim=(*STAGES, WIDTH), stem_width=STEM),
        embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
    )
    factory = functools.partial(vitamin._create_vitamin, timm_name)
    test_name = f"dualclip_test_{timm_name}"
    register_timm_model(test_name, factory, **arguments)

    cfg = released_model_config(openclip_name)
    cfg["embed_dim"] = EMBED_DIM
    cfg["vision_cfg"]["timm_model_name"] = test_name
    cfg["text_cfg"].update(TEXT)
    arch = dict(VITAMIN_ARCHITECTURES[timm_name], stem_size=STEM, conv_stage_sizes=list(STAGES), hidden_size=WIDTH,
                num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=int(WIDTH * arguments["mlp_ratio"]))
    return cfg, test_name, arch, (factory, arguments)


@pytest.fixture(scope="module", params=list(RELEASED))
def converted(request):
    """(name, OpenCLIP model, converted DualClipVisionModelWithProjection, timm factory and arguments)."""
    cfg, test_name, arch, timm_model = reduced(request.param)
    reference = openclip_model(f"dualclip-test-{request.param}", cfg)
    model = image_tower_of(reference, cfg, vitamin_vision_tower, VITAMIN_ARCHITECTURES, test_name, arch)
    return request.param, reference, model, timm_model


@torch.no_grad()
def test_image_embeddings_equal_openclip(converted):
    name, reference, model, _ = converted
    assert model.config.image_size == reference.visual.image_size[0]  # ViTamin-XL-384: 256, as OpenCLIP runs it
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
    finally:
        model.set_attn_implementation("sdpa")
    assert relative_error(eager.image_embeds, sdpa.image_embeds) < TOLERANCE
    assert len(eager.hidden_states) == len(sdpa.hidden_states) == DEPTH + 1
    tokens = (model.config.image_size // 16) ** 2
    assert len(eager.attentions) == DEPTH and eager.attentions[0].shape == (2, HEADS, tokens, tokens)
    for mine, theirs in zip(eager.hidden_states, sdpa.hidden_states):
        assert relative_error(mine, theirs) < TOLERANCE


@pytest.mark.parametrize("converted", ["ViTamin-S", "ViTamin-XL-384"], indirect=True)
@torch.no_grad()
def test_other_image_sizes_as_timm_dynamic_img_size(converted):
    """`interpolate_pos_encoding=True` computes what timm's ViTamin with `dynamic_img_size=True` does with these
    weights (position embeddings resampled; without them, XL, the same tower at another size)."""
    _, reference, model, (factory, arguments) = converted
    dynamic = factory(**arguments, dynamic_img_size=True, num_classes=0).eval()
    dynamic.load_state_dict(reference.visual.trunk.state_dict())
    for height, width in ((160, 160), (96, 160)):  # a wider image tells rows from columns
        images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(2))
        want = reference.visual.head(dynamic(images))
        got = model.encode_image(images, interpolate_pos_encoding=True)
        assert relative_error(got, want) < TOLERANCE, (height, width)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(pixels(160))


@pytest.mark.slow
@torch.no_grad()
def test_full_size_image_tower_equals_openclip():
    """ViTamin-S's image tower at full size (random weights; text tower reduced)."""
    cfg = released_model_config("ViTamin-S")
    cfg["text_cfg"].update(TEXT)
    reference = openclip_model("dualclip-test-full-ViTamin-S", cfg)
    tensors = {key: value for key, value in reference.state_dict().items() if key.startswith("visual.")}
    config, state = vitamin_vision_tower(cfg["vision_cfg"], cfg["embed_dim"], tensors)
    model = DualClipVisionModelWithProjection(config).eval()
    model.load_state_dict(state, strict=True)
    images = pixels(config.image_size, batch=1)
    error = relative_error(model.encode_image(images), reference.encode_image(images))
    print(f"\nViTamin-S (full size): relative error {error:.2e}")
    assert error < TOLERANCE


def test_conversion_errors_name_what_does_not_fit(monkeypatch):
    cfg, test_name, arch, _ = reduced("ViTamin-S")
    reference = openclip_model("dualclip-test-vitamin-errors", cfg)
    tensors = {k: v for k, v in reference.state_dict().items() if k.startswith("visual.")}
    monkeypatch.setitem(VITAMIN_ARCHITECTURES, test_name, arch)
    vision = cfg["vision_cfg"]

    def convert(vision_cfg=vision, embed_dim=EMBED_DIM, state=tensors):
        return vitamin_vision_tower(vision_cfg, embed_dim, state)

    with pytest.raises(ConversionError, match="timm_model_name='vitamin_tiny_224'"):
        convert(dict(vision, timm_model_name="vitamin_tiny_224"))
    with pytest.raises(ConversionError, match="timm_pool='token'"):
        convert(dict(vision, timm_pool="token"))
    with pytest.raises(ConversionError, match="timm_proj=None"):
        convert(dict(vision, timm_proj=None))
    with pytest.raises(ConversionError, match="image_size is 256 .* 224"):
        convert(dict(vision, image_size=256))
    with pytest.raises(ConversionError, match="embed_dim is 512 in the config but 24"):
        convert(embed_dim=512)
    with pytest.raises(ConversionError, match="timm_proj_bias is True in the config but False"):
        convert(dict(vision, timm_proj_bias=True))
    monkeypatch.setitem(VITAMIN_ARCHITECTURES, test_name, dict(arch, conv_stage_depths=[2, 3]))
    with pytest.raises(ConversionError, match=r"conv_stage_depths .* \[2, 3\] in the config but \[2, 4\]"):
        convert()
    # XL's architecture for S's tensors: the position embedding gives it away.
    monkeypatch.setitem(VITAMIN_ARCHITECTURES, test_name, dict(arch, use_position_embeddings=False))
    with pytest.raises(ConversionError, match="use_position_embeddings .* False in the config but True"):
        convert()
    monkeypatch.setitem(VITAMIN_ARCHITECTURES, test_name, arch)
    extra = {"visual.trunk.blocks.1.ls1.gamma": torch.ones(WIDTH), "visual.trunk.cls_token": torch.ones(1, 1, WIDTH)}
    with pytest.raises(ConversionError, match=r"visual\.trunk\.blocks\.1\.ls1\.gamma, visual\.trunk\.cls_token"):
        convert(state={**tensors, **extra})
    with pytest.raises(ConversionError, match=r"visual\.head\.proj\.weight missing"):
        convert(state={k: v for k, v in tensors.items() if not k.startswith("visual.head.")})
    config, renamed = convert()
    assert isinstance(config, DualClipVitaminVisionConfig) and config.projection_dim == EMBED_DIM
    assert set(renamed) == set(DualClipVisionModelWithProjection(config).state_dict())


def test_config_checks():
    # Strict configs wrap the ValueError of `validate_architecture` (as for the other families).
    with pytest.raises(Exception, match="num_attention_heads"):
        DualClipVitaminVisionConfig(hidden_size=36, num_attention_heads=8)
    with pytest.raises(Exception, match="two MBConv stages"):
        DualClipVitaminVisionConfig(conv_stage_sizes=[8, 16, 32])
    with pytest.raises(Exception, match="multiple of 16"):
        DualClipVitaminVisionConfig(image_size=100)


SMALL = dict(stem_size=8, conv_stage_sizes=[8, 12], conv_stage_depths=[1, 2], hidden_size=32, intermediate_size=40,
             num_hidden_layers=2, num_attention_heads=2, image_size=32, projection_dim=24)


def dual_model(vision: dict) -> DualClipModel:
    config = DualClipConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                             num_attention_heads=2, vocab_size=99, max_position_embeddings=16,
                                             bos_token_id=97, eos_token_id=98, pad_token_id=0),
                            vision_config=dict(vision, model_type="dualclip_vitamin_vision_model"), projection_dim=24)
    assert isinstance(config.vision_config, DualClipVitaminVisionConfig)
    torch.manual_seed(0)
    model = DualClipModel(config).eval()
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor).all(), name
    return model


@pytest.mark.parametrize("vision", [SMALL, dict(SMALL, use_position_embeddings=False, projection_bias=True)],
                         ids=["positions", "xl"])
def test_save_and_auto_model_round_trip(tmp_path, vision):
    model = dual_model(vision)
    assert_round_trips(model, tmp_path, "modeling_dualclip_vitamin", "DualClipVitaminVisionTransformer", pixels(32))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "geglu_mlp" not in saved["vision_config"]  # a declaration of the family, not a setting


@torch.no_grad()
def test_folder_loads_with_trust_remote_code_without_dualclip(tmp_path):
    model = dual_model(SMALL)
    features = image_features_without_dualclip(model, tmp_path, pixels(32))
    assert torch.equal(features, model.get_image_features(pixels(32)).pooler_output)


@pytest.mark.parametrize("openclip_name", list(RELEASED))
def test_dualclip_convert_gives_open_clips_features_and_logits(openclip_name, tmp_path):
    """The whole model through `dualclip convert` (an OpenCLIP hub folder: timm's ViTamin image tower beside
    OpenCLIP's causal text tower): text features, image features and logits as open_clip's, with the processor's
    mask."""
    cfg, test_name, arch, _ = reduced(openclip_name)
    reference = openclip_model(f"dualclip-convert-{openclip_name}", cfg)
    result, _, errors = convert_and_compare_with_openclip(reference, cfg, tmp_path, VITAMIN_ARCHITECTURES, test_name,
                                                          arch)
    assert "ViTamin image tower (convolution stages 8-16, width 32, 2 layers)" in result.architecture
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["crop_size"]["height"] == (
        reference.visual.image_size[0])
    print(f"\n{openclip_name} (convert_checkpoint): {errors}")
    assert max(errors.values()) < TOLERANCE, errors
