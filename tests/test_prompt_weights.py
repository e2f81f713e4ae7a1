"""dualclip.conditioning: the weighting syntax, chunking of long prompts, weighting, and the embeddings handed to
diffusers pipelines, checked against diffusers' own `encode_prompt` and against computations written here."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tiny_diffusion as tiny
from dualclip import DualClipTextModel, DualClipTextModelWithProjection
from dualclip.conditioning import (
    BREAK,
    PromptEncoder,
    apply_weights,
    parse_prompt_weights,
    tokenize_weighted_prompt,
)

UP, DOWN = 1.1, 1 / 1.1

@pytest.fixture(scope="module", autouse=True)
def single_thread():
    yield from tiny.one_torch_thread()


# ---- parse_prompt_weights --------------------------------------------------------------------------------------------

PARSE_CASES = [
    ("a photo of a cat", [("a photo of a cat", 1.0)]),
    ("", []),
    ("a (cat) b", [("a ", 1.0), ("cat", UP), (" b", 1.0)]),
    ("[cat]", [("cat", DOWN)]),
    ("((cat))", [("cat", UP * UP)]),
    ("[[cat]]", [("cat", DOWN * DOWN)]),
    ("(cat:1.3)", [("cat", 1.3)]),
    ("(cat: 0.5 )", [("cat", 0.5)]),
    ("(cat:-1)", [("cat", -1.0)]),
    ("(cat:.5)", [("cat", 0.5)]),
    ("((cat:1.5) dog)", [("cat", 1.5 * UP), (" dog", UP)]),
    ("[(cat:2)]", [("cat", 2 * DOWN)]),
    ("(a [b] c)", [("a ", UP), ("b", UP * DOWN), (" c", UP)]),
    ("(red)(car)", [("red", UP), ("car", UP)]),  # a bracket is a word boundary: not merged into "redcar"
    # escapes
    (r"\(cat\)", [("(cat)", 1.0)]),
    (r"\[cat\]", [("[cat]", 1.0)]),
    (r"(\(cat\))", [("(cat)", UP)]),
    (r"a\\b", [("a\\b", 1.0)]),
    (r"\cat", [("\\cat", 1.0)]),
    (r"(a\)", [("(a)", 1.0)]),  # the escaped ")" closes nothing; "(" stays unpaired
    # unbalanced and mismatched brackets are literal text
    ("(cat", [("(cat", 1.0)]),
    ("cat)", [("cat)", 1.0)]),
    ("[cat", [("[cat", 1.0)]),
    ("cat]", [("cat]", 1.0)]),
    ("((cat)", [("(", 1.0), ("cat", UP)]),
    ("(cat))", [("cat", UP), (")", 1.0)]),
    ("(cat]", [("(cat]", 1.0)]),
    ("([cat)]", [("[cat", UP), ("]", 1.0)]),  # ")" pairs with "(", leaving "[" unpaired inside
    ("a:1.3) b", [("a:1.3) b", 1.0)]),
    ("[cat:1.3]", [("cat:1.3", DOWN)]),  # ":w" only weights round brackets
    ("(cat:dog)", [("cat:dog", UP)]),
    ("(cat:1.2.3)", [("cat:1.2.3", UP)]),
    ("(cat:1.5", [("(cat:1.5", 1.0)]),
    ("(a:1.5:2)", [("a:1.5", 2.0)]),
    ("()", []),
    ("x()y", [("x", 1.0), ("y", 1.0)]),
    # BREAK
    ("a BREAK b", [("a", 1.0), (BREAK, None), ("b", 1.0)]),
    ("a BREAK", [("a", 1.0), (BREAK, None)]),
    ("BREAK", [(BREAK, None)]),
    ("(a BREAK b:1.5)", [("a", 1.5), (BREAK, None), ("b", 1.5)]),
    ("aBREAK b break BREAKS", [("aBREAK b break BREAKS", 1.0)]),
    ("a,BREAK,b", [("a,", 1.0), (BREAK, None), (",b", 1.0)]),
]


@pytest.mark.parametrize("text, expected", PARSE_CASES)
def test_parse_prompt_weights(text, expected):
    result = parse_prompt_weights(text)
    assert [t for t, _ in result] == [t for t, _ in expected]
    for (_, weight), (_, expected_weight) in zip(result, expected):
        assert (weight is None and expected_weight is None) or weight == pytest.approx(expected_weight, rel=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="()[]\\: .-12abBREAK", max_size=40))
def test_parse_never_fails_and_keeps_plain_characters(text):
    fragments = parse_prompt_weights(text)
    assert all(w is None or math.isfinite(w) for _, w in fragments)
    kept = "".join(t for t, w in fragments if w is not None)
    # every letter of the prompt survives except those of BREAK markers
    assert sum(c in "abBREAK" for c in kept) == sum(c in "abBREAK" for c in text) - 5 * sum(
        w is None for _, w in fragments
    )


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="()[]\\:B"), max_size=40))
def test_parse_plain_text_is_unchanged(text):
    assert parse_prompt_weights(text) == ([(text, 1.0)] if text else [])


# ---- tokenize_weighted_prompt ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    return tiny.tokenizer(tiny.EOS_TOKEN)


@pytest.fixture(scope="module")
def tok_2():
    return tiny.tokenizer("!")


def words(tokenizer, count: int, seed: int = 0) -> str:
    """A prompt of `count` tokens: common one-token words, checked against the tokenizer."""
    vocabulary = "cat dog house tree river mountain city night red blue green light dark old new small big".split()
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(vocabulary), (count,), generator=generator).tolist()
    text = " ".join(vocabulary[i] for i in picks)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == count
    return text


def wrap(tokenizer, ids, length=75):
    """`[BOS] ids [EOS] [pad...]`, written out independently of the code under test."""
    row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    return torch.tensor(row + [tokenizer.pad_token_id] * (length + 2 - len(row)))


def test_short_prompt_is_one_chunk_as_the_pipeline_tokenizes_it(tok, tok_2):
    for tokenizer in (tok, tok_2):
        ids, weights = tokenize_weighted_prompt("a photo of a cat", tokenizer)
        expected = tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert torch.equal(ids, expected)
        assert torch.equal(weights, torch.ones(1, 77))


def test_long_prompt_splits_into_75_token_chunks(tok):
    text = words(tok, 200)
    all_ids = tok(text, add_special_tokens=False)["input_ids"]
    ids, weights = tokenize_weighted_prompt(text, tok)
    assert ids.shape == weights.shape == (3, 77)
    for chunk, start in enumerate(range(0, 200, 75)):
        assert torch.equal(ids[chunk], wrap(tok, all_ids[start : start + 75]))


@pytest.mark.parametrize("count, chunks", [(0, 1), (1, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
def test_chunk_boundaries(tok, count, chunks):
    ids, _ = tokenize_weighted_prompt(words(tok, count) if count else "", tok)
    assert ids.shape == (chunks, 77)
    assert int((ids[-1] == tok.eos_token_id).int().argmax()) == (count - 75 * (chunks - 1)) + 1


def test_break_starts_a_new_chunk(tok):
    cat, dog = tok("cat dog", add_special_tokens=False)["input_ids"]
    ids, _ = tokenize_weighted_prompt("cat BREAK dog", tok)
    assert torch.equal(ids, torch.stack([wrap(tok, [cat]), wrap(tok, [dog])]))
    assert tokenize_weighted_prompt("cat BREAK", tok)[0].shape[0] == 1
    assert torch.equal(tokenize_weighted_prompt("BREAK dog", tok)[0], torch.stack([wrap(tok, []), wrap(tok, [dog])]))
    assert tokenize_weighted_prompt("cat BREAK BREAK dog", tok)[0].shape[0] == 3
    # BREAK inside a full chunk's worth of text: the chunk ends early, the count restarts
    ids, _ = tokenize_weighted_prompt(words(tok, 70) + " BREAK " + words(tok, 10, seed=1), tok)
    assert ids.shape[0] == 2 and int((ids[1] == tok.eos_token_id).int().argmax()) == 11


def test_token_weights(tok):
    ids, weights = tokenize_weighted_prompt("a (red:1.5) car on a [[rainy]] street", tok)
    pieces = ["a", "red", "car on a", "rainy", "street"]
    piece_weights = [1.0, 1.5, 1.0, DOWN * DOWN, 1.0]
    expected = [1.0]  # BOS
    for piece, weight in zip(pieces, piece_weights):
        expected += [weight] * len(tok(piece, add_special_tokens=False)["input_ids"])
    expected += [1.0] * (77 - len(expected))
    assert torch.allclose(weights[0], torch.tensor(expected))
    assert torch.equal(ids, tokenize_weighted_prompt("a red car on a rainy street", tok)[0])


# ---- encoding --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tiny.save_stock_text_encoders(str(tmp_path_factory.mktemp("stock")))


@pytest.fixture(scope="module")
def encoders(folders):
    return (
        DualClipTextModel.from_pretrained(folders["text_encoder"]).eval(),
        DualClipTextModelWithProjection.from_pretrained(folders["text_encoder_2"]).eval(),
    )


@pytest.fixture(scope="module")
def sd_parts():
    return tiny.sd_unet_and_vae()


@pytest.fixture(scope="module")
def sdxl_parts():
    return tiny.sdxl_unet_and_vae()


def encode_alone(encoder, ids, layer=None):
    """One chunk through the encoder on its own: the last hidden state, or hidden state `layer` (no final norm)."""
    with torch.no_grad():
        out = encoder(ids[None], output_hidden_states=True)
    return out.last_hidden_state[0] if layer is None else out.hidden_states[layer][0]


def test_sd1_long_prompt_chunks_equal_separate_encoding(encoders, tok):
    text_encoder, _ = encoders
    text = words(tok, 200)
    all_ids = tok(text, add_special_tokens=False)["input_ids"]
    result = PromptEncoder(tok, text_encoder).encode(text, negative_prompt="blurry")
    assert result["prompt_embeds"].shape == result["negative_prompt_embeds"].shape == (1, 3 * 77, tiny.HIDDEN)
    for chunk, start in enumerate(range(0, 200, 75)):
        expected = encode_alone(text_encoder, wrap(tok, all_ids[start : start + 75]))
        torch.testing.assert_close(result["prompt_embeds"][0, 77 * chunk : 77 * (chunk + 1)], expected,
                                   atol=1e-6, rtol=0)


def test_sdxl_long_prompt_chunks_and_pooled_from_first_chunk(encoders, tok, tok_2):
    text = words(tok, 200)
    result = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl").encode(text)
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
    # SDXL's default for a missing negative prompt: zeros of the same shapes
    assert torch.equal(result["negative_prompt_embeds"], torch.zeros_like(result["prompt_embeds"]))
    assert torch.equal(result["negative_pooled_prompt_embeds"], torch.zeros_like(result["pooled_prompt_embeds"]))


def reference_weighting(hidden, weights, restore_mean):
    """A1111's rule, per chunk: z * w, then z * (mean before / mean after)."""
    weighted = hidden * weights[:, None]
    if restore_mean:
        weighted = weighted * (hidden.mean() / weighted.mean())
    return weighted


