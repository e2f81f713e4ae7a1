"""syntax="comfyui": ComfyUI's parser, chunking and weighting, checked against expectations derived by hand from
ComfyUI's rules (its code cannot be a dependency). Each row names the rule it checks."""

import warnings

import pytest
import torch

import tiny_diffusion as tiny
from tiny_diffusion import WORDS, tok, tok_2  # noqa: F401  (pytest fixtures)
from dualclip import DualClipTextModel, DualClipTextModelWithProjection
from dualclip.conditioning import PromptEncoder, tokenize_prompt
from dualclip.conditioning_comfyui import parse_comfyui

R = 1.1


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    yield from tiny.one_torch_thread()


PARSE_TABLE = [
    ("a (red) car", [("a ", 1.0), ("red", R), (" car", 1.0)], "(x) multiplies by 1.1"),
    ("((fast))", [("fast", R * R)], "plain groups nest and multiply"),
    ("(red:1.3)", [("red", 1.3)], "(x:w) sets the weight w"),
    ("((b:1.5))", [("b", 1.5)], "an explicit weight replaces the outer 1.1 instead of multiplying it"),
    ("((b:1.5) c)", [("b", 1.5), (" c", R)], "the outer group's text after the inner group keeps 1.1"),
    ("(b:1.5:2)", [("b:1.5", 2.0)], "the weight follows the last ':'; earlier ones are text"),
    ("(:1.5)", [(":1.5", R)], "a ':' at the group's first character is text"),
    ("(b: 1.5 )", [("b", 1.5)], "Python's float() accepts spaces around the number"),
    ("(b:1e1)", [("b", 10.0)], "... and exponents"),
    ("(b:1_0)", [("b", 10.0)], "... and digit separators"),
    ("(b:x)", [("b:x", R)], "a weight that float() rejects leaves the ':' as text and the weight 1.1"),
    ("(a (b:1.2))", [("a ", R), ("b", 1.2)], "the last ':' belongs to a nested group: not a number, so 1.1"),
    ("[b]", [("[b]", 1.0)], "square brackets are plain text"),
    ("a BREAK b", [("a BREAK b", 1.0)], "BREAK is plain text"),
    ("(b", [("(b", 1.0)], "an unclosed ( is text"),
    ("b)", [("b)", 1.0)], "an unopened ) is text"),
    ("a) (b)", [("a) (b)", 1.0)], "after a stray ) the count is negative: the following group is text too"),
    ("(a (b)", [("a ", R), ("(b", R)], "the outer ( closes with the inner ); what it held is parsed again"),
    (r"\(b\)", [("(b)", 1.0)], "\\( and \\) are literal brackets"),
    (r"(a\))", [("a)", R)], "an escaped ) inside a group"),
    ("(a)(b)", [("a", R), ("b", R)], "neighbouring segments are never merged"),
    ("a, (b:0.5), c", [("a, ", 1.0), ("b", 0.5), (", c", 1.0)], "text between groups is its own segment"),
    ("", [], "the empty prompt has no segments"),
    ("()", [], "an empty group gives nothing"),
]


@pytest.mark.parametrize("prompt, expected, rule", PARSE_TABLE, ids=[row[2][:60] for row in PARSE_TABLE])
def test_parse_table(prompt, expected, rule):
    assert parse_comfyui(prompt) == expected, rule


# ---- chunking --------------------------------------------------------------------------------------------------------


def words(count: int, seed: int = 0) -> str:
    generator = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (count,), generator=generator).tolist())


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def row(tokenizer, ids):
    out = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    return out + [tokenizer.pad_token_id] * (77 - len(out))


# (tokens in the first segment, tokens in a weighted second segment) -> tokens in the first chunk
CHUNK_TABLE = [
    (70, 5, 75, "1 + 70 + 5 = 76 positions before EOS: it fits"),
    (70, 7, 70, "a 7-token segment (short: < 8) that does not fit moves whole to the next chunk"),
    (70, 8, 75, "an 8-token segment (long) fills the chunk and continues in the next"),
    (100, 0, 75, "a single long segment is cut at 75 tokens"),
]


