"""OpenCLIP checkpoints -> dualclip: hub folders and raw training checkpoints of models built by `open_clip` itself,
covering every option the converter translates, against `open_clip` on the same random weights."""

import json

import pytest
import torch
from conversion_refs import assert_close, compare_with_reference, randomize_, token_batch, write_json
from safetensors.torch import save_file

from dualclip import DualClipModel
from dualclip.conversion import ConversionError, convert_checkpoint, convert_openclip_checkpoint, detect_source

TEXT = dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)
VIT = dict(image_size=64, layers=2, width=64, patch_size=16)

# Reduced model configs, each exercising options the converter translates.
CONFIGS = {
    # GELU (OpenCLIP's default), 32-wide vision heads, a non-4 MLP ratio in both towers.
    "gelu-head-width-mlp-ratio": dict(
        embed_dim=32, vision_cfg=dict(VIT, head_width=32, mlp_ratio=2.5), text_cfg=dict(TEXT, mlp_ratio=3.0)
    ),
    # ViT-H/14's shapes: 80-wide vision heads, patch 14; its text tower: 64-wide heads, 4x MLP.
    "vit-h-14-shapes": dict(
        embed_dim=32,
        vision_cfg=dict(image_size=56, layers=2, width=160, head_width=80, patch_size=14),
        text_cfg=dict(TEXT, width=128, heads=2),
    ),
    # ViT-bigG/14's shapes: 104-wide vision heads, MLP ratio 4.9231; its text tower (head width 64, 4x MLP).
    "vit-bigg-14-shapes": dict(
        embed_dim=32,
        vision_cfg=dict(image_size=56, layers=2, width=208, head_width=104, mlp_ratio=4.9231, patch_size=14),
        text_cfg=dict(TEXT, width=128, heads=2),
    ),
    # SigLIP-style: custom text layout, biased text projection, bidirectional text pooled at the last position,
    # LayerScale, no ln_pre, LayerNorm eps from norm_kwargs, tanh GELU from act_kwargs, a logit bias.
    "custom-text-siglip-style": dict(
        embed_dim=32,
        custom_text=True,
        init_logit_bias=-10.0,
        vision_cfg=dict(VIT, no_ln_pre=True, ls_init_value=0.1, norm_kwargs=dict(eps=1e-6)),
        text_cfg=dict(
            TEXT, proj_bias=True, no_causal_mask=True, pool_type="last", ls_init_value=0.1,
            norm_kwargs=dict(eps=1e-6), act_kwargs=dict(approximate="tanh"),
        ),
    ),
    # QuickGELU, pooling at a configured end-of-text id, a 1-element logit scale.
    "quickgelu-eos-pool": dict(
        embed_dim=32,
        quick_gelu=True,
        nonscalar_logit_scale=True,
        vision_cfg=dict(VIT),
        text_cfg=dict(TEXT, pool_type="eos", eos_id=49407),
    ),
    # CLIPA: no ln_pre, the patch mean pooled then normed; bidirectional text pooled at the last position.
    "clipa-style": dict(
        embed_dim=32,
        vision_cfg=dict(VIT, no_ln_pre=True, pool_type="avg", final_ln_after_pool=True),
        text_cfg=dict(TEXT, pool_type="last", no_causal_mask=True),
    ),
    # OpenCLIP's `pool_type="avg"` alone: the patches normed, then their mean.
    "patch-mean-after-norm": dict(
        embed_dim=32,
        vision_cfg=dict(VIT, pool_type="avg"),
        text_cfg=dict(TEXT),
    ),
    # OpenCLIP's ModifiedResNet with 32-wide attention-pool heads.
    "resnet-head-width": dict(
        embed_dim=32,
        vision_cfg=dict(image_size=64, layers=[1, 2, 1, 1], width=16, head_width=32),
        text_cfg=dict(TEXT),
    ),
}


