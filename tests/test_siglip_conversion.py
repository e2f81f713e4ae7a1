"""`dualclip convert` on OpenCLIP SigLIP models: open_clip (building timm's tower) and the converted folder give the
same features and logits; the folder's processor feeds the model what OpenCLIP's tokenizer and preprocessing feed
it; a mask passed anyway changes nothing; the timm architecture table equals what timm builds."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from conversion_refs import TOLERANCE, assert_close
from openclip_timm_refs import openclip_model, register_timm_model
from safetensors.torch import save_file
from transformers import AutoModel, AutoProcessor, PreTrainedTokenizerFast

import dualclip  # noqa: F401  (registers the Auto classes)
from dualclip.conversion import ConversionError, convert_checkpoint
from dualclip.conversion.siglip import SIGLIP_VISION_ARCHITECTURES

TIMM_NAME = "vit_dualclip_test_siglip_32"  # a reduced timm SigLIP tower, registered below
CONTEXT = 16
WORDS = ["a", "photo", "of", "cat", "dog", "the", "on", "mat", "big", "small", "red", "blue", "and"]
MODEL_CFG = {
    "embed_dim": 24,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {"image_size": 32, "timm_model_name": TIMM_NAME, "timm_model_pretrained": False,
                   "timm_pool": "map", "timm_proj": "none"},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 99, "width": 32, "heads": 4, "layers": 2, "mlp_ratio": 1.25,
                 "hf_tokenizer_name": "timm/ViT-B-16-SigLIP", "tokenizer_kwargs": {"clean": "canonicalize"},
                 "no_causal_mask": True, "proj_bias": True,
                 "pool_type": "last", "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}},
}
TINY_ARCHITECTURE = dict(patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, image_size=32, hidden_act="gelu")
PREPROCESS_CFG = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                  "resize_mode": "squash"}
CAPTIONS = ["A photo of a cat!", "the_big dog, on THE mat.", "red & blue " * 9, "  small   cat  "]


def save_tokenizer(folder):
    """A word-level tokenizer with SigLIP's special-token layout (pad 0, eos 1, unk 2; EOS appended), 99 ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS + [f"w{i}" for i in range(99 - 3 - len(WORDS))]:
        vocab[word] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """An OpenCLIP hub-style folder: config with preprocessing, safetensors weights, the tokenizer's files."""
    from timm.models.vision_transformer import VisionTransformer

    register_timm_model(TIMM_NAME, VisionTransformer, img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=4,
                        mlp_ratio=2.0, class_token=False, global_pool="map")
    model = openclip_model("test-dualclip-siglip-convert", MODEL_CFG, seed=3, logit_scale=5.0, logit_bias=-3.5)
    folder = tmp_path_factory.mktemp("hub")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG,
                                                              "preprocess_cfg": PREPROCESS_CFG}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    save_tokenizer(folder)
    return folder, model


@pytest.fixture(scope="module")
def converted(hub_folder, tmp_path_factory):
    folder, _ = hub_folder
    out = tmp_path_factory.mktemp("out") / "siglip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(SIGLIP_VISION_ARCHITECTURES, TIMM_NAME, TINY_ARCHITECTURE)
        result = convert_checkpoint(folder, out, verify=True)
    return out, result


def images():
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 56), (32, 32))]