@pytest.mark.parametrize("first, second, in_first_chunk, rule", CHUNK_TABLE, ids=[r[3][:50] for r in CHUNK_TABLE])
def test_chunk_table(tok, first, second, in_first_chunk, rule):
    prompt = words(first) + (f" ({words(second, seed=1)}:1.2)" if second else "")
    head, tail = ids_of(tok, words(first)), ids_of(tok, words(second, seed=1)) if second else []
    assert len(head) == first and len(tail) == second
    all_ids = head + tail
    ids, weights = tokenize_prompt(prompt, tok, syntax="comfyui")
    expected = [row(tok, all_ids[:in_first_chunk])] + ([row(tok, all_ids[in_first_chunk:])]
                                                        if all_ids[in_first_chunk:] else [])
    assert ids.tolist() == expected, rule
    real = [w for chunk_weights, chunk_ids in zip(weights.tolist(), ids.tolist())
            for w in chunk_weights[1 : chunk_ids.index(tok.eos_token_id)]]
    assert real == torch.tensor([1.0] * first + [1.2] * second).tolist()  # float32 weights


def test_short_prompt_rows_and_padding(tok, tok_2):
    """One chunk `[BOS] tokens [EOS] [pad...]`, padded with the tokenizer's pad (EOS for CLIP-L, '!' for bigG)."""
    for tokenizer in (tok, tok_2):
        ids, weights = tokenize_prompt("a (red:1.5) car", tokenizer, syntax="comfyui")
        assert ids.tolist() == [row(tokenizer, ids_of(tokenizer, "a ") + ids_of(tokenizer, "red")
                                    + ids_of(tokenizer, " car"))]
        assert weights[0, :5].tolist() == [1.0, 1.0, 1.5, 1.0, 1.0]
    ids, _ = tokenize_prompt("", tok, syntax="comfyui")
    assert ids.tolist() == [row(tok, [])]


def test_embedding_words_use_added_tokens(tok):
    tokenizer = tiny.tokenizer(tiny.EOS_TOKEN)
    tokenizer.add_tokens(["<concept>", "<concept>_1"])
    concept = tokenizer.convert_tokens_to_ids(["<concept>", "<concept>_1"])
    ids, _ = tokenize_prompt("a photo of embedding:concept, cat", tokenizer, syntax="comfyui")
    assert ids.tolist() == [row(tokenizer, ids_of(tokenizer, "a photo of") + concept + ids_of(tokenizer, ", cat"))]
    with pytest.warns(UserWarning, match="embedding:missing"):
        ids, _ = tokenize_prompt("a photo of embedding:missing cat", tokenizer, syntax="comfyui")
    assert ids.tolist() == [row(tokenizer, ids_of(tokenizer, "a photo of cat"))]  # left out, as ComfyUI does


# ---- encoding --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    folders = tiny.save_stock_text_encoders(str(tmp_path_factory.mktemp("stock")))
    return (DualClipTextModel.from_pretrained(folders["text_encoder"]).eval(),
            DualClipTextModelWithProjection.from_pretrained(folders["text_encoder_2"]).eval())


def states(encoder, rows, layer=None):
    with torch.no_grad():
        out = encoder(torch.tensor(rows), output_hidden_states=True)
    return out.last_hidden_state if layer is None else out.hidden_states[layer]


def comfy_reference(encoder, tokenizer, prompt, layer=None):
    """ComfyUI's rule written out: z[j] = (z[j] - empty[j]) * w + empty[j] where w != 1."""
    ids, weights = tokenize_prompt(prompt, tokenizer, syntax="comfyui")
    z = states(encoder, ids.tolist(), layer)
    empty = states(encoder, [row(tokenizer, [])], layer)[0]
    out = z.clone()
    for c in range(z.shape[0]):
        for j in range(z.shape[1]):
            w = float(weights[c, j])
            if w != 1.0:
                out[c, j] = (z[c, j] - empty[j]) * w + empty[j]
    return out.flatten(0, 1)


PROMPT = "a (red:1.3) car, ((fast)), (" + words(90) + ":0.8), end"


def test_sd1_weighting_moves_toward_the_empty_prompt(encoders, tok):
    result = PromptEncoder(tok, encoders[0], syntax="comfyui").encode(PROMPT, negative_prompt="lowres")
    expected = comfy_reference(encoders[0], tok, PROMPT)
    assert expected.shape[0] == 2 * 77
    torch.testing.assert_close(result["prompt_embeds"][0], expected, atol=1e-6, rtol=1e-6)
    # the one-chunk negative is repeated whole to the prompt's two chunks
    lowres = comfy_reference(encoders[0], tok, "lowres")
    torch.testing.assert_close(result["negative_prompt_embeds"][0], lowres.repeat(2, 1), atol=1e-6, rtol=0)