def openclip_model(tmp_path, name, model_cfg, seed=0):
    """`open_clip.create_model` of a config registered from a JSON file, with random weights."""
    import open_clip

    folder = tmp_path / "model_configs"
    folder.mkdir(exist_ok=True)
    write_json(folder / f"test-{name}.json", model_cfg)
    open_clip.add_model_config(folder)
    model = open_clip.create_model(f"test-{name}")
    with torch.no_grad():
        model.logit_scale.fill_(4.8)  # above ln(100): logits must still equal the original's (never clamped)
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.fill_(-3.0)
    return randomize_(model, seed)


def save_hub_folder(model, model_cfg, folder, weights="safetensors", preprocess=None):
    folder.mkdir()
    write_json(folder / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": preprocess or {}})
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "safetensors":
        save_file(state, folder / "open_clip_model.safetensors")
    else:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    return folder


def save_training_checkpoint(model, path, epoch=3):
    """As OpenCLIP's training loop saves them: DDP's `module.` prefix, epoch, optimizer state."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({"epoch": epoch, "name": "test", "state_dict": state, "optimizer": optimizer.state_dict()}, path)
    return path


def _compare(converted, reference, cfg, ids=None):
    text = reference.text if hasattr(reference, "text") else reference
    parts = dict(
        encode_image=reference.encode_image,
        encode_text=reference.encode_text,
        logit_scale=reference.logit_scale,
        logit_bias=reference.logit_bias,
        blocks=text.transformer.resblocks,
        final_norm=text.ln_final,
    )
    compare_with_reference(converted, parts, cfg["vision_cfg"]["image_size"], token_batch() if ids is None else ids)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hub_folder(name, tmp_path):
    cfg = CONFIGS[name]
    reference = openclip_model(tmp_path, name, cfg)
    weights = "bin" if name == "vit-bigg-14-shapes" else "safetensors"
    folder = save_hub_folder(reference, cfg, tmp_path / "hub", weights)
    assert detect_source(folder) == "openclip"
    convert_checkpoint(folder, tmp_path / "out")
    converted = DualClipModel.from_pretrained(tmp_path / "out").eval()
    _compare(converted, reference, cfg)


def test_translated_options(tmp_path):
    cfg = CONFIGS["custom-text-siglip-style"]
    reference = openclip_model(tmp_path, "siglip", cfg)
    convert_checkpoint(save_hub_folder(reference, cfg, tmp_path / "hub"), tmp_path / "out")
    config = DualClipModel.from_pretrained(tmp_path / "out").config
    text, vision = config.text_config, config.vision_config
    assert (text.pooling, text.causal_mask, text.projection_bias) == ("last", False, True)
    assert (text.layer_scale_init_value, vision.layer_scale_init_value, vision.pre_norm) == (0.1, 0.1, False)
    assert (text.layer_norm_eps, text.hidden_act, vision.hidden_act) == (1e-6, "gelu_pytorch_tanh", "gelu")
    assert (config.logit_bias_init_value, config.loss_type) == (-10.0, "sigmoid")

    cfg = CONFIGS["quickgelu-eos-pool"]
    reference = openclip_model(tmp_path, "eos", cfg)
    convert_checkpoint(save_hub_folder(reference, cfg, tmp_path / "hub2"), tmp_path / "out2")
    text = DualClipModel.from_pretrained(tmp_path / "out2").config.text_config
    assert (text.pooling, text.eos_token_id, text.hidden_act) == ("eos", 49407, "quick_gelu")


def test_raw_training_checkpoint_with_config_json(tmp_path):
    cfg = CONFIGS["vit-h-14-shapes"]
    reference = openclip_model(tmp_path, "h14", cfg)
    path = save_training_checkpoint(reference, tmp_path / "epoch_3.pt")
    assert detect_source(path) == "openclip"
    config_json = write_json(tmp_path / "h14.json", cfg)
    result = convert_checkpoint(path, tmp_path / "out", openclip_config=config_json, verify=True)
    assert result.verification.passed, result.verification.summary()
    assert any("epoch 3" in note for note in result.notes)
    _compare(DualClipModel.from_pretrained(tmp_path / "out").eval(), reference, cfg)


def test_raw_checkpoint_with_standard_model_name(tmp_path):
    """A standard OpenCLIP name: the model config is read from the installed open_clip's JSON files."""
    import open_clip

    reference = randomize_(open_clip.create_model("ViT-S-32-alt"), matrices=False)
    path = save_training_checkpoint(reference, tmp_path / "epoch_1.pt", epoch=1)
    result = convert_openclip_checkpoint(path, tmp_path / "out", model_name="ViT-S-32-alt", dtype="float32")
    assert result.architecture.startswith("ViT-S-32-alt")
    cfg = open_clip.get_model_config("ViT-S-32-alt")
    _compare(DualClipModel.from_pretrained(tmp_path / "out").eval(), reference, cfg, token_batch()[:2])


def test_custom_text_raw_checkpoint_and_verify(tmp_path):
    cfg = CONFIGS["custom-text-siglip-style"]
    reference = openclip_model(tmp_path, "custom", cfg)
    path = save_training_checkpoint(reference, tmp_path / "epoch_3.pt")
    config_json = write_json(tmp_path / "c.json", cfg)
    result = convert_checkpoint(path, tmp_path / "out", "openclip", openclip_config=config_json, verify=True)
    assert result.verification.passed, result.verification.summary()
    assert any("Custom-text layout" in note for note in result.notes)


def test_preprocessing_and_tokenizer_files(tmp_path):
    cfg = CONFIGS["gelu-head-width-mlp-ratio"]
    reference = openclip_model(tmp_path, "pre", cfg)
    preprocess = {"mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic", "resize_mode": "shortest"}
    folder = save_hub_folder(reference, cfg, tmp_path / "hub", preprocess=preprocess)
    convert_checkpoint(folder, tmp_path / "out")
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5, 0.5, 0.5] and processor["image_std"] == [0.25, 0.25, 0.25]
    assert processor["crop_size"] == {"height": 64, "width": 64}
    from dualclip.tokenization_dualclip import DualClipTokenizer

    tokenizer = DualClipTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.pad_token_id == 0 and tokenizer.model_max_length == 77


