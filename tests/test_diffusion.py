"""dualclip text encoders inside diffusers pipelines: same images as the stock transformers encoders on the same
weights (SD-1, SDXL, Flux's CLIP half), clip-skip, textual inversion, PEFT LoRA, and pipeline save/load."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

import tiny_diffusion as tiny  # noqa: E402
from dualclip import DualClipTextModel, DualClipTextModelWithProjection  # noqa: E402
from dualclip import tokenization_dualclip  # noqa: E402
from dualclip.conditioning import PromptEncoder  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
TOLERANCE = 1e-6


def image_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    yield from tiny.one_torch_thread()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Stock transformers text-encoder folders: what `CLIPTextModel.save_pretrained` writes."""
    return tiny.save_stock_text_encoders(str(tmp_path_factory.mktemp("stock")))


@pytest.fixture(scope="module")
def sd_parts():
    return tiny.sd_unet_and_vae()


@pytest.fixture(scope="module")
def sdxl_parts():
    return tiny.sdxl_unet_and_vae()


@pytest.fixture(scope="module")
def sd1_tokenizer():
    return tiny.tokenizer(tiny.EOS_TOKEN)


@pytest.fixture(scope="module")
def sdxl_tokenizer_2():
    return tiny.tokenizer("!")


def load(model_class, path):
    return model_class.from_pretrained(path).eval()


def sd_pipelines(folders, sd_parts, tokenizer):
    """The same SD-1 pipeline twice: stock `CLIPTextModel` and `DualClipTextModel`, both loaded from the stock folder."""
    return (
        tiny.sd_pipeline(*sd_parts, load(CLIPTextModel, folders["text_encoder"]), tokenizer),
        tiny.sd_pipeline(*sd_parts, load(DualClipTextModel, folders["text_encoder"]), tokenizer),
    )


# ---- Stable Diffusion 1.x --------------------------------------------------------------------------------------------


def test_stock_clip_text_model_breaks_diffusers_clip_skip(folders, sd_parts, sd1_tokenizer):
    """Why dualclip matters here: diffusers' SD clip-skip path reads `text_encoder.text_model.final_layer_norm`,
    and transformers 5's `CLIPTextModel` is flat (no `.text_model`). dualclip's keeps the attribute."""
    stock, ours = sd_pipelines(folders, sd_parts, sd1_tokenizer)
    if hasattr(stock.text_encoder, "text_model"):
        pytest.skip("this transformers version's CLIPTextModel has .text_model again")
    with pytest.raises(AttributeError, match="text_model"):
        stock.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=1)
    skipped, _ = ours.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=1)
    plain, _ = ours.encode_prompt(PROMPT, "cpu", 1, False)
    assert skipped.shape == plain.shape and not torch.allclose(skipped, plain)


def stock_sd_clip_skip_embeds(text_encoder, tokenizer, prompt, negative_prompt, clip_skip):
    """What diffusers' `StableDiffusionPipeline.encode_prompt` computes with `clip_skip`, done by hand on the stock
    model (whose own clip-skip path crashes, see above): the prompt takes hidden state `-(clip_skip + 1)` through
    the final LayerNorm; the negative prompt takes the last hidden state (diffusers skips layers for the prompt only)."""

    def ids(text):
        return tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids

    with torch.no_grad():
        hidden = text_encoder(ids(prompt), output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        return {
            "prompt_embeds": text_encoder.final_layer_norm(hidden),
            "negative_prompt_embeds": text_encoder(ids(negative_prompt))[0],
        }


@pytest.mark.parametrize("clip_skip", [None, 1])
def test_sd1_images_match_stock(folders, sd_parts, sd1_tokenizer, clip_skip):
    stock, ours = sd_pipelines(folders, sd_parts, sd1_tokenizer)
    if clip_skip is None:
        expected = tiny.generate(stock, prompt=PROMPT, negative_prompt=NEGATIVE)
    else:
        reference = stock_sd_clip_skip_embeds(stock.text_encoder, sd1_tokenizer, PROMPT, NEGATIVE, clip_skip)
        expected = tiny.generate(stock, **reference)
    images = tiny.generate(ours, prompt=PROMPT, negative_prompt=NEGATIVE, clip_skip=clip_skip)
    assert images.shape == (1, 32, 32, 3)
    assert image_diff(images, expected) <= TOLERANCE


# ---- Stable Diffusion XL ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip_skip", [None, 1])
def test_sdxl_images_match_stock(folders, sdxl_parts, sd1_tokenizer, sdxl_tokenizer_2, clip_skip):
    """SDXL reads `hidden_states[-(clip_skip + 2)]` without the final norm and the second encoder's `text_embeds`;
    its clip-skip path works with the stock classes, so both run the same pipeline call."""
    tokenizers = (sd1_tokenizer, sdxl_tokenizer_2)
    stock = tiny.sdxl_pipeline(*sdxl_parts, load(CLIPTextModel, folders["text_encoder"]),
                               load(CLIPTextModelWithProjection, folders["text_encoder_2"]), *tokenizers)
    ours = tiny.sdxl_pipeline(*sdxl_parts, load(DualClipTextModel, folders["text_encoder"]),
                              load(DualClipTextModelWithProjection, folders["text_encoder_2"]), *tokenizers)
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, clip_skip=clip_skip)
    assert image_diff(tiny.generate(ours, **kwargs), tiny.generate(stock, **kwargs)) <= TOLERANCE


