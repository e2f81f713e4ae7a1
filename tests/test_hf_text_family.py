"""The Hugging Face text tower family against OpenCLIP: OpenCLIP's RoBERTa, XLM-RoBERTa and NLLB (M2M100 encoder)
models, built by open_clip at reduced size from encoder configs made here (the hub is unreachable: open_clip's
`AutoConfig` is pointed at them), every parameter randomised, give the same text features, image features and logits
as the converted folder, with padding in the batch, for every pooler and projection OpenCLIP builds; the folder's
processor gives open_clip's tokenizer's ids (NLLB's language setting included); conversion errors name what is
missing; the folder saves, loads through AutoModel and with trust_remote_code where dualclip is absent."""

import copy
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from conversion_refs import randomize_
from openclip_timm_refs import register_timm_model, released_model_config
from safetensors.torch import save_file
from tiny_models import LOAD_WITHOUT_DUALCLIP
from transformers import AutoModel, AutoProcessor, M2M100Config, RobertaConfig, XLMRobertaConfig

import dualclip  # noqa: F401  (registers the Auto classes)
from dualclip import DualClipModel, DualClipTextModel, DualClipTextModelWithProjection
from dualclip.conversion import ConversionError, convert_checkpoint
from dualclip.conversion.hf_text import hf_text_tower
from dualclip.conversion.siglip import SIGLIP_VISION_ARCHITECTURES
from dualclip.modeling_dualclip_hf_text import DualClipHFTextConfig

TOLERANCE = 1e-5
CONTEXT = 16
EMBED_DIM = 24
VOCAB = 256
PAD = 1  # RoBERTa's, XLM-R's and NLLB's: <s> 0, <pad> 1, </s> 2
# OpenCLIP's own ViT at reduced size (for roberta-*, xlm-roberta-*, nllb-clip-base/large).
VISION_CFG = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
# A reduced timm SigLIP tower (for nllb-clip-*-siglip): its width is the joint width.
TIMM_NAME = "vit_dualclip_test_hf_text_siglip_32"
SIGLIP_ARCHITECTURE = dict(patch_size=8, hidden_size=EMBED_DIM, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=48, image_size=32, hidden_act="gelu")
RELEASED = {  # OpenCLIP config -> encoder type
    "roberta-ViT-B-32": "roberta",
    "xlm-roberta-base-ViT-B-32": "xlm-roberta",
    "nllb-clip-base": "m2m_100",
    "nllb-clip-base-siglip": "m2m_100",
}
NAME_OF = {"roberta": "roberta-ViT-B-32", "xlm-roberta": "xlm-roberta-base-ViT-B-32", "m2m_100": "nllb-clip-base"}
WORDS = ["a", "photo", "of", "cat", "dog", "the", "on", "mat", "un", "chat", "le", "tapis"]
CAPTIONS = ["a photo of a cat", "the dog   on the mat", "un chat " * 9, "le tapis"]


def relative_error(got, want) -> float:
    return float((got - want).abs().max() / want.abs().max())


def encoder_config(model_type: str):
    """A two-layer, 32-wide encoder with the family's special ids (the released ones' layout)."""
    ids = dict(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=0, eos_token_id=2)
    if model_type == "m2m_100":  # NLLB: scaled embeddings, sinusoidal positions, ReLU, final LayerNorm
        return M2M100Config(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=37,
                            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=16,
                            max_position_embeddings=64, **ids)
    config_class = RobertaConfig if model_type == "roberta" else XLMRobertaConfig
    return config_class(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                        max_position_embeddings=CONTEXT + 2, type_vocab_size=1, layer_norm_eps=1e-5, **ids)


def model_config(name: str, **text) -> dict:
    """OpenCLIP's config `name` with a reduced image tower and the text options `text`."""
    cfg = released_model_config(name)
    cfg["embed_dim"] = EMBED_DIM
    if cfg["vision_cfg"].get("timm_model_name"):
        cfg["vision_cfg"].update(timm_model_name=TIMM_NAME, image_size=32)
    else:
        cfg["vision_cfg"] = dict(VISION_CFG)
    cfg["text_cfg"]["context_length"] = CONTEXT
    cfg["text_cfg"].update(text)
    return cfg


class _LocalConfig:
    """Stands in for transformers' `AutoConfig` inside open_clip.hf_model (which reads the encoder's config from the
    hub by `hf_model_name`)."""

    config = None

    @classmethod
    def from_pretrained(cls, name, **kwargs):
        return copy.deepcopy(cls.config)