@pytest.mark.parametrize("restore_mean", [True, False])
def test_weighting_matches_independent_computation(encoders, tok, restore_mean):
    text_encoder, _ = encoders
    prompt = "a (red:1.5) car on a [[rainy]] street, (night)"
    pieces = [("a", 1.0), ("red", 1.5), ("car on a", 1.0), ("rainy", DOWN * DOWN), ("street,", 1.0), ("night", UP)]
    ids, weights = [], []
    for piece, weight in pieces:
        piece_ids = tok(piece, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        weights += [weight] * len(piece_ids)
    chunk = wrap(tok, ids)
    position_weights = torch.ones(77)
    position_weights[1 : len(weights) + 1] = torch.tensor(weights)
    expected = reference_weighting(encode_alone(text_encoder, chunk), position_weights, restore_mean)

    result = PromptEncoder(tok, text_encoder, restore_mean=restore_mean).encode(prompt)
    torch.testing.assert_close(result["prompt_embeds"][0], expected, atol=1e-6, rtol=1e-6)
    if restore_mean:
        plain = encode_alone(text_encoder, chunk)
        assert float(result["prompt_embeds"].mean()) == pytest.approx(float(plain.mean()), rel=1e-5)


def test_sdxl_weighting_restores_each_encoders_mean_and_leaves_pooled_alone(encoders, tok, tok_2):
    prompt, plain_prompt = "a (red:1.5) car", "a red car"
    encoder = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl")
    weighted, plain = encoder.encode(prompt), encoder.encode(plain_prompt)
    torch.testing.assert_close(weighted["pooled_prompt_embeds"], plain["pooled_prompt_embeds"], atol=0, rtol=0)
    ids, weights = tokenize_weighted_prompt(prompt, tok)
    for index in range(2):
        part = slice(tiny.HIDDEN * index, tiny.HIDDEN * (index + 1))
        expected = reference_weighting(plain["prompt_embeds"][0, :, part], weights[0], restore_mean=True)
        torch.testing.assert_close(weighted["prompt_embeds"][0, :, part], expected, atol=1e-6, rtol=1e-6)


def test_weight_one_is_a_no_op(encoders, tok, tok_2):
    for encoder in (PromptEncoder(tok, encoders[0]), PromptEncoder([tok, tok_2], list(encoders), convention="sdxl")):
        plain = encoder.encode("a photo of a cat", negative_prompt="blurry")
        for prompt in ("(a photo:1.0) of a cat", "(a photo:1) of (a cat:1.00)"):
            weighted = encoder.encode(prompt, negative_prompt="(blurry:1.0)")
            assert plain.keys() == weighted.keys()
            for key in plain:
                assert torch.equal(plain[key], weighted[key]), key


def test_apply_weights_leaves_unweighted_rows_bit_identical():
    hidden = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    weights = torch.ones(3, 5)
    weights[1, 2] = 1.3
    result = apply_weights(hidden, weights)
    assert torch.equal(result[0], hidden[0]) and torch.equal(result[2], hidden[2])
    torch.testing.assert_close(result[1], reference_weighting(hidden[1], weights[1], True))
    assert apply_weights(hidden, torch.ones(3, 5)) is hidden


def test_negative_prompt_is_padded_with_empty_chunks(encoders, tok):
    text_encoder, _ = encoders
    result = PromptEncoder(tok, text_encoder).encode(words(tok, 100), negative_prompt="blurry")
    negative = result["negative_prompt_embeds"]
    assert negative.shape == result["prompt_embeds"].shape == (1, 2 * 77, tiny.HIDDEN)
    blurry = tok("blurry", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(negative[0, :77], encode_alone(text_encoder, wrap(tok, blurry)), atol=1e-6, rtol=0)
    torch.testing.assert_close(negative[0, 77:], encode_alone(text_encoder, wrap(tok, [])), atol=1e-6, rtol=0)


def test_batches_are_padded_and_rows_independent(encoders, tok):
    encoder = PromptEncoder(tok, encoders[0])
    prompts = [words(tok, 100), "a (cat:1.4)"]
    batch = encoder.encode(prompts, negative_prompt="blurry")
    assert batch["prompt_embeds"].shape == (2, 2 * 77, tiny.HIDDEN)
    for row, prompt in enumerate(prompts):
        alone = encoder.encode(prompt, negative_prompt="blurry")
        length = alone["prompt_embeds"].shape[1]
        torch.testing.assert_close(batch["prompt_embeds"][row, :length], alone["prompt_embeds"][0], atol=1e-6, rtol=0)


# ---- against diffusers' own encode_prompt ----------------------------------------------------------------------------


@pytest.mark.parametrize("clip_skip", [None, 1])
@pytest.mark.parametrize("pad_token", [tiny.EOS_TOKEN, "!"], ids=["sd1", "sd2"])
def test_sd_short_prompt_equals_diffusers_encode_prompt(encoders, sd_parts, pad_token, clip_skip):
    tokenizer = tiny.tokenizer(pad_token)
    pipe = tiny.sd_pipeline(*sd_parts, encoders[0], tokenizer)
    with torch.no_grad():
        expected, _ = pipe.encode_prompt("a photo of a cat", "cpu", 1, False, clip_skip=clip_skip)
        expected_negative, _ = pipe.encode_prompt("blurry", "cpu", 1, False)
    convention = "sd1" if pad_token == tiny.EOS_TOKEN else "sd2"
    result = PromptEncoder.from_pipeline(pipe, convention=convention, clip_skip=clip_skip).encode(
        "a photo of a cat", negative_prompt="blurry"
    )
    torch.testing.assert_close(result["prompt_embeds"], expected, atol=1e-6, rtol=0)
    if clip_skip is None:  # diffusers encodes the negative prompt without clip_skip
        torch.testing.assert_close(result["negative_prompt_embeds"], expected_negative, atol=1e-6, rtol=0)


@pytest.mark.parametrize("clip_skip", [None, 1])
def test_sdxl_short_prompt_equals_diffusers_encode_prompt(encoders, sdxl_parts, tok, tok_2, clip_skip):
    pipe = tiny.sdxl_pipeline(*sdxl_parts, *encoders, tok, tok_2)
    with torch.no_grad():
        expected = pipe.encode_prompt("a photo of a cat", negative_prompt="blurry", clip_skip=clip_skip)
    result = PromptEncoder.from_pipeline(pipe, clip_skip=clip_skip).encode("a photo of a cat", negative_prompt="blurry")
    keys = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for key, value in zip(keys, expected):
        if key == "negative_prompt_embeds" and clip_skip:
            continue  # diffusers encodes the negative prompt without clip_skip
        torch.testing.assert_close(result[key], value, atol=1e-6, rtol=0, msg=key)


def test_works_with_stock_transformers_encoders(folders, encoders, tok, tok_2):
    """Including SD-1 clip-skip, whose final LayerNorm sits elsewhere in transformers 5's flat `CLIPTextModel`."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    stock = (CLIPTextModel.from_pretrained(folders["text_encoder"]).eval(),
             CLIPTextModelWithProjection.from_pretrained(folders["text_encoder_2"]).eval())
    prompt = words(tok, 90) + ", (red:1.2)"
    for convention, tokenizers, count in (("sd1", tok, 1), ("sdxl", [tok, tok_2], 2)):
        ours = PromptEncoder(tokenizers, list(encoders[:count]) if count > 1 else encoders[0],
                             convention=convention, clip_skip=1).encode(prompt, "blurry")
        theirs = PromptEncoder(tokenizers, list(stock[:count]) if count > 1 else stock[0],
                               convention=convention, clip_skip=1).encode(prompt, "blurry")
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], atol=1e-6, rtol=0, msg=key)


# ---- into the pipelines ----------------------------------------------------------------------------------------------


def test_sdxl_pipeline_takes_the_embeddings(encoders, sdxl_parts, tok, tok_2):
    pipe = tiny.sdxl_pipeline(*sdxl_parts, *encoders, tok, tok_2)
    encoder = PromptEncoder.from_pipeline(pipe)
    # a short unweighted prompt: the same image as the pipeline's own prompt handling
    expected = tiny.generate(pipe, prompt="a photo of a cat", negative_prompt="blurry")
    got = tiny.generate(pipe, **encoder.encode("a photo of a cat", negative_prompt="blurry"))
    assert float(abs(got - expected).max()) <= 1e-6
    # a long weighted prompt with BREAK
    long_prompt = "(" + words(tok, 120) + ":1.2) BREAK [blurry background], (sharp focus)"
    images = tiny.generate(pipe, **encoder.encode(long_prompt, negative_prompt="lowres"))
    assert images.shape == (1, 32, 32, 3) and bool((images == images).all())


def test_sd1_pipeline_takes_long_prompt_embeddings(encoders, sd_parts, tok):
    pipe = tiny.sd_pipeline(*sd_parts, encoders[0], tok)
    embeds = PromptEncoder.from_pipeline(pipe, clip_skip=1).encode(words(tok, 160) + " (cat:1.3)", "blurry")
    assert embeds["prompt_embeds"].shape == (1, 3 * 77, tiny.HIDDEN)
    images = tiny.generate(pipe, **embeds)
    assert images.shape == (1, 32, 32, 3) and bool((images == images).all())


# ---- bad input -------------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors(encoders, tok, tok_2):
    with pytest.raises(ValueError, match="convention"):
        PromptEncoder(tok, encoders[0], convention="sd3")
    with pytest.raises(ValueError, match="clip_skip"):
        PromptEncoder(tok, encoders[0], clip_skip=-1)
    with pytest.raises(ValueError, match="one tokenizer per text encoder"):
        PromptEncoder([tok, tok_2], encoders[0])
    with pytest.raises(ValueError, match="takes 1"):
        PromptEncoder([tok, tok_2], list(encoders), convention="sd1")
    with pytest.raises(ValueError, match="negative prompts"):
        PromptEncoder(tok, encoders[0]).encode(["a", "b"], negative_prompt=["c"])
    with pytest.raises(ValueError, match="WithProjection"):
        PromptEncoder([tok_2, tok], [encoders[1], encoders[0]], convention="sdxl").encode("a cat")
