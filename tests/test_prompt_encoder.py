"""PromptEncoder across syntaxes: long prompts as separately encoded chunks, diffusers' own `encode_prompt` for what
both define, stock transformers encoders, the embeddings inside real pipelines, and argument checking."""

import pytest
import torch

import tiny_diffusion as tiny
from tiny_diffusion import WORDS, tok, tok_2  # noqa: F401  (pytest fixtures)
from dualclip import DualClipTextModel, DualClipTextModelWithProjection
from dualclip.conditioning import SYNTAXES, PromptEncoder

CHUNKED = ("a1111", "comfyui", "balanced")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    yield from tiny.one_torch_thread()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tiny.save_stock_text_encoders(str(tmp_path_factory.mktemp("stock")))


@pytest.fixture(scope="module")
def encoders(folders):
    return (DualClipTextModel.from_pretrained(folders["text_encoder"]).eval(),
            DualClipTextModelWithProjection.from_pretrained(folders["text_encoder_2"]).eval())


@pytest.fixture(scope="module")
def sd_parts():
    return tiny.sd_unet_and_vae()


@pytest.fixture(scope="module")
def sdxl_parts():
    return tiny.sdxl_unet_and_vae()


def words(tokenizer, count: int, seed: int = 0) -> str:
    """A prompt of `count` one-token words, without commas (so no chunking rule other than the 75-token cut)."""
    generator = torch.Generator().manual_seed(seed)
    text = " ".join(WORDS[i] for i in torch.randint(len(WORDS), (count,), generator=generator).tolist())
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == count
    return text


def wrap(tokenizer, ids):
    row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    return torch.tensor(row + [tokenizer.pad_token_id] * (77 - len(row)))


def encode_alone(encoder, ids, layer=None):
    with torch.no_grad():
        out = encoder(ids[None], output_hidden_states=True)
    return out.last_hidden_state[0] if layer is None else out.hidden_states[layer][0]


