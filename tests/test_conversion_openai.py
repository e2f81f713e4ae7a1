"""OpenAI CLIP checkpoints -> dualclip: every released architecture, as TorchScript archives and plain state dicts,
against OpenAI's own `clip.model` on the same random weights."""

import json

import pytest
import torch
from conversion_refs import (
    FULL_OPENAI,
    REDUCED_OPENAI,
    compare_with_reference,
    openai_model,
    randomize_,
    save_openai_archive,
    token_batch,
)

from dualclip import DualClipModel
from dualclip.conversion import ConversionError, convert_checkpoint, detect_source


def _compare(model, reference, images=2, texts=3):
    reference = reference.float()
    parts = dict(
        encode_image=reference.encode_image,
        encode_text=reference.encode_text,
        logit_scale=reference.logit_scale,
        blocks=reference.transformer.resblocks,
        final_norm=reference.ln_final,
    )
    compare_with_reference(model, parts, reference.visual.input_resolution, token_batch()[:texts], images)


@pytest.mark.parametrize("name", list(REDUCED_OPENAI))
def test_released_archive_of_every_architecture(name, tmp_path):
    """Reduced-size archives traced after OpenAI's float16 conversion, as released; the converted float32 model
    equals the float32-cast reference."""
    reference = openai_model(**REDUCED_OPENAI[name])
    archive = tmp_path / "model.pt"
    save_openai_archive(reference, archive)
    assert detect_source(archive) == "openai"

    result = convert_checkpoint(archive, tmp_path / "out")
    assert result.dtype == "float32"  # the archive mixes float16 and float32
    model = DualClipModel.from_pretrained(tmp_path / "out").eval()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    vision_family = "dualclip_resnet_vision_model" if name.startswith("RN") else "dualclip_vision_model"
    assert config["vision_config"]["model_type"] == vision_family
    assert config["vision_config"]["image_size"] == REDUCED_OPENAI[name]["image_resolution"]
    if name.startswith("RN"):
        assert config["vision_config"]["resnet_layers"] == list(REDUCED_OPENAI[name]["vision_layers"])
    else:
        assert config["vision_config"]["patch_size"] == REDUCED_OPENAI[name]["vision_patch_size"]
    _compare(model, reference)


@pytest.mark.parametrize("name", ["ViT-B/16", "RN50x4"])
def test_plain_state_dict(name, tmp_path):
    reference = openai_model(**REDUCED_OPENAI[name], seed=1)
    torch.save(reference.state_dict(), tmp_path / "state.pt")
    assert detect_source(tmp_path / "state.pt") == "openai"
    result = convert_checkpoint(tmp_path / "state.pt", tmp_path / "out", "openai", verify=True)
    assert result.verification.passed, result.verification.summary()
    _compare(DualClipModel.from_pretrained(tmp_path / "out").eval(), reference)


def test_state_dict_taken_from_an_archive(tmp_path):
    """`torch.jit.load(archive).state_dict()` saved as a plain `.pt` keeps OpenAI's three metadata entries."""
    reference = openai_model(**REDUCED_OPENAI["RN101"])
    save_openai_archive(reference, tmp_path / "model.pt")
    state = torch.jit.load(str(tmp_path / "model.pt")).state_dict()
    assert {"input_resolution", "context_length", "vocab_size"} <= state.keys()
    torch.save(state, tmp_path / "state.pt")
    convert_checkpoint(tmp_path / "state.pt", tmp_path / "out")
    _compare(DualClipModel.from_pretrained(tmp_path / "out").eval(), reference)


