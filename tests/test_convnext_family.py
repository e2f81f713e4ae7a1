"""The ConvNeXt image-tower family against OpenCLIP + timm: OpenCLIP's released convnext_* configs at reduced width
and depth (timm's own `ConvNeXt`, with every flag of the released timm function) convert with
`convnext_vision_tower`, and through `dualclip convert`, to the same image features, text features and logits;
`CONVNEXT_ARCHITECTURES` is what timm's registered functions build; the family saves, loads through AutoModel and
runs where dualclip is absent."""

import json

import pytest
import torch
from family_checks import (
    TOLERANCE,
    assert_round_trips,
    convert_and_compare_with_openclip,
    image_features_without_dualclip,
    image_tower_of,
    relative_error,
)
import openclip_timm_refs
from openclip_timm_refs import openclip_model, register_timm_model, released_model_config
from transformers import ConvNextModel

import dualclip  # noqa: F401  (registers the Auto classes)
from dualclip import DualClipConfig, DualClipModel, DualClipVisionModelWithProjection
from dualclip.conversion import ConversionError
from dualclip.conversion.convnext import CONVNEXT_ARCHITECTURES, convnext_vision_tower
from dualclip.modeling_dualclip_convnext import DualClipConvNext, DualClipConvNextVisionConfig

# Reduced towers: four stages as released, 16-48 channels, 1-2 blocks each; every other argument (norm eps, image
# size, OpenCLIP's head) as released.
DIMS, DEPTHS, EMBED_DIM = [16, 24, 32, 48], [1, 1, 2, 1], 24
TEXT = dict(width=32, heads=2, layers=1)
# OpenCLIP config -> timm name; one per combination of options (the other configs share one of these).
RELEASED = {
    "convnext_base": "convnext_base",  # timm_proj 'linear', LayerNorm eps 1e-6
    "convnext_large_d": "convnext_large",  # timm_proj 'mlp'
    "convnext_xxlarge": "convnext_xxlarge",  # LayerNorm eps 1e-5 (timm's norm_eps)
}


def released_timm_arguments(timm_name: str) -> dict:
    return openclip_timm_refs.released_timm_arguments("convnext", "_create_convnext", timm_name)


def timm_meta_model(timm_name: str):
    """timm's model as OpenCLIP's `TimmModel` builds it for `timm_proj` 'linear'/'mlp', on the meta device."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(timm_name)
        model.reset_classifier(0)
    return model


def architecture_of(model) -> dict:
    """A timm `ConvNeXt` read into `CONVNEXT_ARCHITECTURES`' terms, from its modules and tensor shapes."""
    from timm.layers import LayerNorm, LayerNorm2d, Mlp, NormMlpClassifierHead
    from timm.layers.activations import GELU  # exact: F.gelu(x)

    stem_conv, stem_norm = model.stem
    # What the family takes for granted: a patch stem, Linear MLPs of 4x width, LayerScale, biases, exact GELU,
    # 2x2 stride-2 downsampling after a LayerNorm, the head norm after the average pool, no classifier.
    assert isinstance(stem_norm, LayerNorm2d) and stem_conv.bias is not None
    assert stem_conv.kernel_size == stem_conv.stride == (4, 4)
    assert isinstance(model.norm_pre, torch.nn.Identity) and isinstance(model.head, NormMlpClassifierHead)
    assert isinstance(model.head.norm, LayerNorm2d) and model.head.global_pool.pool_type == "avg"
    assert isinstance(model.head.pre_logits, torch.nn.Identity) and isinstance(model.head.fc, torch.nn.Identity)
    epsilons = {stem_norm.eps, model.head.norm.eps}
    for index, stage in enumerate(model.stages):
        if index == 0:
            assert isinstance(stage.downsample, torch.nn.Identity)
        else:
            norm, conv = stage.downsample
            assert isinstance(norm, LayerNorm2d) and conv.kernel_size == conv.stride == (2, 2) and conv.bias is not None
            epsilons.add(norm.eps)
        for block in stage.blocks:
            assert not block.use_conv_mlp and isinstance(block.norm, LayerNorm) and isinstance(block.mlp, Mlp)
            assert block.conv_dw.kernel_size == (7, 7) and block.conv_dw.padding == (3, 3)
            assert block.conv_dw.groups == block.conv_dw.in_channels and block.conv_dw.bias is not None
            assert block.mlp.fc1.out_features == 4 * block.mlp.fc1.in_features
            assert type(block.mlp.act) is GELU
            assert isinstance(block.mlp.norm, torch.nn.Identity) and block.gamma is not None
            assert isinstance(block.shortcut, torch.nn.Identity)
            epsilons.add(block.norm.eps)
    assert len(epsilons) == 1, epsilons
    return {
        "depths": [len(stage.blocks) for stage in model.stages],
        "hidden_sizes": [stage.blocks[0].conv_dw.out_channels for stage in model.stages],
        "layer_norm_eps": epsilons.pop(),
    }