@torch.no_grad()
def test_features_and_logits_equal_open_clip(hub_folder, converted):
    from open_clip.tokenizer import HFTokenizer

    folder, reference = hub_folder
    out, result = converted
    model = AutoModel.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    inputs = processor(text=CAPTIONS, images=images(), return_tensors="pt")

    want_ids = HFTokenizer(str(folder), context_length=CONTEXT, clean="canonicalize")(CAPTIONS)
    assert torch.equal(inputs["input_ids"], want_ids)
    want_text = reference.encode_text(want_ids)
    want_image = reference.encode_image(inputs["pixel_values"])
    want_logits = reference.logit_scale.exp() * torch.nn.functional.normalize(want_image, dim=-1) @ (
        torch.nn.functional.normalize(want_text, dim=-1).t()) + reference.logit_bias

    out_text = model.encode_text(inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert_close(out_text, want_text, "text features (mask passed, ignored)")
    assert_close(model.encode_image(inputs["pixel_values"]), want_image, "image features")
    got = model(**inputs)
    assert_close(got.logits_per_image, want_logits, "logits (scale exp(5) > 100, bias -3.5)")
    assert result.model_class == "DualClipModel" and "SigLIP" in result.architecture
    assert result.verification.passed, result.verification.summary()


def test_pixels_equal_transformers_siglip_processor(converted):
    from transformers import SiglipImageProcessorPil

    out, _ = converted
    ours = AutoProcessor.from_pretrained(out).image_processor(images(), return_tensors="pt")["pixel_values"]
    stock = SiglipImageProcessorPil(size={"height": 32, "width": 32}, resample=PIL.Image.Resampling.BICUBIC,
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3)(images(), return_tensors="pt")
    assert torch.equal(ours, stock["pixel_values"])


def test_config_says_padding_is_not_masked(converted):
    out, _ = converted
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["mask_padding"] is False
    assert config["logit_scale_max"] is None and config["loss_type"] == "sigmoid"


def test_source_without_tokenizer_converts_and_says_so(hub_folder, tmp_path):
    folder, reference = hub_folder
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        (bare / name).write_bytes((folder / name).read_bytes())
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(SIGLIP_VISION_ARCHITECTURES, TIMM_NAME, TINY_ARCHITECTURE)
        result = convert_checkpoint(bare, tmp_path / "out")
    assert any("no tokenizer written" in note for note in result.notes)
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("change, message", [
    ({"text_cfg": {"layers": 3}}, r"text_cfg\.layers is 3 in the config but 2"),
    ({"vision_cfg": {"timm_pool": "avg"}}, r"vision_cfg\.timm_pool='avg'"),
    ({"text_cfg": {"tokenizer_kwargs": {"clean": "canonicalize", "language": "en"}}}, r"tokenizer_kwargs: language"),
    ({"text_cfg": {"qk_norm": True}}, r"text_cfg\.qk_norm=True"),
])
def test_config_checkpoint_mismatch_is_refused_and_nothing_written(hub_folder, tmp_path, change, message):
    folder, _ = hub_folder
    cfg = json.loads(json.dumps(MODEL_CFG))
    for side, values in change.items():
        cfg[side].update(values)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(ConversionError, match=message):
        patch.setitem(SIGLIP_VISION_ARCHITECTURES, TIMM_NAME, TINY_ARCHITECTURE)
        convert_checkpoint(folder / "open_clip_model.safetensors", tmp_path / "out", openclip_config=cfg)
    assert not (tmp_path / "out").exists()


def test_unknown_timm_tower_is_named(hub_folder, tmp_path):
    folder, _ = hub_folder
    with pytest.raises(ConversionError, match=TIMM_NAME):
        convert_checkpoint(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_architecture_table_equals_what_timm_builds():
    import timm

    for name, architecture in SIGLIP_VISION_ARCHITECTURES.items():
        with torch.device("meta"):
            tower = timm.create_model(name, num_classes=0, global_pool="map")
        block = tower.blocks[0]
        built = dict(
            patch_size=tower.patch_embed.proj.kernel_size[0], hidden_size=tower.embed_dim,
            num_hidden_layers=len(tower.blocks), num_attention_heads=block.attn.num_heads,
            intermediate_size=block.mlp.fc1.out_features, image_size=tower.patch_embed.img_size[0],
            hidden_act={"GELU": "gelu", "GELUTanh": "gelu_pytorch_tanh"}[type(block.mlp.act).__name__],
        )
        assert built == architecture, name
        assert tower.attn_pool.num_heads == architecture["num_attention_heads"], name
        assert tower.attn_pool.mlp.fc1.out_features == architecture["intermediate_size"], name
        assert tower.cls_token is None and tower.patch_embed.proj.bias is not None, name
        assert block.norm1.eps == 1e-6 and type(block.ls1).__name__ == "Identity", name


assert TOLERANCE == 1e-5


@torch.no_grad()
def test_export_to_siglip_model_is_bit_identical_and_round_trips(converted, tmp_path):
    from transformers import SiglipModel

    from dualclip import DualClipModel

    out, _ = converted
    result = convert_checkpoint(out, tmp_path / "stock", to="hf")
    assert result.model_class == "SiglipModel"
    stock = SiglipModel.from_pretrained(tmp_path / "stock").eval()
    ours = DualClipModel.from_pretrained(out).eval()
    inputs = AutoProcessor.from_pretrained(out)(text=CAPTIONS, images=images(), return_tensors="pt")
    want, got = ours(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]), stock(
        input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
    assert torch.equal(got.logits_per_image, want.logits_per_image)
    assert torch.equal(got.text_embeds, want.text_embeds) and torch.equal(got.image_embeds, want.image_embeds)
    # The stock folder loads back into dualclip unchanged: the same tensors.
    back = DualClipModel.from_pretrained(tmp_path / "stock").state_dict()
    assert all(torch.equal(value, back[key]) for key, value in ours.state_dict().items())
    # Its processor: the carried tokenizer and a stock SigLIP image processor with the same pixels.
    stock_pixels = AutoProcessor.from_pretrained(tmp_path / "stock").image_processor(images(), return_tensors="pt")
    assert torch.equal(stock_pixels["pixel_values"], inputs["pixel_values"])
    assert any("cleans captions" in note for note in result.notes)


def test_export_of_a_mixed_model_names_the_tower(tmp_path):
    from dualclip import DualClipConfig, DualClipModel
    from dualclip.modeling_dualclip_siglip import DualClipSiglipTextConfig

    config = DualClipConfig(
        text_config=DualClipSiglipTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                             num_attention_heads=4, max_position_embeddings=16, projection_size=24),
        vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=24),
        projection_dim=24,
    )
    DualClipModel(config).save_pretrained(tmp_path / "mixed")
    with pytest.raises(ConversionError, match="dualclip_siglip_text_model text tower"):
        convert_checkpoint(tmp_path / "mixed", tmp_path / "stock", to="hf")
    assert not (tmp_path / "stock").exists()


