"""transformers CLIP <-> dualclip: the round trip gives bit-identical tensors; models stock CLIP cannot express are
refused with the feature named."""

import json

import pytest
import torch
import transformers
from conversion_refs import randomize_
from safetensors.torch import load_file

from dualclip import DualClipConfig, DualClipModel, DualClipTextModelWithProjection
from dualclip.conversion import ConversionError, convert_checkpoint, detect_source, export_to_hf_clip

TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, projection_dim=32)
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=64,
              patch_size=16, projection_dim=32)


def clip_folder(tmp_path, dtype=torch.float32, name="clip"):
    config = transformers.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=32)
    model = randomize_(transformers.CLIPModel(config)).to(dtype)
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def _tensors(folder):
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_round_trip_is_bit_identical(tmp_path, dtype):
    source = clip_folder(tmp_path, dtype)
    assert detect_source(source) == "hf"
    imported = convert_checkpoint(source, tmp_path / "dual", verify=True)
    assert imported.model_class == "DualClipModel" and imported.verification.passed
    exported = convert_checkpoint(tmp_path / "dual", tmp_path / "back", to="hf", verify=True)
    assert exported.model_class == "CLIPModel" and exported.verification.passed

    before, after = _tensors(source), _tensors(tmp_path / "back")
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype and torch.equal(after[key], tensor), key
    model = transformers.CLIPModel.from_pretrained(tmp_path / "back")
    original = transformers.CLIPModel.from_pretrained(source)
    for field in ("text_config", "vision_config"):
        ours, theirs = getattr(model.config, field).to_dict(), getattr(original.config, field).to_dict()
        shared = (TEXT.keys() | VISION.keys()) & theirs.keys()
        assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}


def test_text_tower_round_trip(tmp_path):
    """transformers 5 saves CLIPTextModelWithProjection with its own key layout; both ways keep every tensor."""
    config = transformers.CLIPTextConfig(**TEXT)
    model = randomize_(transformers.CLIPTextModelWithProjection(config))
    model.save_pretrained(tmp_path / "text")
    result = convert_checkpoint(tmp_path / "text", tmp_path / "dual", verify=True)
    assert result.model_class == "DualClipTextModelWithProjection" and result.verification.passed
    DualClipTextModelWithProjection.from_pretrained(tmp_path / "dual")
    export_to_hf_clip(tmp_path / "dual", tmp_path / "back", verify=True)
    back = transformers.CLIPTextModelWithProjection.from_pretrained(tmp_path / "back")
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


def test_tokenizer_pad_convention_and_processor(tmp_path):
    source = clip_folder(tmp_path)
    convert_checkpoint(source, tmp_path / "dual")
    tokenizer_config = json.loads((tmp_path / "dual" / "tokenizer_config.json").read_text())
    assert tokenizer_config["pad_token"] == "<|endoftext|>"  # transformers' convention when the source is silent
    processor = json.loads((tmp_path / "dual" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 64, "width": 64}

    export_to_hf_clip(tmp_path / "dual", tmp_path / "back")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tmp_path / "back")
    assert tokenizer("a photo of a cat")["input_ids"][0] == 49406
    assert tokenizer.pad_token == "<|endoftext|>"
    image_processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "back")
    assert image_processor.crop_size == {"height": 64, "width": 64}


def _dualclip_folder(tmp_path, name, text=None, vision=None, **top):
    config = DualClipConfig(text_config=dict(TEXT, **(text or {})), vision_config=dict(VISION, **(vision or {})),
                            projection_dim=32, **top)
    DualClipModel(config).save_pretrained(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    "text, vision, top, feature",
    [
        ({}, dict(backbone="resnet", resnet_layers=[1, 1, 1, 1], resnet_width=2, hidden_size=64, num_attention_heads=2,
                  projection_bias=True), {}, "resnet_vision_model image tower"),
        (dict(layer_scale_init_value=0.1), {}, {}, "LayerScale in the text tower"),
        ({}, dict(layer_scale_init_value=0.1), {}, "LayerScale in the image tower"),
        (dict(projection_bias=True), {}, {}, "text projection bias"),
        (dict(pooling="last"), {}, {}, "pooling='last'"),
        (dict(causal_mask=False), {}, {}, "causal_mask=False"),
        ({}, dict(pre_norm=False), {}, "pre_norm=False"),
        ({}, {}, dict(logit_bias_init_value=-10.0), "logit bias"),
    ],
)
def test_export_refuses_what_stock_clip_cannot_express(tmp_path, text, vision, top, feature):
    folder = _dualclip_folder(tmp_path, "dual", text, vision, **top)
    with pytest.raises(ConversionError, match=feature):
        convert_checkpoint(folder, tmp_path / "back", to="hf")
    assert not (tmp_path / "back").exists()


def test_dualclip_folder_needs_to_hf(tmp_path):
    folder = _dualclip_folder(tmp_path, "dual")
    with pytest.raises(ConversionError, match="already a dualclip folder; pass --to hf"):
        convert_checkpoint(folder, tmp_path / "out")


def test_pickled_and_sharded_sources(tmp_path):
    """Older folders: `pytorch_model.bin` with the `position_ids` buffers transformers 4 saved; sharded safetensors."""
    config = transformers.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=32)
    model = randomize_(transformers.CLIPModel(config))
    legacy = tmp_path / "legacy"
    config.save_pretrained(legacy)
    state = dict(model.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    torch.save(state, legacy / "pytorch_model.bin")
    assert convert_checkpoint(legacy, tmp_path / "from_bin", verify=True).verification.passed

    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert convert_checkpoint(tmp_path / "sharded", tmp_path / "from_shards", verify=True).verification.passed
    converted = DualClipModel.from_pretrained(tmp_path / "from_shards")
    for key, tensor in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], tensor), key