@pytest.mark.parametrize("syntax", CHUNKED)
def test_sd1_long_prompt_chunks_equal_separate_encoding(encoders, tok, syntax):
    text_encoder, _ = encoders
    text = words(tok, 200)
    all_ids = tok(text, add_special_tokens=False)["input_ids"]
    result = PromptEncoder(tok, text_encoder, syntax=syntax).encode(text, negative_prompt="blurry")
    assert result["prompt_embeds"].shape == result["negative_prompt_embeds"].shape == (1, 3 * 77, tiny.HIDDEN)
    for chunk, start in enumerate(range(0, 200, 75)):
        expected = encode_alone(text_encoder, wrap(tok, all_ids[start : start + 75]))
        torch.testing.assert_close(result["prompt_embeds"][0, 77 * chunk : 77 * (chunk + 1)], expected,
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("syntax", CHUNKED)
def test_sdxl_long_prompt_chunks_and_pooled_from_first_chunk(encoders, tok, tok_2, syntax):
    text = words(tok, 200)
    result = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl", syntax=syntax).encode(text)
    assert result["prompt_embeds"].shape == (1, 3 * 77, 2 * tiny.HIDDEN)
    assert result["pooled_prompt_embeds"].shape == (1, tiny.PROJECTION)
    first_chunk = {}
    for index, (tokenizer, encoder) in enumerate(zip((tok, tok_2), encoders)):
        all_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for chunk, start in enumerate(range(0, 200, 75)):
            ids = wrap(tokenizer, all_ids[start : start + 75])
            first_chunk.setdefault(index, ids)
            expected = encode_alone(encoder, ids, layer=-2)
            got = result["prompt_embeds"][0, 77 * chunk : 77 * (chunk + 1), tiny.HIDDEN * index : tiny.HIDDEN * (index + 1)]
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    with torch.no_grad():
        pooled = encoders[1](first_chunk[1][None]).text_embeds
    torch.testing.assert_close(result["pooled_prompt_embeds"], pooled, atol=1e-6, rtol=0)


@pytest.mark.parametrize("syntax", CHUNKED)
def test_weight_one_is_a_no_op(encoders, tok, tok_2, syntax):
    for encoder in (PromptEncoder(tok, encoders[0], syntax=syntax),
                    PromptEncoder([tok, tok_2], list(encoders), convention="sdxl", syntax=syntax)):
        plain = encoder.encode("a photo of a cat", negative_prompt="blurry")
        for prompt in ("(a photo:1.0) of a cat", "(a photo:1) of (a cat:1.00)"):
            weighted = encoder.encode(prompt, negative_prompt="(blurry:1.0)")
            assert plain.keys() == weighted.keys()
            for key in plain:
                assert torch.equal(plain[key], weighted[key]), key


# ---- against diffusers' own encode_prompt ----------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", CHUNKED)
@pytest.mark.parametrize("clip_skip", [None, 1])
@pytest.mark.parametrize("pad_token", [tiny.EOS_TOKEN, "!"], ids=["sd1", "sd2"])
def test_sd_short_prompt_equals_diffusers_encode_prompt(encoders, sd_parts, pad_token, clip_skip, syntax):
    tokenizer = tiny.tokenizer(pad_token)
    pipe = tiny.sd_pipeline(*sd_parts, encoders[0], tokenizer)
    with torch.no_grad():
        expected, _ = pipe.encode_prompt("a photo of a cat", "cpu", 1, False, clip_skip=clip_skip)
        expected_negative, _ = pipe.encode_prompt("blurry", "cpu", 1, False)
    convention = "sd1" if pad_token == tiny.EOS_TOKEN else "sd2"
    result = PromptEncoder.from_pipeline(pipe, convention=convention, clip_skip=clip_skip, syntax=syntax).encode(
        "a photo of a cat", negative_prompt="blurry"
    )
    torch.testing.assert_close(result["prompt_embeds"], expected, atol=1e-6, rtol=0)
    if clip_skip is None:  # diffusers encodes the negative prompt without clip_skip
        torch.testing.assert_close(result["negative_prompt_embeds"], expected_negative, atol=1e-6, rtol=0)


@pytest.mark.parametrize("syntax", CHUNKED)
@pytest.mark.parametrize("clip_skip", [None, 1])
def test_sdxl_short_prompt_equals_diffusers_encode_prompt(encoders, sdxl_parts, tok, tok_2, clip_skip, syntax):
    pipe = tiny.sdxl_pipeline(*sdxl_parts, *encoders, tok, tok_2)
    with torch.no_grad():
        expected = pipe.encode_prompt("a photo of a cat", negative_prompt="blurry", clip_skip=clip_skip)
    result = PromptEncoder.from_pipeline(pipe, clip_skip=clip_skip, syntax=syntax).encode(
        "a photo of a cat", negative_prompt="blurry")
    keys = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for key, value in zip(keys, expected):
        if key == "negative_prompt_embeds" and clip_skip:
            continue  # diffusers encodes the negative prompt without clip_skip
        torch.testing.assert_close(result[key], value, atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize("syntax", CHUNKED)
def test_works_with_stock_transformers_encoders(folders, encoders, tok, tok_2, syntax):
    """Including SD-1 clip-skip, whose final LayerNorm sits elsewhere in transformers 5's flat `CLIPTextModel`."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    stock = (CLIPTextModel.from_pretrained(folders["text_encoder"]).eval(),
             CLIPTextModelWithProjection.from_pretrained(folders["text_encoder_2"]).eval())
    prompt = words(tok, 90) + ", (red:1.2)"
    for convention, tokenizers, count in (("sd1", tok, 1), ("sdxl", [tok, tok_2], 2)):
        ours = PromptEncoder(tokenizers, list(encoders[:count]) if count > 1 else encoders[0],
                             convention=convention, clip_skip=1, syntax=syntax).encode(prompt, "blurry")
        theirs = PromptEncoder(tokenizers, list(stock[:count]) if count > 1 else stock[0],
                               convention=convention, clip_skip=1, syntax=syntax).encode(prompt, "blurry")
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], atol=1e-6, rtol=0, msg=key)


# ---- into the pipelines ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_sdxl_pipeline_takes_the_embeddings(encoders, sdxl_parts, tok, tok_2, syntax):
    pipe = tiny.sdxl_pipeline(*sdxl_parts, *encoders, tok, tok_2)
    encoder = PromptEncoder.from_pipeline(pipe, syntax=syntax)
    # a short unweighted prompt: the same image as the pipeline's own prompt handling
    expected = tiny.generate(pipe, prompt="a photo of a cat", negative_prompt="blurry")
    got = tiny.generate(pipe, **encoder.encode("a photo of a cat", negative_prompt="blurry"))
    assert float(abs(got - expected).max()) <= 1e-6
    long_prompt = "(" + words(tok, 120) + ":1.2), [blurry background], (sharp focus)"
    images = tiny.generate(pipe, **encoder.encode(long_prompt, negative_prompt="lowres"))
    assert images.shape == (1, 32, 32, 3) and bool((images == images).all())


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_sd1_pipeline_takes_long_prompt_embeddings(encoders, sd_parts, tok, syntax):
    pipe = tiny.sd_pipeline(*sd_parts, encoders[0], tok)
    embeds = PromptEncoder.from_pipeline(pipe, clip_skip=1, syntax=syntax).encode(words(tok, 160) + " (cat:1.3)",
                                                                                 "blurry")
    assert embeds["prompt_embeds"].shape[1] == embeds["negative_prompt_embeds"].shape[1] >= 3 * 77
    images = tiny.generate(pipe, **embeds)
    assert images.shape == (1, 32, 32, 3) and bool((images == images).all())


# ---- bad input -------------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors(encoders, tok, tok_2):
    with pytest.raises(ValueError, match="convention"):
        PromptEncoder(tok, encoders[0], convention="sd3")
    with pytest.raises(ValueError, match="syntax"):
        PromptEncoder(tok, encoders[0], syntax="midjourney")
    with pytest.raises(ValueError, match="clip_skip"):
        PromptEncoder(tok, encoders[0], clip_skip=-1)
    with pytest.raises(ValueError, match="emphasis"):
        PromptEncoder(tok, encoders[0], emphasis="Strong")
    with pytest.raises(ValueError, match="comma_backtrack"):
        PromptEncoder(tok, encoders[0], comma_backtrack=-1)
    with pytest.raises(ValueError, match="one tokenizer per text encoder"):
        PromptEncoder([tok, tok_2], encoders[0])
    with pytest.raises(ValueError, match="takes 1"):
        PromptEncoder([tok, tok_2], list(encoders), convention="sd1")
    with pytest.raises(ValueError, match="negative prompts"):
        PromptEncoder(tok, encoders[0]).encode(["a", "b"], negative_prompt=["c"])
    with pytest.raises(ValueError, match="WithProjection"):
        PromptEncoder([tok_2, tok], [encoders[1], encoders[0]], convention="sdxl").encode("a cat")