# ---- Flux (CLIP half) ------------------------------------------------------------------------------------------------


def test_flux_clip_half_matches_stock(folders, sd1_tokenizer):
    """A whole tiny Flux pipeline: T5 tokenizer built in memory (transformers' default tiny vocabulary, offline),
    random T5 encoder and transformer. Flux takes CLIP's `pooler_output` only."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    t5_tokenizer = T5Tokenizer()
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=1,
                                 num_heads=4)).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=tiny.HIDDEN, axes_dims_rope=[4, 4, 8],
    ).eval()
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()

    def flux(text_encoder):
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
                            text_encoder=text_encoder, tokenizer=sd1_tokenizer, text_encoder_2=t5,
                            tokenizer_2=t5_tokenizer)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    stock = flux(load(CLIPTextModel, folders["text_encoder"]))
    ours = flux(load(DualClipTextModel, folders["text_encoder"]))
    with torch.no_grad():
        _, stock_pooled, _ = stock.encode_prompt(PROMPT, prompt_2=None, max_sequence_length=48)
        _, our_pooled, _ = ours.encode_prompt(PROMPT, prompt_2=None, max_sequence_length=48)
    assert our_pooled.shape == (1, tiny.HIDDEN)
    assert float((our_pooled - stock_pooled).abs().max()) <= TOLERANCE

    kwargs = dict(prompt=PROMPT, height=8, width=8, max_sequence_length=48, guidance_scale=5.0)
    assert image_diff(tiny.generate(ours, **kwargs), tiny.generate(stock, **kwargs)) <= TOLERANCE
    with pytest.raises(ValueError, match="not a Stable Diffusion 1/2 or SDXL pipeline"):
        PromptEncoder.from_pipeline(ours)


# ---- Textual inversion and LoRA --------------------------------------------------------------------------------------


def test_textual_inversion_matches_stock(tmp_path, folders, sd_parts):
    """A two-vector embedding in diffusers' file format, loaded with `load_textual_inversion` into both pipelines."""
    vectors = torch.randn(2, tiny.HIDDEN, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "tiny-concept.safetensors"
    save_file({"<tiny-concept>": vectors}, str(path))
    # Each pipeline gets its own tokenizer: loading adds tokens to it.
    stock, _ = sd_pipelines(folders, sd_parts, tiny.tokenizer(tiny.EOS_TOKEN))
    _, ours = sd_pipelines(folders, sd_parts, tiny.tokenizer(tiny.EOS_TOKEN))
    for pipe in (stock, ours):
        pipe.load_textual_inversion(str(path))

    token_ids = ours.tokenizer.convert_tokens_to_ids(["<tiny-concept>", "<tiny-concept>_1"])
    assert torch.equal(ours.text_encoder.get_input_embeddings().weight[token_ids].detach(), vectors)
    prompt = "a photo of <tiny-concept> on a beach"
    with torch.no_grad():
        expected, _ = stock.encode_prompt(prompt, "cpu", 1, False)
        got, _ = ours.encode_prompt(prompt, "cpu", 1, False)
        without, _ = ours.encode_prompt("a photo of on a beach", "cpu", 1, False)
    assert float((got - expected).abs().max()) <= TOLERANCE
    assert not torch.allclose(got, without)
    # The prompt encoder expands multi-vector tokens as the pipeline does.
    encoded = PromptEncoder.from_pipeline(ours).encode(prompt)
    assert torch.equal(encoded["prompt_embeds"], got)

    assert image_diff(tiny.generate(ours, prompt=prompt), tiny.generate(stock, prompt=prompt)) <= TOLERANCE


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def random_lora_state_dict(seed=5, rank=4):
    """A text-encoder LoRA in diffusers' key format (old `text_model.` layout, as published LoRAs use)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for layer in range(tiny.LAYERS):
        for target in LORA_TARGETS:
            key = f"text_encoder.text_model.encoder.layers.{layer}.self_attn.{target}"
            state_dict[f"{key}.lora_A.weight"] = torch.randn(rank, tiny.HIDDEN, generator=generator) * 0.3
            state_dict[f"{key}.lora_B.weight"] = torch.randn(tiny.HIDDEN, rank, generator=generator) * 0.3
    return state_dict


def test_peft_lora_zero_b_is_identity_and_random_b_matches_hand_merge(folders, sd1_tokenizer):
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

    rank, alpha = 4, 8
    model = load(DualClipTextModel, folders["text_encoder"])
    input_ids = sd1_tokenizer([PROMPT, NEGATIVE], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(input_ids).last_hidden_state
        model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, init_lora_weights=True))
        assert torch.equal(model(input_ids).last_hidden_state, before)  # peft initialises lora_B to zero

        generator = torch.Generator().manual_seed(7)
        lora_layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
        assert len(lora_layers) == tiny.LAYERS * len(LORA_TARGETS)
        for layer in lora_layers.values():
            layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape, generator=generator))
        after = model(input_ids).last_hidden_state
        assert not torch.allclose(after, before)

        # Independent computation: the plain model with W + (alpha / r) B A written into each targeted weight.
        merged = load(DualClipTextModel, folders["text_encoder"])
        for name, layer in lora_layers.items():
            delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
            merged.get_submodule(name).weight.add_(delta * (alpha / rank))
        torch.testing.assert_close(after, merged(input_ids).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_load_lora_weights_matches_stock(folders, sd_parts, sd1_tokenizer):
    """`pipe.load_lora_weights` on both pipelines with the same LoRA: same embeddings, and the LoRA had an effect."""
    stock, ours = sd_pipelines(folders, sd_parts, sd1_tokenizer)
    with torch.no_grad():
        plain, _ = ours.encode_prompt(PROMPT, "cpu", 1, False)
    for pipe in (stock, ours):
        pipe.load_lora_weights(random_lora_state_dict(), adapter_name="tiny")
    with torch.no_grad():
        expected, _ = stock.encode_prompt(PROMPT, "cpu", 1, False)
        got, _ = ours.encode_prompt(PROMPT, "cpu", 1, False)
    assert not torch.allclose(got, plain)
    assert float((got - expected).abs().max()) <= TOLERANCE


# ---- Saving and loading pipelines ------------------------------------------------------------------------------------


def test_stock_pipeline_folder_with_dualclip_encoders_saves_and_loads(tmp_path, folders, sdxl_parts):
    """The user's path: a stock SDXL pipeline folder, its text encoders swapped for dualclip's (loaded from the same
    subfolders), then saved and loaded again. diffusers records a class from outside its known libraries by module
    path (`dualclip.modeling_dualclip`) and finds it in `sys.modules` on loading, so `import dualclip` before
    `from_pretrained` is all it takes. Tokenizers are transformers' own here; the next test covers dualclip's."""
    bpe = str(tmp_path / "bpe")
    tokenizers = (tiny.stock_clip_tokenizer(bpe), tiny.stock_clip_tokenizer(bpe, pad_token="!"))
    stock = tiny.sdxl_pipeline(*sdxl_parts, load(CLIPTextModel, folders["text_encoder"]),
                               load(CLIPTextModelWithProjection, folders["text_encoder_2"]), *tokenizers)
    stock.save_pretrained(tmp_path / "stock")
    expected = tiny.generate(stock, prompt=PROMPT)

    ours = StableDiffusionXLPipeline.from_pretrained(
        tmp_path / "stock",
        text_encoder=DualClipTextModel.from_pretrained(tmp_path / "stock", subfolder="text_encoder"),
        text_encoder_2=DualClipTextModelWithProjection.from_pretrained(tmp_path / "stock", subfolder="text_encoder_2"),
    )
    ours.set_progress_bar_config(disable=True)
    assert image_diff(tiny.generate(ours, prompt=PROMPT), expected) <= TOLERANCE

    ours.save_pretrained(tmp_path / "ours")
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["text_encoder"] == ["dualclip.modeling_dualclip", "DualClipTextModel"]
    assert index["text_encoder_2"] == ["dualclip.modeling_dualclip", "DualClipTextModelWithProjection"]
    loaded = StableDiffusionXLPipeline.from_pretrained(tmp_path / "ours")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.text_encoder) is DualClipTextModel
    assert type(loaded.text_encoder_2) is DualClipTextModelWithProjection
    assert image_diff(tiny.generate(loaded, prompt=PROMPT), expected) <= TOLERANCE


@pytest.mark.xfail(
    not any(hasattr(tokenization_dualclip, name) for name in ("PreTrainedTokenizerFast", "PreTrainedTokenizer")),
    reason="diffusers decides how to load a component by looking up its base-class names (PreTrainedTokenizerFast...) "
    "in the component's own module; dualclip.tokenization_dualclip does not define that name yet",
    strict=True,
)
def test_pipeline_with_dualclip_tokenizer_saves_and_loads(tmp_path, folders, sd_parts, sd1_tokenizer):
    _, pipe = sd_pipelines(folders, sd_parts, sd1_tokenizer)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["tokenizer"] == ["dualclip.tokenization_dualclip", "DualClipTokenizer"]

    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded.tokenizer) is tokenization_dualclip.DualClipTokenizer
    assert loaded.tokenizer.pad_token == tiny.EOS_TOKEN
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
        got, _ = loaded.encode_prompt(PROMPT, "cpu", 1, False)
    assert torch.equal(got, expected)