@pytest.mark.parametrize("timm_name", sorted(CONVNEXT_ARCHITECTURES))
def test_architecture_table_is_what_timm_builds(timm_name):
    assert architecture_of(timm_meta_model(timm_name)) == CONVNEXT_ARCHITECTURES[timm_name]


def test_the_table_covers_every_openclip_convnext_config():
    from pathlib import Path

    import open_clip

    folder = Path(open_clip.__file__).parent / "model_configs"
    names = {json.loads(path.read_text())["vision_cfg"].get("timm_model_name") for path in folder.glob("*.json")}
    assert {n for n in names if n and n.startswith("convnext")} == set(CONVNEXT_ARCHITECTURES)


def _released_cfg(timm_name: str):
    """timm's pretrained cfg of the released model (what `build_model_with_cfg` attaches; OpenCLIP reads it)."""
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(timm_name).to_dict()


def reduced(openclip_name: str):
    """OpenCLIP's config `openclip_name` with a reduced timm tower registered under a test name, and the table entry
    for it (the released timm name's, at the reduced sizes)."""
    from timm.models.convnext import ConvNeXt

    timm_name = RELEASED[openclip_name]
    arguments = dict(released_timm_arguments(timm_name), depths=DEPTHS, dims=DIMS)
    test_name = f"dualclip_test_{timm_name}"

    def build(**kwargs):
        model = ConvNeXt(**kwargs)
        model.pretrained_cfg = model.default_cfg = _released_cfg(timm_name)
        return model

    register_timm_model(test_name, build, **arguments)
    cfg = released_model_config(openclip_name)
    cfg["embed_dim"] = EMBED_DIM
    cfg["vision_cfg"]["timm_model_name"] = test_name
    cfg["text_cfg"].update(TEXT)
    arch = dict(CONVNEXT_ARCHITECTURES[timm_name], hidden_sizes=DIMS, depths=DEPTHS)
    return cfg, test_name, arch


@pytest.fixture(scope="module", params=list(RELEASED))
def converted(request):
    """(name, OpenCLIP model, converted DualClipVisionModelWithProjection)."""
    cfg, test_name, arch = reduced(request.param)
    reference = openclip_model(f"dualclip-test-{request.param}", cfg)
    model = image_tower_of(reference, cfg, convnext_vision_tower, CONVNEXT_ARCHITECTURES, test_name, arch)
    return request.param, reference, model


def pixels(size, batch=2, seed=0, width=None):
    return torch.randn(batch, 3, size, width or size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_image_embeddings_equal_openclip(converted):
    name, reference, model = converted
    images = pixels(model.config.image_size)
    want = reference.encode_image(images)
    errors = {
        "forward": relative_error(model(images).image_embeds, want),
        "encode_image": relative_error(model.encode_image(images), want),
        "pooled_only": relative_error(model(images, pooled_only=True).image_embeds, want),
    }
    print(f"\n{name}: relative error {max(errors.values()):.2e} ({errors})")
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("converted", ["convnext_base", "convnext_xxlarge"], indirect=True)
@torch.no_grad()
def test_layer_norm_epsilon_as_timm(converted):
    """Low-contrast images, whose stem features have a variance near the LayerNorms' epsilon: the epsilon timm uses
    (1e-6, convnext_xxlarge's 1e-5) shows in the features."""
    _, reference, model = converted
    images = pixels(model.config.image_size, seed=3) * 1e-3
    assert relative_error(model.encode_image(images), reference.encode_image(images)) < TOLERANCE


@pytest.mark.parametrize("converted", ["convnext_base"], indirect=True)
@torch.no_grad()
def test_any_image_size_as_timm(converted):
    """Convolutional: another size (even a non-square one) runs as OpenCLIP's tower runs it; `interpolate_pos_encoding`
    changes nothing."""
    _, reference, model = converted
    images = pixels(96, width=160, seed=2)
    want = reference.encode_image(images)
    assert relative_error(model.encode_image(images), want) < TOLERANCE
    assert torch.equal(model.encode_image(images, interpolate_pos_encoding=True), model.encode_image(images))


@pytest.mark.parametrize("converted", ["convnext_large_d"], indirect=True)
@torch.no_grad()
def test_outputs_are_convnext_models(converted):
    """As `ConvNextModel` returns them: the last feature map, the stem's and every stage's maps; the MLP head's
    output is the pooled output (no `visual_projection` weights)."""
    _, _, model = converted
    out = model.vision_model(pixels(64), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, DIMS[-1], 2, 2)
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == [(16, 16, 16), (16, 16, 16), (24, 8, 8), (32, 4, 4),
                                                               (48, 2, 2)]
    assert out.pooler_output.shape == (2, EMBED_DIM) and isinstance(model.visual_projection, torch.nn.Identity)
    assert isinstance(model(pixels(64), return_dict=False), tuple)
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 4, 64, 64))