def openclip_model(name: str, cfg: dict, encoder, seed: int = 0):
    """`open_clip.create_model` for `cfg` with `encoder` as its text encoder's config, every parameter randomised."""
    import open_clip
    import open_clip.hf_model

    if cfg["vision_cfg"].get("timm_model_name") == TIMM_NAME:
        from timm.models.vision_transformer import VisionTransformer

        register_timm_model(TIMM_NAME, VisionTransformer, img_size=32, patch_size=8, embed_dim=EMBED_DIM, depth=1,
                            num_heads=2, mlp_ratio=2.0, class_token=False, global_pool="map")
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(folder)
    torch.manual_seed(seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(open_clip.hf_model, "AutoConfig", _LocalConfig)
        patch.setattr(_LocalConfig, "config", encoder)
        model = open_clip.create_model(name, pretrained_text=False).eval()
    randomize_(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(4.9)
        if model.logit_bias is not None:
            model.logit_bias.fill_(-3.5)
    return model


def text_ids(seed: int = 0) -> torch.Tensor:
    """Rows `<s> words </s> <pad>...` of lengths 16, 7 and 3: padding in the batch."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((3, CONTEXT), PAD)
    for row, length in enumerate((CONTEXT, 7, 3)):
        ids[row, :length] = torch.randint(3, VOCAB, (length,), generator=generator)
        ids[row, 0], ids[row, length - 1] = 0, 2
    return ids


def pixels(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def expected_logits(reference, image, text):
    logits = reference.logit_scale.exp() * (torch.nn.functional.normalize(image, dim=-1)
                                            @ torch.nn.functional.normalize(text, dim=-1).t())
    return logits if reference.logit_bias is None else logits + reference.logit_bias


# ----------------------------------------------------------------------------------------------------------------------
# The text tower: every pooler and projection OpenCLIP builds, for each encoder
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proj", ["linear", "mlp"])
@pytest.mark.parametrize("pooler", ["mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler"])
@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "m2m_100"])
@torch.no_grad()
def test_text_features_equal_openclip(model_type, pooler, proj):
    name = NAME_OF[model_type]
    cfg = model_config(name, hf_pooler_type=pooler, hf_proj_type=proj)
    encoder = encoder_config(model_type)
    reference = openclip_model(f"dualclip-test-{model_type}-{pooler}-{proj}", cfg, encoder)
    tensors = {k: v for k, v in reference.state_dict().items() if k.startswith("text.")}
    config, state = hf_text_tower(cfg["text_cfg"], EMBED_DIM, tensors, encoder.to_dict())
    pools_with_layer = pooler == "cls_pooler" and model_type != "m2m_100"
    assert config.pooling == ("cls_pooler" if pools_with_layer else "mean" if pooler == "mean_pooler" else "cls")
    assert ("text_model.transformer.pooler.dense.weight" in state) == pools_with_layer
    model = DualClipTextModelWithProjection(config).eval()
    model.load_state_dict(state, strict=True)

    ids = text_ids()
    want = reference.encode_text(ids)
    errors = {
        "forward": relative_error(model(ids).text_embeds, want),
        "encode_text": relative_error(model.encode_text(ids), want),
        "mask passed": relative_error(model.encode_text(ids, attention_mask=(ids != PAD).long()), want),
    }
    print(f"\n{model_type} {pooler} {proj}: relative error {max(errors.values()):.2e} ({errors})")
    assert max(errors.values()) < TOLERANCE, errors


@torch.no_grad()
def test_no_projection_when_widths_agree():
    """OpenCLIP's `hf_proj_type: null` with an encoder as wide as the joint space: no projection."""
    cfg = model_config("xlm-roberta-base-ViT-B-32", hf_proj_type=None)
    cfg["embed_dim"] = 32
    encoder = encoder_config("xlm-roberta")
    reference = openclip_model("dualclip-test-xlmr-no-proj", cfg, encoder)
    tensors = {k: v for k, v in reference.state_dict().items() if k.startswith("text.")}
    config, state = hf_text_tower(cfg["text_cfg"], 32, tensors, encoder.to_dict())
    assert config.projection == "none" and not any(key.startswith("text_model.proj") for key in state)
    model = DualClipTextModelWithProjection(config).eval()
    model.load_state_dict(state, strict=True)
    ids = text_ids(1)
    assert relative_error(model.encode_text(ids), reference.encode_text(ids)) < TOLERANCE


# ----------------------------------------------------------------------------------------------------------------------
# Whole models through `dualclip convert`
# ----------------------------------------------------------------------------------------------------------------------


def hub_folder(path: Path, name: str, cfg: dict, reference, encoder=None, tokenizer=None) -> Path:
    """An OpenCLIP hub folder (config, safetensors weights), with the encoder's config.json and a tokenizer when
    given."""
    path.mkdir(parents=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path / "open_clip_model.safetensors")
    if encoder is not None:
        encoder.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def convert(src, out, **options):
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(SIGLIP_VISION_ARCHITECTURES, TIMM_NAME, SIGLIP_ARCHITECTURE)
        return convert_checkpoint(src, out, **options)


# (OpenCLIP config, text options): each released combination, and XLM-R's own pooling layer.
CONVERSIONS = {
    "roberta": ("roberta-ViT-B-32", {}),  # mean pooler, MLP projection (OpenCLIP's defaults); QuickGELU ViT
    "xlm-roberta-cls-pooler": ("xlm-roberta-base-ViT-B-32", {"hf_pooler_type": "cls_pooler", "hf_proj_type": "linear"}),
    "nllb": ("nllb-clip-base", {}),  # cls_pooler on NLLB's encoder (its first position), linear
    "nllb-siglip": ("nllb-clip-base-siglip", {}),  # the same beside timm's SigLIP tower, with a logit bias
}


@pytest.fixture(scope="module", params=list(CONVERSIONS))
def converted(request, tmp_path_factory):
    """(case, open_clip model, converted folder, conversion result)."""
    name, text = CONVERSIONS[request.param]
    cfg = model_config(name, **text)
    encoder = encoder_config(RELEASED[name])
    reference = openclip_model(f"dualclip-convert-{request.param}", cfg, encoder, seed=2)
    root = tmp_path_factory.mktemp(request.param)
    folder = hub_folder(root / "hub", name, cfg, reference, encoder)
    result = convert(folder, root / "out", verify=True)
    return request.param, reference, root / "out", result


@torch.no_grad()
def test_converted_folder_equals_openclip(converted):
    case, reference, out, result = converted
    model = AutoModel.from_pretrained(out).eval()
    assert type(model) is DualClipModel and isinstance(model.config.text_config, DualClipHFTextConfig)
    assert model.config.text_config.mask_padding is True
    ids, images = text_ids(3), pixels()
    want_text, want_image = reference.encode_text(ids), reference.encode_image(images)
    want_logits = expected_logits(reference, want_image, want_text)
    errors = {
        "text": relative_error(model.encode_text(ids), want_text),
        "text, mask passed": relative_error(model.encode_text(ids, attention_mask=(ids != PAD).long()), want_text),
        "image": relative_error(model.encode_image(images), want_image),
        "logits": relative_error(model(input_ids=ids, pixel_values=images).logits_per_image, want_logits),
    }
    print(f"\n{case}: relative error {max(errors.values()):.2e} ({errors})")
    assert max(errors.values()) < TOLERANCE, errors
    assert result.verification.passed, result.verification.summary()
    assert "Hugging Face text tower" in result.architecture
    assert any("no tokenizer written" in note for note in result.notes)  # this source has none


def test_siglip_head_is_kept(converted):
    case, _, out, _ = converted
    config = json.loads((out / "config.json").read_text())
    siglip = case == "nllb-siglip"
    expected = ("sigmoid", True) if siglip else ("infonce", False)
    assert (config["loss_type"], config["logit_scale_max"] is None) == expected
    assert config["text_config"]["encoder_config"]["model_type"] in ("roberta", "xlm-roberta", "m2m_100")
    assert "architectures" not in config["text_config"]["encoder_config"] or (
        config["text_config"]["encoder_config"]["architectures"] is None)


@torch.no_grad()
def test_save_and_auto_model_round_trip(converted, tmp_path):
    _, _, out, _ = converted
    model = AutoModel.from_pretrained(out).eval()
    model.save_pretrained(tmp_path / "again")
    loaded = AutoModel.from_pretrained(tmp_path / "again").eval()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ids = text_ids(4)
    text_model = DualClipTextModelWithProjection.from_pretrained(out).eval()
    assert torch.equal(text_model.encode_text(ids), model.encode_text(ids))
    tower = DualClipTextModel.from_pretrained(out).eval()
    assert torch.equal(tower(ids).pooler_output, model.encode_text(ids))  # the tower's output is projected


@pytest.mark.parametrize("converted", ["xlm-roberta-cls-pooler", "nllb"], indirect=True)
@torch.no_grad()
def test_eager_and_sdpa_agree_and_outputs_are_recorded(converted):
    _, _, out, _ = converted
    model = AutoModel.from_pretrained(out).eval()
    ids = text_ids(5)
    sdpa = model.get_text_features(ids, output_hidden_states=True)
    model.set_attn_implementation("eager")
    eager = model.get_text_features(ids, output_hidden_states=True, output_attentions=True)
    assert relative_error(eager.pooler_output, sdpa.pooler_output) < TOLERANCE
    layers = model.config.text_config.num_hidden_layers
    assert len(eager.hidden_states) == len(sdpa.hidden_states) == layers + 1
    assert len(eager.attentions) == layers and eager.attentions[0].shape == (3, 2, CONTEXT, CONTEXT)
    assert float(eager.attentions[0][2, :, :, 3:].abs().max()) == 0  # padding is masked


@pytest.mark.parametrize("converted", ["nllb"], indirect=True)
@torch.no_grad()
def test_folder_loads_with_trust_remote_code_without_dualclip(converted, tmp_path):
    _, _, out, _ = converted
    model = AutoModel.from_pretrained(out).eval()
    torch.save(text_ids(6), tmp_path / "ids.pt")
    script = LOAD_WITHOUT_DUALCLIP + textwrap.dedent(
        """
        with torch.no_grad():
            features = model.encode_text(torch.load(sys.argv[2]))
        print(json.dumps({"module": type(model).__module__, "tower": type(model.text_model.transformer).__module__,
                          "features": features.tolist()}))
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "ids.pt")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["module"].startswith("dualclip")
    assert report["tower"].startswith("transformers.models.m2m_100")  # the held encoder is stock transformers'
    assert torch.equal(torch.tensor(report["features"]), model.encode_text(text_ids(6)))


@pytest.mark.parametrize("converted", ["roberta"], indirect=True)
def test_export_to_stock_transformers_is_refused(converted, tmp_path):
    _, _, out, _ = converted
    with pytest.raises(ConversionError, match="no stock transformers class expresses"):
        convert_checkpoint(out, tmp_path / "stock", to="hf")
    assert not (tmp_path / "stock").exists()


@pytest.mark.parametrize("name", list(RELEASED))
def test_converts_on_the_meta_device(name):
    """What conversion/openclip_coverage.py does: open_clip's model built on the meta device (shapes only) goes
    through the converter and into a DualClipModel."""
    import open_clip
    import open_clip.hf_model

    from dualclip.conversion.building import build_model
    from dualclip.conversion.converters import convert_openclip_tensors
    from dualclip.conversion.reading import TensorSource

    cfg, encoder = model_config(name), encoder_config(RELEASED[name])
    openclip_model(f"dualclip-meta-{name}", cfg, encoder)  # registers the config (and the timm tower)
    with pytest.MonkeyPatch.context() as patch, torch.device("meta"):
        patch.setattr(open_clip.hf_model, "AutoConfig", _LocalConfig)
        patch.setattr(_LocalConfig, "config", encoder)
        patch.setitem(SIGLIP_VISION_ARCHITECTURES, TIMM_NAME, SIGLIP_ARCHITECTURE)
        state = open_clip.create_model(f"dualclip-meta-{name}", pretrained_text=False, device="meta").state_dict()
        config, tensors, architecture, _ = convert_openclip_tensors(cfg, TensorSource(state), torch.float32,
                                                                    hf_text_config=encoder.to_dict())
    model = build_model(DualClipModel, config, tensors)
    assert "Hugging Face text tower" in architecture and model.config.text_config.hidden_size == 32


@pytest.mark.slow
@torch.no_grad()
def test_full_size_xlm_roberta_base_vit_b_32_equals_openclip():
    """OpenCLIP's xlm-roberta-base-ViT-B-32 at full size (random weights): xlm-roberta-base's config is the family's
    default encoder config."""
    from dualclip.conversion.converters import convert_openclip_tensors
    from dualclip.conversion.reading import TensorSource

    name = "xlm-roberta-base-ViT-B-32"
    cfg = released_model_config(name)
    encoder = DualClipHFTextConfig().encoder_config
    assert (encoder.vocab_size, encoder.hidden_size, encoder.max_position_embeddings) == (250002, 768, 514)
    reference = openclip_model(f"dualclip-full-{name}", cfg, encoder)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    config, tensors, _, _ = convert_openclip_tensors(cfg, TensorSource(state), torch.float32,
                                                     hf_text_config=encoder.to_dict())
    model = DualClipModel(config).eval()
    model.load_state_dict(tensors, strict=True)
    del tensors
    ids, images = torch.full((2, 77), PAD), torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ids[0, :9] = torch.tensor([0, 2367, 111, 10, 6, 39, 217, 5, 2])
    ids[1, :77] = torch.randint(3, 250000, (77,), generator=torch.Generator().manual_seed(1))
    ids[1, 0], ids[1, -1] = 0, 2
    want_text, want_image = reference.encode_text(ids), reference.encode_image(images)
    errors = {
        "text": relative_error(model.encode_text(ids), want_text),
        "image": relative_error(model.encode_image(images), want_image),
        "logits": relative_error(model(input_ids=ids, pixel_values=images).logits_per_image,
                                 expected_logits(reference, want_image, want_text)),
    }
    print(f"\n{name} (full size): relative error {max(errors.values()):.2e} ({errors})")
    assert max(errors.values()) < TOLERANCE, errors


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizers carried from the source
# ----------------------------------------------------------------------------------------------------------------------


def xlm_roberta_tokenizer():
    """A SentencePiece-Unigram tokenizer in XLM-R's layout (<s> 0, <pad> 1, </s> 2, <unk> 3)."""
    from transformers import XLMRobertaTokenizer

    pieces = [(f"\u2581{word}", -1.0 - i) for i, word in enumerate(WORDS)]
    pieces += [(char, -20.0) for char in "\u2581abcdefghijklmnopqrstuvwxyz"]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces, ("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab)


def nllb_tokenizer():
    """A BPE tokenizer in NLLB's layout: <s> 0, <pad> 1, </s> 2, <unk> 3, then the language codes; captions encode as
    `[language] tokens </s>`."""
    from transformers import NllbTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece in ["\u2581", *"abcdefghijklmnopqrstuvwxyz", *(f"\u2581{w}" for w in WORDS)]:
        vocab.setdefault(piece, len(vocab))
    return NllbTokenizer(vocab=vocab, merges=[])


@pytest.mark.parametrize("case", ["xlm-roberta", "nllb"])
@torch.no_grad()
def test_processor_ids_equal_open_clip_tokenizer(case, tmp_path):
    from open_clip.tokenizer import HFTokenizer

    name = "xlm-roberta-base-ViT-B-32" if case == "xlm-roberta" else "nllb-clip-base"
    cfg = model_config(name)
    encoder = encoder_config(RELEASED[name])
    tokenizer = xlm_roberta_tokenizer() if case == "xlm-roberta" else nllb_tokenizer()
    assert len(tokenizer) <= VOCAB
    reference = openclip_model(f"dualclip-tokenizer-{case}", cfg, encoder, seed=4)
    folder = hub_folder(tmp_path / "hub", name, cfg, reference, encoder, tokenizer)
    convert(folder, tmp_path / "out")
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    original = HFTokenizer(str(folder), context_length=CONTEXT)

    inputs = processor(text=CAPTIONS, return_tensors="pt")
    want_ids = original(CAPTIONS)
    assert torch.equal(inputs["input_ids"], want_ids)
    assert (want_ids == PAD).any()  # padding in the batch
    got = model.encode_text(inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert relative_error(got, reference.encode_text(want_ids)) < TOLERANCE
    if case == "nllb":
        # The caption language is the tokenizer's `src_lang`, on both sides. (OpenCLIP's `set_language` calls
        # `set_src_lang_special_tokens`, which NLLB's tokenizer undoes at every call by re-applying `src_lang`.)
        original.tokenizer.src_lang = "fra_Latn"
        processor.tokenizer.src_lang = "fra_Latn"
        french = processor(text=CAPTIONS, return_tensors="pt")["input_ids"]
        assert torch.equal(french, original(CAPTIONS)) and not torch.equal(french, want_ids)


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xlmr_source(tmp_path_factory):
    name = "xlm-roberta-base-ViT-B-32"
    cfg = model_config(name)
    encoder = encoder_config("xlm-roberta")
    reference = openclip_model("dualclip-errors-xlmr", cfg, encoder, seed=5)
    root = tmp_path_factory.mktemp("errors")
    hub_folder(root / "hub", name, cfg, reference)  # no config.json: as OpenCLIP's hub folders
    encoder.save_pretrained(root / "encoder")
    return root, cfg, encoder, reference


def test_missing_encoder_config_says_what_to_pass_and_writes_nothing(xlmr_source, tmp_path):
    root, _, _, _ = xlmr_source
    with pytest.raises(ConversionError, match=r"'xlm-roberta-base'.*config\.json.*--hf-text-config"):
        convert_checkpoint(root / "hub", tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@torch.no_grad()
def test_encoder_config_given_on_the_command_line(xlmr_source, tmp_path):
    from dualclip.cli import main

    root, _, _, reference = xlmr_source
    assert main(["convert", str(root / "hub"), str(tmp_path / "out"),
                 "--hf-text-config", str(root / "encoder" / "config.json")]) == 0
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert relative_error(model.encode_text(text_ids()), reference.encode_text(text_ids())) < TOLERANCE
    with pytest.raises(ConversionError, match="--hf-text-config applies to OpenCLIP models whose text tower"):
        plain = {"embed_dim": 24, "vision_cfg": VISION_CFG, "text_cfg": {"width": 32, "heads": 2, "layers": 1}}
        convert_checkpoint(root / "hub", tmp_path / "plain", openclip_config=plain, hf_text_config=root / "encoder")


def test_conversion_errors_name_what_does_not_fit(xlmr_source):
    _, cfg, encoder, reference = xlmr_source
    tensors = {k: v for k, v in reference.state_dict().items() if k.startswith("text.")}
    text = cfg["text_cfg"]

    def tower(text_cfg=text, embed_dim=EMBED_DIM, state=tensors, **changes):
        return hf_text_tower(text_cfg, embed_dim, dict(state), {**encoder.to_dict(), **changes})

    with pytest.raises(ConversionError, match="vocab_size is 300 in the config .* but 256 in the weights"):
        tower(vocab_size=300)
    with pytest.raises(ConversionError, match="num_hidden_layers is 3 .* but 2"):
        tower(num_hidden_layers=3)
    with pytest.raises(ConversionError, match="model_type 'bert'"):
        tower(model_type="bert")
    with pytest.raises(ConversionError, match="position_embedding_type='relative_key'"):
        tower(position_embedding_type="relative_key")  # transformers 5 would silently build absolute positions
    with pytest.raises(ConversionError, match="hf_pooler_type='max_pooler'.*masked_fill"):
        tower(dict(text, hf_pooler_type="max_pooler"))
    with pytest.raises(ConversionError, match="hf_proj_type is 'linear' but the checkpoint has no text.proj.weight"):
        tower(dict(text, hf_proj_type="linear"))
    with pytest.raises(ConversionError, match="embed_dim is 32 in the config but 24"):
        tower(embed_dim=32)
    with pytest.raises(ConversionError, match=r"missing: text\.transformer\.pooler\.dense\.bias"):
        tower(dict(text, hf_pooler_type="cls_pooler"))
    extra = {**tensors, "text.transformer.encoder.layer.0.attention.self.rotary.weight": torch.ones(1)}
    with pytest.raises(ConversionError, match=r"no place for: text\.transformer\.encoder\.layer\.0\.attention"):
        tower(state=extra)
    legacy = {**tensors, "text.transformer.embeddings.position_ids": torch.arange(CONTEXT + 2)[None]}
    _, state = tower(state=legacy)  # older transformers saved this range; OpenCLIP drops it too
    assert "text_model.transformer.embeddings.position_ids" not in state


def test_config_checks():
    encoder = encoder_config("m2m_100").to_dict()
    with pytest.raises(Exception, match="cls_pooler"):
        DualClipHFTextConfig(encoder_config=encoder, pooling="cls_pooler")
    with pytest.raises(Exception, match="projection='none'"):
        DualClipHFTextConfig(encoder_config=encoder, projection="none", projection_dim=24)
    with pytest.raises(Exception, match="'bert'"):
        DualClipHFTextConfig(encoder_config={"model_type": "bert"})
    config = DualClipHFTextConfig(encoder_config=encoder_config("xlm-roberta").to_dict(), projection_dim=24)
    assert (config.vocab_size, config.hidden_size, config.max_position_embeddings) == (VOCAB, 32, CONTEXT)