@pytest.mark.slow
@torch.no_grad()
def test_full_size_vit_b16_siglip_converts_to_open_clips_numbers(tmp_path):
    """OpenCLIP's released ViT-B-16-SigLIP architecture at full size (timm's vit_base_patch16_siglip_224, the table
    entry itself), random weights: converted text features, image features and logits equal open_clip's."""
    from conversion_refs import randomize_
    from openclip_timm_refs import released_model_config

    import open_clip

    torch.manual_seed(0)
    reference = randomize_(open_clip.create_model("ViT-B-16-SigLIP").eval(), seed=5, matrices=False)
    reference.logit_scale.fill_(4.8)
    reference.logit_bias.fill_(-12.0)
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": released_model_config("ViT-B-16-SigLIP"),
                                                              "preprocess_cfg": PREPROCESS_CFG | {"size": 224}}))
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, folder / "open_clip_model.safetensors")
    convert_checkpoint(folder, tmp_path / "out")
    model = AutoModel.from_pretrained(tmp_path / "out").eval()

    ids = torch.zeros(2, 64, dtype=torch.long)
    ids[0, :4], ids[1, :] = torch.tensor([262, 266, 1, 0]), torch.randint(2, 32000, (64,))
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    want_text, want_image = reference.encode_text(ids), reference.encode_image(images)
    assert_close(model.encode_text(ids), want_text, "text features")
    assert_close(model.encode_image(images), want_image, "image features")
    want_logits = reference.logit_scale.exp() * torch.nn.functional.normalize(want_image, dim=-1) @ (
        torch.nn.functional.normalize(want_text, dim=-1).t()) + reference.logit_bias
    # Logits are exp(4.8) = 121 times a cosine: compared relative to their scale.
    assert_close(model(input_ids=ids, pixel_values=images).logits_per_image, want_logits, "logits",
                 tolerance=TOLERANCE * float(want_logits.abs().max()))


def test_classify_and_generic_padding_use_the_carried_tokenizer_at_full_length(converted, hub_folder):
    """`padding=True` (what generic code asks for) still pads SigLIP captions to the context length, and the
    zero-shot loader behind `dualclip classify` takes the carried tokenizer, not OpenAI's BPE."""
    from open_clip.tokenizer import HFTokenizer

    from dualclip.zero_shot import load_processor

    out, _ = converted
    folder, _ = hub_folder
    processor = load_processor(out)
    assert "dualclip" not in type(processor.tokenizer).__module__  # the carried one, not OpenAI's BPE
    want = HFTokenizer(str(folder), context_length=CONTEXT, clean="canonicalize")(CAPTIONS[:2])
    got = processor(text=CAPTIONS[:2], padding=True, truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(got, want)