@pytest.mark.slow
@torch.no_grad()
def test_full_size_convnext_base_image_tower_equals_openclip():
    """The released convnext_base image tower at full size (random weights; text tower reduced)."""
    cfg = released_model_config("convnext_base")
    cfg["text_cfg"].update(TEXT)
    reference = openclip_model("dualclip-test-full-convnext_base", cfg)
    tensors = {key: value for key, value in reference.state_dict().items() if key.startswith("visual.")}
    config, state = convnext_vision_tower(cfg["vision_cfg"], cfg["embed_dim"], tensors)
    model = DualClipVisionModelWithProjection(config).eval()
    model.load_state_dict(state, strict=True)
    images = pixels(config.image_size, batch=1)
    error = relative_error(model.encode_image(images), reference.encode_image(images))
    print(f"\nconvnext_base (full size): relative error {error:.2e}")
    assert error < TOLERANCE


def test_conversion_errors_name_what_does_not_fit(monkeypatch):
    cfg, test_name, arch = reduced("convnext_base")
    reference = openclip_model("dualclip-test-errors-convnext", cfg)
    tensors = {k: v for k, v in reference.state_dict().items() if k.startswith("visual.")}
    monkeypatch.setitem(CONVNEXT_ARCHITECTURES, test_name, arch)
    vision = cfg["vision_cfg"]

    def convert(vision_cfg=vision, embed_dim=EMBED_DIM, state=tensors):
        return convnext_vision_tower(vision_cfg, embed_dim, state)

    with pytest.raises(ConversionError, match="timm_model_name='convnextv2_base'"):
        convert(dict(vision, timm_model_name="convnextv2_base"))
    with pytest.raises(ConversionError, match="timm_pool='max'"):
        convert(dict(vision, timm_pool="max"))
    with pytest.raises(ConversionError, match="timm_proj=None"):
        convert(dict(vision, timm_proj=None))
    with pytest.raises(ConversionError, match="timm_proj is 'mlp' in the config but 'linear'"):
        convert(dict(vision, timm_proj="mlp"))
    with pytest.raises(ConversionError, match="timm_proj_bias is True in the config but False"):
        convert(dict(vision, timm_proj_bias=True))
    with pytest.raises(ConversionError, match="image_size=\\[256, 320\\]"):
        convert(dict(vision, image_size=[256, 320]))
    with pytest.raises(ConversionError, match="embed_dim is 512 in the config but 24"):
        convert(embed_dim=512)
    monkeypatch.setitem(CONVNEXT_ARCHITECTURES, test_name, dict(arch, depths=[1, 1, 3, 1]))
    with pytest.raises(ConversionError, match="depths .* \\[1, 1, 3, 1\\] in the config but \\[1, 1, 2, 1\\]"):
        convert()
    monkeypatch.setitem(CONVNEXT_ARCHITECTURES, test_name, dict(arch, hidden_sizes=[16, 24, 32, 64]))
    with pytest.raises(ConversionError, match="hidden_sizes .* in the config but \\[16, 24, 32, 48\\]"):
        convert()
    monkeypatch.setitem(CONVNEXT_ARCHITECTURES, test_name, arch)
    with pytest.raises(ConversionError, match="gamma missing"):
        convert(state={k: v for k, v in tensors.items() if not k.endswith("gamma")})
    # ConvNeXt-V2's global response norm: a tensor the family has no place for.
    extra = {"visual.trunk.stages.1.blocks.0.mlp.grn.weight": torch.ones(96)}
    with pytest.raises(ConversionError, match=r"cannot place .* visual\.trunk\.stages\.1\.blocks\.0\.mlp\.grn\.weight"):
        convert(state={**tensors, **extra})
    with pytest.raises(ConversionError, match="not an OpenCLIP timm `ConvNeXt`"):
        convert(state={k: v for k, v in tensors.items() if "stem" not in k})
    config, renamed = convert()
    assert isinstance(config, DualClipConvNextVisionConfig) and config.projection_dim == EMBED_DIM
    assert set(renamed) == set(DualClipVisionModelWithProjection(config).state_dict())