@pytest.mark.parametrize("name", list(FULL_OPENAI))
def test_full_size(name, tmp_path):
    """Full-size ViT-B/32 and RN50 archives: named as released, same numbers as the reference."""
    from clip.model import CLIP

    reference = randomize_(CLIP(**FULL_OPENAI[name]), matrices=False)
    save_openai_archive(reference, tmp_path / "model.pt")
    result = convert_checkpoint(tmp_path / "model.pt", tmp_path / "out", dtype="float32")
    assert result.architecture == name
    assert result.num_parameters == sum(p.numel() for p in reference.parameters())
    assert "| Architecture | " + name in (tmp_path / "out" / "README.md").read_text()
    _compare(DualClipModel.from_pretrained(tmp_path / "out").eval(), reference, images=1, texts=2)


def test_float16_output_and_sharding(tmp_path):
    reference = openai_model(**REDUCED_OPENAI["ViT-B/32"])
    save_openai_archive(reference, tmp_path / "model.pt")
    result = convert_checkpoint(tmp_path / "model.pt", tmp_path / "out", dtype="float16", max_shard_size="2MB")
    assert result.dtype == "float16"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = DualClipModel.from_pretrained(tmp_path / "out")
    assert model.dtype == torch.float16
    # Every float16 weight of the archive comes through exactly.
    state = torch.jit.load(str(tmp_path / "model.pt")).state_dict()
    assert torch.equal(model.visual_projection.weight, state["visual.proj"].t())
    q = model.text_model.encoder.layers[0].self_attn.q_proj.weight
    assert torch.equal(q, state["transformer.resblocks.0.attn.in_proj_weight"][:64])


def test_verify_reports_the_reference(tmp_path):
    reference = openai_model(**REDUCED_OPENAI["RN50"])
    save_openai_archive(reference, tmp_path / "model.pt")
    result = convert_checkpoint(tmp_path / "model.pt", tmp_path / "out", verify=True)
    assert result.verification.passed
    assert result.verification.max_difference < 1e-5
    assert "passed against OpenAI CLIP" in (tmp_path / "out" / "README.md").read_text()


def test_openclip_state_dict_is_not_taken_for_openai(tmp_path):
    reference = openai_model(**REDUCED_OPENAI["ViT-B/32"])
    state = reference.state_dict()
    state["logit_bias"] = torch.tensor(-10.0)
    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(ConversionError, match="looks like an OpenCLIP one"):
        convert_checkpoint(tmp_path / "state.pt", tmp_path / "out", "openai")
    assert not (tmp_path / "out").exists()


@torch.no_grad()
def test_long_clip_checkpoint_folds_its_two_position_tables(tmp_path):
    """Long-CLIP (248 text positions; OpenAI's layout plus `positional_embedding_res`). Its code is not installable,
    so the reference is its `encode_text` rule applied to OpenAI's `clip.model` modules on the same weights:
    `positional_embedding * mask1 + positional_embedding_res * mask2` (`mask1` = the first 20 rows), the rest
    OpenAI's text tower. The converted tokenizer and prompt chunking follow the 248 positions."""
    from dualclip.conditioning import chunk_length
    from dualclip.tokenization_dualclip import DualClipTokenizer

    reference = openai_model(**REDUCED_OPENAI["ViT-B/16"], seed=2, context_length=248)
    state = reference.state_dict()
    state["positional_embedding_res"] = torch.randn(248, 64, generator=torch.Generator().manual_seed(3)) * 0.1
    torch.save(state, tmp_path / "longclip.pt")
    result = convert_checkpoint(tmp_path / "longclip.pt", tmp_path / "out")
    assert "248 text positions" in result.architecture
    model = DualClipModel.from_pretrained(tmp_path / "out").eval()

    mask1 = torch.zeros(248, 1)
    mask1[:20] = 1
    positions = reference.positional_embedding * mask1 + state["positional_embedding_res"] * (1 - mask1)
    ids = token_batch(context_length=248)
    x = reference.token_embedding(ids) + positions
    x = reference.ln_final(reference.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
    want = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ reference.text_projection
    got = model.encode_text(ids)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    assert model.config.text_config.max_position_embeddings == 248
    tokenizer = DualClipTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.model_max_length == 248 and chunk_length(tokenizer, model.text_model) == 246