@pytest.mark.parametrize(
    "edit, option",
    [
        (lambda c: c["vision_cfg"].update(attentional_pool=True), "vision_cfg.attentional_pool"),
        (lambda c: c["vision_cfg"].update(timm_model_name="vit_base_patch16_224"), "vision_cfg.timm_model_name"),
        (lambda c: c["text_cfg"].update(hf_model_name="roberta-base"), "text_cfg.hf_model_name"),
        (lambda c: c.update(multimodal_cfg={"width": 64}), "multimodal_cfg"),
        (lambda c: c["text_cfg"].update(final_ln_after_pool=True), "text_cfg.final_ln_after_pool"),
        (lambda c: c["text_cfg"].update(embed_cls=True), "text_cfg.embed_cls"),
        (lambda c: c["vision_cfg"].update(qk_norm=True), "vision_cfg.qk_norm"),
        (lambda c: c["text_cfg"].update(scaled_cosine_attn=True), "text_cfg.scaled_cosine_attn"),
        (lambda c: c["vision_cfg"].update(pos_embed_type="sin_cos_2d"), "vision_cfg.pos_embed_type"),
        (lambda c: c["text_cfg"].update(proj_type="mlp"), "text_cfg.proj_type"),
        (lambda c: c["vision_cfg"].update(pool_type="none"), "vision_cfg.pool_type"),
        (lambda c: c["text_cfg"].update(pool_type="first"), "text_cfg.pool_type"),
        (lambda c: c["text_cfg"].update(tokenizer_mode="clips"), "text_cfg.tokenizer_mode"),
        (lambda c: c["text_cfg"].update(some_future_option=1), "text_cfg.some_future_option"),
    ],
)
def test_unsupported_options_stop_with_their_name(edit, option, tmp_path):
    cfg = json.loads(json.dumps(CONFIGS["quickgelu-eos-pool"]))
    reference = openclip_model(tmp_path, "plain", cfg)
    edit(cfg)
    folder = save_hub_folder(reference, cfg, tmp_path / "hub")
    with pytest.raises(ConversionError, match=option.replace(".", r"\.")):
        convert_checkpoint(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_config_that_does_not_match_the_weights(tmp_path):
    cfg = CONFIGS["gelu-head-width-mlp-ratio"]
    reference = openclip_model(tmp_path, "mismatch", cfg)
    wrong = json.loads(json.dumps(cfg))
    wrong["text_cfg"]["layers"] = 3
    path = save_training_checkpoint(reference, tmp_path / "ckpt.pt")
    with pytest.raises(ConversionError, match=r"text_cfg\.layers is 3 in the config but 2 in the weights"):
        convert_checkpoint(path, tmp_path / "out", openclip_config=write_json(tmp_path / "w.json", wrong))


@torch.no_grad()
def test_a_padding_mask_never_moves_features_away_from_open_clip(tmp_path):
    """OpenCLIP never masks padding; with bidirectional attention pooled at the last position a mask would change
    the features (measured before `mask_padding`: off by up to 4 on features of size 2-3). The processor sends one."""
    cfg = CONFIGS["custom-text-siglip-style"]
    reference = openclip_model(tmp_path, "padding", cfg)
    convert_checkpoint(save_hub_folder(reference, cfg, tmp_path / "hub"), tmp_path / "out")
    converted = DualClipModel.from_pretrained(tmp_path / "out").eval()
    assert converted.config.text_config.mask_padding is False
    ids = token_batch()
    mask = (ids != 0).long()
    assert not bool(mask.all())
    want = reference.encode_text(ids)
    assert_close(converted.encode_text(ids, attention_mask=mask), want, "encode_text with a mask")
    assert_close(converted.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, want,
                 "get_text_features with a mask")


def save_wordpiece_tokenizer(folder, words):
    """A BERT-style tokenizer ([CLS] text [SEP], lower-casing WordPiece, pad 0) from `words`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)
    return len(vocab)


@torch.no_grad()
def test_clipa_hub_folder_carries_its_tokenizer_and_text_defaults(tmp_path):
    """CLIPA: OpenCLIP's HFTokenizer over bert-base-uncased with `strip_sep_token` (SEP replaced by 0), captions
    padded to the 32-token context; the converted folder's processor gives the same ids and the model the same
    features, with the attention mask the processor also returns ignored."""
    from open_clip.tokenizer import HFTokenizer
    from transformers import AutoModel, AutoProcessor

    words = ["a", "photo", "of", "cat", "dog", "the", "on", "mat", "##s", ",", "."]
    vocab_size = save_wordpiece_tokenizer(tmp_path / "tokenizer", words)
    cfg = json.loads(json.dumps(CONFIGS["clipa-style"]))
    cfg["text_cfg"].update(vocab_size=vocab_size, context_length=32, hf_tokenizer_name="bert-base-uncased",
                           tokenizer_kwargs={"strip_sep_token": True})
    reference = openclip_model(tmp_path, "clipa-tokenizer", cfg)
    folder = save_hub_folder(reference, cfg, tmp_path / "hub")
    for path in (tmp_path / "tokenizer").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    convert_checkpoint(folder, tmp_path / "out")

    captions = ["A photo of the cats, on the MAT.", "dog", "a " * 40]
    want_ids = HFTokenizer(str(folder), context_length=32, strip_sep_token=True)(captions)
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    inputs = processor(text=captions, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], want_ids)
    assert not bool((want_ids == 3).any())  # SEP stripped
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert_close(model.encode_text(inputs["input_ids"], attention_mask=inputs["attention_mask"]),
                 reference.encode_text(want_ids), "CLIPA text features")


@torch.no_grad()
def test_metaclip2_worldwide_pools_at_its_real_end_of_text_id_2(tmp_path):
    """MetaCLIP 2 worldwide: `pool_type="eos"` with `eos_id=2` (XLM-V's `</s>`). transformers reads id 2 as its
    legacy argmax rule; the converted tower pools the first id 2 as OpenCLIP does (`pooling="first_eos"`)."""
    cfg = dict(embed_dim=32, vision_cfg=dict(VIT), text_cfg=dict(TEXT, pool_type="eos", eos_id=2))
    reference = openclip_model(tmp_path, "metaclip2", cfg)
    convert_checkpoint(save_hub_folder(reference, cfg, tmp_path / "hub"), tmp_path / "out")
    converted = DualClipModel.from_pretrained(tmp_path / "out").eval()
    text = converted.config.text_config
    assert (text.pooling, text.eos_token_id) == ("first_eos", 2)
    ids = torch.randint(3, 49406, (3, 77), generator=torch.Generator().manual_seed(0))
    ids[0, 5], ids[1, 40], ids[1, 60], ids[2, 76] = 2, 2, 2, 2  # the first 2 of each row is pooled
    ids[0, 6:] = 1  # XLM-V pads with 1, after </s>
    want = reference.encode_text(ids)
    assert_close(converted.encode_text(ids), want, "encode_text")
    assert_close(converted.get_text_features(input_ids=ids).pooler_output, want, "get_text_features")
    with pytest.raises(ConversionError, match="end-of-text id 2"):
        convert_checkpoint(tmp_path / "out", tmp_path / "stock", to="hf")


COCA = dict(
    embed_dim=32,
    custom_text=True,
    vision_cfg=dict(VIT, attentional_pool=True, attn_pooler_heads=4, output_tokens=True),
    text_cfg=dict(TEXT, context_length=76, embed_cls=True, output_tokens=True),
    multimodal_cfg=dict(context_length=76, vocab_size=49408, width=64, heads=2, layers=1, attn_pooler_heads=4),
)


@torch.no_grad()
def test_coca_contrastive_towers_convert_and_its_decoder_is_named(tmp_path):
    """CoCa: the image tower's attentional pooler (its first query), the text tower's appended class token with
    OpenCLIP's key mask; the captioning decoder is left out and the result says so."""
    reference = openclip_model(tmp_path, "coca", COCA)
    assert type(reference).__name__ == "CoCa"
    result = convert_checkpoint(save_hub_folder(reference, COCA, tmp_path / "hub"), tmp_path / "out", verify=True)
    assert result.verification.passed, result.verification.summary()
    assert any("captioning decoder" in note for note in result.notes)
    converted = DualClipModel.from_pretrained(tmp_path / "out").eval()
    assert converted.config.vision_config.pooling == "attention_pool"
    assert converted.config.text_config.append_class_token

    ids = token_batch(context_length=76)
    ids[0, 30] = 0  # a pad in the middle: OpenCLIP masks the key one position after it, for every query
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # CoCa's encode_* normalise unless told not to.
    want_text = reference.encode_text(ids, normalize=False)
    want_image = reference.encode_image(images, normalize=False)
    assert_close(converted.encode_text(ids), want_text, "encode_text")
    assert_close(converted.get_text_features(input_ids=ids).pooler_output, want_text, "get_text_features")
    assert_close(converted.encode_image(images), want_image, "encode_image")
    logits = converted(input_ids=ids, pixel_values=images).logits_per_image
    want = reference.logit_scale.exp() * torch.nn.functional.normalize(want_image, dim=-1) @ (
        torch.nn.functional.normalize(want_text, dim=-1).t())
    assert_close(logits, want, "logits", tolerance=1e-5 * float(want.abs().max()))


def test_coca_export_to_stock_clip_names_what_stock_lacks(tmp_path):
    reference = openclip_model(tmp_path, "coca-export", COCA)
    convert_checkpoint(save_hub_folder(reference, COCA, tmp_path / "hub"), tmp_path / "out")
    with pytest.raises(ConversionError, match="attention_pool.*appended text class token|appended text class token"):
        convert_checkpoint(tmp_path / "out", tmp_path / "stock", to="hf")
    assert not (tmp_path / "stock").exists()