def test_clip_set_last_layer_minus_two_is_clip_skip_one(encoders, tok):
    """ComfyUI's "CLIP Set Last Layer" -2 on SD-1: layer -2 through the final LayerNorm = diffusers' clip_skip=1."""
    result = PromptEncoder(tok, encoders[0], syntax="comfyui", clip_skip=1).encode("a (red:1.3) car")
    ids, weights = tokenize_prompt("a (red:1.3) car", tok, syntax="comfyui")
    norm = encoders[0].text_model.final_layer_norm
    with torch.no_grad():
        z = norm(states(encoders[0], ids.tolist(), -2))[0]
        empty = norm(states(encoders[0], [row(tok, [])], -2))[0]
    expected = torch.where(weights[0, :, None] != 1, (z - empty) * weights[0, :, None] + empty, z)
    torch.testing.assert_close(result["prompt_embeds"][0], expected, atol=1e-6, rtol=1e-6)


def test_sdxl_both_encoders_penultimate_and_pooled_from_first_chunk(encoders, tok, tok_2):
    result = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl", syntax="comfyui").encode(
        PROMPT, negative_prompt="")
    expected = torch.cat([comfy_reference(encoders[0], tok, PROMPT, layer=-2),
                          comfy_reference(encoders[1], tok_2, PROMPT, layer=-2)], dim=-1)
    torch.testing.assert_close(result["prompt_embeds"][0], expected, atol=1e-6, rtol=1e-6)
    first_chunk = tokenize_prompt(PROMPT, tok_2, syntax="comfyui")[0][:1]
    with torch.no_grad():
        pooled = encoders[1](first_chunk).text_embeds
    torch.testing.assert_close(result["pooled_prompt_embeds"], pooled, atol=1e-6, rtol=0)
    # ComfyUI encodes an empty negative prompt (no zeros) ...
    empty = torch.cat([comfy_reference(encoders[0], tok, "", layer=-2),
                       comfy_reference(encoders[1], tok_2, "", layer=-2)], dim=-1)
    torch.testing.assert_close(result["negative_prompt_embeds"][0], empty.repeat(2, 1), atol=1e-6, rtol=0)
    # ... unless asked to zero it (its ConditioningZeroOut node)
    zeroed = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl", syntax="comfyui",
                           zero_empty_negative=True).encode(PROMPT)
    assert bool((zeroed["negative_prompt_embeds"] == 0).all())
    assert bool((zeroed["negative_pooled_prompt_embeds"] == 0).all())


def test_unweighted_prompt_needs_no_empty_prompt(encoders, tok):
    with torch.no_grad():
        plain = PromptEncoder(tok, encoders[0], syntax="comfyui").encode("a photo of a cat")["prompt_embeds"][0]
    torch.testing.assert_close(plain, states(encoders[0], [row(tok, ids_of(tok, "a photo of a cat"))])[0],
                               atol=1e-6, rtol=0)


def test_lengths_are_tiled_to_their_least_common_multiple(encoders, tok):
    """2 and 3 chunks become 6: each text repeated whole, as ComfyUI concatenates conditionings; cross-attention
    over a sequence repeated whole is the attention over the sequence."""
    encoder = PromptEncoder(tok, encoders[0], syntax="comfyui")
    two, three = words(100), words(200, seed=2)
    result = encoder.encode([two], negative_prompt=[three])
    assert result["prompt_embeds"].shape[1] == result["negative_prompt_embeds"].shape[1] == 6 * 77
    torch.testing.assert_close(result["prompt_embeds"][0], comfy_reference(encoders[0], tok, two).repeat(3, 1),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(result["negative_prompt_embeds"][0],
                               comfy_reference(encoders[0], tok, three).repeat(2, 1), atol=1e-6, rtol=0)


def test_tiling_leaves_the_image_unchanged(encoders, tok):
    """The UNet's cross-attention sees the same thing with the negative prompt repeated: same image as with the
    one-chunk negative, when the prompt is one chunk too."""
    pipe = tiny.sd_pipeline(*tiny.sd_unet_and_vae(), encoders[0], tok)
    encoder = PromptEncoder.from_pipeline(pipe, syntax="comfyui")
    short = encoder.encode("a (red:1.3) car", negative_prompt="lowres")
    tiled = {key: value.repeat(1, 2, 1) for key, value in short.items()}
    a, b = tiny.generate(pipe, **short), tiny.generate(pipe, **tiled)
    assert float(abs(a - b).max()) <= 1e-5


def test_long_weighted_prompt_drives_sdxl(encoders, tok, tok_2):
    pipe = tiny.sdxl_pipeline(*tiny.sdxl_unet_and_vae(), *encoders, tok, tok_2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embeds = PromptEncoder.from_pipeline(pipe, syntax="comfyui").encode(PROMPT, negative_prompt="lowres")
    images = tiny.generate(pipe, **embeds)
    assert images.shape == (1, 32, 32, 3) and bool((images == images).all())
