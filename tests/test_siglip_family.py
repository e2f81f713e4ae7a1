"""The SigLIP tower family: transformers' SiglipModel and DualClipModel with the SigLIP towers compute the same
features and logits from the same (perturbed) weights; the family saves, loads through AutoModel, and loads with
`trust_remote_code=True` where dualclip is absent."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from openclip_timm_refs import register_timm_model
from tiny_models import WITHOUT_DUALCLIP
import torch
from transformers import AutoModel, SiglipConfig, SiglipModel

import dualclip  # noqa: F401  (registers the Auto classes)
from dualclip import (
    DualClipConfig,
    DualClipModel,
    DualClipTextModel,
    DualClipVisionModel,
    DualClipVisionModelWithProjection,
)
from dualclip.modeling_dualclip_siglip import DualClipSiglipTextConfig, DualClipSiglipVisionConfig

# Every width differs so that a transposed or swapped tensor cannot load; pad/bos/eos inside the small vocabulary.
TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, projection_size=24, pad_token_id=1, bos_token_id=2, eos_token_id=3)
VISION = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)
LOGIT_SCALE = math.log(100.0) + 0.4  # above OpenCLIP's CLIP cap, as SigLIP's trained scales are
LOGIT_BIAS = -3.5


def dualclip_config(**overrides):
    return DualClipConfig(
        text_config=DualClipSiglipTextConfig(**TEXT), vision_config=DualClipSiglipVisionConfig(**VISION),
        projection_dim=24, logit_scale_init_value=LOGIT_SCALE, logit_bias_init_value=LOGIT_BIAS,
        logit_scale_max=None, loss_type="sigmoid", **overrides,
    )


def relative_error(got, want):
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture(scope="module")
def reference():
    """A stock SiglipModel with every parameter moved away from its initial value."""
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        model.logit_scale.fill_(LOGIT_SCALE)
        model.logit_bias.fill_(LOGIT_BIAS)
    return model


def siglip_state_dict_for_dualclip(model, reference_state):
    """The stock state dict under the same keys; SiglipModel keeps `logit_scale`/`logit_bias` as 1-element
    vectors, DualClipModel as scalars (the one difference, a shape and not a name)."""
    own = model.state_dict()
    assert set(reference_state) == set(own)
    return {key: value.reshape(own[key].shape) for key, value in reference_state.items()}


@pytest.fixture(scope="module")
def converted(reference):
    model = DualClipModel(dualclip_config()).eval()
    model.load_state_dict(siglip_state_dict_for_dualclip(model, reference.state_dict()))
    return model


def inputs():
    generator = torch.Generator().manual_seed(1)
    # Padded to the full length, as SigLIP was trained (and as its processor pads): the last position is pooled.
    input_ids = torch.full((3, TEXT["max_position_embeddings"]), TEXT["pad_token_id"])
    for row, length in enumerate((5, 9, 16)):
        input_ids[row, :length] = torch.randint(4, TEXT["vocab_size"], (length,), generator=generator)
    pixel_values = torch.randn(2, 3, VISION["image_size"], VISION["image_size"], generator=generator)
    return input_ids, pixel_values


def test_state_dict_keys_are_siglip_models(reference, converted):
    assert set(converted.state_dict()) == set(reference.state_dict())
    assert isinstance(converted.text_projection, torch.nn.Identity)
    assert isinstance(converted.visual_projection, torch.nn.Identity)


@torch.no_grad()
def test_features_and_logits_equal_siglip_model(reference, converted):
    input_ids, pixel_values = inputs()
    want = reference(input_ids=input_ids, pixel_values=pixel_values)
    got = converted(input_ids=input_ids, pixel_values=pixel_values)

    assert relative_error(got.text_embeds, want.text_embeds) < 1e-5
    assert relative_error(got.image_embeds, want.image_embeds) < 1e-5
    assert relative_error(got.logits_per_text, want.logits_per_text) < 1e-5
    assert relative_error(got.logits_per_image, want.logits_per_image) < 1e-5
    assert relative_error(got.text_model_output.last_hidden_state, want.text_model_output.last_hidden_state) < 1e-5
    assert relative_error(got.vision_model_output.last_hidden_state, want.vision_model_output.last_hidden_state) < 1e-5
    # The unnormalised features, through stock's and dualclip's feature methods.
    text_features = reference.get_text_features(input_ids=input_ids).pooler_output
    image_features = reference.get_image_features(pixel_values=pixel_values).pooler_output
    assert relative_error(converted.get_text_features(input_ids).pooler_output, text_features) < 1e-5
    assert relative_error(converted.encode_text(input_ids), text_features) < 1e-5
    assert relative_error(converted.encode_image(pixel_values), image_features) < 1e-5
    # The sigmoid loss is SiglipModel's (one process).
    want_loss = reference(input_ids=input_ids[:2], pixel_values=pixel_values, return_loss=True).loss
    got_loss = converted(input_ids=input_ids[:2], pixel_values=pixel_values, return_loss=True).loss
    assert abs(float(got_loss) - float(want_loss)) <= 1e-5 * abs(float(want_loss))


@torch.no_grad()
def test_hidden_states_attentions_and_pooled_only_equal_siglip_model(reference, converted):
    input_ids, pixel_values = inputs()
    # Attention weights come from the eager implementation only (sdpa returns none, for stock as for us).
    reference.set_attn_implementation("eager")
    converted.set_attn_implementation("eager")
    try:
        want = reference.text_model(input_ids, output_hidden_states=True, output_attentions=True)
        got = converted.text_model(input_ids, output_hidden_states=True, output_attentions=True)
    finally:
        reference.set_attn_implementation("sdpa")
        converted.set_attn_implementation("sdpa")
    assert len(got.hidden_states) == len(want.hidden_states) == TEXT["num_hidden_layers"] + 1
    assert len(got.attentions) == len(want.attentions) == TEXT["num_hidden_layers"]
    for g, w in zip(got.hidden_states + got.attentions, want.hidden_states + want.attentions):
        assert relative_error(g, w) < 1e-5
    want_vision = reference.vision_model(pixel_values, output_hidden_states=True)
    got_vision = converted.vision_model(pixel_values, output_hidden_states=True)
    assert len(got_vision.hidden_states) == len(want_vision.hidden_states)
    # pooled_only computes everything for this family (MAP head, bidirectional text): same numbers.
    pooled = converted(input_ids=input_ids, pixel_values=pixel_values, pooled_only=True)
    full = converted(input_ids=input_ids, pixel_values=pixel_values)
    assert torch.equal(pooled.logits_per_text, full.logits_per_text)


@torch.no_grad()
def test_attention_mask_and_other_image_sizes_as_siglip_model(reference, converted):
    input_ids, _ = inputs()
    attention_mask = (input_ids != TEXT["pad_token_id"]).long()
    want = reference.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    got = converted.get_text_features(input_ids, attention_mask).pooler_output
    assert relative_error(got, want) < 1e-5  # applied as SiglipTextModel applies it
    pixel_values = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    want = reference.get_image_features(pixel_values=pixel_values, interpolate_pos_encoding=True).pooler_output
    got = converted.get_image_features(pixel_values, interpolate_pos_encoding=True).pooler_output
    assert relative_error(got, want) < 1e-5
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        converted.get_image_features(pixel_values)


def test_training_pieces_work_on_the_family(tmp_path):
    model = DualClipModel(dualclip_config())
    model.activation_checkpointing_enable()
    model.train()
    input_ids, pixel_values = inputs()
    loss = model(input_ids=input_ids[:2], pixel_values=pixel_values, return_loss=True).loss
    loss.backward()
    assert model.text_model.head.weight.grad is not None and model.vision_model.head.probe.grad is not None
    assert model.logit_bias.grad is not None

    model.resize_token_embeddings(TEXT["vocab_size"] + 5)
    assert model.text_model.embeddings.token_embedding.num_embeddings == TEXT["vocab_size"] + 5
    assert model.config.text_config.vocab_size == TEXT["vocab_size"] + 5

    # A tower alone saves and comes back through AutoModel as the side's tower class.
    text = DualClipTextModel(DualClipSiglipTextConfig(**TEXT)).eval()
    text.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is DualClipTextModel
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).pooler_output, text(input_ids).pooler_output)


def test_config_checks():
    with pytest.raises(Exception, match="projection_dim"):
        DualClipConfig(text_config=DualClipSiglipTextConfig(**TEXT), vision_config=DualClipSiglipVisionConfig(**VISION))
    with pytest.raises(Exception, match="vision_use_head"):
        DualClipSiglipVisionConfig(**VISION, vision_use_head=False)


@torch.no_grad()
def test_save_and_auto_model_round_trip(tmp_path, converted):
    converted.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["text_config"]["model_type"] == "dualclip_siglip_text_model"
    assert saved["vision_config"]["model_type"] == "dualclip_siglip_vision_model"
    assert "pooled_output_projected" not in saved["text_config"]
    assert (tmp_path / "modeling_dualclip_siglip.py").exists()

    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is DualClipModel
    for side in ("text_config", "vision_config"):
        got, want = getattr(loaded.config, side).to_dict(), getattr(converted.config, side).to_dict()
        assert {k: v for k, v in got.items() if k != "dtype"} == {k: v for k, v in want.items() if k != "dtype"}
    for key, value in converted.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    input_ids, pixel_values = inputs()
    assert torch.equal(loaded(input_ids=input_ids, pixel_values=pixel_values).logits_per_text,
                       converted(input_ids=input_ids, pixel_values=pixel_values).logits_per_text)

    # Each tower alone from the full folder; the projection towers hold an identity.
    text = DualClipTextModel.from_pretrained(tmp_path, config=converted.config.text_config)
    assert torch.equal(text(input_ids).pooler_output, converted.encode_text(input_ids))
    vision = DualClipVisionModelWithProjection.from_pretrained(tmp_path, config=converted.config.vision_config)
    assert torch.equal(vision(pixel_values).image_embeds, converted.encode_image(pixel_values))


@torch.no_grad()
def test_stock_siglip_model_folder_loads_without_renames(tmp_path, reference):
    """A folder saved by transformers' SiglipModel loads into DualClipModel as it is (keys unchanged; the
    1-element `logit_scale`/`logit_bias` read as scalars)."""
    reference.save_pretrained(tmp_path / "stock")
    model = DualClipModel.from_pretrained(tmp_path / "stock", config=dualclip_config()).eval()
    assert model.logit_scale.shape == () and float(model.logit_scale) == float(reference.logit_scale)
    input_ids, pixel_values = inputs()
    assert torch.equal(model(input_ids=input_ids, pixel_values=pixel_values).logits_per_text,
                       reference(input_ids=input_ids, pixel_values=pixel_values).logits_per_text)
    # dualclip's own folders keep scalars, both ways.
    model.save_pretrained(tmp_path / "ours")
    from safetensors import safe_open

    with safe_open(tmp_path / "ours" / "model.safetensors", "pt") as saved:
        assert saved.get_tensor("logit_scale").shape == ()
    clip = DualClipModel.from_pretrained(dualclip.TINY_MODEL_PATH)
    clip.save_pretrained(tmp_path / "clip")
    assert torch.equal(DualClipModel.from_pretrained(tmp_path / "clip").logit_scale, clip.logit_scale)


@torch.no_grad()
def test_stock_siglip_tower_folders_load_into_the_tower_classes(tmp_path, reference):
    """transformers 5 saves SiglipTextModel/SiglipVisionModel without the `text_model.`/`vision_model.` prefix."""
    from transformers import SiglipTextModel, SiglipVisionModel

    input_ids, pixel_values = inputs()
    text = SiglipTextModel(reference.config.text_config).eval()
    text.load_state_dict(reference.text_model.state_dict())
    text.save_pretrained(tmp_path / "text")
    ours = DualClipTextModel.from_pretrained(tmp_path / "text", config=DualClipSiglipTextConfig(**TEXT)).eval()
    assert torch.equal(ours(input_ids).pooler_output, text(input_ids).pooler_output)
    vision = SiglipVisionModel(reference.config.vision_config).eval()
    vision.load_state_dict(reference.vision_model.state_dict())
    vision.save_pretrained(tmp_path / "vision")
    ours = DualClipVisionModel.from_pretrained(tmp_path / "vision", config=DualClipSiglipVisionConfig(**VISION)).eval()
    assert torch.equal(ours(pixel_values).pooler_output, vision(pixel_values).pooler_output)


REMOTE_SCRIPT = WITHOUT_DUALCLIP + textwrap.dedent(
    """
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    batch = torch.load(sys.argv[2])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits_per_text
    print(json.dumps({"module": type(model).__module__, "tower": type(model.vision_model).__name__,
                      "logits": logits.tolist()}))
    """
)


@torch.no_grad()
def test_trust_remote_code_loads_without_dualclip(tmp_path, converted):
    folder = tmp_path / "model"
    converted.save_pretrained(folder)
    input_ids, pixel_values = inputs()
    torch.save({"input_ids": input_ids, "pixel_values": pixel_values}, tmp_path / "batch.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(tmp_path / "batch.pt")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["module"].startswith("dualclip")
    assert report["tower"] == "DualClipSiglipVisionTransformer"
    want = converted(input_ids=input_ids, pixel_values=pixel_values).logits_per_text
    assert torch.equal(torch.tensor(report["logits"]), want)


# OpenCLIP's ViT-B-16-SigLIP at reduced width and depth: its model config with a tiny timm ViT (MAP pooling, no
# class token), registered with timm under a name of its own.
OPENCLIP_TIMM_NAME = "vit_dualclip_test_siglip_map"
OPENCLIP_CFG = {
    "embed_dim": 24,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {"image_size": 32, "timm_model_name": OPENCLIP_TIMM_NAME, "timm_model_pretrained": False,
                   "timm_pool": "map", "timm_proj": "none"},
    "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 32, "heads": 4, "layers": 2, "mlp_ratio": 1.25,
                 "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
}


def register_tiny_timm_siglip():
    from timm.models.vision_transformer import VisionTransformer

    register_timm_model(OPENCLIP_TIMM_NAME, VisionTransformer, img_size=32, patch_size=8, embed_dim=24, depth=2,
                        num_heads=4, mlp_ratio=2.0, class_token=False, global_pool="map")


@pytest.fixture(scope="module")
def openclip_siglip(tmp_path_factory):
    import open_clip

    register_tiny_timm_siglip()
    folder = tmp_path_factory.mktemp("model_configs")
    (folder / "test-dualclip-siglip.json").write_text(json.dumps(OPENCLIP_CFG))
    open_clip.add_model_config(folder)
    torch.manual_seed(2)
    model = open_clip.create_model("test-dualclip-siglip").eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        model.logit_scale.fill_(LOGIT_SCALE)
        model.logit_bias.fill_(LOGIT_BIAS)
    return model


@torch.no_grad()
def test_openclip_siglip_converts_to_the_same_features_and_logits(openclip_siglip):
    from dualclip.conversion.siglip import openclip_siglip_to_siglip_state_dict

    text = dict(TEXT, intermediate_size=40, projection_size=24, hidden_act="gelu")
    vision = dict(VISION, intermediate_size=48, hidden_act="gelu")
    config = DualClipConfig(
        text_config=DualClipSiglipTextConfig(**text), vision_config=DualClipSiglipVisionConfig(**vision),
        projection_dim=24, logit_bias_init_value=-10.0, logit_scale_max=None, loss_type="sigmoid",
    )
    model = DualClipModel(config).eval()
    state = openclip_siglip_to_siglip_state_dict(openclip_siglip.state_dict())
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state)

    input_ids, pixel_values = inputs()
    want_text = openclip_siglip.encode_text(input_ids)
    want_image = openclip_siglip.encode_image(pixel_values)
    want_logits = (openclip_siglip.logit_scale.exp() * torch.nn.functional.normalize(want_text, dim=-1)
                   @ torch.nn.functional.normalize(want_image, dim=-1).t() + openclip_siglip.logit_bias)
    got = model(input_ids=input_ids, pixel_values=pixel_values)
    assert relative_error(got.text_model_output.pooler_output, want_text) < 1e-5
    assert relative_error(got.vision_model_output.pooler_output, want_image) < 1e-5
    assert relative_error(got.logits_per_text, want_logits) < 1e-5


def test_openclip_siglip_conversion_names_what_it_cannot_place(openclip_siglip):
    from dualclip.conversion import ConversionError
    from dualclip.conversion.siglip import openclip_siglip_to_siglip_state_dict

    state = dict(openclip_siglip.state_dict())
    state["visual.trunk.blocks.0.ls1.gamma"] = torch.ones(24)
    with pytest.raises(ConversionError, match=r"visual\.trunk\.blocks\.0\.ls1\.gamma"):
        openclip_siglip_to_siglip_state_dict(state)


@torch.no_grad()
def test_compiles_in_one_graph(converted):
    input_ids, pixel_values = inputs()
    compiled = torch.compile(converted, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(input_ids=input_ids, pixel_values=pixel_values).logits_per_text,
                       converted(input_ids=input_ids, pixel_values=pixel_values).logits_per_text)
