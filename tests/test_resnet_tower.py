"""The ResNet image tower family: outputs, position-embedding interpolation, dtypes, saving, legacy folders.

Numerical parity with OpenAI's ModifiedResNet is tested through the converters (test_conversion_openai.py).
"""

import json

import pytest
import torch
from conversion_refs import randomize_
from family_checks import image_features_without_dualclip
from torch import nn
from torch.nn import functional as F

from dualclip import DualClipConfig, DualClipModel, DualClipVisionModel, DualClipVisionModelWithProjection

VISION = dict(model_type="dualclip_resnet_vision_model", resnet_layers=[1, 2, 1, 1], resnet_width=8, hidden_size=256,
              num_attention_heads=4, image_size=64, projection_dim=16)
# The same tower as dualclip 0.1 (before the tower registry) wrote it: a ViT config marked `backbone: "resnet"`.
LEGACY_VISION = dict(
    model_type="dualclip_vision_model", backbone="resnet", resnet_layers=[1, 2, 1, 1], resnet_width=8, hidden_size=256,
    num_attention_heads=4, image_size=64, projection_bias=True, projection_dim=16, intermediate_size=3072,
    num_hidden_layers=12, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5, pre_norm=True,
    layer_scale_init_value=None, attention_dropout=0.0,
)
TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=8, bos_token_id=98, eos_token_id=99, projection_dim=16)


@pytest.fixture
def tower():
    return randomize_(DualClipVisionModel(DualClipConfig(vision_config=VISION).vision_config))


def _pixels(size, batch=2, height=None):
    return torch.randn(batch, 3, height or size, size, generator=torch.Generator().manual_seed(0))


def test_outputs_layout(tower):
    out = tower(_pixels(64), output_hidden_states=True, output_attentions=True)
    # Stem (width 8, stride 4), then four stages (4, 8, 16, 32 x width channels; strides 4, 8, 16, 32).
    assert [tuple(h.shape) for h in out.hidden_states] == [
        (2, 8, 16, 16), (2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)
    ]
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1].flatten(2).transpose(1, 2))
    assert out.pooler_output.shape == (2, 256)
    assert not out.attentions  # no self-attention layers: nothing recorded
    plain = tower(_pixels(64))
    assert plain.hidden_states is None and torch.equal(plain.pooler_output, out.pooler_output)


def test_attention_pool_matches_torch_multi_head_attention(tower):
    """The pool is multi-head attention of the mean token (plus position embedding) over all tokens."""
    pool = tower.vision_model.attention_pool
    feature_map = torch.randn(2, 256, 2, 2)
    tokens = feature_map.flatten(2).transpose(1, 2)
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + pool.positional_embedding
    attention = nn.MultiheadAttention(256, 4, batch_first=True)
    with torch.no_grad():
        attention.in_proj_weight.copy_(torch.cat([pool.q_proj.weight, pool.k_proj.weight, pool.v_proj.weight]))
        attention.in_proj_bias.copy_(torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]))
        attention.out_proj.weight.copy_(torch.eye(256))
        attention.out_proj.bias.zero_()
        expected = attention(tokens[:, :1], tokens, tokens, need_weights=False)[0][:, 0]
        torch.testing.assert_close(pool(feature_map), expected, atol=1e-5, rtol=1e-5)


def test_interpolate_pos_encoding(tower):
    pixels = _pixels(64)
    same = tower(pixels, interpolate_pos_encoding=True).pooler_output
    torch.testing.assert_close(same, tower(pixels).pooler_output, atol=0, rtol=0)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        tower(_pixels(128))

    pool = tower.vision_model.attention_pool
    grid = pool.positional_embedding[1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(4, 3), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(12, -1)
    embeddings = pool.position_embeddings(4, 3)
    assert torch.equal(embeddings[0], pool.positional_embedding[0])  # the mean token's embedding is kept
    torch.testing.assert_close(embeddings[1:], resized)
    out = tower(_pixels(96, height=128), interpolate_pos_encoding=True)  # 4 x 3 feature map
    assert out.last_hidden_state.shape == (2, 12, 256) and torch.isfinite(out.pooler_output).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(tower, dtype):
    pixels = _pixels(64)
    expected = tower(pixels).pooler_output
    low = tower.to(dtype)
    actual = low(pixels).pooler_output  # float32 pixels are cast to the weights' dtype
    assert actual.dtype == dtype
    assert (actual.float() - expected).abs().max() <= 0.05 * expected.abs().max()
    assert low(_pixels(96), interpolate_pos_encoding=True).pooler_output.dtype == dtype


def test_input_embeddings_and_projection():
    config = DualClipConfig(vision_config=VISION).vision_config
    for model_class in (DualClipVisionModel, DualClipVisionModelWithProjection):
        model = model_class(config)
        assert model.get_input_embeddings() is model.vision_model.embeddings.conv1
    projected = DualClipVisionModelWithProjection(config)
    assert projected.visual_projection.bias is not None
    assert projected(_pixels(64)).image_embeds.shape == (2, 16)


def test_fresh_model_is_initialised():
    model = DualClipModel(DualClipConfig(text_config=TEXT, vision_config=VISION, projection_dim=16))
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor.float()).all(), name
    pool = model.vision_model.attention_pool
    assert 0 < pool.positional_embedding.std() < 1


def test_resnet_folder_loads_with_trust_remote_code_without_dualclip(tmp_path):
    model = randomize_(DualClipModel(DualClipConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)))
    features = image_features_without_dualclip(model, tmp_path, _pixels(64))
    assert (tmp_path / "model" / "modeling_dualclip_resnet.py").exists()
    with torch.no_grad():
        expected = model.get_image_features(_pixels(64)).pooler_output
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class", [DualClipModel, DualClipVisionModelWithProjection])
def test_folders_saved_before_the_tower_registry_still_load(model_class, tmp_path):
    config = DualClipConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)
    model = randomize_(model_class(config if model_class is DualClipModel else config.vision_config)).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    if model_class is DualClipModel:
        saved["vision_config"] = LEGACY_VISION
    else:
        saved = {**saved, **LEGACY_VISION, "architectures": ["DualClipVisionModelWithProjection"]}
    (tmp_path / "config.json").write_text(json.dumps(saved))

    loaded = model_class.from_pretrained(tmp_path).eval()
    vision_config = loaded.config.vision_config if model_class is DualClipModel else loaded.config
    assert vision_config.model_type == "dualclip_resnet_vision_model"
    assert not hasattr(vision_config, "patch_size")  # no ViT fields in the ResNet family's config
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(_pixels(64)), model.encode_image(_pixels(64)))