def test_config_checks():
    # Strict configs wrap the ValueError of `validate_architecture` (as for the other families).
    with pytest.raises(Exception, match="num_stages"):
        DualClipConvNextVisionConfig(hidden_sizes=[8, 16, 24], depths=[1, 1, 1, 1])
    with pytest.raises(Exception, match="projection_type"):
        DualClipConvNextVisionConfig(projection_type="none")
    config = DualClipConvNextVisionConfig(hidden_sizes=DIMS, depths=DEPTHS, projection_type="mlp")
    assert config.hidden_size == 48 and config.pooled_output_projected
    with pytest.raises(Exception, match="projection_dim"):
        DualClipConfig(vision_config=config, projection_dim=32)


def dual_model(**vision) -> DualClipModel:
    config = DualClipConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                             num_attention_heads=2, vocab_size=99, max_position_embeddings=16,
                                             bos_token_id=97, eos_token_id=98, pad_token_id=0),
                            vision_config=dict(model_type="dualclip_convnext_vision_model", hidden_sizes=DIMS,
                                               depths=DEPTHS, image_size=64, projection_dim=24, **vision),
                            projection_dim=24)
    assert isinstance(config.vision_config, DualClipConvNextVisionConfig)
    torch.manual_seed(0)
    model = DualClipModel(config).eval()
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor).all(), name
    return model


@pytest.mark.parametrize("vision", [{}, dict(projection_type="mlp", layer_norm_eps=1e-5)], ids=["linear", "mlp"])
def test_save_and_auto_model_round_trip(tmp_path, vision):
    model = dual_model(**vision)
    eps = model.config.vision_config.layer_norm_eps
    # The text tower takes the attention implementation asked for; the ConvNeXt tower has none (eager).
    loaded = assert_round_trips(model, tmp_path, "modeling_dualclip_convnext", "DualClipConvNext", pixels(64),
                                attn_implementation="sdpa")
    assert loaded.text_model.config._attn_implementation == "sdpa"
    assert loaded.vision_model.config.layer_norm_eps == eps
    assert {m.eps for m in loaded.vision_model.modules() if isinstance(m, torch.nn.LayerNorm)} == {eps}


def test_seeded_initialisation_is_stock_convnext():
    from transformers import ConvNextConfig

    sizes = dict(hidden_sizes=DIMS, depths=DEPTHS, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    stock = ConvNextModel(ConvNextConfig(**sizes)).state_dict()
    torch.manual_seed(0)
    ours = DualClipConvNext(DualClipConvNextVisionConfig(**sizes)).state_dict()
    assert set(ours) == set(stock) and all(torch.equal(ours[key], stock[key]) for key in stock)


@torch.no_grad()
def test_folder_loads_with_trust_remote_code_without_dualclip(tmp_path):
    model = dual_model(projection_type="mlp", layer_norm_eps=1e-5)
    features = image_features_without_dualclip(model, tmp_path, pixels(64))
    assert torch.equal(features, model.get_image_features(pixels(64)).pooler_output)


@pytest.mark.parametrize("openclip_name", list(RELEASED))
def test_dualclip_convert_gives_open_clips_features_and_logits(openclip_name, tmp_path):
    """The whole model through `dualclip convert` (an OpenCLIP hub folder: timm's ConvNeXt image tower beside
    OpenCLIP's causal text tower): text features, image features and logits as open_clip's, with the processor's
    mask."""
    cfg, test_name, arch = reduced(openclip_name)
    reference = openclip_model(f"dualclip-convert-{openclip_name}", cfg)
    result, model, errors = convert_and_compare_with_openclip(reference, cfg, tmp_path, CONVNEXT_ARCHITECTURES,
                                                              test_name, arch)
    assert "ConvNeXt" in result.architecture
    assert model.config.vision_config.image_size == cfg["vision_cfg"]["image_size"]
    print(f"\n{openclip_name}: {errors}")
    assert max(errors.values()) < TOLERANCE, errors
